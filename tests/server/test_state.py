"""The coordinator's SQLite state: resuming after a crash, refusals that write nothing, tamper evidence."""

from __future__ import annotations

import itertools
import os
import random
import re
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.state import RoundRecord, StateError, StateStore, model_hash

DIM = 64
REPO = Path(__file__).resolve().parents[2]


def vector(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    return rng.standard_normal(dim).astype(np.float32)


def record(round_: int, model: np.ndarray, **changes: Any) -> RoundRecord:
    fields: dict[str, Any] = {
        "round": round_,
        "status": "completed",
        "contributors": ("inst-a", "inst-b"),
        "dropped": ("inst-c",),
        "model_hash": model_hash(model),
        "started_at": 1000.0 + round_,
        "finished_at": 1000.5 + round_,
        "summary": {"threshold": 2, "clipped_fraction": 0.25, "sessions": [f"{round_:02x}"]},
    }
    fields.update(changes)
    return RoundRecord(**fields)


def run_round(store: StateStore, round_: int, model: np.ndarray) -> None:
    store.begin_attempt(round_, [os.urandom(16)])
    store.complete_round(record(round_, model), model)


def snapshot(store: StateStore) -> tuple[Any, ...]:
    """Everything a refused call must leave untouched."""
    r, h, v = store.global_model()
    return (
        store.ledger(),
        store.rounds(),
        store.used_session_ids(),
        store.interrupted_attempt(),
        store.last_completed_round(),
        (r, h, v.tobytes()),
    )


def names_seq(problems: list[str], seq: int) -> bool:
    return any(re.search(rf"\bseq {seq}\b", p) for p in problems)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def store(tmp_path: Path, rng: np.random.Generator):
    with StateStore(tmp_path / "state.db") as s:
        s.save_initial_model(vector(rng))
        yield s


# ------------------------------------------------------------------------------------- fresh store


def test_fresh_store_and_initial_model(tmp_path: Path, rng: np.random.Generator) -> None:
    with StateStore(tmp_path / "state.db") as s:
        assert s.last_completed_round() == -1
        assert s.interrupted_attempt() is None
        assert s.rounds() == []
        assert [e["kind"] for e in s.ledger()] == ["created"]
        with pytest.raises(StateError, match="save_initial_model"):
            s.global_model()
        initial = vector(rng)
        digest = s.save_initial_model(initial)
        assert digest == model_hash(initial)
        assert s.save_initial_model(initial.copy()) == digest  # idempotent on restart
        with pytest.raises(StateError, match="already stored"):
            s.save_initial_model(vector(rng))
        round_, stored_hash, stored = s.global_model()
        assert (round_, stored_hash) == (-1, digest)
        assert stored.dtype == np.float32 and stored.flags.writeable
        np.testing.assert_array_equal(stored, initial)
        assert s.integrity_check() == []


def test_non_float32_model_is_refused_not_cast(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as s, pytest.raises(ValueError, match="float32"):
        s.save_initial_model(np.zeros(4, dtype=np.float64))


def test_run_id_persists_and_another_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        run_id = s.run_id
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    with StateStore(path) as s:
        assert s.run_id == run_id
    with StateStore(path, run_id=run_id) as s:
        assert s.run_id == run_id
    with pytest.raises(StateError) as info:
        StateStore(path, run_id="someone-else")
    assert str(path) in str(info.value) and run_id in str(info.value)
    with StateStore(tmp_path / "named.db", run_id="fed-2024") as s:
        assert s.run_id == "fed-2024"


def test_foreign_or_newer_files_are_refused_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match=re.escape(str(garbage))):
        StateStore(garbage)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StateError, match="not a secfed state database"):
        StateStore(foreign)
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()

    newer = tmp_path / "newer.db"
    StateStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="newer"):
        StateStore(newer)


