"""Skellam noise for statistics released through secure aggregation, and its privacy accounting.

Why Skellam, for distributed DP over SecAgg (the [coreset-dp] design): the noise must be an integer (it
is added in the ring, before masking, so nothing but integers ever reaches the wire), and the *sum* of
the shares the institutions add must be a noise whose privacy is known exactly. ``Sk(lam)``, the
difference of two independent Poisson(``lam``) variables, is both: integer-valued, mean 0, variance
``2 lam``, and closed under sums, ``Sk(lam_1) + ... + Sk(lam_m) = Sk(lam_1 + ... + lam_m)`` exactly.
So each institution adds ``Sk(lam_total / h)`` to every coordinate, where ``h`` is the fewest honest
contributors a released sum can have (``t - c``), and the sum carries at least ``Sk(lam_total)``
whoever drops out or colludes (colluders may add nothing). The distributed discrete Gaussian (Kairouz,
Liu & Steinke 2021) would do as well for privacy, but its sum is only *close* to a discrete Gaussian,
which costs an extra term in the accounting, and its exact sampler is a rejection loop per coordinate.

Privacy (Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
NeurIPS 2021): for a query whose value, scaled to integers, moves by at most ``l1`` in L1 norm and
``l2`` in L2 norm when one record is added or removed, adding ``Sk(lam)`` to each coordinate is
``(alpha, eps(alpha))``-RDP with

    eps(alpha) = alpha * l2^2 / (4 lam) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 lam^2), 3 l1 / (4 lam))

(the first term is the Gaussian mechanism's at the same variance ``2 lam``). ``tests/dp/test_skellam.py``
checks it against the exact Renyi divergence of one-dimensional Skellam distributions, computed
independently from scipy's probability mass function. RDP composes by adding; (eps, delta) follows by
the conversion ``dp_accounting`` uses for DP-SGD, so selection and training compose in one ledger.

Sampling: from the AES-256-CTR stream of :mod:`secfed.dp.csprng` (never numpy's or torch's statistical
generators: whoever predicts the noise removes it). Poisson variates come from exact algorithms driven
by its uniforms: sequential inversion below ``lam = 10`` and Hormann's transformed rejection with
squeeze (PTRS, 1993) above; both are vectorised over whole arrays, the rejection step repeating only for
the few rejected positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secfed.dp.accounting import RDP_ORDERS, validate_delta
from secfed.dp.csprng import AesCtrGaussian

__all__ = [
    "SkellamEvent",
    "calibrate_skellam",
    "calibrate_skellam_events",
    "poisson",
    "skellam",
    "skellam_epsilon",
    "skellam_events_epsilon",
    "skellam_events_rdp",
    "skellam_rdp",
]

_LGAMMA = np.frompyfunc(math.lgamma, 1, 1)  # exact per value; only the few unsqueezed draws need it
_PTRS_MIN = 10.0  # PTRS is valid from lam >= 10; inversion below
_MAX_LAMBDA = 1e15  # far above any useful noise (std 4.5e7 in ring units); keeps float64 exact enough


def _check_lambda(lam: float) -> float:
    if not isinstance(lam, int | float) or isinstance(lam, bool) or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    if not 0 <= lam <= _MAX_LAMBDA:
        raise ValueError(f"lam must be in [0, {_MAX_LAMBDA:g}], got {lam!r}")
    return float(lam)


def _poisson_inversion(lam: float, n: int, stream: AesCtrGaussian) -> npt.NDArray[np.int64]:
    """Sequential search of the CDF, all positions at once: ``k`` is the first with ``F(k) > u``."""
    u = stream.uniform(n)
    k = np.zeros(n, dtype=np.int64)
    p = math.exp(-lam)
    cdf = p
    active = u >= cdf
    step = 0
    while active.any():
        step += 1
        p *= lam / step
        if p == 0.0:  # the tail beyond float64: the (<1e-300 likely) rest stays at this k
            break
        k[active] = step
        cdf += p
        active &= u >= cdf
    return k


def _poisson_ptrs(lam: float, n: int, stream: AesCtrGaussian) -> npt.NDArray[np.int64]:
    """Hormann's PTRS: a transformed-rejection proposal, a squeeze for quick acceptance, and the exact
    log-density test for the rest. Rejected positions are drawn again until none is left."""
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2)
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        draws = stream.uniform(2 * m)
        u = draws[:m] - 0.5
        v = draws[m:]
        us = 0.5 - np.abs(u)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.floor((2 * a / us + b) * u + lam + 0.43)
            quick = (us >= 0.07) & (v <= v_r)
            possible = ~quick & (k >= 0) & ~((us < 0.013) & (v > us)) & np.isfinite(k)
            log_lhs = np.log(v[possible] * inv_alpha / (a / (us[possible] ** 2) + b))
            kp = k[possible]
            log_rhs = -lam + kp * loglam - _LGAMMA(kp + 1).astype(np.float64)
        accept = quick.copy()
        accept[possible] = log_lhs <= log_rhs
        out[todo[accept]] = k[accept].astype(np.int64)
        todo = todo[~accept]
    return out


def poisson(lam: float, n: int, stream: AesCtrGaussian) -> npt.NDArray[np.int64]:
    """``n`` independent Poisson(``lam``) variates from the cryptographic ``stream``."""
    lam = _check_lambda(lam)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if lam == 0.0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if lam < _PTRS_MIN:
        return _poisson_inversion(lam, n, stream)
    return _poisson_ptrs(lam, n, stream)


def skellam(lam: float, n: int, stream: AesCtrGaussian) -> npt.NDArray[np.int64]:
    """``n`` independent ``Sk(lam)`` variates (Poisson(lam) - Poisson(lam): mean 0, variance ``2 lam``)."""
    return poisson(lam, n, stream) - poisson(lam, n, stream)


def skellam_rdp(alpha: float, lam: float, l1: float, l2: float) -> float:
    """RDP of order ``alpha`` of adding ``Sk(lam)`` to a query of sensitivities ``l1``, ``l2`` (see the
    module docstring; ``inf`` without noise)."""
    if not alpha > 1:
        raise ValueError(f"alpha must be > 1, got {alpha!r}")
    if l1 < 0 or l2 < 0 or l2 > l1:
        raise ValueError(f"sensitivities must satisfy 0 <= l2 <= l1, got l1={l1!r}, l2={l2!r}")
    lam = _check_lambda(lam)
    if l1 == 0:
        return 0.0
    if lam == 0:
        return math.inf
    gaussian = alpha * l2 * l2 / (4 * lam)
    return gaussian + min(((2 * alpha - 1) * l2 * l2 + 6 * l1) / (16 * lam * lam), 3 * l1 / (4 * lam))


def skellam_epsilon(
    lam: float,
    l1: float,
    l2: float,
    delta: float,
    releases: int = 1,
    orders: Sequence[float] = RDP_ORDERS,
) -> float:
    """Epsilon at ``delta`` of ``releases`` Skellam releases composed (RDP, then the conversion of
    ``dp_accounting``, the one the DP-SGD ledger uses)."""
    from dp_accounting.rdp import rdp_privacy_accountant

    delta = validate_delta(delta)
    if not isinstance(releases, int) or releases < 0:
        raise ValueError(f"releases must be an integer >= 0, got {releases!r}")
    if releases == 0 or l1 == 0:
        return 0.0
    rdp = [releases * skellam_rdp(a, lam, l1, l2) for a in orders]
    if not all(math.isfinite(r) for r in rdp):
        return math.inf
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(orders), rdp, delta)
    return max(0.0, float(epsilon))


def calibrate_skellam(
    epsilon: float, delta: float, l1: float, l2: float, releases: int = 1, tolerance: float = 1e-3
) -> float:
    """The smallest total ``lam`` (to ``tolerance``, relative) whose ``releases`` composed releases
    stay within ``epsilon`` at ``delta``: what the *sum* must carry, before it is split into shares."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if l1 == 0:
        return 0.0

    def fits(lam: float) -> bool:
        return skellam_epsilon(lam, l1, l2, delta, releases) <= epsilon

    high = max(1.0, l2 * l2)
    while not fits(high):
        high *= 4
        if high > _MAX_LAMBDA:
            raise ValueError(f"epsilon {epsilon} is out of reach for these sensitivities")
    low = high / 4 if high > 1.0 else 0.0
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class SkellamEvent:
    """One Skellam release, as the privacy ledger records it: ``Sk(lam)`` at least in every coordinate of
    the released *sum* (``lam`` is what the honest contributors guarantee together, not one share), for
    a vector whose integer value moves by at most ``l1`` (L1) and ``l2`` (L2) when one record is added
    or removed. ``what`` names the release for people (e.g. ``coreset-dp-mean``); ``round`` is
    informational, as for :class:`secfed.dp.accounting.DpEvent`."""

    lam: float
    l1: float
    l2: float
    what: str = ""
    round: int | None = None

    def __post_init__(self) -> None:
        _check_lambda(self.lam)
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"Skellam event {name} must be a finite number, got {value!r}")
        if not 0 <= self.l2 <= self.l1:
            raise ValueError(f"Skellam event needs 0 <= l2 <= l1, got l1={self.l1!r}, l2={self.l2!r}")
        if self.round is not None and (isinstance(self.round, bool) or not isinstance(self.round, int)):
            raise ValueError(f"round must be an integer or None, got {self.round!r}")

    def rdp(self, alpha: float) -> float:
        """This release's RDP at order ``alpha``."""
        return skellam_rdp(alpha, self.lam, self.l1, self.l2)

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mechanism": "skellam", "lam": self.lam, "l1": self.l1, "l2": self.l2}
        if self.what:
            out["what"] = self.what
        if self.round is not None:
            out["round"] = self.round
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SkellamEvent:
        """Parse :meth:`to_mapping`'s form (extra keys are ignored; a wrong mechanism is an error)."""
        if data.get("mechanism") != "skellam":
            raise ValueError(f"not a Skellam event: mechanism {data.get('mechanism')!r}")
        try:
            lam, l1, l2 = data["lam"], data["l1"], data["l2"]
        except KeyError as exc:
            raise ValueError(f"Skellam event is missing {exc.args[0]!r}") from None
        for name, value in (("lam", lam), ("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"Skellam event {name} must be a number, got {value!r}")
        what = data.get("what", "")
        if not isinstance(what, str):
            raise ValueError(f"Skellam event what must be a string, got {what!r}")
        return cls(float(lam), float(l1), float(l2), what, data.get("round"))


def skellam_events_rdp(events: Iterable[SkellamEvent], orders: Sequence[float] = RDP_ORDERS) -> list[float]:
    """The RDP curve (one value per order) of ``events`` composed: RDP adds."""
    listed = list(events)
    return [sum(e.rdp(a) for e in listed) for a in orders]


def skellam_events_epsilon(
    events: Iterable[SkellamEvent], delta: float, orders: Sequence[float] = RDP_ORDERS
) -> float:
    """Epsilon at ``delta`` of ``events`` composed (RDP, converted as for DP-SGD's RDP cross-check)."""
    from dp_accounting.rdp import rdp_privacy_accountant

    delta = validate_delta(delta)
    rdp = skellam_events_rdp(events, orders)
    if not any(rdp):
        return 0.0
    if not all(math.isfinite(r) for r in rdp):
        return math.inf
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(orders), rdp, delta)
    return max(0.0, float(epsilon))


def calibrate_skellam_events(
    epsilon: float,
    delta: float,
    sensitivities: Sequence[tuple[float, float]],
    tolerance: float = 1e-3,
) -> float:
    """The smallest ``lam`` (to ``tolerance``, relative) such that releases with the given ``(l1, l2)``
    sensitivities, each with ``Sk(lam)`` per coordinate, composed stay within ``epsilon`` at ``delta``."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not any(l1 > 0 for l1, _ in sensitivities):
        return 0.0

    def fits(lam: float) -> bool:
        events = [SkellamEvent(lam, l1, l2) for l1, l2 in sensitivities]
        return skellam_events_epsilon(events, delta) <= epsilon

    high = max(1.0, max(l2 * l2 for _, l2 in sensitivities))
    while not fits(high):
        high *= 4
        if high > _MAX_LAMBDA:
            raise ValueError(f"epsilon {epsilon} is out of reach for these sensitivities")
    low = high / 4
    while fits(low):  # a large epsilon fits far less noise: bracket it from below too
        high, low = low, low / 4
        if low < 1e-9:
            return high
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high
