"""The budget guard: an institution refuses a round that would take it past its privacy budget.

The decision is made locally from the institution's own :class:`PrivacyLedger` (never from anything
the server says), *before* training, from the planned mechanism parameters: the PLD epsilon of
everything already recorded composed with the planned round must stay within the budget.  A refusal
is written to the ledger, and its ``reason`` is a plain sentence meant both for the log and for the
refusal message sent to the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from secfed.dp.accounting import DpEvent
from secfed.dp.ledger import PrivacyLedger

__all__ = ["BudgetGuard", "GuardDecision"]


@dataclass(frozen=True)
class GuardDecision:
    """Whether the planned round may run, and the figures behind the answer.

    ``budget`` is ``inf`` when the ledger has no budget.  ``epsilon_after`` is the PLD epsilon if the
    planned round is trained (``inf`` for a noiseless round).
    """

    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float
    reason: str

    def to_mapping(self) -> dict[str, object]:
        """JSON-ready form (infinities become ``None``)."""

        def finite(x: float) -> float | None:
            return None if math.isinf(x) else x

        return {
            "allowed": self.allowed,
            "epsilon_now": finite(self.epsilon_now),
            "epsilon_after": finite(self.epsilon_after),
            "budget": finite(self.budget),
            "reason": self.reason,
        }


def _formatter(after: float, budget: float) -> Callable[[float], str]:
    """Three decimals, or as many more as it takes for ``after`` and ``budget`` to read differently
    (a refusal saying "from 2.000 to 2.000, above 2.000" would be useless in a log)."""
    decimals = 3
    while decimals < 9 and f"{after:.{decimals}f}" == f"{budget:.{decimals}f}" and after != budget:
        decimals += 1

    def fmt(x: float) -> str:
        return "infinity" if math.isinf(x) else f"{x:.{decimals}f}"

    return fmt


class BudgetGuard:
    """Checks planned rounds against the ledger's budget and records refusals in it."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def check(
        self, planned: DpEvent, *, record_refusal: bool = True, extra: Mapping[str, Any] | None = None
    ) -> GuardDecision:
        """Decide whether ``planned`` fits the budget.

        On refusal (and unless ``record_refusal`` is false, e.g. for a dry run) a ``budget-refusal``
        entry is appended to the ledger with the same sentence as ``reason``.  ``planned.round``
        names the round in the sentence and in the ledger; ``extra`` goes into the refusal entry (the
        dataset it is about).
        """
        if not isinstance(planned, DpEvent):
            raise ValueError(f"planned must be a DpEvent, got {type(planned).__name__}")
        ledger = self.ledger
        entries = ledger.entries()
        budget_or_none = ledger.budget_epsilon
        budget = math.inf if budget_or_none is None else budget_or_none
        now = ledger.epsilon_with((), entries)
        after = ledger.epsilon_with([planned], entries)
        _fmt = _formatter(after, budget)
        which = "the next round" if planned.round is None else f"round {planned.round}"
        who = f"institution {ledger.institution!r}"
        if budget_or_none is None:
            return GuardDecision(
                True,
                now,
                after,
                budget,
                f"Institution {ledger.institution!r} has no privacy budget set; {which} would bring epsilon from {_fmt(now)} "
                f"to {_fmt(after)} (delta {ledger.delta:g}).",
            )
        if after <= budget:
            return GuardDecision(
                True,
                now,
                after,
                budget,
                f"{which.capitalize()} fits the privacy budget of {who}: epsilon would go from "
                f"{_fmt(now)} to {_fmt(after)} of {_fmt(budget)} (delta {ledger.delta:g}).",
            )
        noiseless = " (the planned round adds no noise)" if planned.noise_multiplier == 0 else ""
        reason = (
            f"Institution {ledger.institution!r} refuses {which}: training it would raise its epsilon from {_fmt(now)} to "
            f"{_fmt(after)}{noiseless}, above its privacy budget of {_fmt(budget)} (delta {ledger.delta:g})."
        )
        if record_refusal:
            ledger.record_refusal(planned.round, reason, after, extra)
        return GuardDecision(False, now, after, budget, reason)
