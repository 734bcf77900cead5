"""``secfed status``: an operator reads where a run stands from the state database, even while the
server writes to it, and the numbers match what the coordinator committed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secfed import cli
from server.runtime import StoreObserver
from server.state import StateStore
from server.status import format_status, read_status
from tests.server.test_state import record, vector


def _run_so_far(path: Path) -> StateStore:
    """Two rounds completed, one aborted attempt, a refusal, an exclusion, and round 2 open now."""
    rng = np.random.default_rng(3)
    store = StateStore(path)
    store.save_initial_model(vector(rng))
    observer = StoreObserver(store, path.parent / "rounds.jsonl", None)  # type: ignore[arg-type]
    store.begin_attempt(0, [])
    model = vector(rng)
    store.complete_round(record(0, model, started_at=100.0, finished_at=130.0), model)
    store.begin_attempt(1, [])
    observer.client_refused(1, "inst-c", "budget")
    observer.member_excluded(1, "inst-d", "its own sharing is wrong")
    store.record_aborted_attempt(1, "only 2 masked inputs, need 3", [])
    store.begin_attempt(1, [])
    model = vector(rng)
    store.complete_round(record(1, model, started_at=140.0, finished_at=190.0), model)
    store.begin_attempt(2, [])
    return store


def test_the_status_reports_what_the_coordinator_committed_while_it_holds_the_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    writer = _run_so_far(path)  # still open: the server is running
    try:
        began = writer.attempts()[-1]["began_at"]
        status = read_status(path, rounds_planned=5, now=began + 12.0)
        assert status.rounds_completed == 2 and not status.finished
        assert status.open_attempt == {"round": 2, "attempt": 1, "running_s": 12.0}
        assert status.mean_round_s == 40.0 and status.eta_s == 3 * 40 - 12
        assert [r["seconds"] for r in status.recent_rounds] == [30.0, 50.0]
        assert status.aborted_attempts == 1 and "only 2 masked inputs" in status.recent_aborts[0]["reason"]
        assert status.refusals == 1 and status.recent_refusals[0]["client"] == "inst-c"
        assert status.excluded == {"inst-d": "its own sharing is wrong"}
        text = format_status(status)
        assert "rounds completed: 2 of 5" in text and "open now: round 2, attempt 1" in text
        model = vector(np.random.default_rng(9))
        writer.complete_round(record(2, model), model)
        assert read_status(path, rounds_planned=3).finished  # a later read sees the new commit
    finally:
        writer.close()


def test_status_json_from_the_cli_and_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.sqlite"
    _run_so_far(path).close()
    before = path.read_bytes()
    assert cli.main(["status", "--state", str(path), "--json"]) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["rounds_completed"] == 2 and snapshot["rounds_planned"] is None
    assert path.read_bytes() == before  # read-only: not a byte changed
    assert cli.main(["status", "--state", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "other.sqlite").write_bytes(b"")
    assert cli.main(["status", "--state", str(tmp_path / "other.sqlite")]) == 2
    assert "not a secfed state database" in capsys.readouterr().err


def test_status_of_a_live_federation_mid_round_and_after_a_restart(tmp_path: Path) -> None:
    """Against a real coordinator: while round 0 waits for a member that never comes, the status shows
    the open attempt; after the server restarts, the interrupted attempt is listed as aborted."""
    from server.runtime import FederationServer
    from tests.federation.support import start_federation

    fed = start_federation(tmp_path, 3, rounds=2, phase_timeout_s=60.0)
    try:
        fed.start_client("inst00")  # the others never come: round 0 stays open
        status = read_status(fed.server.config.state_db, rounds_planned=2)
        assert status.open_attempt is not None and status.open_attempt["round"] == 0
        assert status.rounds_completed == 0 and not status.finished
    finally:
        fed.server.stop()
    restarted = FederationServer.start(fed.server.config)
    try:
        after = read_status(fed.server.config.state_db, rounds_planned=2)
        assert after.aborted_attempts == 1
        assert after.recent_aborts[0]["reason"] == "server restarted mid-round"
        assert after.open_attempt is not None and after.open_attempt["attempt"] == 2
    finally:
        restarted.stop()
