"""The coordinator's persistent state, in one SQLite file, so a killed server resumes where it stopped.

What must survive a crash, and why:

* **Completed rounds and the global model after each.** A round is completed by *one* transaction
  that writes the round row, the new model blob and a ledger entry together, so after a SIGKILL or a
  power cut the file holds either all of round ``r`` or none of it. The store refuses to complete any
  round but ``last_completed_round() + 1``: a round is never skipped and never applied twice (which
  would add one cohort's update to the model twice).
* **Attempts and their session ids.** Each try at a round is an *attempt*; it is persisted by
  :meth:`StateStore.begin_attempt` *before* any key is sent, with the secure-aggregation session ids it
  will use. A restarted server therefore knows an attempt was interrupted (and must be retried with
  fresh keys, not resumed: its masks and shares may already be partly revealed), and it can check
  that it never reuses a session id, which would let clients' masks from two sessions cancel.
* **An append-only, hash-chained ledger** of everything that happened: each entry's hash covers the
  previous entry's hash and the canonical JSON of the entry, and the chain starts from a hash of the
  run id. :meth:`StateStore.integrity_check` recomputes it, so an edited, inserted or deleted row is
  named by its sequence number. The chain's head is also kept in the ``meta`` table, which catches
  entries removed from the end. This is tamper *evidence* against accidental or casual edits, not
  a defence against someone who can rewrite the whole file: anchor the head hash elsewhere (logs, a
  transparency service) for that.

Durability: WAL journal with ``synchronous=FULL``, so a commit is on disk when ``complete_round``
returns (``NORMAL`` would make a completed round survive a process crash but possibly not a power
loss). The file is stamped with an ``application_id`` and a schema version (``PRAGMA user_version``);
a file of another application, of a newer schema or of another run is refused rather than modified.

Schema (version 1)::

    meta(key TEXT PK, value TEXT)              run_id, created_at, ledger_head_seq, ledger_head_hash
    models(round INT PK, sha256 BLOB, dim INT, vector BLOB NULL)
                                               round -1 is the initial model; vector NULL once pruned
    rounds(round INT PK, attempt, status, contributors JSON, dropped JSON, model_hash,
           started_at, finished_at, summary JSON)
    attempts(round, attempt, state 'begun'|'completed'|'aborted', began_at, ended_at, reason)
                                               PK (round, attempt); at most one 'begun' (partial index)
    session_ids(session_id BLOB PK, round, attempt)   FK to attempts
    ledger(seq INT PK, time REAL, kind, round NULL, payload JSON, prev_hash BLOB, hash BLOB)

Model vectors are stored as raw little-endian float32 BLOBs with their SHA-256 (see
:func:`model_hash`), verified whenever one is read. By default every round's model is kept (the
history lets a run be audited or rolled back); ``keep_models=k`` keeps the vectors of only the ``k``
most recent models (the initial model counts as the oldest) and sets older vectors to NULL, keeping
their hashes so the history stays checkable. The latest model is never pruned. Freed pages are reused
by later blobs of the same size rather than returned to the file system (no VACUUM), so the file
stops growing instead of shrinking. SQLite limits one BLOB to about 1 GB, i.e. ~250 M parameters.

The store may be used from several threads (the gRPC servicer's workers): one connection, guarded by
a lock. It expects a single coordinator process per file; the round-number check inside an
``IMMEDIATE`` transaction still keeps a second writer from repeating or skipping a round.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from secfed.fl.vectors import model_bytes, model_hash

__all__ = [
    "APPLICATION_ID",
    "INITIAL_ROUND",
    "SCHEMA_VERSION",
    "RoundRecord",
    "StateError",
    "StateStore",
    "model_bytes",
    "model_hash",
]

SCHEMA_VERSION = 1
APPLICATION_ID = 0x53464544  # "SFED": marks the file as a secfed state store (PRAGMA application_id)
INITIAL_ROUND = -1  # the round number the initial model "comes from"

_HASH_LEN = 32
_GENESIS_CONTEXT = b"secfed/state/ledger/v1\x00"
# Ledger kinds the store writes itself: integrity_check cross-checks them against the tables, so
# append_event must not be able to forge them.
_RESERVED_KINDS = frozenset(
    {"created", "initial_model", "attempt_begun", "attempt_aborted", "round_completed", "session_opened"}
)

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE models (
    round  INTEGER PRIMARY KEY CHECK (round >= -1),
    sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
    dim    INTEGER NOT NULL CHECK (dim > 0),
    vector BLOB
);
CREATE TABLE rounds (
    round        INTEGER PRIMARY KEY CHECK (round >= 0),
    attempt      INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('completed', 'aborted')),
    contributors TEXT NOT NULL,
    dropped      TEXT NOT NULL,
    model_hash   BLOB NOT NULL CHECK (length(model_hash) = 32),
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    summary      TEXT NOT NULL
);
CREATE TABLE attempts (
    round    INTEGER NOT NULL CHECK (round >= 0),
    attempt  INTEGER NOT NULL CHECK (attempt >= 1),
    state    TEXT NOT NULL CHECK (state IN ('begun', 'completed', 'aborted')),
    began_at REAL NOT NULL,
    ended_at REAL,
    reason   TEXT,
    PRIMARY KEY (round, attempt)
);
CREATE UNIQUE INDEX attempts_one_open ON attempts (state) WHERE state = 'begun';
CREATE TABLE session_ids (
    session_id BLOB PRIMARY KEY CHECK (length(session_id) > 0),
    round      INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    FOREIGN KEY (round, attempt) REFERENCES attempts (round, attempt)
);
CREATE TABLE ledger (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 1),
    time      REAL NOT NULL,
    kind      TEXT NOT NULL,
    round     INTEGER,
    payload   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
"""


