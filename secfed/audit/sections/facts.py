"""Figures derived from a report that more than one section states, computed once so they agree.

The summary, the privacy-loss section and the charts all speak of the same epsilon, budget, rounds and
smallest decoded sum; deriving them here keeps one reading of the report (which field wins when two say
the same thing, what counts as over budget) instead of one per section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secfed.audit.fields import as_int, as_list, as_map, as_maps, as_num, as_text

__all__ = [
    "Facts",
    "budget_used",
    "cohort_series",
    "derive_facts",
    "over_budget",
    "quoted_dp_used",
    "quoted_institutions",
]


@dataclass(frozen=True)
class Facts:
    """The few figures the summary and several sections share, derived once."""

    kind: str
    subject: str
    dp_used: bool
    epsilon: float | None
    epsilon_rdp: float | None
    # Only with DP coreset selection: the parts ``epsilon`` composes (training by PLD, selection by RDP).
    selection_releases: tuple[Mapping[str, Any], ...]
    epsilon_training: float | None
    epsilon_selection: float | None
    delta: float | None
    budget: float | None
    rounds_trained: tuple[int, ...]
    rounds_total: int | None
    refusals: tuple[Mapping[str, Any], ...]
    smallest_sum: int | None
    colluding: int | None

    @property
    def title(self) -> str:
        """The page's title, also its heading."""
        return f"Privacy audit report — {self.kind} {self.subject}"


def _rounds_trained(privacy: Mapping[str, Any], mechanism: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """The rounds trained with DP as the privacy section lists them, else those with DP-SGD settings."""
    listed = [r for r in (as_int(x) for x in as_list(privacy.get("rounds_trained"))) if r is not None]
    if not listed:
        listed = [r for r in (as_int(m.get("round")) for m in mechanism) if r is not None]
    return tuple(sorted(set(listed)))


def _smallest_sum(report: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Fewest institutions behind any sum the server decoded, and the largest colluding bound assumed.

    Survivors (contributors) are exact; without them, the threshold is a lower bound, since the server
    cannot decode a sum with fewer than ``t`` shares.
    """
    sessions = as_maps(report.get("secure_aggregation"))
    counted = [c for c in (as_int(s.get("contributors")) for s in sessions) if c is not None and c > 0]
    if not counted:
        counted = [
            c
            for c in (as_int(r.get("contributors")) for r in as_maps(report.get("rounds")))
            if c is not None and c > 0
        ]
    if not counted:
        counted = [t for t in (as_int(s.get("threshold")) for s in sessions) if t is not None]
    colluding = [c for c in (as_int(s.get("colluding")) for s in sessions) if c is not None]
    return (min(counted) if counted else None, max(colluding) if colluding else None)


def derive_facts(report: Mapping[str, Any]) -> Facts:
    """The shared figures of a report; a report that is not a federation's is read as an institution's."""
    kind = "federation" if report.get("kind") == "federation" else "institution"
    ident = as_map(report.get("identification"))
    privacy = as_map(report.get("privacy"))
    guarantee = as_map(report.get("guarantee"))
    mechanism = as_maps(report.get("mechanism"))
    if kind == "federation":
        subject = as_text(ident.get("federation")) or as_text(report.get("federation")) or "(unnamed)"
    else:
        subject = as_text(report.get("institution")) or "(unnamed)"
    dp_used = bool(privacy.get("dp_used", guarantee.get("dp_used", False)))
    total = as_int(ident.get("rounds_completed"))
    if total is None and as_maps(report.get("rounds")):
        total = len(as_maps(report.get("rounds")))
    smallest, colluding = _smallest_sum(report)
    return Facts(
        kind=kind,
        subject=subject,
        dp_used=dp_used,
        epsilon=as_num(privacy.get("epsilon")),
        epsilon_rdp=as_num(privacy.get("epsilon_rdp")),
        selection_releases=tuple(as_maps(privacy.get("selection_releases"))),
        epsilon_training=as_num(privacy.get("epsilon_training")),
        epsilon_selection=as_num(privacy.get("epsilon_selection")),
        delta=as_num(privacy.get("delta")),
        budget=as_num(privacy.get("budget")),
        rounds_trained=_rounds_trained(privacy, mechanism),
        rounds_total=total,
        refusals=tuple(as_maps(privacy.get("refusals"))),
        smallest_sum=smallest,
        colluding=colluding,
    )


def budget_used(epsilon: float | None, budget: float | None) -> float | None:
    """The share of the budget an epsilon uses; None without a finite epsilon or a positive budget."""
    if epsilon is None or budget is None or not math.isfinite(epsilon) or budget <= 0:
        return None
    return epsilon / budget


def over_budget(used: float) -> bool:
    """More than the whole budget used; a share that is 1 but for floating-point rounding is not over."""
    return used > 1 + 1e-12


def quoted_institutions(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A federation report's quotes of its institutions' reports, by institution id."""
    return {str(k): as_map(v) for k, v in as_map(report.get("institutions")).items()}


def quoted_dp_used(quote: Mapping[str, Any]) -> bool:
    """Whether a quoted institution trained with DP; quotes without the flag did if they state an epsilon."""
    return bool(quote.get("dp_used", as_num(quote.get("epsilon")) is not None))


def cohort_series(report: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(round, contributors, dropped) per round: from the round records, else from the SecAgg rows."""
    per_round: dict[int, tuple[int, int]] = {}
    for r in as_maps(report.get("rounds")):
        rnd, contributors = as_int(r.get("round")), as_int(r.get("contributors"))
        if rnd is not None and contributors is not None:
            per_round[rnd] = (contributors, as_int(r.get("dropped")) or 0)
    if not per_round:
        for s in as_maps(report.get("secure_aggregation")):
            rnd, contributors = as_int(s.get("round")), as_int(s.get("contributors"))
            if rnd is not None and contributors is not None:
                # Several stages per round: the last stage (the update) decides who contributed.
                per_round[rnd] = (contributors, as_int(s.get("dropped")) or 0)
    return [(rnd, c, d) for rnd, (c, d) in sorted(per_round.items())]