def test_pragmas(store: StateStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ rounds


def test_completed_rounds_survive_reopen(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "state.db"
    models = [vector(rng) for _ in range(5)]
    with StateStore(path) as s:
        s.save_initial_model(vector(rng))
        for r, m in enumerate(models):
            run_round(s, r, m)
    with StateStore(path) as s:
        assert s.last_completed_round() == 4
        round_, digest, latest = s.global_model()
        assert (round_, digest) == (4, model_hash(models[4]))
        np.testing.assert_array_equal(latest, models[4])
        assert s.rounds() == [record(r, m) for r, m in enumerate(models)]
        kinds = [e["kind"] for e in s.ledger()]
        assert kinds == ["created", "initial_model"] + ["attempt_begun", "round_completed"] * 5
        assert s.integrity_check() == []


def test_out_of_order_or_mismatched_completion_writes_nothing(
    store: StateStore, rng: np.random.Generator
) -> None:
    run_round(store, 0, vector(rng))
    run_round(store, 1, vector(rng))
    store.begin_attempt(2, [b"sid-2"])
    before = snapshot(store)
    model = vector(rng)
    with pytest.raises(StateError, match="skip"):
        store.complete_round(record(3, model), model)
    with pytest.raises(StateError, match="repeat"):
        store.complete_round(record(1, model), model)
    with pytest.raises(StateError, match="not the hash"):
        store.complete_round(record(2, model), vector(rng))
    wide = vector(rng, DIM + 1)
    with pytest.raises(StateError, match="parameters"):
        store.complete_round(record(2, wide), wide)
    with pytest.raises(ValueError, match="record_aborted_attempt"):
        store.complete_round(record(2, model, status="aborted"), model)
    with pytest.raises(StateError, match="still open"):
        store.begin_attempt(2, [b"sid-other"])
    with pytest.raises(StateError, match="skip"):
        store.begin_attempt(3, [b"sid-other"])
    assert snapshot(store) == before
    store.complete_round(record(2, model), model)
    assert store.last_completed_round() == 2
    assert store.integrity_check() == []


def test_completion_needs_an_open_attempt(store: StateStore, rng: np.random.Generator) -> None:
    model = vector(rng)
    with pytest.raises(StateError, match="begin_attempt"):
        store.complete_round(record(0, model), model)
    assert store.rounds() == []


def test_failure_inside_the_transaction_rolls_everything_back(
    store: StateStore, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_round(store, 0, vector(rng))
    store.begin_attempt(1, [b"sid-1"])
    before = snapshot(store)
    original = StateStore._append

    def failing_append(self: StateStore, conn: sqlite3.Connection, kind: str, *args: Any) -> None:
        if kind == "round_completed":  # the round and model rows are already written by now
            raise RuntimeError("disk on fire")
        original(self, conn, kind, *args)

    monkeypatch.setattr(StateStore, "_append", failing_append)
    model = vector(rng)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.complete_round(record(1, model), model)
    assert snapshot(store) == before
    monkeypatch.undo()
    store.complete_round(record(1, model), model)
    assert store.global_model()[1] == model_hash(model)
    assert store.integrity_check() == []


# ---------------------------------------------------------------------------------------- attempts


def test_interrupted_attempt_is_reported_after_restart(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        s.save_initial_model(vector(rng))
        run_round(s, 0, vector(rng))
        assert s.begin_attempt(1, [b"sid-a", b"sid-b"]) == 1
    # "crash": the store is closed without completing round 1.
    with StateStore(path) as s:
        assert s.interrupted_attempt() == (1, 1)
        assert {b"sid-a", b"sid-b"} <= s.used_session_ids()
        with pytest.raises(StateError, match="still open"):
            s.begin_attempt(1, [b"sid-c"])
        assert s.next_attempt(1) == 2  # the open attempt counts: a restart never reuses its number
        s.record_aborted_attempt(1, "server restarted", [])
        assert s.interrupted_attempt() is None
        assert (s.next_attempt(1), s.next_attempt(2)) == (2, 1)
        with pytest.raises(StateError, match="already used"):
            s.begin_attempt(1, [b"sid-a"])
        assert s.begin_attempt(1, [b"sid-c"]) == 2
        assert s.next_attempt(1) == 3
        model = vector(rng)
        s.complete_round(record(1, model), model)
        assert s.used_session_ids() >= {b"sid-a", b"sid-b", b"sid-c"}
        aborted = [e for e in s.ledger() if e["kind"] == "attempt_aborted"]
        assert [e["payload"] for e in aborted] == [
            {
                "round": 1,
                "attempt": 1,
                "reason": "server restarted",
                "session_ids": [b"sid-a".hex(), b"sid-b".hex()],
            }
        ]
        assert s.integrity_check() == []


def test_abort_before_any_key_was_sent(store: StateStore) -> None:
    store.record_aborted_attempt(0, "too few clients checked in", [b"sid-x"])
    assert store.interrupted_attempt() is None
    assert b"sid-x" in store.used_session_ids()
    assert store.begin_attempt(0, [b"sid-y"]) == 2
    with pytest.raises(StateError, match="belongs to attempt 1"):
        store.record_aborted_attempt(0, "cohort below threshold", [b"sid-x"])
    store.record_aborted_attempt(0, "cohort below threshold", [b"sid-y", b"sid-z"])
    assert store.used_session_ids() == {b"sid-x", b"sid-y", b"sid-z"}
    with pytest.raises(StateError, match="skip"):
        store.record_aborted_attempt(5, "nonsense", [])
    assert store.integrity_check() == []


# ------------------------------------------------------------------------------- pruning and events


def test_keep_models_prunes_old_vectors_but_keeps_hashes(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "state.db"
    models = [vector(rng) for _ in range(5)]
    with StateStore(path, keep_models=2) as s:
        s.save_initial_model(vector(rng))
        for r, m in enumerate(models):
            run_round(s, r, m)
        np.testing.assert_array_equal(s.global_model()[2], models[4])
        assert s.integrity_check() == []
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT round, vector IS NOT NULL FROM models ORDER BY round").fetchall()
    finally:
        conn.close()
    assert rows == [(-1, 0), (0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]
    with pytest.raises(ValueError, match="keep_models"):
        StateStore(path, keep_models=0)


def test_append_event(store: StateStore) -> None:
    store.append_event("dp_budget", 0, {"client": "inst-a", "epsilon": 1.5})
    assert store.ledger()[-1]["payload"] == {"client": "inst-a", "epsilon": 1.5}
    with pytest.raises(ValueError, match="written by the store"):
        store.append_event("round_completed", 0, {})
    with pytest.raises(ValueError, match="JSON"):
        store.append_event("bad", None, {"x": float("nan")})
    assert store.integrity_check() == []


# ----------------------------------------------------------------------------------- crash safety

_CHILD = r"""
import os, sys, time
from pathlib import Path
import numpy as np
from server.state import RoundRecord, StateStore, model_hash

rng = np.random.default_rng(int(sys.argv[2]))
with StateStore(Path(sys.argv[1]), run_id="crash-test", keep_models=3) as store:
    store.save_initial_model(np.zeros(65536, dtype=np.float32))
    pending = store.interrupted_attempt()
    if pending is not None:
        store.record_aborted_attempt(pending[0], "server restarted", [])
    print("ready", flush=True)
    while True:
        r = store.last_completed_round() + 1
        store.begin_attempt(r, [os.urandom(16)])
        _, _, model = store.global_model()
        new = model + rng.standard_normal(model.size).astype(np.float32)
        t = time.time()
        store.complete_round(RoundRecord(r, "completed", ("a",), (), model_hash(new), t, t, {"r": r}), new)
"""


@pytest.mark.timeout(60)
def test_sigkill_at_a_random_moment_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    chooser = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    last = -1
    for trial in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(trial)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 30)
            assert ready and child.stdout.readline().strip() == "ready", (
                child.stderr.read() if child.stderr else ""
            )
            time.sleep(chooser.uniform(0.05, 0.6))
            assert child.poll() is None, f"child died on its own: {child.communicate()[1]}"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.communicate()
        assert child.returncode == -signal.SIGKILL

        with StateStore(path, run_id="crash-test") as s:
            assert s.integrity_check() == []
            rounds = s.rounds()
            assert [r.round for r in rounds] == list(range(len(rounds)))
            now = s.last_completed_round()
            assert now == len(rounds) - 1 and now >= last
            round_, digest, model = s.global_model()
            assert round_ == now and digest == model_hash(model)
            if rounds:
                assert digest == rounds[-1].model_hash
            pending = s.interrupted_attempt()
            assert pending is None or pending[0] == now + 1
        last = now
    assert last >= 0, "the child never completed a round"


# -------------------------------------------------------------------------------------- tampering


@pytest.fixture
def filled(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        s.save_initial_model(vector(rng))
        for r in range(4):
            run_round(s, r, vector(rng))
        assert s.integrity_check() == []
    return path


def tamper(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()
    with StateStore(path) as s:
        return s.integrity_check()


def test_edited_ledger_payload_is_named(filled: Path) -> None:
    problems = tamper(filled, "UPDATE ledger SET payload = ? WHERE seq = 5", ('{"round":1,"attempt":7}',))
    assert names_seq(problems, 5), problems


def test_edited_ledger_time_is_named(filled: Path) -> None:
    problems = tamper(filled, "UPDATE ledger SET time = time + 1 WHERE seq = 3")
    assert names_seq(problems, 3), problems


def test_deleted_middle_ledger_row_is_reported(filled: Path) -> None:
    problems = tamper(filled, "DELETE FROM ledger WHERE seq = 6")
    assert names_seq(problems, 6), problems
    assert any("missing" in p for p in problems)


def test_deleted_last_ledger_row_is_reported(filled: Path) -> None:
    problems = tamper(filled, "DELETE FROM ledger WHERE seq = (SELECT max(seq) FROM ledger)")
    assert any("head" in p for p in problems), problems


def test_edited_round_row_is_reported(filled: Path) -> None:
    problems = tamper(filled, "UPDATE rounds SET contributors = '[\"mallory\"]' WHERE round = 1")
    assert any("round 1" in p and "ledger" in p for p in problems), problems


def test_corrupt_model_blob_is_reported(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    try:
        blob = bytearray(conn.execute("SELECT vector FROM models WHERE round = 3").fetchone()[0])
    finally:
        conn.close()
    blob[10] ^= 0x01
    problems = tamper(filled, "UPDATE models SET vector = ? WHERE round = 3", (bytes(blob),))
    assert any("model of round 3" in p and "sha256" in p for p in problems), problems
    with StateStore(filled) as s, pytest.raises(StateError, match="corrupt"):
        s.global_model()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
events = st.lists(
    st.tuples(
        st.text(max_size=8).map(lambda k: "x" + k),  # never one of the store's own kinds
        st.none() | st.integers(0, 100),
        st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    ),
    min_size=1,
    max_size=6,
)


@given(events, st.data())
@settings(max_examples=20, deadline=None)
def test_hash_chain_verifies_and_names_any_edited_entry(
    evs: list[tuple[str, int | None, dict[str, Any]]], data
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        with StateStore(path) as s:
            for kind, round_, payload in evs:
                s.append_event(kind, round_, payload)
            ledger = s.ledger()
            assert s.integrity_check() == []
        assert [(e["kind"], e["round"], e["payload"]) for e in ledger[1:]] == evs
        for before, after in itertools.pairwise(ledger):
            assert after["prev_hash"] == before["hash"]
        victim = data.draw(st.integers(1, len(ledger)))
        problems = tamper(path, "UPDATE ledger SET kind = kind || '!' WHERE seq = ?", (victim,))
        assert names_seq(problems, victim), problems


def test_session_ids_added_to_open_attempt_and_reuse_refused(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite") as store:
        store.save_initial_model(np.zeros(4, dtype=np.float32))
        store.begin_attempt(0, [])
        store.add_session_id(0, b"\x01" * 32)
        assert b"\x01" * 32 in store.used_session_ids()
        with pytest.raises(StateError, match="already used"):
            store.add_session_id(0, b"\x01" * 32)
        with pytest.raises(StateError, match="no open attempt"):
            store.add_session_id(1, b"\x02" * 32)
        assert store.integrity_check() == []
