"""Public settings of differentially private coreset selection, and what follows from them alone.

Everything here is a pure function of the consortium's :class:`DpSelection` settings: the integer scale
of every released segment, each release stage's per-record sensitivity, the Skellam parameter the
*sum* must carry, and so the ledger events every institution records. Because none of it depends on
data or on a server message, every institution derives it itself and no server value can weaken it.

The design and its measurements are in ``docs/research/coreset-dp/design.md``; the short version:

* Three stages, each released **once per federation** (base-model features are frozen):
  ``coreset-dp-mean`` (sum of clipped projected rows, record count), ``coreset-dp-moments`` (sum and
  upper-triangular outer products of the rows centred on the released mean, clipped), and
  ``coreset-dp-hist`` (per cell of a grid on the DP principal plane: record count and the sum of each
  record's offset from its cell centre, in half-widths). The server post-processes them into public
  centres (free under DP); institutions choose representatives locally and send nothing about it.
* Sensitivity per record (module :mod:`secfed.coreset.dp_release` derives each bound): a segment ``s``
  is released as ``q_s * value`` rounded per record, ``q_s = round(gamma * sqrt(share_s) / D2_s)``
  with ``D2_s`` the segment's real-valued L2 bound; the rounding of one record's vector moves it by less
  than 1 per coordinate, which the integer bounds include. So segment ``s`` has integer L2 sensitivity
  about ``gamma * sqrt(share_s)``: the shares split the budget between segments.
* One Skellam parameter ``lam`` for every coordinate of every stage; stages compose (RDP adds); ``lam``
  is the smallest that keeps the composition within ``epsilon`` at ``delta``
  (:func:`secfed.dp.skellam.calibrate_skellam_events`). Each institution adds ``Sk(lam / h)``, ``h = t - c``
  of the stage's session, so the sum of any ``t`` survivors holds at least ``Sk(lam)`` from its honest
  ones whoever colludes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from secfed.dp.skellam import SkellamEvent, calibrate_skellam_events

__all__ = [
    "DP_HIST_STAGE",
    "DP_MEAN_STAGE",
    "DP_MOMENTS_STAGE",
    "DP_STAGES",
    "DpSelection",
    "calibrated_lambda",
    "segment_scales",
    "selection_events",
    "stage_sensitivities",
]

DP_MEAN_STAGE = "coreset-dp-mean"
DP_MOMENTS_STAGE = "coreset-dp-moments"
DP_HIST_STAGE = "coreset-dp-hist"
#: The release stages, in order; each runs once per federation.
DP_STAGES = (DP_MEAN_STAGE, DP_MOMENTS_STAGE, DP_HIST_STAGE)

#: (stage, segment, share field): which share of the budget each released segment carries.
_SEGMENTS = (
    (DP_MEAN_STAGE, "sum", "share_mean_sum"),
    (DP_MEAN_STAGE, "count", "share_mean_count"),
    (DP_MOMENTS_STAGE, "sum", "share_moments_sum"),
    (DP_MOMENTS_STAGE, "outer", "share_moments_outer"),
    (DP_HIST_STAGE, "counts", "share_hist_counts"),
    (DP_HIST_STAGE, "offsets", "share_hist_offsets"),
)


@dataclass(frozen=True)
class DpSelection:
    """The consortium's DP selection settings (public; ``[task.options.selection_dp]``).

    ``epsilon`` at ``delta`` is the whole selection's privacy cost per institution, however many rounds
    reuse it. ``k0``: public projection dimensions; ``dims``: the DP principal plane's; ``bound``: clip of
    a projected row (unit features project to norm about 1); ``centred_clip``: clip of a row minus the
    released mean; ``bins``/``range_std``: the grid (interior bins per axis over +-range_std standard
    deviations, plus one overflow bin each side). ``share_*``: the budget's split between segments
    (normalised to sum 1). ``gamma``: integer resolution (the L2 sensitivity of the whole release in ring
    units; rounding costs about ``sqrt(length) / gamma`` relative). Server post-processing:
    ``threshold_sigmas`` (cells kept when their noisy count exceeds this many noise standard deviations)
    and ``centres_per_budget`` (centres = this times the round's record budget); institutions:
    ``oversample`` (acceptance probability ``min(1, oversample * m * n_ig / N_g)``).

    Defaults measured on the shared Dolly split (10 x 80 records): ``docs/research/coreset-dp``.
    """

    epsilon: float
    delta: float = 1e-5
    k0: int = 8
    dims: int = 2
    bound: float = 1.5
    centred_clip: float = 0.3
    bins: int = 10
    range_std: float = 2.5
    share_mean_sum: float = 0.10
    share_mean_count: float = 0.02
    share_moments_sum: float = 0.05
    share_moments_outer: float = 0.48
    share_hist_counts: float = 0.30
    share_hist_offsets: float = 0.05
    gamma: float = 1000.0
    threshold_sigmas: float = 1.0
    centres_per_budget: float = 1.0
    oversample: float = 2.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"selection_dp.{name} must be a finite number, got {value!r}")
            return float(value)

        for name in ("k0", "dims", "bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"selection_dp.{name} must be an integer >= 1, got {value!r}")
        if self.dims > self.k0:
            raise ValueError(f"selection_dp.dims ({self.dims}) cannot exceed k0 ({self.k0})")
        if not number("epsilon") > 0:
            raise ValueError(f"selection_dp.epsilon must be > 0, got {self.epsilon}")
        if not 0 < number("delta") < 1:
            raise ValueError(f"selection_dp.delta must be in (0, 1), got {self.delta}")
        for name in ("bound", "centred_clip", "range_std", "gamma", "oversample", "centres_per_budget"):
            if not number(name) > 0:
                raise ValueError(f"selection_dp.{name} must be > 0, got {getattr(self, name)}")
        if number("threshold_sigmas") < 0:
            raise ValueError(f"selection_dp.threshold_sigmas must be >= 0, got {self.threshold_sigmas}")
        shares = [number(share) for _, _, share in _SEGMENTS]
        if any(s < 0 for s in shares) or not sum(shares) > 0:
            raise ValueError("selection_dp shares must be >= 0 and not all zero")
        if self.gamma < 10:
            raise ValueError(f"selection_dp.gamma must be >= 10 (integer resolution), got {self.gamma}")

    def share(self, stage: str, segment: str) -> float:
        """The normalised budget share of one segment."""
        total = sum(float(getattr(self, f)) for _, _, f in _SEGMENTS)
        for st, seg, f in _SEGMENTS:
            if (st, seg) == (stage, segment):
                return float(getattr(self, f)) / total
        raise KeyError(f"no segment {segment!r} in stage {stage!r}")

    @property
    def upper_length(self) -> int:
        """Entries of the upper triangle (diagonal included) of a ``k0 x k0`` matrix."""
        return self.k0 * (self.k0 + 1) // 2

    @property
    def n_cells(self) -> int:
        return int((self.bins + 2) ** self.dims)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DpSelection:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown selection_dp settings: {sorted(unknown)}; known: {sorted(known)}")
        if "epsilon" not in data:
            raise ValueError("selection_dp needs epsilon (the whole selection's privacy cost)")
        return cls(**data)


def _real_l2(cfg: DpSelection, stage: str, segment: str) -> float:
    """A segment's real-valued per-record L2 bound (before scaling; see :mod:`secfed.coreset.dp_release`)."""
    bounds = {
        (DP_MEAN_STAGE, "sum"): cfg.bound,
        (DP_MEAN_STAGE, "count"): 1.0,
        (DP_MOMENTS_STAGE, "sum"): cfg.centred_clip,
        (DP_MOMENTS_STAGE, "outer"): cfg.centred_clip**2,
        (DP_HIST_STAGE, "counts"): 1.0,
        (DP_HIST_STAGE, "offsets"): math.sqrt(cfg.dims),  # offsets in half-widths: each in [-1, 1]
    }
    return bounds[(stage, segment)]


def _real_l1(cfg: DpSelection, stage: str, segment: str) -> float:
    """A segment's real-valued per-record L1 bound (Cauchy-Schwarz from the L2 bound where needed)."""
    bounds = {
        (DP_MEAN_STAGE, "sum"): cfg.bound * math.sqrt(cfg.k0),
        (DP_MEAN_STAGE, "count"): 1.0,
        (DP_MOMENTS_STAGE, "sum"): cfg.centred_clip * math.sqrt(cfg.k0),
        # sum_{i<=j} |z_i z_j| = (|z|_1^2 + |z|_2^2) / 2 <= C^2 (k0 + 1) / 2
        (DP_MOMENTS_STAGE, "outer"): cfg.centred_clip**2 * (cfg.k0 + 1) / 2,
        (DP_HIST_STAGE, "counts"): 1.0,
        (DP_HIST_STAGE, "offsets"): float(cfg.dims),
    }
    return bounds[(stage, segment)]


def _rounded_length(cfg: DpSelection, stage: str, segment: str) -> int:
    """How many coordinates of one record's scaled vector are randomly rounded (0: already integers).

    A record touches ``k0`` coordinates of a sum, ``k0 (k0 + 1) / 2`` of the outer products, ``dims``
    offsets of its one cell; counts are integers times an integer scale."""
    lengths = {
        (DP_MEAN_STAGE, "sum"): cfg.k0,
        (DP_MEAN_STAGE, "count"): 0,
        (DP_MOMENTS_STAGE, "sum"): cfg.k0,
        (DP_MOMENTS_STAGE, "outer"): cfg.upper_length,
        (DP_HIST_STAGE, "counts"): 0,
        (DP_HIST_STAGE, "offsets"): cfg.dims,
    }
    return lengths[(stage, segment)]


def segment_scales(cfg: DpSelection) -> dict[tuple[str, str], int]:
    """The integer scale ``q_s`` of each segment: ``round(gamma * sqrt(share_s) / D2_s)``, at least 1
    (a zero share still releases the segment, at the smallest resolution)."""
    return {
        (stage, seg): max(1, round(cfg.gamma * math.sqrt(cfg.share(stage, seg)) / _real_l2(cfg, stage, seg)))
        for stage, seg, _ in _SEGMENTS
    }


def stage_sensitivities(cfg: DpSelection) -> dict[str, tuple[float, float]]:
    """(L1, L2) of each stage's integer vector when one record is added or removed.

    Per segment: ``q_s * D_s`` plus the rounding, which moves each of the record's rounded coordinates
    by less than 1 (so at most ``sqrt(n)`` in L2 and ``n`` in L1 over ``n`` rounded coordinates). The
    record's vector is rounded on its own (per record, before summing), so adding or removing it changes
    the institution's integer sum by exactly its own rounded vector, whatever the other records drew."""
    scales = segment_scales(cfg)
    out: dict[str, tuple[float, float]] = {}
    for stage in DP_STAGES:
        l1 = l2_squared = 0.0
        for st, seg, _ in _SEGMENTS:
            if st != stage:
                continue
            q, n = scales[(st, seg)], _rounded_length(cfg, st, seg)
            l1 += q * _real_l1(cfg, st, seg) + n
            l2_squared += (q * _real_l2(cfg, st, seg) + math.sqrt(n)) ** 2
        out[stage] = (l1, math.sqrt(l2_squared))
    return out


@functools.lru_cache(maxsize=64)
def calibrated_lambda(cfg: DpSelection) -> float:
    """The Skellam parameter the released *sum* must carry in every coordinate of every stage."""
    sens = stage_sensitivities(cfg)
    return calibrate_skellam_events(cfg.epsilon, cfg.delta, [sens[stage] for stage in DP_STAGES])


def selection_events(cfg: DpSelection, round_: int | None = None) -> dict[str, SkellamEvent]:
    """The ledger event of each stage (what every institution records before that stage leaves)."""
    lam = calibrated_lambda(cfg)
    return {
        stage: SkellamEvent(lam, l1, l2, what=stage, round=round_)
        for stage, (l1, l2) in stage_sensitivities(cfg).items()
    }
