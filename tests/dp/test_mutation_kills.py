"""Tests that each pin one check of the DP guard and the hash chain (found by scripts/mutation --scored-only).

Each sets up a case where every other check passes, so that only the check under test decides, and
asserts the exact outcome: the decision, the error and its message, or the value.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path

import pytest

from secfed import chain as chain_module
from secfed.chain import GENESIS, ChainError, HashChain, canonical_json, entry_hash
from secfed.dp.accounting import DpEvent
from secfed.dp.guard import BudgetGuard
from secfed.dp.ledger import PrivacyLedger

DELTA = 1e-5
RATE, STEPS = 0.05, 40


def _ledger(path: Path, budget: float | None) -> PrivacyLedger:
    return PrivacyLedger(path, institution="hospital-a", delta=DELTA, budget_epsilon=budget)


def _epsilon_after(tmp_path: Path, planned: DpEvent) -> float:
    """The composed epsilon the guard computes for ``planned`` on an empty ledger."""
    return BudgetGuard(_ledger(tmp_path / "probe.jsonl", None)).check(planned).epsilon_after


# -- BudgetGuard -------------------------------------------------------------------------------------


def test_the_json_form_of_a_decision_keeps_its_finite_figures(tmp_path: Path) -> None:
    """The decision a client reports (and an auditor reads) must carry the real epsilons: only
    infinities become null, a finite epsilon or budget is never blanked out."""
    decision = BudgetGuard(_ledger(tmp_path / "l.jsonl", 50.0)).check(DpEvent(1.2, RATE, STEPS, round=0))
    assert decision.allowed
    mapping = decision.to_mapping()
    assert mapping["budget"] == 50.0
    assert mapping["epsilon_now"] == 0.0
    assert mapping["epsilon_after"] == decision.epsilon_after
    assert isinstance(mapping["epsilon_after"], float) and 0 < mapping["epsilon_after"] < 50.0


def test_a_refusal_by_less_than_a_nanounit_shows_nine_decimals_at_most(tmp_path: Path) -> None:
    """A round over budget by 1e-12 epsilon is refused; its message shows the figures with as many
    decimals as help, but never more than nine (the formatter's cap), so logs stay readable and stable."""
    planned = DpEvent(1.2, RATE, STEPS, round=0)
    after = _epsilon_after(tmp_path, planned)
    budget = after - 1e-12
    assert f"{after:.10f}" == f"{budget:.10f}"  # even ten decimals would not tell them apart
    decision = BudgetGuard(_ledger(tmp_path / "l.jsonl", budget)).check(planned)
    assert not decision.allowed
    assert f"to {after:.9f}, above its privacy budget of {budget:.9f} (delta" in decision.reason


def test_a_noiseless_round_reads_as_infinite_epsilon(tmp_path: Path) -> None:
    """A round without noise (a misconfigured or malicious instruction) is refused with a message an
    operator can read: epsilon would go "to infinity"."""
    decision = BudgetGuard(_ledger(tmp_path / "l.jsonl", 10.0)).check(DpEvent(0.0, RATE, STEPS, round=4))
    assert not decision.allowed
    assert "refuses round 4: training it would raise its epsilon from 0.000 to infinity (the planned" in (
        decision.reason
    )


def test_a_round_without_a_number_is_called_the_next_round(tmp_path: Path) -> None:
    """A planned event without a round number (a dry run before the round is known) is described as
    "the next round", never as "round None"."""
    decision = BudgetGuard(_ledger(tmp_path / "l.jsonl", 50.0)).check(DpEvent(1.2, RATE, STEPS))
    assert decision.allowed
    assert decision.reason.startswith("The next round fits the privacy budget of institution 'hospital-a'")
    unbounded = BudgetGuard(_ledger(tmp_path / "m.jsonl", None)).check(DpEvent(1.2, RATE, STEPS))
    assert "has no privacy budget set; the next round would bring epsilon from 0.000 to " in unbounded.reason


def test_something_other_than_a_dp_event_is_refused_naming_its_type(tmp_path: Path) -> None:
    """A caller passing the wrong object (a dict parsed from the server's instruction, say) gets a
    ValueError naming what it passed, not a guess at a budget."""
    guard = BudgetGuard(_ledger(tmp_path / "l.jsonl", 10.0))
    with pytest.raises(ValueError, match=r"^planned must be a DpEvent, got dict$"):
        guard.check({"noise_multiplier": 1.2})  # type: ignore[arg-type]
    assert math.isinf(
        BudgetGuard(_ledger(tmp_path / "m.jsonl", None)).check(DpEvent(1.2, RATE, STEPS)).budget
    )


# -- HashChain -------------------------------------------------------------------------------------


def _chain(path: Path, n: int) -> HashChain:
    chain = HashChain(path)
    for i in range(n):
        chain.append("entry", {"i": i})
    return chain


def test_a_head_missing_from_the_chain_is_reported_for_the_whole_file(tmp_path: Path) -> None:
    """Entries deleted from the end (or a rewritten log) leave an anchored head unknown to the chain:
    the error names the file without a line number (no line is at fault) and says what happened."""
    path = tmp_path / "log.jsonl"
    chain = _chain(path, 3)
    head = "ab" * 32
    with pytest.raises(ChainError) as ei:
        chain.verify(head=head)
    assert ei.value.path == path and ei.value.line is None
    assert ei.value.problem == (
        f"expected head {head[:16]}... is not in the chain of 3 entries "
        "(entries were removed from the end, or the log was rewritten)"
    )
    assert str(ei.value) == f"{path}: {ei.value.problem}"


def test_a_malformed_expected_head_is_a_value_error_naming_it(tmp_path: Path) -> None:
    """An anchor that is not a 64-digit lower-case hex hash (say, copied upper-case from a report) is
    the caller's error, reported as such rather than as a broken chain."""
    chain = _chain(tmp_path / "log.jsonl", 1)
    with pytest.raises(ValueError, match=r"^expected head must be 64 lower-case hex digits, got 'AB\+'$"):
        chain.verify(head="AB+")
    chain.verify(head=chain.head())


@pytest.mark.parametrize("head", ["abc", "X" * 64, "0" * 63 + "g"])
def test_an_expected_head_must_be_exactly_64_lower_case_hex_digits(tmp_path: Path, head: str) -> None:
    """A short hex string, or 64 characters outside 0-9a-f, is not a hash: the caller's anchor is
    refused as a ValueError, never looked up in the chain (where it would read as tampering)."""
    chain = _chain(tmp_path / "log.jsonl", 1)
    with pytest.raises(ValueError, match=r"^expected head must be 64 lower-case hex digits") as ei:
        chain.verify(head=head)
    assert not isinstance(ei.value, ChainError)


def _write_record(path: Path, **fields: object) -> None:
    """One line that is canonical JSON with a correct hash over its fields (those given replace the
    defaults), so that only the field checks can object to it."""
    record: dict[str, object] = {"seq": 0, "prev": GENESIS, "kind": "k", "time": "t", "body": {}, **fields}
    record["hash"] = hashlib.sha256(canonical_json(record).encode("ascii")).hexdigest()
    path.write_text(canonical_json(record) + "\n")


def _problem(path: Path) -> str:
    with pytest.raises(ChainError) as ei:
        HashChain(path).entries()
    assert ei.value.path == path and ei.value.line == 1
    return ei.value.problem


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"seq": "0"}, "seq must be an integer, found '0'"),
        ({"seq": False}, "seq must be an integer, found False"),
        ({"seq": 0.0}, "seq must be an integer, found 0.0"),
        ({"kind": ""}, "kind must be a non-empty string, found ''"),
        ({"kind": 7}, "kind must be a non-empty string, found 7"),
        ({"time": 0}, "time must be a string, found 0"),
        ({"body": [1]}, "body must be a JSON object, found list"),
        ({"prev": "X" * 64}, "prev and hash must be 64 lower-case hex digits"),
    ],
)
def test_each_field_of_a_self_consistent_line_is_checked_by_type(
    tmp_path: Path, fields: dict[str, object], problem: str
) -> None:
    """An editor who re-hashes a line after changing a field's type (seq as a string or a bool that
    compares equal to the index, an empty kind, a list body, a prev that is not a hash) is caught by
    the field check itself, with a message naming the field and what was found."""
    path = tmp_path / "log.jsonl"
    _write_record(path, **fields)
    assert _problem(path) == problem


