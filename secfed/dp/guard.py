"""The budget guard: an institution refuses a round that would take it past its privacy budget.

The decision is made locally from the institution's own :class:`PrivacyLedger` (never from anything
the server says), *before* training (or before coreset selection statistics are computed), from the
planned mechanism parameters: the epsilon of everything already recorded, DP-SGD rounds and Skellam
selection releases alike, composed with the planned release must stay within the budget
(:meth:`PrivacyLedger.epsilon_with`: PLD while the ledger holds no selection release, RDP composition
once it does).  A refusal is written to the ledger, and its ``reason`` is a plain sentence meant both
for the log and for the refusal message sent to the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secfed.dp.accounting import DpEvent
from secfed.dp.ledger import PrivacyLedger, stage_names
from secfed.dp.skellam import SkellamEvent

__all__ = ["BudgetGuard", "GuardDecision"]


@dataclass(frozen=True)
class GuardDecision:
    """Whether the planned round (or selection release) may run, and the figures behind the answer.

    ``budget`` is ``inf`` when the ledger has no budget.  ``epsilon_after`` is the ledger's epsilon
    if the planned release is made (``inf`` for a noiseless one).
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
    """Checks planned rounds and selection releases against the ledger's budget and records refusals
    in it."""

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
        which = "the next round" if planned.round is None else f"round {planned.round}"
        noiseless = " (the planned round adds no noise)" if planned.noise_multiplier == 0 else ""
        return self._decide(
            planned.round, [planned], (), which, "training it", noiseless, record_refusal, extra
        )

    def check_selection(
        self,
        round_: int,
        events: Sequence[SkellamEvent],
        *,
        record_refusal: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> GuardDecision:
        """Decide whether the selection release ``events`` (one Skellam event per stage) of ``round_``
        fits the budget, before any of its statistics is computed; refusals are recorded as in
        :meth:`check`."""
        if not events or not all(isinstance(e, SkellamEvent) for e in events):
            raise ValueError("events must be a non-empty sequence of SkellamEvents")
        which = f"the coreset selection of round {round_} ({stage_names(events)})"
        noiseless = " (a planned stage adds no noise)" if any(e.lam == 0 and e.l1 > 0 for e in events) else ""
        return self._decide(
            round_, (), events, which, "releasing its statistics", noiseless, record_refusal, extra
        )

    def _decide(
        self,
        round_: int | None,
        planned: Sequence[DpEvent],
        selection: Sequence[SkellamEvent],
        which: str,
        doing: str,
        noiseless: str,
        record_refusal: bool,
        extra: Mapping[str, Any] | None,
    ) -> GuardDecision:
        """The decision for ``planned`` rounds and ``selection`` releases, in sentences naming the
        release (``which``) and what refusing it avoids (``doing``)."""
        ledger = self.ledger
        entries = ledger.entries()
        budget_or_none = ledger.budget_epsilon
        budget = math.inf if budget_or_none is None else budget_or_none
        now = ledger.epsilon_with((), entries)
        after = ledger.epsilon_with(planned, entries, planned_selection=selection)
        _fmt = _formatter(after, budget)
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
                f"{which[0].upper()}{which[1:]} fits the privacy budget of {who}: epsilon would go from "
                f"{_fmt(now)} to {_fmt(after)} of {_fmt(budget)} (delta {ledger.delta:g}).",
            )
        reason = (
            f"Institution {ledger.institution!r} refuses {which}: {doing} would raise its epsilon from {_fmt(now)} to "
            f"{_fmt(after)}{noiseless}, above its privacy budget of {_fmt(budget)} (delta {ledger.delta:g})."
        )
        if record_refusal:
            ledger.record_refusal(round_, reason, after, extra)
        return GuardDecision(False, now, after, budget, reason)
