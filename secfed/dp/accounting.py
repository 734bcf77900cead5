"""Privacy accounting for DP-SGD rounds: epsilon from a PLD accountant, RDP as a cross-check.

The mechanism accounted for is the one DP-SGD actually runs at one institution: every optimiser step
Poisson-samples each training sequence with probability ``q`` (``sample_rate``), clips per-sample
gradients to ``C`` and adds Gaussian noise of standard deviation ``sigma * C`` (``noise_multiplier``).
One federated round at one institution is ``steps`` such steps; rounds compose.  In
``dp_accounting`` terms one round is ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``
under the add-or-remove-one neighbouring relation (the privacy unit is one training sequence).

Choices, and why:

* **PLD is the number we report** (``epsilon_pld``).  It is the tightest numerically sound accountant
  for the Poisson-subsampled Gaussian.  We use ``value_discretization_interval = 1e-3`` instead of
  the library default ``1e-4``: ``dp_accounting`` rounds pessimistically, so a coarser grid still
  gives an *upper* bound on epsilon, only a slightly looser one (within 0.5 % of ``1e-4`` on the
  settings in ``tests/dp/test_accounting.py``) and about ten times faster, which matters because
  noise calibration evaluates the accountant a few dozen times.
* **RDP is a conservative cross-check** (``epsilon_rdp``), computed on integer orders only (exact
  formulas; the fractional orders of the library default fail to converge for large ``q`` and are
  dropped with a log warning).  RDP is always a valid but looser bound, so ``rdp >= pld`` up to the
  PLD grid; a PLD figure far *above* RDP would mean a bug.
* **Never the GDP/CLT accountant**: it is an approximation that underestimates epsilon for
  realistic, non-asymptotic settings.
* Events with the same ``(noise_multiplier, sample_rate)`` are merged by adding their steps before
  composing: composition is commutative, so the result is identical and much cheaper for a ledger
  of many equal rounds.
* ``noise_multiplier == 0`` is a non-private release: epsilon is ``inf``.
* **Very weak noise falls back to RDP.**  The PLD grid of a Gaussian with a tiny noise multiplier
  spans privacy losses up to about ``1 / (2 sigma^2)`` per step: ``sigma = 0.02`` over 1000 steps
  exhausts memory.  So a cheap RDP bound (14 orders, milliseconds) is computed first, and when it
  exceeds ``PLD_FALLBACK_EPSILON`` (100) the full RDP epsilon is returned as the PLD figure too.  It is still a valid upper
  bound, and at that level the exact value is irrelevant: no real budget is that large.  Below the
  threshold the PLD takes well under a second (measured on the settings in the tests).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "CALIBRATION_TOLERANCE",
    "PLD_DISCRETIZATION",
    "PLD_FALLBACK_EPSILON",
    "RDP_ORDERS",
    "DpEvent",
    "DpRelease",
    "EpsilonReport",
    "calibrate_noise",
    "epsilon_pld",
    "epsilon_rdp",
    "epsilon_report",
    "rdp_curve",
    "validate_delta",
]

PLD_DISCRETIZATION = 1e-3
"""PLD value-discretization interval (pessimistic rounding: still an upper bound)."""

RDP_ORDERS: tuple[float, ...] = (
    *(float(a) for a in range(2, 129)),
    *(float(a) for a in (160, 192, 256, 320, 384, 512, 768, 1024)),
)
"""RDP orders: integers only, for which the subsampled-Gaussian RDP is computed exactly."""

PLD_FALLBACK_EPSILON = 100.0
"""Above this RDP epsilon the PLD is not computed (too large a grid) and the RDP value is used."""

_SCREEN_ORDERS: tuple[float, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
"""A few orders for the cheap RDP screen that decides whether the PLD is affordable."""

CALIBRATION_TOLERANCE = 1e-3
"""Relative width of the bracket at which noise calibration stops (the upper end is returned)."""

_MAX_NOISE = 1e6


class DpRelease(Protocol):
    """Anything carrying the three mechanism parameters (e.g. ``secfed.dp.sgd.DpRoundEvent``)."""

    @property
    def noise_multiplier(self) -> float: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def steps(self) -> int: ...


@dataclass(frozen=True)
class DpEvent:
    """One DP release to account for: ``steps`` Poisson-sampled Gaussian steps.

    This is the accountant's view of ``secfed.dp.sgd.DpRoundEvent`` (same field names, so
    ``DpEvent.from_release(round_event)`` converts), kept here so that accounting never imports torch.
    ``round`` is informational (which federated round it was); it does not affect epsilon.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    round: int | None = None

    def __post_init__(self) -> None:
        _validate_mechanism(self.noise_multiplier, self.sample_rate, self.steps)
        if self.round is not None and (isinstance(self.round, bool) or not isinstance(self.round, int)):
            raise ValueError(f"round must be an integer or None, got {self.round!r}")

    @classmethod
    def from_release(cls, release: DpRelease, round: int | None = None) -> DpEvent:
        """The accountant's event for a training release (e.g. a ``DpRoundEvent``)."""
        return cls(
            noise_multiplier=float(release.noise_multiplier),
            sample_rate=float(release.sample_rate),
            steps=int(release.steps),
            round=round,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DpEvent:
        """Parse the JSON form written by :meth:`to_mapping` (extra keys are ignored)."""
        try:
            noise, rate, steps = data["noise_multiplier"], data["sample_rate"], data["steps"]
        except KeyError as exc:
            raise ValueError(f"DP event is missing {exc.args[0]!r}: {dict(data)!r}") from None
        round_ = data.get("round")
        for name, value in (("noise_multiplier", noise), ("sample_rate", rate)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"DP event {name} must be a number, got {value!r}")
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"DP event steps must be an integer, got {steps!r}")
        return cls(float(noise), float(rate), steps, round_)

    def to_mapping(self) -> dict[str, Any]:
        """JSON-ready form (``round`` only when known)."""
        out: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }
        if self.round is not None:
            out["round"] = self.round
        return out


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon at ``delta`` from both accountants; ``pld`` is the figure to report and enforce."""

    pld: float
    rdp: float
    delta: float

    def to_mapping(self) -> dict[str, float | None]:
        """JSON-ready form; infinite epsilon becomes ``None`` (JSON has no infinity)."""
        return {
            "epsilon_pld": None if math.isinf(self.pld) else self.pld,
            "epsilon_rdp": None if math.isinf(self.rdp) else self.rdp,
            "delta": self.delta,
        }


def validate_delta(delta: float) -> float:
    """Return ``delta`` as a float if it is a usable DP delta (strictly between 0 and 1)."""
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a number strictly between 0 and 1, got {delta!r}")
    return float(delta)


def _validate_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if (
        isinstance(noise_multiplier, bool)
        or not isinstance(noise_multiplier, int | float)
        or not math.isfinite(noise_multiplier)
        or noise_multiplier < 0
    ):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | float)
        or not 0.0 < sample_rate <= 1.0
    ):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


_Groups = tuple[tuple[float, float, int], ...]


def _groups(events: Iterable[DpEvent]) -> _Groups:
    """Merge events with equal mechanism parameters (composition is commutative)."""
    steps: dict[tuple[float, float], int] = {}
    for event in events:
        if not isinstance(event, DpEvent):
            raise ValueError(f"expected DpEvent, got {type(event).__name__}")
        if event.steps == 0:
            continue
        key = (event.noise_multiplier, event.sample_rate)
        steps[key] = steps.get(key, 0) + event.steps
    return tuple(sorted((noise, rate, n) for (noise, rate), n in steps.items()))


def _dp_event(groups: _Groups) -> Any:
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
            )
            for noise, rate, steps in groups
        ]
    )


@functools.lru_cache(maxsize=256)
def _pld(groups: _Groups, delta: float) -> float:
    if not groups:
        return 0.0
    if any(noise == 0.0 for noise, _, _ in groups):
        return math.inf
    if _rdp_epsilon(groups, delta, _SCREEN_ORDERS) > PLD_FALLBACK_EPSILON:
        return _rdp(groups, delta)
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(_dp_event(groups))
    return max(0.0, float(accountant.get_epsilon(delta)))


@functools.lru_cache(maxsize=256)
def _rdp(groups: _Groups, delta: float) -> float:
    return _rdp_epsilon(groups, delta, RDP_ORDERS)


def _rdp_epsilon(groups: _Groups, delta: float, orders: tuple[float, ...]) -> float:
    if not groups:
        return 0.0
    if any(noise == 0.0 for noise, _, _ in groups):
        return math.inf
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(orders))
    accountant.compose(_dp_event(groups))
    return max(0.0, float(accountant.get_epsilon(delta)))


@functools.lru_cache(maxsize=256)
def _rdp_curve(groups: _Groups) -> tuple[float, ...]:
    if not groups:
        return (0.0,) * len(RDP_ORDERS)
    if any(noise == 0.0 for noise, _, _ in groups):
        return (math.inf,) * len(RDP_ORDERS)
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(_dp_event(groups))
    return tuple(float(r) for r in accountant.rdp)


def rdp_curve(events: Iterable[DpEvent]) -> tuple[float, ...]:
    """The RDP of ``events`` composed, one value per order of ``RDP_ORDERS`` (the curve
    :func:`epsilon_rdp` converts), so that other mechanisms' RDP can be added to it before the
    conversion: the ledger composes DP-SGD with the Skellam selection releases this way, which the
    PLD accountant cannot take."""
    return _rdp_curve(_groups(events))


def epsilon_pld(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed, from the PLD accountant (``inf`` if any
    event has zero noise; ``0`` for no steps at all)."""
    return _pld(_groups(events), validate_delta(delta))


