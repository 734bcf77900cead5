"""The hash-chained append-only log: format, persistence, and detection of every kind of tampering."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfed.chain import GENESIS, ChainError, HashChain, canonical_json, entry_hash


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _chain(path: Path, n: int = 4) -> HashChain:
    chain = HashChain(path, clock=_Clock())
    for i in range(n):
        chain.append("event", {"i": i, "note": f"entry {i}", "values": [i, i * 0.5]})
    return chain


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str], newline_at_end: bool = True) -> None:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))


def _error(path: Path) -> ChainError:
    with pytest.raises(ChainError) as info:
        HashChain(path).verify()
    assert str(path) in str(info.value)
    return info.value


def test_append_links_entries_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "log.jsonl"
    assert HashChain(path).entries() == [] and HashChain(path).head() == GENESIS
    chain = _chain(path, 3)
    reopened = HashChain(path).entries()
    assert [e.seq for e in reopened] == [0, 1, 2]
    assert reopened[0].prev == GENESIS
    assert [e.prev for e in reopened[1:]] == [e.hash for e in reopened[:-1]]
    assert reopened[1].body == {"i": 1, "note": "entry 1", "values": [1, 0.5]}
    assert reopened[0].time == "2026-01-31T12:00:01.000000Z"
    assert HashChain(path).head() == reopened[-1].hash == chain.head()
    # Each line is the canonical encoding, and the hash is SHA-256 over the entry without "hash".
    for line, entry in zip(_lines(path), reopened, strict=True):
        record = json.loads(line)
        assert line == canonical_json(record)
        without_hash = {k: v for k, v in record.items() if k != "hash"}
        assert record["hash"] == hashlib.sha256(canonical_json(without_hash).encode()).hexdigest()
        assert record["hash"] == entry_hash(entry.seq, entry.prev, entry.kind, entry.time, entry.body)


def test_body_must_be_json(tmp_path: Path) -> None:
    chain = HashChain(tmp_path / "log.jsonl")
    with pytest.raises(ValueError, match="JSON"):
        chain.append("x", {"bad": math.nan})
    with pytest.raises(ValueError, match="JSON"):
        chain.append("x", {"bad": object()})
    with pytest.raises(ValueError, match="string keys"):
        chain.append("x", {1: "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="kind"):
        chain.append("", {})
    with pytest.raises(ValueError, match="timezone"):
        HashChain(tmp_path / "other.jsonl", clock=lambda: datetime(2026, 1, 1)).append("x", {})
    assert chain.entries() == []
    assert chain.append("x", {"t": (1, 2)}).body == {"t": [1, 2]}  # stored as its JSON round trip


FIELDS = ["seq", "prev", "kind", "time", "body", "hash"]


def _edited(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str) and len(value) == 64:
        return ("1" if value[0] != "1" else "2") + value[1:]
    if isinstance(value, str):
        return value + "x"
    assert isinstance(value, dict)
    return {**value, "i": -1}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("index", [0, 2, 4])
def test_editing_any_field_of_any_entry_is_detected_at_its_line(
    tmp_path: Path, field: str, index: int
) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 5)
    lines = _lines(path)
    record = json.loads(lines[index])
    record[field] = _edited(record[field])
    lines[index] = canonical_json(record)
    _write(path, lines)
    error = _error(path)
    assert error.line == index + 1
    assert "hash mismatch" in error.problem  # every field is covered by the hash


def test_edit_with_recomputed_hash_is_detected_by_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 4)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["body"]["i"] = 99
    record["hash"] = entry_hash(record["seq"], record["prev"], record["kind"], record["time"], record["body"])
    lines[1] = canonical_json(record)
    _write(path, lines)
    error = _error(path)
    assert error.line == 3 and "prev" in error.problem


@pytest.mark.parametrize("index", [0, 1, 2])
def test_deleting_an_entry_is_detected(tmp_path: Path, index: int) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 4)
    lines = _lines(path)
    del lines[index]
    _write(path, lines)
    error = _error(path)
    assert error.line == index + 1 and "seq" in error.problem


def test_deleting_the_last_entry_needs_the_anchor_head(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    head = _chain(path, 4).head()
    HashChain(path).verify(head=head)
    lines = _lines(path)
    _write(path, lines[:-1])
    HashChain(path).verify()  # a shorter chain is still a chain ...
    with pytest.raises(ChainError, match="removed from the end"):
        HashChain(path).verify(head=head)  # ... but not one that contains the head we saw
    # An older anchor still verifies after further appends.
    _write(path, lines)
    HashChain(path).append("more", {})
    HashChain(path).verify(head=head)


def test_reordering_two_entries_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 4)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)
    error = _error(path)
    assert error.line == 2 and "seq" in error.problem


def test_truncated_last_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    error = _error(path)
    assert error.line == 3 and "truncated" in error.problem
    path.write_bytes(data[:-1])  # only the final newline lost: still an interrupted write
    assert _error(path).line == 3


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"seq": 3}', "wrong fields"),
        ("", "not valid JSON"),
    ],
)
def test_appended_garbage_is_detected(tmp_path: Path, garbage: str, problem: str) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 3)
    with path.open("a") as f:
        f.write(garbage + "\n")
    error = _error(path)
    assert error.line == 4 and problem in error.problem


def test_reencoded_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 2)
    lines = _lines(path)
    lines[0] = json.dumps(json.loads(lines[0]), indent=None)  # same content, different bytes
    _write(path, lines)
    assert "canonical" in _error(path).problem


def test_append_refuses_a_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _chain(path, 3)
    lines = _lines(path)
    _write(path, [lines[0], lines[2]])
    before = path.read_bytes()
    with pytest.raises(ChainError, match="line 2"):
        HashChain(path).append("event", {"i": 3})
    assert path.read_bytes() == before
    with pytest.raises(ChainError):
        HashChain(path).head()


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(st.text(max_size=8), _json_values, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_bodies, min_size=1, max_size=5), data=st.data())
def test_any_single_byte_edit_is_detected_at_its_line(tmp_path: Path, bodies, data) -> None:
    path = tmp_path / "prop.jsonl"
    path.unlink(missing_ok=True)
    chain = HashChain(path, clock=_Clock())
    for body in bodies:
        chain.append("prop", body)
    entries = chain.entries()
    assert [e.body for e in entries] == [json.loads(canonical_json(b)) for b in bodies]
    raw = bytearray(path.read_bytes())
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    replacement = data.draw(
        st.integers(min_value=0x20, max_value=0x7E).filter(lambda b: b != raw[position]), label="byte"
    )
    raw[position] = replacement
    path.write_bytes(bytes(raw))
    expected_line = raw[:position].count(b"\n") + 1
    error = _error(path)
    assert error.line == expected_line


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_bodies, min_size=2, max_size=5), data=st.data())
def test_any_semantic_edit_of_a_body_is_detected(tmp_path: Path, bodies, data) -> None:
    path = tmp_path / "prop.jsonl"
    path.unlink(missing_ok=True)
    chain = HashChain(path, clock=_Clock())
    for body in bodies:
        chain.append("prop", body)
    lines = _lines(path)
    index = data.draw(st.integers(min_value=0, max_value=len(lines) - 1), label="entry")
    record = json.loads(lines[index])
    new_body = data.draw(
        _bodies.filter(lambda b: json.loads(canonical_json(b)) != record["body"]), label="body"
    )
    record["body"] = new_body
    lines[index] = canonical_json(record)
    _write(path, lines)
    error = _error(path)
    assert error.line == index + 1 and "hash mismatch" in error.problem
