"""``secfed status``: an operator reads where a run stands from the state database, even while the
server writes to it, and the numbers match what the coordinator committed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfed import cli
from server.coordinator import Coordinator, RoundPlan
from server.runtime import StoreObserver
from server.state import StateStore
from server.status import RunStatus, format_remote_status, format_status, read_status
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


def test_a_corrupt_or_oddly_named_state_database_is_a_clear_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an attacker review: a tampered row made ``secfed status`` print a traceback; a state
    directory named ``run?1`` made SQLite open (and create) another file; a read-only open created
    -wal/-shm files owned by the reader's account."""
    odd = tmp_path / "run?1#x"
    odd.mkdir()
    path = odd / "state.sqlite"
    _run_so_far(path).close()
    assert not list(tmp_path.glob("run")) and not list(odd.glob("state.sqlite-*"))
    assert cli.main(["status", "--state", str(path)]) == 0
    assert "rounds completed: 2" in capsys.readouterr().out
    assert sorted(p.name for p in odd.iterdir()) == ["state.sqlite"]  # no -wal/-shm of the reader
    assert not (tmp_path / "run").exists()
    for table, column, value in (
        ("ledger", "payload", "[1, 2]"),
        ("rounds", "contributors", "5"),
        ("rounds", "model_hash", "x" * 32),  # text where a blob belongs
    ):
        broken = tmp_path / f"broken-{table}-{column}.sqlite"
        broken.write_bytes(path.read_bytes())
        with sqlite3.connect(broken) as db:
            db.execute(f"UPDATE {table} SET {column} = ?", (value,))
        assert cli.main(["status", "--state", str(broken)]) == 2
        assert "malformed" in capsys.readouterr().err


def test_refusal_text_from_a_member_never_reaches_the_status_and_repeats_count_once() -> None:
    """A member's refusal carries a category only; anything else it sends (newlines, escapes, a forged
    line) is recorded as "invalid", and a repeated refusal in one attempt changes nothing. Text that came
    from elsewhere is shown escaped (found by an attacker review: a forged reason drew fake lines)."""
    from tests.server.test_coordinator import Clock, MeanTask

    coord = Coordinator(
        roster=("inst00", "inst01", "inst02", "inst03"),
        plan=RoundPlan(rounds=1, phase_timeout_s=5),
        task=MeanTask(),
        initial_model=np.zeros(8),
        trust=None,
        clock=Clock(),
    )
    forged = "budget\n  round 0: inst-victim (excluded)\x1b[2K"
    coord.refuse("inst03", 0, forged)
    coord.refuse("inst03", 0, "policy")
    assert coord.refusals == [(0, "inst03", "invalid")]
    shown = RunStatus(
        state_db="s",
        run_id="r",
        rounds_planned=1,
        rounds_completed=0,
        open_attempt=None,
        finished=False,
        mean_round_s=None,
        eta_s=None,
        refusals=1,
        recent_refusals=[{"round": 0, "client": "inst03", "reason": forged}],
        excluded={"x\ny": "z"},
    )
    text = format_status(shown)
    assert "\x1b" not in text and "inst-victim (excluded)\n" not in text
    assert len(text.splitlines()) == 6


def _remote_document() -> dict[str, object]:
    """A well-formed status document as a coordinator sends it, with every field present."""
    return {
        "state_db": "/srv/run/state.sqlite",
        "run_id": "r1",
        "rounds_planned": 3,
        "rounds_completed": 1,
        "open_attempt": {"round": 1, "attempt": 1, "running_s": 4.0},
        "finished": False,
        "mean_round_s": 10.0,
        "eta_s": 16,
        "recent_rounds": [{"round": 0, "contributors": ["a", "b"], "dropped": ["c"], "seconds": 10.0}],
        "aborted_attempts": 1,
        "recent_aborts": [{"round": 0, "attempt": 1, "reason": "timeout"}],
        "refusals": 1,
        "recent_refusals": [{"round": 0, "client": "c", "reason": "budget"}],
        "excluded": {"d": "forged share"},
        "at": 1.0,
        "live": {
            "open": {
                "round": 1,
                "attempt": 1,
                "stage": "update",
                "phase": "advertise",
                "deadline_s": 12.0,
                "cohort": ["a", "b", "c"],
                "waiting_for": ["c"],
                "refused": [],
            },
            "finished": None,
            "joined": ["a", "b"],
            "last_seen_s_ago": {"a": 0.5},
            "excluded": {},
        },
    }


def test_a_remote_document_is_checked_field_by_field() -> None:
    from server.status import _KINDS

    assert set(_KINDS) == set(RunStatus.__dataclass_fields__)  # every field has its types
    text = format_remote_status(_remote_document())
    assert "cohort (3): a, b, c" in text and "waiting for: c" in text and "dropped c" in text


ESCAPE = "\x1b]0;PWNED\x07\x1b[2J"


@pytest.mark.parametrize(
    "path",
    [
        ("run_id",),
        ("state_db",),
        ("recent_rounds", 0, "dropped", 0),
        ("recent_rounds", 0, "round"),
        ("open_attempt", "round"),
        ("recent_aborts", 0, "reason"),
        ("recent_refusals", 0, "client"),
        ("live", "open", "round"),
        ("live", "open", "attempt"),
        ("live", "open", "stage"),
        ("live", "open", "cohort", 0),
        ("live", "open", "waiting_for", 0),
    ],
)
def test_a_hostile_coordinator_cannot_write_control_characters_to_the_terminal(
    path: tuple[object, ...],
) -> None:
    """Attack: a coordinator (untrusted) answers an operator's status call with escape sequences in any
    field, to retitle the terminal, clear it or forge lines. Every value is printed escaped."""
    doc: Any = _remote_document()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = ESCAPE
    try:
        text = format_remote_status(doc)
    except ValueError as exc:  # a field that must be a number: refused, and the message is escaped too
        text = str(exc)
    assert "\x1b" not in text and "\x07" not in text


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("live", [1]),
        ("excluded", [1]),
        ("open_attempt", {}),
        ("recent_rounds", [1]),
        ("rounds_completed", True),
        ("finished", "yes"),
        ("eta_s", 10**400),
        ("mean_round_s", "fast"),
    ],
)
def test_a_malformed_remote_document_is_a_clear_error_not_a_crash(change: str, value: object) -> None:
    doc = _remote_document()
    doc[change] = value
    with pytest.raises(ValueError, match="status document"):
        format_remote_status(doc)


@pytest.mark.parametrize(
    ("where", "value"),
    [(("live", "open", "cohort"), 5), (("live", "open", "deadline_s"), 10**400), (("live", "open"), [])],
)
def test_a_malformed_live_part_is_a_clear_error_or_shown_escaped(
    where: tuple[str, ...], value: object
) -> None:
    doc: Any = _remote_document()
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    try:
        text = format_remote_status(doc)
    except ValueError as exc:
        assert "status document is malformed" in str(exc)
    else:
        assert "\x1b" not in text
