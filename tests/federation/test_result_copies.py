"""Every institution keeps its own copy of the federation's result, checked like any global model."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from client.config import RetryPolicy
from client.runtime import ClientRuntime
from secfed.fl.policy import InstitutionPolicy
from secfed.fl.registry import client_task
from secfed.pki.kit import load_kit
from server.runtime import log_dropout_tolerance
from tests.federation.support import (
    TOY,
    ClientThread,
    Federation,
    rounds_log,
    server_config,
    start_federation,
)

pytestmark = pytest.mark.timeout(120)


def _client(fed: Federation, cid: str, model_dir: Path, checkpoint_every: int = 0) -> ClientThread:
    runtime = ClientRuntime(
        load_kit(fed.pki / "clients" / cid),
        client_task("toy-mean", cid, TOY),
        address=fed.address,
        retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=30),
        policy=InstitutionPolicy(),
        model_dir=model_dir,
        checkpoint_every=checkpoint_every,
    )
    holder = ClientThread(cid, threading.Thread(target=lambda: None))

    def body() -> None:
        holder.report = runtime.run()

    holder.thread = threading.Thread(target=body, daemon=True)
    holder.thread.start()
    fed.clients[cid] = holder
    return holder


def test_every_institution_saves_the_final_model_and_its_checkpoints(tmp_path: Path) -> None:
    fed = start_federation(tmp_path, 3, rounds=3)
    holders = [_client(fed, f"inst{i:02d}", tmp_path / f"inst{i:02d}", checkpoint_every=2) for i in range(3)]
    assert fed.finish() == "completed 3 rounds"
    rounds = rounds_log(fed)
    final = np.asarray(rounds[-1]["model"], dtype=np.float32)
    after_round_1 = np.asarray(rounds[1]["model"], dtype=np.float32)
    for i, holder in enumerate(holders):
        mine = tmp_path / f"inst{i:02d}"
        assert holder.report is not None and holder.report.model_saved == mine / "final"
        np.testing.assert_array_equal(np.load(mine / "final" / "model.npy"), final)
        # checkpoint_every = 2: the model round 2 started from, i.e. after round 1
        np.testing.assert_array_equal(np.load(mine / "after-round-1" / "model.npy"), after_round_1)
        assert sorted(p.name for p in mine.iterdir()) == ["after-round-1", "final"]


def test_a_consortium_that_survives_no_dropout_is_told_so_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    roster = ("a", "b", "c")
    with caplog.at_level(logging.INFO, logger="secfed.server"):
        log_dropout_tolerance(server_config(tmp_path, tmp_path, roster))
        log_dropout_tolerance(server_config(tmp_path, tmp_path, (*roster, "d")))
    facts = [(r.levelno, r.fields) for r in caplog.records if r.getMessage() == "dropout-tolerance"]  # type: ignore[attr-defined]
    assert [level for level, _ in facts] == [logging.WARNING, logging.INFO]
    warned, fine = facts[0][1], facts[1][1]
    assert (warned["cohort"], warned["threshold"], warned["survives_dropouts"]) == (3, 3, 0)
    assert "colluding_fraction" in warned["advice"]
    assert (fine["cohort"], fine["survives_dropouts"]) == (4, 1)
