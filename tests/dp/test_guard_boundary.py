"""The budget guard's boundary: a round that lands exactly on the budget runs, one a hair above does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from secfed.dp.accounting import DpEvent
from secfed.dp.guard import BudgetGuard
from secfed.dp.ledger import PrivacyLedger

DELTA = 1e-5
RATE, STEPS = 0.05, 40


def _ledger(path: Path, budget: float | None) -> PrivacyLedger:
    return PrivacyLedger(path, institution="hospital-a", delta=DELTA, budget_epsilon=budget)


def _details() -> dict[str, object]:
    return {"max_grad_norm": 1.0, "expected_batch_size": 20, "n_records": 400, "empty_batches": 0}


@pytest.mark.parametrize("rounds_before", [0, 2])
def test_guard_allows_a_round_exactly_at_the_budget_and_refuses_one_just_above(
    tmp_path: Path, rounds_before: int
) -> None:
    """Attack (or slip): a guard whose comparison is off at the boundary either refuses a round the
    budget was set to admit exactly (a budget computed as "these rounds, no more"), or admits one that
    takes the institution past its budget by a rounding error, which a sequence of such rounds can
    repeat. With the composed epsilon of the planned round as the budget the round is allowed
    (``after <= budget``); with the next float below it, or that budget minus 1e-9, it is refused and
    the refusal is written to the ledger."""
    planned = DpEvent(1.1, RATE, STEPS, round=rounds_before)

    def ledger_with(budget: float | None, name: str) -> PrivacyLedger:
        ledger = _ledger(tmp_path / f"{name}.jsonl", budget)
        for round_ in range(rounds_before):
            ledger.record_round(round_, DpEvent(1.1, RATE, STEPS), _details())
        return ledger

    # The composed epsilon the guard itself computes for this round (no budget: nothing is refused).
    after = BudgetGuard(ledger_with(None, "probe")).check(planned).epsilon_after
    assert 0 < after < math.inf

    at = ledger_with(after, "at")
    decision = BudgetGuard(at).check(planned)
    assert decision.allowed, decision.reason
    assert decision.epsilon_after == after == decision.budget
    assert at.refusals() == []

    for name, budget in [("below-by-one-ulp", math.nextafter(after, 0.0)), ("below-by-1e-9", after - 1e-9)]:
        ledger = ledger_with(budget, name)
        refused = BudgetGuard(ledger).check(planned)
        assert not refused.allowed, name
        assert refused.epsilon_after == after and refused.budget == budget < after
        assert len(ledger.refusals()) == 1
