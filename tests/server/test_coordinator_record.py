"""What a coordinator keeps and says about its rounds: exclusions survive a restart, progress is logged.

The failure the first test defeats: exclusions lived only in the coordinator's memory, so a restarted
server invited the dealer it had caught back into the next cohort, where it could break another attempt.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from secfed.bench.attacks import toy_world
from secfed.bench.inprocess import drive
from server.config import ServerConfig
from server.coordinator import Coordinator, RoundPlan, RoundStart
from server.runtime import StoreObserver, excluded_members
from server.state import StateStore
from tests.secagg.support import Consortium
from tests.server.test_coordinator import DIM, Clock, MeanTask


def test_an_exclusion_is_persisted_and_restored_into_the_restarted_coordinator(
    tmp_path: Path, consortium: Consortium
) -> None:
    roster = consortium.ids(6)
    caught = roster[2]
    with StateStore(tmp_path / "state.db") as store:
        observer = StoreObserver(store, tmp_path / "rounds.jsonl", cast(ServerConfig, None))
        observer.member_excluded(0, caught, "its own sharing is wrong")
    with StateStore(tmp_path / "state.db") as store:  # the restarted server reads it back
        restored = excluded_members(store)
    assert restored == {caught: "its own sharing is wrong"}
    coord = Coordinator(
        roster=roster,
        plan=RoundPlan(rounds=1, phase_timeout_s=5, min_cohort=3),
        task=MeanTask(),
        initial_model=np.zeros(DIM),
        trust=consortium.trust,
        clock=Clock(),
        excluded=restored,
    )
    ins = coord.poll(roster[0]).instruction
    assert isinstance(ins, RoundStart)
    assert caught not in ins.config.roster and len(ins.config.roster) == 5
    assert not isinstance(coord.poll(caught).instruction, RoundStart)


def test_each_completed_round_logs_a_progress_line(caplog: pytest.LogCaptureFixture) -> None:
    """An operator watching the server log sees "round r/R: k of m institutions, d dropped, s, ETA"."""
    server, clients, consortium = toy_world(5)
    root = logging.getLogger("secfed")
    attach = not root.propagate  # after logs.configure the "secfed" logger no longer propagates
    if attach:
        root.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="secfed"):
            drive(server, clients, consortium, rounds=2)
    finally:
        if attach:
            root.removeHandler(caplog.handler)
    lines = [
        getattr(r, "fields", {}).get("progress") for r in caplog.records if r.getMessage() == "round-complete"
    ]
    stages = [
        getattr(r, "fields", {}).get("progress") for r in caplog.records if r.getMessage() == "stage-complete"
    ]
    assert len(stages) == 2
    assert re.fullmatch(
        r"round 1/2, stage 1 \(update\): 5 of 5 institutions, 0 dropped, [0-9.]+ s into the round",
        str(stages[0]),
    )
    assert len(lines) == 2
    assert re.fullmatch(
        r"round 1/2: 5 of 5 institutions, 0 dropped, [0-9.]+ s, about [0-9]+ s to go", str(lines[0])
    )
    assert re.fullmatch(r"round 2/2: 5 of 5 institutions, 0 dropped, [0-9.]+ s, the last", str(lines[1]))
