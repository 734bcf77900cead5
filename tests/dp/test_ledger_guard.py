"""The institution's privacy ledger and the budget guard that refuses over-budget rounds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from secfed.chain import ChainError, canonical_json
from secfed.dp.accounting import DpEvent, calibrate_noise, epsilon_pld, epsilon_report
from secfed.dp.guard import BudgetGuard
from secfed.dp.ledger import LedgerError, PrivacyLedger

DELTA = 1e-5
RATE, STEPS = 0.05, 40


def _ledger(path: Path, budget: float | None = 4.0, **kw) -> PrivacyLedger:
    args = {"institution": "hospital-a", "delta": DELTA, "budget_epsilon": budget, **kw}
    return PrivacyLedger(path, **args)


def _event(noise: float = 1.2, round_: int | None = None) -> DpEvent:
    return DpEvent(noise, RATE, STEPS, round=round_)


def _details(**changes: object) -> dict[str, object]:
    return {"max_grad_norm": 1.0, "expected_batch_size": 20, "n_records": 400, "empty_batches": 0, **changes}


def test_ledger_persists_and_composes_only_the_rounds_trained(tmp_path: Path) -> None:
    path = tmp_path / "privacy" / "ledger.jsonl"
    ledger = _ledger(path)
    assert ledger.spent().pld == 0.0 and ledger.rounds_trained() == []
    # The federation ran rounds 0..4; this institution trained in rounds 0, 2 and 3 only.
    for round_ in (0, 2, 3):
        ledger.record_round(round_, _event(), _details())
    reopened = _ledger(path)
    assert reopened.rounds_trained() == [0, 2, 3]
    assert reopened.events() == [_event(round_=r) for r in (0, 2, 3)]
    spent = reopened.spent()
    assert spent == epsilon_report([DpEvent(1.2, RATE, 3 * STEPS)], DELTA)
    assert spent.pld < epsilon_pld([DpEvent(1.2, RATE, 5 * STEPS)], DELTA)
    kinds = [e.kind for e in reopened.entries()]
    assert kinds == ["ledger-open", "dp-round", "dp-round", "dp-round"]
    header = reopened.entries()[0].body
    assert (
        header["institution"] == "hospital-a" and header["delta"] == DELTA and header["budget_epsilon"] == 4.0
    )
    body = reopened.entries()[1].body
    assert body == {"round": 0, "noise_multiplier": 1.2, "sample_rate": RATE, "steps": STEPS, **_details()}


def test_open_existing_reads_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, budget=3.0).record_round(0, _event(), _details())
    _ledger(path, budget=5.0)
    before = path.read_bytes()
    ledger = PrivacyLedger.open_existing(path)
    assert (ledger.institution, ledger.delta, ledger.budget_epsilon) == ("hospital-a", DELTA, 5.0)
    assert ledger.rounds_trained() == [0] and path.read_bytes() == before
    with pytest.raises(LedgerError, match="no such"):
        PrivacyLedger.open_existing(tmp_path / "missing.jsonl")


def test_reopening_with_another_delta_or_institution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path).record_round(0, _event(), _details())
    with pytest.raises(LedgerError, match="delta"):
        PrivacyLedger(path, institution="hospital-a", delta=1e-6, budget_epsilon=4.0)
    with pytest.raises(LedgerError, match="hospital-b"):
        PrivacyLedger(path, institution="hospital-b", delta=DELTA, budget_epsilon=4.0)
    assert len(_ledger(path).entries()) == 2  # the refused opens wrote nothing


def test_budget_changes_are_recorded_not_silent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, budget=4.0)
    assert _ledger(path, budget=4.0).budget_epsilon == 4.0  # same budget: nothing to record
    ledger = _ledger(path, budget=6.0)
    assert ledger.budget_epsilon == 6.0
    changes = [e.body for e in ledger.entries() if e.kind == "budget-change"]
    assert changes == [{"from": 4.0, "to": 6.0, "reason": "ledger reopened with a different budget"}]
    lifted = ledger.set_budget(None, reason="budget lifted by the data protection officer")
    assert lifted.kind == "budget-change" and lifted.body["from"] == 6.0 and lifted.body["to"] is None
    assert _ledger(path, budget=None).budget_epsilon is None


def test_tampering_with_the_ledger_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _ledger(path)
    for round_ in range(3):
        ledger.record_round(round_, _event(), _details())
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["body"]["steps"] = 1  # try to make round 1 look cheaper
    path.write_text("\n".join([*lines[:2], canonical_json(record), *lines[3:]]) + "\n")
    with pytest.raises(ChainError, match="line 3"):
        ledger.spent()
    with pytest.raises(ChainError):
        _ledger(path)
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # drop round 0
    with pytest.raises(ChainError, match="seq"):
        ledger.spent()


def test_record_round_validates_its_input(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError, match="contradicts"):
        ledger.record_round(0, _event(), _details(noise_multiplier=0.5))
    with pytest.raises(ValueError, match="round 1"):
        ledger.record_round(0, _event(round_=1), _details())
    with pytest.raises(ValueError, match="round"):
        ledger.record_round(-1, _event(), _details())
    assert ledger.events() == []


@dataclasses.dataclass(frozen=True)
class _RoundEvent:
    """Field-compatible stand-in for ``secfed.dp.sgd.DpRoundEvent``."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    expected_batch_size: int
    n_records: int
    empty_batches: int


