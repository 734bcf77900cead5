"""An append-only, hash-chained JSON-lines log.

Used for records whose history must be tamper-evident: an institution's privacy ledger, server
ledgers, signed audit reports.  Each line of the file is one entry::

    {"body": {...}, "hash": HEX, "kind": STR, "prev": HEX, "seq": INT, "time": ISO8601-UTC}

``seq`` counts from 0; ``prev`` is the previous entry's ``hash`` (``GENESIS`` for the first);
``hash`` is SHA-256 over the canonical encoding of the entry *without* ``hash``.  The canonical
encoding is ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)``, and each line must *be* the canonical encoding of its entry, so any byte change
to the file is detected: as bad JSON, as a non-canonical line, as a hash mismatch (an edited
field), as a wrong ``seq`` (a deleted or reordered entry), as a ``prev`` mismatch (an entry replaced
with a re-hashed one), or as a truncated last line.  :class:`ChainError` names the file, the
1-based line number and what is wrong.

What a hash chain cannot detect on its own: removing entries from the *end* (the shorter file is a
valid chain), or rewriting an entry and re-hashing every entry after it.  Both need an anchor kept
elsewhere: pass the head you last saw (e.g. one recorded in a signed report) to
``verify(head=...)``.

Concurrency: one writer per file is assumed (one client process owns its ledger).  ``append``
verifies the whole file and writes under an exclusive advisory ``flock``, so a second writer on the
same host is serialised instead of forking the chain, but nothing protects writers on different
hosts sharing a file system.  Appends are a single ``write`` on an ``O_APPEND`` descriptor followed
by ``fsync``, so a crash leaves at worst a truncated last line, which ``verify`` reports (and which
blocks further appends until an operator looks at it) rather than silently hiding.

Verification is O(entries) and runs on every ``append``/``entries``/``head``: the logs this is for
have hundreds to a few thousands of entries, and re-reading the file each time means the file, not
an in-memory copy, stays the source of truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secfed.durable import fsync_dir

__all__ = ["GENESIS", "ChainError", "Entry", "HashChain", "canonical_json", "entry_hash"]

GENESIS = "0" * 64
"""The ``prev`` of the first entry (and the head of an empty chain)."""

_KEYS = frozenset({"seq", "prev", "kind", "time", "body", "hash"})


class ChainError(ValueError):
    """The log does not verify; ``str()`` names the file, line and problem."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def canonical_json(value: Any) -> str:
    """The one encoding that is hashed and written (sorted keys, no spaces, ASCII, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(seq: int, prev: str, kind: str, time: str, body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of an entry without its ``hash`` field."""
    payload = {"seq": seq, "prev": prev, "kind": kind, "time": time, "body": body}
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One verified log entry."""

    seq: int
    prev: str
    kind: str
    time: str
    body: dict[str, Any] = field(hash=False)
    hash: str

    def to_mapping(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "prev": self.prev,
            "kind": self.kind,
            "time": self.time,
            "body": self.body,
            "hash": self.hash,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("chain timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class HashChain:
    """An append-only hash-chained JSON-lines file (see the module docstring for the format)."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path)
        self._clock = clock

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """All entries, after verifying the whole file (raises :class:`ChainError`)."""
        return self._load()

    def verify(self, *, head: str | None = None) -> None:
        """Raise :class:`ChainError` unless the file is an intact chain.

        With ``head``, also require the last entry's hash to be ``head`` (or ``head`` to be found
        earlier in the chain, meaning entries were appended since): this is what detects entries
        deleted from the end, which the chain alone cannot.
        """
        entries = self._load()
        if head is None:
            return
        if not _is_hex64(head):
            raise ValueError(f"expected head must be 64 lower-case hex digits, got {head!r}")
        if head == GENESIS or any(e.hash == head for e in entries):
            return
        raise ChainError(
            self.path,
            None,
            f"expected head {head[:16]}... is not in the chain of {len(entries)} entries "
            "(entries were removed from the end, or the log was rewritten)",
        )

    def head(self) -> str:
        """Hash of the last entry, or ``GENESIS`` for an empty or missing log."""
        entries = self._load()
        return entries[-1].hash if entries else GENESIS

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> list[Entry]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return self._parse(data)

    def _parse(self, data: bytes) -> list[Entry]:
        entries: list[Entry] = []
        if not data:
            return entries
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        prev = GENESIS
        for index, raw in enumerate(complete):
            entry = self._check_line(index, raw, prev)
            entries.append(entry)
            prev = entry.hash
        if tail:
            raise ChainError(
                self.path,
                len(complete) + 1,
                "truncated last line (no newline at end of file: an interrupted write or an edit)",
            )
        return entries

    def _check_line(self, index: int, raw: bytes, prev: str) -> Entry:
        line = index + 1

        def fail(problem: str) -> ChainError:
            return ChainError(self.path, line, problem)

        try:
            text = raw.decode("ascii")
            record = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise fail(f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise fail(f"expected a JSON object, found {type(record).__name__}")
        if set(record) != _KEYS:
            missing, extra = sorted(_KEYS - set(record)), sorted(set(record) - _KEYS)
            raise fail(f"wrong fields (missing {missing}, unexpected {extra})")
        seq, prev_field, kind, time, body, stored = (
            record["seq"],
            record["prev"],
            record["kind"],
            record["time"],
            record["body"],
            record["hash"],
        )
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise fail(f"seq must be an integer, found {seq!r}")
        if not (isinstance(kind, str) and kind):
            raise fail(f"kind must be a non-empty string, found {kind!r}")
        if not isinstance(time, str):
            raise fail(f"time must be a string, found {time!r}")
        if not isinstance(body, dict):
            raise fail(f"body must be a JSON object, found {type(body).__name__}")
        if not (_is_hex64(prev_field) and _is_hex64(stored)):
            raise fail("prev and hash must be 64 lower-case hex digits")
        try:
            canonical = canonical_json(record)
        except ValueError as exc:  # NaN/Infinity parsed from a hand-edited line
            raise fail(f"not canonical JSON ({exc})") from None
        if text != canonical:
            raise fail("not in canonical form (the line was re-encoded or edited)")
        computed = entry_hash(seq, prev_field, kind, time, body)
        if computed != stored:
            raise fail(
                f"hash mismatch: the entry was edited (stored {stored[:16]}..., computed {computed[:16]}...)"
            )
        if seq != index:
            raise fail(f"seq is {seq}, expected {index} (an entry was deleted, inserted or reordered)")
        if prev_field != prev:
            raise fail(
                f"prev {prev_field[:16]}... does not match the previous entry's hash {prev[:16]}... "
                "(entries were reordered or one was replaced)"
            )
        return Entry(seq=seq, prev=prev_field, kind=kind, time=time, body=body, hash=stored)

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        precondition: Callable[[list[Entry]], None] | None = None,
    ) -> Entry:
        """Verify the log, then durably append one entry and return it.

        ``body`` must be a JSON object with string keys and finite numbers; it is stored as the
        JSON round-trip of what was given (tuples become lists), which is what ``entries`` returns.
        ``precondition`` sees the verified entries under the write lock and may raise to append
        nothing: a check and its entry are then one step for every writer of the file.
        """
        if not (isinstance(kind, str) and kind):
            raise ValueError(f"kind must be a non-empty string, got {kind!r}")
        if not isinstance(body, Mapping) or not all(isinstance(k, str) for k in body):
            raise ValueError("body must be a mapping with string keys")
        try:
            stored_body: dict[str, Any] = json.loads(canonical_json(dict(body)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"body is not JSON-serialisable: {exc}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked_append_fd() as fd:
            entries = self._parse(_read_fd(fd))
            if precondition is not None:
                precondition(entries)
            seq = len(entries)
            prev = entries[-1].hash if entries else GENESIS
            time = _iso(self._clock())
            digest = entry_hash(seq, prev, kind, time, stored_body)
            entry = Entry(seq=seq, prev=prev, kind=kind, time=time, body=stored_body, hash=digest)
            data = (canonical_json(entry.to_mapping()) + "\n").encode("ascii")
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        if seq == 0:
            fsync_dir(self.path.parent)
        return entry

    @contextlib.contextmanager
    def _locked_append_fd(self) -> Iterator[int]:
        # 0600: a ledger says what an institution released and when (a privacy ledger even holds record
        # counts); it is its owner's, like its key.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