def epsilon_rdp(events: Iterable[DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` from the RDP accountant: a looser, independent upper bound."""
    return _rdp(_groups(events), validate_delta(delta))


def epsilon_report(events: Iterable[DpEvent], delta: float) -> EpsilonReport:
    """Both accountants' epsilon for the same events."""
    groups, delta = _groups(events), validate_delta(delta)
    return EpsilonReport(pld=_pld(groups, delta), rdp=_rdp(groups, delta), delta=delta)


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps_per_round: int, rounds: int
) -> float:
    """Smallest noise multiplier whose PLD epsilon over ``rounds`` rounds is at most the target.

    Bisection on ``sigma`` (epsilon is decreasing in sigma).  The bracket is shrunk until its width is
    at most ``CALIBRATION_TOLERANCE`` times its upper end, and the *upper* end is returned, so the
    result always satisfies the target (never rounds toward less noise) and is within 0.1 % of the
    exact minimum.
    """
    if (
        isinstance(target_epsilon, bool)
        or not isinstance(target_epsilon, int | float)
        or not math.isfinite(target_epsilon)
        or target_epsilon <= 0
    ):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    delta = validate_delta(delta)
    _validate_mechanism(1.0, sample_rate, steps_per_round)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if steps_per_round == 0:
        raise ValueError("steps_per_round must be >= 1 to calibrate noise")

    def eps(noise: float) -> float:
        return epsilon_pld([DpEvent(noise, float(sample_rate), steps_per_round * rounds)], delta)

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2.0
        if high > _MAX_NOISE:
            raise ValueError(
                f"no noise multiplier up to {_MAX_NOISE:g} reaches epsilon {target_epsilon} at delta {delta}"
            )
    while high - low > CALIBRATION_TOLERANCE * high:
        mid = (low + high) / 2.0
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
