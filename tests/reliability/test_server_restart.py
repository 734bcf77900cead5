"""What a killed coordinator leaves on disk, and what its restart makes of it.

The process-level trials (SIGKILL at random moments, many times) are ``secfed bench crash-resume``,
run small in test_benches.py, and tests/harness/test_simulate.py kills at chosen points. This file
covers one window those trials found: between committing a round to the state database and appending
its line to ``rounds.jsonl`` (now closed by writing the line ahead).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server.runtime import FederationServer, pending_line_path
from server.state import StateStore
from tests.federation.support import (
    Federation,
    check_plaintext_sums,
    provision_kits,
    rounds_log,
    server_config,
    with_plan,
)

pytestmark = pytest.mark.timeout(90)

ROSTER = ("inst00", "inst01", "inst02")


def run_all(fed: Federation) -> str:
    for cid in ROSTER:
        fed.start_client(cid)
    return fed.finish(timeout_s=30)


def test_a_round_committed_but_not_yet_logged_is_logged_after_the_restart(tmp_path: Path) -> None:
    """The window crash-resume found: the round is committed, its rounds.jsonl line not yet appended.
    The line is written ahead (``rounds.jsonl.pending``) and the restart finishes the append."""
    pki = provision_kits(tmp_path, 3)
    config = server_config(pki, tmp_path / "run", ROSTER, rounds=1, phase_timeout_s=3.0)
    assert run_all(Federation(pki, FederationServer.start(config))) == "completed 1 rounds"
    log = config.state_db.parent / "rounds.jsonl"
    # Exactly what a SIGKILL after the commit of round 0 and before its log line leaves on disk.
    pending_line_path(log).write_text(log.read_text().splitlines()[0])
    log.write_text("")
    with StateStore(config.state_db) as store:
        assert [r.round for r in store.rounds()] == [0] and store.integrity_check() == []

    fed = Federation(pki, FederationServer.start(with_plan(config, rounds=2)))
    assert run_all(fed) == "completed 2 rounds"
    rounds = rounds_log(fed)
    assert [r["round"] for r in rounds] == [0, 1]
    check_plaintext_sums(rounds)
    assert not pending_line_path(log).exists()


def test_a_pending_line_of_a_round_that_never_committed_is_dropped(tmp_path: Path) -> None:
    pki = provision_kits(tmp_path, 3)
    config = server_config(pki, tmp_path / "run", ROSTER, rounds=1, phase_timeout_s=3.0)
    assert run_all(Federation(pki, FederationServer.start(config))) == "completed 1 rounds"
    log = config.state_db.parent / "rounds.jsonl"
    line = json.loads(log.read_text().splitlines()[0])
    pending_line_path(log).write_text(json.dumps({**line, "round": 1}))  # round 1 never committed
    fed = Federation(pki, FederationServer.start(with_plan(config, rounds=2)))
    assert run_all(fed) == "completed 2 rounds"
    rounds = rounds_log(fed)
    assert [r["round"] for r in rounds] == [0, 1]  # round 1 once, from its real run
    check_plaintext_sums(rounds)


def test_clients_that_start_late_still_get_their_round(tmp_path: Path) -> None:
    pki = provision_kits(tmp_path, 3)
    config = server_config(pki, tmp_path / "run", ROSTER, rounds=1, phase_timeout_s=0.5, max_attempts=2)
    fed = Federation(pki, FederationServer.start(config))
    try:
        # The clients take longer to start than max_attempts phase timeouts (on a loaded machine a
        # client process can spend seconds importing its libraries): nothing has been sent to anyone.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and fed.server.coordinator.finished_reason is None:
            time.sleep(0.05)
        assert fed.server.coordinator.finished_reason is None, fed.server.coordinator.finished_reason
        assert run_all(fed) == "completed 1 rounds"
    finally:
        fed.server.stop()