def test_a_line_with_nan_is_not_canonical_json(tmp_path: Path) -> None:
    """NaN parses (Python's json accepts it) but has no canonical encoding: refused as such."""
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"body":{"x":NaN},"hash":"'
        + "0" * 64
        + '","kind":"k","prev":"'
        + GENESIS
        + '","seq":0,"time":"t"}\n'
    )
    assert _problem(path).startswith("not canonical JSON (Out of range float values are not JSON compliant")


def test_a_re_encoded_line_is_reported_as_not_canonical(tmp_path: Path) -> None:
    """The same entry written with a space after a colon hashes the same but is not the canonical
    line: any byte change is caught, and this one says so."""
    path = tmp_path / "log.jsonl"
    _write_record(path)
    path.write_text(path.read_text().replace('"kind":"k"', '"kind": "k"'))
    assert _problem(path) == "not in canonical form (the line was re-encoded or edited)"


def test_a_line_that_is_json_but_not_an_object_is_refused_naming_its_type(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("[0]\n")
    with pytest.raises(ChainError) as ei:
        HashChain(path).entries()
    assert ei.value.problem == "expected a JSON object, found list"


def test_an_edited_entry_reports_both_hashes(tmp_path: Path) -> None:
    """An entry edited without re-hashing: the message shows the first 16 digits of the stored and of
    the recomputed hash, so an operator can match it against a report."""
    path = tmp_path / "log.jsonl"
    _write_record(path, body={"epsilon": 1})
    stored = json.loads(path.read_text())["hash"]
    path.write_text(path.read_text().replace('"epsilon":1', '"epsilon":2'))
    computed = entry_hash(0, GENESIS, "k", "t", {"epsilon": 2})
    assert (
        _problem(path)
        == f"hash mismatch: the entry was edited (stored {stored[:16]}..., computed {computed[:16]}...)"
    )


def test_an_entry_linked_to_the_wrong_predecessor_reports_both_links(tmp_path: Path) -> None:
    """A re-hashed entry whose prev is not the previous entry's hash (an entry replaced or moved):
    the message shows both, 16 digits each, and what it means."""
    path = tmp_path / "log.jsonl"
    first = HashChain(path).append("k", {})
    wrong_prev = "ab" * 32
    record: dict[str, object] = {"seq": 1, "prev": wrong_prev, "kind": "k", "time": "t", "body": {}}
    record["hash"] = entry_hash(1, wrong_prev, "k", "t", {})
    with path.open("a") as f:
        f.write(canonical_json(record) + "\n")
    with pytest.raises(ChainError) as ei:
        HashChain(path).entries()
    assert ei.value.line == 2
    assert ei.value.problem == (
        f"prev {wrong_prev[:16]}... does not match the previous entry's hash {first.hash[:16]}... "
        "(entries were reordered or one was replaced)"
    )


def test_a_clock_without_time_zone_is_refused(tmp_path: Path) -> None:
    """A naive clock would write local times that read as UTC: appending with one is refused."""
    chain = HashChain(tmp_path / "log.jsonl", clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(ValueError, match=r"^chain timestamps must be timezone-aware$"):
        chain.append("k", {})


def test_a_truncated_last_line_is_reported_as_such(tmp_path: Path) -> None:
    """A crash in the middle of an append leaves a line without its newline: reported at that line
    with what probably happened, and never silently dropped."""
    path = tmp_path / "log.jsonl"
    HashChain(path).append("k", {})
    with path.open("a") as f:
        f.write('{"body":{}')
    with pytest.raises(ChainError) as ei:
        HashChain(path).entries()
    assert ei.value.line == 2
    assert (
        ei.value.problem == "truncated last line (no newline at end of file: an interrupted write or an edit)"
    )


def test_a_body_with_non_string_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^body must be a mapping with string keys$"):
        HashChain(tmp_path / "log.jsonl").append("k", {1: "one"})  # type: ignore[dict-item]


def test_the_directory_is_synced_when_the_log_file_is_created_and_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger created just before a power cut must not vanish with its directory entry: the first
    append syncs the directory; later appends (the file already exists) need not."""
    synced: list[Path] = []
    monkeypatch.setattr(chain_module, "fsync_dir", synced.append)
    path = tmp_path / "ledgers" / "log.jsonl"
    log = HashChain(path)
    log.append("k", {})
    assert synced == [path.parent]
    log.append("k", {})
    log.append("k", {})
    assert synced == [path.parent]