def test_record_release_keeps_every_field_of_the_training_record(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "ledger.jsonl")
    ledger.record_release(4, _RoundEvent(1.2, RATE, STEPS, 1.0, 20, 400, 2))
    body = ledger.entries()[-1].body
    assert body == {
        "round": 4,
        "noise_multiplier": 1.2,
        "sample_rate": RATE,
        "steps": STEPS,
        **_details(empty_batches=2),
    }
    assert ledger.events() == [_event(round_=4)]


def test_guard_allows_what_fits_and_refuses_and_records_the_overshoot(tmp_path: Path) -> None:
    budget = 2.0
    # Noise for 1.8 over three rounds: three rounds fit, a fourth (about 2.07) does not.
    sigma = calibrate_noise(1.8, DELTA, RATE, STEPS, rounds=3)
    ledger = _ledger(tmp_path / "ledger.jsonl", budget=budget)
    guard = BudgetGuard(ledger)
    previous = 0.0
    for round_ in range(3):
        planned = DpEvent(sigma, RATE, STEPS, round=round_)
        decision = guard.check(planned)
        assert decision.allowed, decision.reason
        assert decision.epsilon_now == pytest.approx(previous) and decision.epsilon_after <= budget
        assert f"Round {round_} fits" in decision.reason
        ledger.record_round(round_, planned, _details())
        previous = decision.epsilon_after
    refused = guard.check(DpEvent(sigma, RATE, STEPS, round=3))
    assert not refused.allowed and refused.budget == budget
    assert refused.epsilon_now == pytest.approx(ledger.spent().pld) and refused.epsilon_after > budget
    assert refused.reason.startswith("Institution 'hospital-a' refuses round 3")
    assert refused.reason.endswith(".") and "budget of 2.000" in refused.reason
    refusals = ledger.refusals()
    assert len(refusals) == 1
    assert refusals[0].body["round"] == 3 and refusals[0].body["reason"] == refused.reason
    assert refusals[0].body["would_be_epsilon"] == pytest.approx(refused.epsilon_after)
    assert ledger.rounds_trained() == [0, 1, 2]  # the refusal spent nothing
    # A dry run does not write; a smaller round that still fits is allowed.
    assert not guard.check(DpEvent(sigma, RATE, STEPS, round=3), record_refusal=False).allowed
    assert len(ledger.refusals()) == 1
    assert guard.check(DpEvent(sigma * 4, RATE, 1, round=3)).allowed
    assert refused.to_mapping()["allowed"] is False


def test_guard_without_budget_and_with_a_noiseless_round(tmp_path: Path) -> None:
    unbounded = BudgetGuard(_ledger(tmp_path / "a.jsonl", budget=None))
    decision = unbounded.check(_event(round_=0))
    assert decision.allowed and math.isinf(decision.budget) and "no privacy budget" in decision.reason
    guard = BudgetGuard(_ledger(tmp_path / "b.jsonl", budget=10.0))
    noiseless = guard.check(DpEvent(0.0, RATE, STEPS, round=0))
    assert not noiseless.allowed and math.isinf(noiseless.epsilon_after)
    assert "adds no noise" in noiseless.reason
    assert noiseless.to_mapping()["epsilon_after"] is None
    assert guard.ledger.refusals()[0].body["would_be_epsilon"] is None


def test_a_refusal_by_a_hair_still_reads_clearly(tmp_path: Path) -> None:
    sigma = calibrate_noise(2.0, DELTA, RATE, STEPS, rounds=3)  # three rounds use up the budget
    ledger = _ledger(tmp_path / "ledger.jsonl", budget=2.0)
    for round_ in range(3):
        ledger.record_round(round_, DpEvent(sigma, RATE, STEPS), _details())
    decision = BudgetGuard(ledger).check(DpEvent(sigma * 4, RATE, 1, round=3))
    assert not decision.allowed and 0 < decision.epsilon_after - 2.0 < 1e-3
    # Enough digits that "above the budget" is visibly true.
    assert "to 2.000 " not in decision.reason and "budget of 2.00000 " in decision.reason