class StateError(Exception):
    """The state store refused an operation or found the file unusable; the message names the file."""


@dataclass(frozen=True)
class RoundRecord:
    """One completed round, as the coordinator reports it and :meth:`StateStore.rounds` returns it.

    ``model_hash`` is :func:`model_hash` of the global model *after* this round; ``summary`` holds
    JSON-able facts (session ids as hex, thresholds, clipped fraction, timings). Only ``"completed"``
    records are stored: an aborted attempt is not a round (the round is retried) and goes through
    :meth:`StateStore.record_aborted_attempt`; ``"aborted"`` is reserved in the schema.
    """

    round: int
    status: Literal["completed", "aborted"]
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    model_hash: bytes
    started_at: float
    finished_at: float
    summary: dict[str, Any]


def _ids(value: Any) -> tuple[str, ...]:
    """A JSON list of client ids, checked (a rounds row another program edited may hold anything)."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError("expected a list of client ids")
    return tuple(value)


def _canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII, no NaN): one text per value, so hashes are stable."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-able: {exc}") from exc


def _genesis(run_id: str) -> bytes:
    """The ``prev_hash`` of ledger entry 1: binds the chain to this run, so ledgers cannot be spliced."""
    return hashlib.sha256(_GENESIS_CONTEXT + run_id.encode()).digest()


def _entry_hash(prev_hash: bytes, seq: int, at: float, kind: str, round_: int | None, payload: Any) -> bytes:
    entry = {"seq": seq, "time": at, "kind": kind, "round": round_, "payload": payload}
    return hashlib.sha256(prev_hash + _canonical(entry).encode()).digest()


def _round_payload(
    round_: int,
    attempt: int,
    status: str,
    contributors: Sequence[str],
    dropped: Sequence[str],
    digest: bytes,
    started_at: float,
    finished_at: float,
    summary: Any,
) -> dict[str, Any]:
    """The ``round_completed`` ledger payload; rebuilt from the ``rounds`` row to cross-check it."""
    return {
        "round": round_,
        "attempt": attempt,
        "status": status,
        "contributors": list(contributors),
        "dropped": list(dropped),
        "model_hash": digest.hex(),
        "started_at": started_at,
        "finished_at": finished_at,
        "summary": summary,
    }


def _check_round_number(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _session_ids(session_ids: Sequence[bytes]) -> list[bytes]:
    ids = [bytes(s) for s in session_ids]
    if any(len(s) == 0 for s in ids):
        raise ValueError("session ids must be non-empty")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate session id in one call")
    return ids


class StateStore:
    """The coordinator's SQLite state: rounds, models, attempts, session ids and the ledger.

    ``run_id`` names the federation run: a new file stores the given one (or a fresh uuid4 hex); an
    existing file must hold the same one, so a server pointed at another run's state refuses to start
    instead of continuing someone else's model. ``keep_models`` (>= 1, or None for all) bounds how many
    model vectors are kept; see the module docstring.
    """

    def __init__(self, path: Path, *, run_id: str | None = None, keep_models: int | None = None) -> None:
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ValueError("run_id must be a non-empty string")
        if keep_models is not None and (
            not isinstance(keep_models, int) or isinstance(keep_models, bool) or keep_models < 1
        ):
            raise ValueError(
                f"keep_models must be None or >= 1 (the latest model is always kept), got {keep_models!r}"
            )
        self._path = Path(path)
        self._keep_models = keep_models
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as exc:
            raise self._error(f"cannot open: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._run_id = self._open(conn, run_id)
        except BaseException:
            conn.close()
            self._conn = None
            raise

    @classmethod
    def open_read_only(cls, path: Path) -> StateStore:
        """Open an existing store to read it while its server may be running (``secfed status``).

        Nothing is written by this connection: no pragma, no creation, no lock held between reads
        (SQLite's WAL lets a reader see the last committed state while the server writes; a live
        database's -wal/-shm files exist already). The writing methods fail."""
        self = cls.__new__(cls)
        self._path = Path(path)
        self._keep_models = None
        self._lock = threading.RLock()
        if not self._path.is_file():
            raise self._error("no such file (has the server started yet?)")
        # A URI built by pathlib (special characters in the path quoted). With no write-ahead log the
        # server is not running: immutable=1 then reads without creating -wal/-shm files (which would
        # belong to the reader's account and could lock the server's account out at its next start).
        live = Path(f"{self._path}-wal").exists()
        uri = f"{self._path.resolve().as_uri()}?{'mode=ro' if live else 'immutable=1'}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(f"cannot open: {exc}") from exc
        self._conn = conn
        try:
            if self._check_identity(conn):
                raise self._error("is empty: not a secfed state database")
            self._run_id = self._meta(conn, "run_id")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(f"not usable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return self

    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt, in order: ``round, attempt, state ('begun', 'completed', 'aborted'), began_at,
        ended_at, reason``."""
        with self._read() as conn:
            return self._attempts(conn)

    def snapshot(self) -> tuple[list[RoundRecord], list[dict[str, Any]], list[dict[str, Any]]]:
        """Rounds, attempts and ledger read in one transaction: one consistent state (``secfed status``)."""
        with self._read() as conn:
            return self._rounds(conn), self._attempts(conn), self._ledger(conn)

    def _attempts(self, conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT round, attempt, state, began_at, ended_at, reason FROM attempts ORDER BY round, attempt"
        ).fetchall()
        try:
            return [
                {
                    "round": int(r[0]),
                    "attempt": int(r[1]),
                    "state": str(r[2]),
                    "began_at": float(r[3]),
                    "ended_at": None if r[4] is None else float(r[4]),
                    "reason": None if r[5] is None else str(r[5]),
                }
                for r in rows
            ]
        except (TypeError, ValueError) as exc:
            raise self._error(f"an attempts row is malformed: {exc}") from exc

    # ----------------------------------------------------------------------------------------- setup

    def _error(self, message: str) -> StateError:
        return StateError(f"state store {self._path}: {message}")

    def _open(self, conn: sqlite3.Connection, run_id: str | None) -> str:
        """Check the file is ours (before changing anything in it), then set pragmas and create or verify."""
        try:
            self._check_identity(conn)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._error(f"cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-check under the write lock: another process may have created it meanwhile.
                if self._check_identity(conn):
                    stored = self._create(conn, run_id or uuid.uuid4().hex)
                else:
                    stored = self._meta(conn, "run_id")
                    if run_id is not None and run_id != stored:
                        raise self._error(f"belongs to run {stored!r}, not {run_id!r}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(f"not usable: {exc}") from exc
        return stored

    def _check_identity(self, conn: sqlite3.Connection) -> bool:
        """True for an empty database (to be created); raise if the file is not a store we can use."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            return True
        if app_id != APPLICATION_ID:
            raise self._error(f"not a secfed state database (application_id {app_id:#x})")
        if version > SCHEMA_VERSION:
            raise self._error(
                f"schema version {version} is newer than this secfed supports ({SCHEMA_VERSION}); upgrade secfed"
            )
        if version != SCHEMA_VERSION:
            raise self._error(f"unknown schema version {version}")
        return False

    def _create(self, conn: sqlite3.Connection, run_id: str) -> str:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        genesis = _genesis(run_id)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("run_id", run_id),
                ("created_at", repr(time.time())),
                ("ledger_head_seq", "0"),
                ("ledger_head_hash", genesis.hex()),
            ],
        )
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._append(conn, "created", None, {"run_id": run_id, "schema_version": SCHEMA_VERSION})
        return run_id

    # --------------------------------------------------------------------------------------- helpers

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._error("store is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: everything in the block is committed together or not at all."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(f"write failed: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so multi-statement reads see one snapshot."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(f"read failed: {exc}") from exc

    def _meta(self, conn: sqlite3.Connection, key: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise self._error(f"meta key {key!r} is missing")
        return str(row[0])

    def _append(
        self, conn: sqlite3.Connection, kind: str, round_: int | None, payload: dict[str, Any]
    ) -> None:
        """Append one chained entry and move the head; must run inside a write transaction."""
        text = _canonical(payload)
        seq = int(self._meta(conn, "ledger_head_seq")) + 1
        prev = bytes.fromhex(self._meta(conn, "ledger_head_hash"))
        at = time.time()
        digest = _entry_hash(prev, seq, at, kind, round_, json.loads(text))
        conn.execute(
            "INSERT INTO ledger (seq, time, kind, round, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, at, kind, round_, text, prev, digest),
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'ledger_head_seq'", (str(seq),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'ledger_head_hash'", (digest.hex(),))

    @staticmethod
    def _last(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT max(round) FROM rounds").fetchone()
        return -1 if row[0] is None else int(row[0])

    @staticmethod
    def _open_attempt(conn: sqlite3.Connection) -> tuple[int, int] | None:
        row = conn.execute("SELECT round, attempt FROM attempts WHERE state = 'begun'").fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _expect_next_round(self, conn: sqlite3.Connection, round_: int, action: str) -> None:
        last = self._last(conn)
        if round_ != last + 1:
            problem = "would repeat a completed round" if round_ <= last else "would skip a round"
            raise self._error(f"cannot {action} round {round_}: last completed round is {last}, {problem}")

    def _attempt_ids(self, conn: sqlite3.Connection, round_: int, attempt: int) -> list[bytes]:
        rows = conn.execute(
            "SELECT session_id FROM session_ids WHERE round = ? AND attempt = ? ORDER BY rowid",
            (round_, attempt),
        )
        return [bytes(r[0]) for r in rows]

    # ------------------------------------------------------------------------------------ public API

    @property
    def path(self) -> Path:
        return self._path

    @property
    def run_id(self) -> str:
        return self._run_id

    def last_completed_round(self) -> int:
        """The highest completed round, -1 if none: the coordinator's next round is this plus one."""
        with self._read() as conn:
            return self._last(conn)

    def save_initial_model(self, vector: npt.ArrayLike) -> bytes:
        """Store the initial model (round -1) once and return its hash.

        Calling it again with the same model is a no-op (a restarted coordinator may simply repeat its
        start-up); a different one is refused, since rounds already applied were computed from the
        first.
        """
        data = model_bytes(vector)
        digest = hashlib.sha256(data).digest()
        with self._write() as conn:
            row = conn.execute("SELECT sha256 FROM models WHERE round = ?", (INITIAL_ROUND,)).fetchone()
            if row is not None:
                if bytes(row[0]) != digest:
                    raise self._error(
                        f"an initial model with hash {bytes(row[0]).hex()} is already stored; refusing a different one "
                        f"({digest.hex()})"
                    )
                return digest
            conn.execute(
                "INSERT INTO models (round, sha256, dim, vector) VALUES (?, ?, ?, ?)",
                (INITIAL_ROUND, digest, len(data) // 4, data),
            )
            self._append(conn, "initial_model", None, {"model_hash": digest.hex(), "dim": len(data) // 4})
        return digest

    def has_initial_model(self) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM models WHERE round = -1").fetchone() is not None

    def global_model(self) -> tuple[int, bytes, npt.NDArray[np.float32]]:
        """``(round, hash, vector)`` of the latest model: the last completed round's, else the initial one.

        The blob is checked against its hash on every read: a corrupted model would otherwise be sent
        to every client and silently poison the federation.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT round, sha256, dim, vector FROM models ORDER BY round DESC LIMIT 1"
            ).fetchone()
        if row is None:
            raise self._error("no model stored: call save_initial_model first")
        round_, digest, dim, blob = int(row[0]), bytes(row[1]), int(row[2]), row[3]
        if blob is None:
            raise self._error(f"the model of round {round_} (the latest) has been pruned")
        blob = bytes(blob)
        if len(blob) != 4 * dim or hashlib.sha256(blob).digest() != digest:
            raise self._error(f"the model blob of round {round_} does not match its hash (corrupt)")
        return round_, digest, np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def begin_attempt(self, round: int, session_ids: Sequence[bytes]) -> int:
        """Record a new attempt at ``round`` with its session ids and return its number (1, 2, ...).

        Call it before sending any key: if the server dies afterwards, :meth:`interrupted_attempt`
        reports the attempt. Refused while another attempt is open, for any round but the next one,
        and for a session id used before (reusing one would let masks of two sessions cancel).
        """
        round_ = _check_round_number(round, "round")
        ids = _session_ids(session_ids)
        with self._write() as conn:
            self._expect_next_round(conn, round_, "begin an attempt at")
            open_ = self._open_attempt(conn)
            if open_ is not None:
                raise self._error(
                    f"attempt {open_[1]} of round {open_[0]} is still open; complete the round or record the "
                    "attempt as aborted first"
                )
            reused = [
                s.hex()
                for s in ids
                if conn.execute("SELECT 1 FROM session_ids WHERE session_id = ?", (s,)).fetchone()
            ]
            if reused:
                raise self._error(f"session id(s) already used: {', '.join(reused)}")
            attempt = self._next_attempt(conn, round_)
            conn.execute(
                "INSERT INTO attempts (round, attempt, state, began_at) VALUES (?, ?, 'begun', ?)",
                (round_, attempt, time.time()),
            )
            conn.executemany(
                "INSERT INTO session_ids (session_id, round, attempt) VALUES (?, ?, ?)",
                [(s, round_, attempt) for s in ids],
            )
            self._append(
                conn,
                "attempt_begun",
                round_,
                {"round": round_, "attempt": attempt, "session_ids": [s.hex() for s in ids]},
            )
        return attempt

    def add_session_id(self, round: int, session_id: bytes) -> None:
        """Register a session id of the open attempt once it is fixed (after Advertise); refuses reuse."""
        round_ = _check_round_number(round, "round")
        (sid,) = _session_ids([session_id])
        with self._write() as conn:
            open_ = self._open_attempt(conn)
            if open_ is None or open_[0] != round_:
                raise self._error(f"no open attempt of round {round_} to add a session id to")
            if conn.execute("SELECT 1 FROM session_ids WHERE session_id = ?", (sid,)).fetchone():
                raise self._error(f"session id already used: {sid.hex()}")
            conn.execute(
                "INSERT INTO session_ids (session_id, round, attempt) VALUES (?, ?, ?)",
                (sid, round_, open_[1]),
            )
            self._append(conn, "session_opened", round_, {"attempt": open_[1], "session_id": sid.hex()})

    @staticmethod
    def _next_attempt(conn: sqlite3.Connection, round_: int) -> int:
        row = conn.execute("SELECT max(attempt) FROM attempts WHERE round = ?", (round_,)).fetchone()
        return 1 if row[0] is None else int(row[0]) + 1

    def next_attempt(self, round: int) -> int:
        """The number the next attempt at ``round`` gets: one past every attempt recorded for it.

        A restarted coordinator starts its first attempt here, so that attempt numbers (which are
        bound into each session's signed configuration) never repeat across server incarnations.
        """
        round_ = _check_round_number(round, "round")
        with self._read() as conn:
            return self._next_attempt(conn, round_)

    def interrupted_attempt(self) -> tuple[int, int] | None:
        """``(round, attempt)`` begun but neither completed nor aborted, else None.

        After a restart such an attempt cannot be resumed (its keys died with the process, and some of
        its secrets may have been revealed): record it aborted ("server restarted") and retry the round
        with fresh session ids.
        """
        with self._read() as conn:
            return self._open_attempt(conn)

    def record_aborted_attempt(self, round: int, reason: str, session_ids: Sequence[bytes]) -> None:
        """Close the open attempt at ``round`` as aborted (kept in the ledger); the round is then retried.

        ``session_ids`` are added to those the attempt began with (a restarted coordinator may pass none).
        With no open attempt it records a new attempt that failed before :meth:`begin_attempt` (e.g. too
        few clients checked in); its session ids must then be unused.
        """
        round_ = _check_round_number(round, "round")
        if not isinstance(reason, str) or not reason:
            raise ValueError("an abort reason is required")
        ids = _session_ids(session_ids)
        now = time.time()
        with self._write() as conn:
            self._expect_next_round(conn, round_, "abort an attempt at")
            open_ = self._open_attempt(conn)
            if open_ is not None and open_[0] != round_:
                raise self._error(f"the open attempt is at round {open_[0]}, not {round_}")
            if open_ is None:
                attempt = self._next_attempt(conn, round_)
                conn.execute(
                    "INSERT INTO attempts (round, attempt, state, began_at) VALUES (?, ?, 'begun', ?)",
                    (round_, attempt, now),
                )
            else:
                attempt = open_[1]
            for s in ids:
                owner = conn.execute(
                    "SELECT round, attempt FROM session_ids WHERE session_id = ?", (s,)
                ).fetchone()
                if owner is None:
                    conn.execute(
                        "INSERT INTO session_ids (session_id, round, attempt) VALUES (?, ?, ?)",
                        (s, round_, attempt),
                    )
                elif (int(owner[0]), int(owner[1])) != (round_, attempt):
                    raise self._error(
                        f"session id {s.hex()} belongs to attempt {owner[1]} of round {owner[0]}, not this one"
                    )
            conn.execute(
                "UPDATE attempts SET state = 'aborted', ended_at = ?, reason = ? WHERE round = ? AND attempt = ?",
                (now, reason, round_, attempt),
            )
            self._append(
                conn,
                "attempt_aborted",
                round_,
                {
                    "round": round_,
                    "attempt": attempt,
                    "reason": reason,
                    "session_ids": [s.hex() for s in self._attempt_ids(conn, round_, attempt)],
                },
            )

    def complete_round(self, record: RoundRecord, new_model: npt.ArrayLike) -> None:
        """Commit round ``record.round`` and the model after it, atomically.

        One transaction writes the round row, the model blob, closes the open attempt, appends the
        ledger entry and prunes old models: after a crash either all of it is there or none. Refused
        (with nothing written) unless the round is the next one, an attempt at it is open,
        ``record.model_hash`` is the hash of ``new_model`` and the model has the initial model's size.
        """
        round_ = _check_round_number(record.round, "record.round")
        if record.status != "completed":
            raise ValueError(
                f"complete_round stores completed rounds only (status {record.status!r}); "
                "use record_aborted_attempt for a failed attempt"
            )
        contributors = [str(c) for c in record.contributors]
        dropped = [str(c) for c in record.dropped]
        if set(contributors) & set(dropped):
            raise ValueError(
                f"clients both contributed and dropped: {sorted(set(contributors) & set(dropped))}"
            )
        started, finished = float(record.started_at), float(record.finished_at)
        if not (math.isfinite(started) and math.isfinite(finished) and started <= finished):
            raise ValueError(f"bad round times: started_at={started}, finished_at={finished}")
        summary_text = _canonical(record.summary)
        summary = json.loads(summary_text)
        data = model_bytes(new_model)
        digest = hashlib.sha256(data).digest()
        dim = len(data) // 4
        with self._write() as conn:
            self._expect_next_round(conn, round_, "complete")
            if bytes(record.model_hash) != digest:
                raise self._error(
                    f"round {round_}: record.model_hash {bytes(record.model_hash).hex()} is not the hash of the "
                    f"new model ({digest.hex()})"
                )
            open_ = self._open_attempt(conn)
            if open_ is None or open_[0] != round_:
                raise self._error(f"round {round_}: no open attempt (call begin_attempt before sending keys)")
            attempt = open_[1]
            latest = conn.execute("SELECT dim FROM models ORDER BY round DESC LIMIT 1").fetchone()
            if latest is None:
                raise self._error("no initial model stored: call save_initial_model first")
            if int(latest[0]) != dim:
                raise self._error(
                    f"round {round_}: the new model has {dim} parameters, the current one {latest[0]}"
                )
            now = time.time()
            conn.execute(
                "INSERT INTO rounds (round, attempt, status, contributors, dropped, model_hash, started_at, "
                "finished_at, summary) VALUES (?, ?, 'completed', ?, ?, ?, ?, ?, ?)",
                (
                    round_,
                    attempt,
                    _canonical(contributors),
                    _canonical(dropped),
                    digest,
                    started,
                    finished,
                    summary_text,
                ),
            )
            if self._keep_models is not None:
                # Pruned before the insert, in the same transaction: the pages the old vector frees are
                # reused by the new one, so the file holds keep_models vectors, not one more.
                conn.execute(
                    "UPDATE models SET vector = NULL WHERE round <= ? AND vector IS NOT NULL",
                    (round_ - self._keep_models,),
                )
            conn.execute(
                "INSERT INTO models (round, sha256, dim, vector) VALUES (?, ?, ?, ?)",
                (round_, digest, dim, data),
            )
            conn.execute(
                "UPDATE attempts SET state = 'completed', ended_at = ? WHERE round = ? AND attempt = ?",
                (now, round_, attempt),
            )
            payload = _round_payload(
                round_, attempt, "completed", contributors, dropped, digest, started, finished, summary
            )
            self._append(conn, "round_completed", round_, payload)

    def used_session_ids(self) -> set[bytes]:
        """Every session id ever begun or recorded, so a restarted server can prove it never reuses one."""
        with self._read() as conn:
            return {bytes(r[0]) for r in conn.execute("SELECT session_id FROM session_ids")}

    def rounds(self) -> list[RoundRecord]:
        """All completed rounds, in order."""
        with self._read() as conn:
            return self._rounds(conn)

    def _rounds(self, conn: sqlite3.Connection) -> list[RoundRecord]:
        rows = conn.execute(
            "SELECT round, status, contributors, dropped, model_hash, started_at, finished_at, summary "
            "FROM rounds ORDER BY round"
        ).fetchall()
        try:
            records = [
                RoundRecord(
                    round=int(r[0]),
                    status="completed" if r[1] == "completed" else "aborted",
                    contributors=_ids(json.loads(r[2])),
                    dropped=_ids(json.loads(r[3])),
                    model_hash=bytes(r[4]),
                    started_at=float(r[5]),
                    finished_at=float(r[6]),
                    summary=json.loads(r[7]),
                )
                for r in rows
            ]
        except (TypeError, ValueError) as exc:
            raise self._error(f"a rounds row is malformed: {exc}") from exc
        if not all(isinstance(r.summary, dict) for r in records):
            raise self._error("a rounds row's summary is not a JSON object")
        return records

    def ledger(self) -> list[dict[str, Any]]:
        """The event log in order: dicts with ``seq, time, kind, round, payload, prev_hash, hash``."""
        with self._read() as conn:
            return self._ledger(conn)

    def _ledger(self, conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT seq, time, kind, round, payload, prev_hash, hash FROM ledger ORDER BY seq"
        ).fetchall()
        out: list[dict[str, Any]] = []
        for seq, at, kind, round_, text, prev, digest in rows:
            try:
                payload = json.loads(text)
                if not isinstance(payload, dict):
                    raise ValueError("its payload is not a JSON object")
                out.append(
                    {
                        "seq": int(seq),
                        "time": float(at),
                        "kind": str(kind),
                        "round": None if round_ is None else int(round_),
                        "payload": payload,
                        "prev_hash": bytes(prev),
                        "hash": bytes(digest),
                    }
                )
            except (TypeError, ValueError) as exc:
                raise self._error(f"ledger seq {seq}: malformed entry ({exc})") from exc
        return out

    def append_event(self, kind: str, round: int | None, payload: dict[str, Any]) -> None:
        """Append a coordinator event (e.g. a client's DP budget, a config change) to the chained ledger.

        The store's own kinds (``created``, ``initial_model``, ``attempt_begun``, ``attempt_aborted``,
        ``round_completed``) are refused here: integrity_check trusts them to mirror the tables.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError("an event kind is required")
        if kind in _RESERVED_KINDS:
            raise ValueError(f"event kind {kind!r} is written by the store itself")
        if round is not None:
            _check_round_number(round, "round")
        if not isinstance(payload, dict):
            raise ValueError("an event payload must be a dict")
        _canonical(payload)  # fail before the transaction
        with self._write() as conn:
            self._append(conn, kind, round, payload)

    # ------------------------------------------------------------------------------------- integrity

    def integrity_check(self) -> list[str]:
        """Every problem found, ``[]`` when the store is sound. Reads the whole file: O(size).

        Checks SQLite's own ``integrity_check``, the ledger hash chain (each break named by its seq)
        and its head, that rounds are contiguous from 0 and each matches its ``round_completed``
        ledger entry, and that every kept model blob matches its hash (and the latest is kept).
        """
        problems: list[str] = []
        try:
            with self._read() as conn:
                result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
                if result != ["ok"]:
                    problems.extend(f"sqlite integrity_check: {line}" for line in result)
                problems.extend(
                    f"sqlite foreign_key_check: {tuple(r)}" for r in conn.execute("PRAGMA foreign_key_check")
                )
                completed = self._check_ledger(conn, problems)
                self._check_rounds(conn, completed, problems)
                self._check_models(conn, problems)
                self._check_attempts(conn, problems)
        except (StateError, sqlite3.Error) as exc:
            problems.append(f"check could not finish: {exc}")
        return problems

    def _check_ledger(self, conn: sqlite3.Connection, problems: list[str]) -> dict[int, tuple[int, Any]]:
        """Verify the chain; return ``round -> (seq, payload)`` of the round_completed entries."""
        run_id = self._meta(conn, "run_id")
        prev = _genesis(run_id)
        expected_seq = 1
        completed: dict[int, tuple[int, Any]] = {}
        for seq, at, kind, round_, text, stored_prev, stored_hash in conn.execute(
            "SELECT seq, time, kind, round, payload, prev_hash, hash FROM ledger ORDER BY seq"
        ):
            if seq != expected_seq:
                missing = (
                    f"seq {expected_seq}" if seq == expected_seq + 1 else f"seqs {expected_seq}..{seq - 1}"
                )
                problems.append(f"ledger: {missing} missing")
            if bytes(stored_prev) != prev:
                problems.append(
                    f"ledger seq {seq}: prev_hash does not match the hash of the entry before it (chain broken)"
                )
            try:
                payload = json.loads(text)
                if _canonical(payload) != text:
                    problems.append(f"ledger seq {seq}: payload is not in canonical form (edited?)")
                recomputed = _entry_hash(bytes(stored_prev), seq, float(at), str(kind), round_, payload)
            except ValueError:
                problems.append(f"ledger seq {seq}: payload is not valid JSON")
            else:
                if recomputed != bytes(stored_hash):
                    problems.append(f"ledger seq {seq}: hash does not match its contents (edited?)")
                if kind == "round_completed" and isinstance(round_, int):
                    if round_ in completed:
                        problems.append(f"ledger seq {seq}: round {round_} completed a second time")
                    else:
                        completed[round_] = (int(seq), payload)
            prev = bytes(stored_hash)
            expected_seq = seq + 1
        head_seq = int(self._meta(conn, "ledger_head_seq"))
        head_hash = self._meta(conn, "ledger_head_hash")
        if head_seq != expected_seq - 1 or head_hash != prev.hex():
            problems.append(
                f"ledger: the recorded head is seq {head_seq} but the last entry is seq {expected_seq - 1} "
                "(entries removed from the end, or head edited)"
            )
        return completed

    def _check_rounds(
        self, conn: sqlite3.Connection, completed: dict[int, tuple[int, Any]], problems: list[str]
    ) -> None:
        rows = conn.execute(
            "SELECT round, attempt, status, contributors, dropped, model_hash, started_at, finished_at, summary "
            "FROM rounds ORDER BY round"
        ).fetchall()
        numbers = [int(r[0]) for r in rows]
        if numbers != list(range(len(numbers))):
            problems.append(f"rounds are not contiguous from 0: {numbers}")
        for round_, attempt, status, contributors, dropped, digest, started, finished, summary in rows:
            entry = completed.pop(int(round_), None)
            if entry is None:
                problems.append(f"round {round_}: no round_completed ledger entry")
                continue
            try:
                rebuilt = _round_payload(
                    int(round_),
                    int(attempt),
                    str(status),
                    json.loads(contributors),
                    json.loads(dropped),
                    bytes(digest),
                    float(started),
                    float(finished),
                    json.loads(summary),
                )
            except ValueError:
                problems.append(f"round {round_}: row holds invalid JSON")
                continue
            if rebuilt != entry[1]:
                problems.append(f"round {round_}: row differs from its ledger entry (seq {entry[0]})")
            model = conn.execute("SELECT sha256 FROM models WHERE round = ?", (round_,)).fetchone()
            if model is None:
                problems.append(f"round {round_}: no model row")
            elif bytes(model[0]) != bytes(digest):
                problems.append(f"round {round_}: model row hash differs from the round's model_hash")
        for round_, (seq, _) in sorted(completed.items()):
            problems.append(
                f"ledger seq {seq} records round {round_} completed, but the rounds table lacks it"
            )

    def _check_models(self, conn: sqlite3.Connection, problems: list[str]) -> None:
        latest = conn.execute("SELECT max(round) FROM models").fetchone()[0]
        for round_, digest, dim, blob in conn.execute(
            "SELECT round, sha256, dim, vector FROM models ORDER BY round"
        ):
            label = "initial model" if round_ == INITIAL_ROUND else f"model of round {round_}"
            if blob is None:
                if round_ == latest:
                    problems.append(f"{label}: the latest model's vector is missing (pruned?)")
                continue
            blob = bytes(blob)
            if len(blob) != 4 * int(dim) or hashlib.sha256(blob).digest() != bytes(digest):
                problems.append(f"{label}: blob does not match its sha256 (corrupt)")
        extra = conn.execute(
            "SELECT round FROM models WHERE round >= 0 AND round NOT IN (SELECT round FROM rounds)"
        )
        problems.extend(f"model of round {r[0]}: no such completed round" for r in extra)

    def _check_attempts(self, conn: sqlite3.Connection, problems: list[str]) -> None:
        open_ = self._open_attempt(conn)
        last = self._last(conn)
        if open_ is not None and open_[0] != last + 1:
            problems.append(
                f"attempt {open_[1]} of round {open_[0]} is open, but the next round is {last + 1}"
            )
        for round_, attempt in conn.execute(
            "SELECT r.round, r.attempt FROM rounds r LEFT JOIN attempts a ON a.round = r.round AND a.attempt = r.attempt "
            "WHERE a.state IS NOT 'completed'"
        ):
            problems.append(f"round {round_}: its attempt {attempt} is not recorded as completed")

    # ------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connection (idempotent). SQLite checkpoints the WAL into the main file on the last close."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
