"""Who decides what about differential privacy: the consortium sets the mechanism, each institution its budget.

``DpOptions`` is the mechanism the federation agrees on (the server's ``[task.options.dp]``, sent to
every client with each round): an explicit noise multiplier, or a target epsilon at delta over the
planned rounds from which each institution calibrates its own noise multiplier (the sampling rate
depends on its own number of records, so the same target needs different noise at different sizes).

``PrivacyPolicy`` belongs to the institution alone (its client configuration's ``[privacy]``): where
its privacy ledger lives (by default the institution's own, shared by all its federations), its delta, its epsilon budget, and whether it trains at all without DP.
The server cannot change it; the client enforces it before every round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_DELTA = 1e-5


def _check_delta(delta: float, where: str) -> None:
    if not (0 < delta < 1 and math.isfinite(delta)):
        raise ValueError(f"{where}delta must be in (0, 1), got {delta}")


@dataclass(frozen=True)
class DpOptions:
    """DP-SGD mechanism settings for every institution (exactly one of noise_multiplier / target_epsilon)."""

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = DEFAULT_DELTA
    rounds: int | None = None  # rounds the target is spread over; the server fills in its plan's rounds
    max_grad_norm: float = 1.0
    expected_batch_size: int = 8
    max_physical_batch: int = 4

    def __post_init__(self) -> None:
        where = "dp options: "
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"{where}set exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not (
            self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)
        ):
            raise ValueError(f"{where}noise_multiplier must be > 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None:
            if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
                raise ValueError(f"{where}target_epsilon must be > 0, got {self.target_epsilon}")
            if self.rounds is None or self.rounds < 1:
                raise ValueError(f"{where}target_epsilon needs rounds >= 1 (the rounds it is spread over)")
        _check_delta(self.delta, where)
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"{where}max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.expected_batch_size < 1 or self.max_physical_batch < 1:
            raise ValueError(f"{where}expected_batch_size and max_physical_batch must be >= 1")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> DpOptions:
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"dp options: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)

    def to_mapping(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def require_dp_by_default(budget_epsilon: float | None) -> bool:
    """An institution that sets a privacy budget requires DP-SGD unless it says otherwise: a budget
    next to rounds trained without noise would be a promise its ledger cannot keep."""
    return budget_epsilon is not None


@dataclass(frozen=True)
class PrivacyPolicy:
    """An institution's own privacy rules, enforced by its client before every round.

    Built from a file or mapping, ``require_dp`` defaults to :func:`require_dp_by_default`."""

    # None: the institution's own ledger, $SECFED_HOME/<institution>/privacy-ledger.jsonl (secfed.home),
    # shared by every federation over its records so that their releases compose.
    ledger: Path | None = None
    delta: float = DEFAULT_DELTA
    budget_epsilon: float | None = None
    # None: require_dp_by_default (true exactly when a budget is set).
    require_dp: bool | None = None
    # Refuse coreset statistics released without DP (FedHDS without selection_dp); DP selection
    # satisfies it. Off by default so FedHDS keeps working as configured (ledgered either way).
    require_selection_dp: bool = False

    def __post_init__(self) -> None:
        if self.require_dp is None:
            object.__setattr__(self, "require_dp", require_dp_by_default(self.budget_epsilon))
        _check_delta(self.delta, "privacy: ")
        if self.budget_epsilon is not None and not (
            self.budget_epsilon > 0 and math.isfinite(self.budget_epsilon)
        ):
            raise ValueError(f"privacy: budget_epsilon must be > 0, got {self.budget_epsilon}")
        if self.budget_epsilon is not None and not self.require_dp:
            raise ValueError(
                f"privacy: budget_epsilon = {self.budget_epsilon} with require_dp = false: one round without "
                "DP-SGD makes epsilon unbounded, so the budget could not hold; drop the budget to take part "
                "in a federation without DP, or require DP"
            )

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "delta": self.delta,
            "require_dp": self.require_dp,
            "require_selection_dp": self.require_selection_dp,
        }
        if self.budget_epsilon is not None:
            out["budget_epsilon"] = self.budget_epsilon
        if self.ledger is not None:
            out["ledger"] = str(self.ledger)
        return out

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PrivacyPolicy:
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"privacy: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        budget = None if raw.get("budget_epsilon") is None else float(raw["budget_epsilon"])
        return cls(
            ledger=None if raw.get("ledger") is None else Path(raw["ledger"]),
            delta=float(raw.get("delta", DEFAULT_DELTA)),
            budget_epsilon=budget,
            require_dp=None if raw.get("require_dp") is None else bool(raw["require_dp"]),
            require_selection_dp=bool(raw.get("require_selection_dp", False)),
        )
