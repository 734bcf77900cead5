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
    "MAX_CENTRES",
    "DpSelection",
    "calibrated_lambda",
    "segment_scales",
    "selection_events",
    "stage_sensitivities",
]

#: The most lattice points or grid cells the server's post-processing may weigh, and the most centres
#: it may place: every institution repeats that k-means to check the server's plan (measured on this
#: 2-core machine: 1,600 points and 20 centres 0.1 s; 4,096 points and 256 centres 2.3 s).
_MAX_POINTS = 4096
MAX_CENTRES = 256

#: Settings that only post-process the released sums or steer the local choice.
_POST_PROCESSING = frozenset(
    {"threshold_sigmas", "centres_per_budget", "max_centres", "oversample", "model_bins", "model_range"}
)

DP_MEAN_STAGE = "coreset-dp-mean"
DP_MOMENTS_STAGE = "coreset-dp-moments"
DP_HIST_STAGE = "coreset-dp-hist"
#: The release stages, in order; each runs once per federation.
DP_STAGES = (DP_MEAN_STAGE, DP_MOMENTS_STAGE, DP_HIST_STAGE)

#: (stage, segment, share field): which share of the budget each released segment carries.
_COMMON_SEGMENTS = (
    (DP_MEAN_STAGE, "sum", "share_mean_sum"),
    (DP_MEAN_STAGE, "count", "share_mean_count"),
    (DP_MOMENTS_STAGE, "sum", "share_moments_sum"),
    (DP_MOMENTS_STAGE, "outer", "share_moments_outer"),
)
#: The third stage's segments by density model: a per-cell histogram, or the plane's per-axis spread.
_DENSITY_SEGMENTS = {
    "histogram": (
        (DP_HIST_STAGE, "counts", "share_hist_counts"),
        (DP_HIST_STAGE, "offsets", "share_hist_offsets"),
    ),
    "gauss": ((DP_HIST_STAGE, "var", "share_hist_var"),),
}


@dataclass(frozen=True)
class DpSelection:
    """The consortium's DP selection settings (public; ``[task.options.selection_dp]``).

    ``epsilon`` at ``delta`` is the whole selection's privacy cost per institution, however many rounds
    reuse it. ``k0``: public projection dimensions; ``dims``: the DP principal plane's; ``bound``: clip of
    a projected row (unit features project to norm about 1); ``centred_clip``: clip of a row minus the
    released mean; ``bins``/``range_std``: the grid (interior bins per axis over +-range_std standard
    deviations, plus one overflow bin each side). ``share_*``: the budget's split between segments
    (normalised to sum 1 over the segments the density model releases). ``gamma``: integer resolution
    (the L2 sensitivity of the whole release in ring units; rounding costs about ``sqrt(length) / gamma``
    relative).

    ``density`` says what the third stage releases and how the server places centres:

    * ``"gauss"`` (default): the per-axis spread of the records in the plane (each record's squared
      coordinate, capped at ``(var_cap * s0)^2`` with ``s0`` the plane's noisy standard deviations);
      the server models the plane as a Gaussian of that spread, places ``centres_per_budget`` times the
      round's record budget centres (at most ``max_centres``) by weighted k-means on a ``model_bins``-per-axis lattice over
      ``+-model_range`` standard deviations, and gives each centre the model's share of the noisy record
      count. Nothing per cell is released.
    * ``"histogram"``: per grid cell, the record count and the records' offsets from the cell centre;
      cells above ``threshold_sigmas`` noise standard deviations are clustered.

    Institutions: ``oversample`` (acceptance probability ``min(1, oversample * m * n_ig / N_g)``).

    Defaults measured on the shared Dolly split (10 x 80 records, 20 seeds): the Gaussian model gave
    coverage 0.914 / 0.871 at epsilon 1 / 2 against the histogram's 0.929 / 0.895 (the records form one
    blob in the plane; the histogram's noise costs more than its detail gains), with ``centred_clip``
    0.25, ``oversample`` 4 and ``centres_per_budget`` 0.5 (``docs/research/coreset-dp/design.md``).
    """

    epsilon: float
    delta: float = 1e-5
    k0: int = 8
    dims: int = 2
    bound: float = 1.5
    centred_clip: float = 0.25
    density: str = "gauss"
    bins: int = 10
    range_std: float = 2.5
    var_cap: float = 3.0
    model_bins: int = 40
    model_range: float = 4.0
    share_mean_sum: float = 0.10
    share_mean_count: float = 0.02
    share_moments_sum: float = 0.05
    share_moments_outer: float = 0.48
    share_hist_counts: float = 0.30
    share_hist_offsets: float = 0.05
    share_hist_var: float = 0.05
    gamma: float = 1000.0
    threshold_sigmas: float = 1.0
    centres_per_budget: float = 0.5
    max_centres: int = MAX_CENTRES
    oversample: float = 4.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"selection_dp.{name} must be a finite number, got {value!r}")
            return float(value)

        if self.density not in _DENSITY_SEGMENTS:
            raise ValueError(
                f"selection_dp.density must be one of {sorted(_DENSITY_SEGMENTS)}, got {self.density!r}"
            )
        for name in ("k0", "dims", "bins", "model_bins", "max_centres"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"selection_dp.{name} must be an integer >= 1, got {value!r}")
        if self.dims > self.k0:
            raise ValueError(f"selection_dp.dims ({self.dims}) cannot exceed k0 ({self.k0})")
        if not number("epsilon") > 0:
            raise ValueError(f"selection_dp.epsilon must be > 0, got {self.epsilon}")
        if not 0 < number("delta") < 1:
            raise ValueError(f"selection_dp.delta must be in (0, 1), got {self.delta}")
        positive = ("bound", "centred_clip", "range_std", "gamma", "oversample", "centres_per_budget")
        for name in (*positive, "var_cap", "model_range"):
            if not number(name) > 0:
                raise ValueError(f"selection_dp.{name} must be > 0, got {getattr(self, name)}")
        if number("threshold_sigmas") < 0:
            raise ValueError(f"selection_dp.threshold_sigmas must be >= 0, got {self.threshold_sigmas}")
        shares = [number(share) for _, _, share in self.segments()]
        if any(s < 0 for s in shares) or not sum(shares) > 0:
            raise ValueError("selection_dp shares must be >= 0 and not all zero")
        # Every institution repeats the server's post-processing to check it: keep it small.
        if self.density == "gauss" and self.model_bins**self.dims > _MAX_POINTS:
            raise ValueError(
                f"selection_dp.model_bins ** dims must be at most {_MAX_POINTS} (the model's lattice)"
            )
        if self.max_centres > MAX_CENTRES:
            raise ValueError(
                f"selection_dp.max_centres must be at most {MAX_CENTRES}, got {self.max_centres}"
            )
        if self.density == "histogram" and self.n_cells > _MAX_POINTS:
            raise ValueError(
                f"selection_dp: (bins + 2) ** dims must be at most {_MAX_POINTS} (the grid's cells)"
            )
        if self.gamma < 10:
            raise ValueError(f"selection_dp.gamma must be >= 10 (integer resolution), got {self.gamma}")

    def segments(self) -> tuple[tuple[str, str, str], ...]:
        """(stage, segment, share field) of every segment released under this density model."""
        return (*_COMMON_SEGMENTS, *_DENSITY_SEGMENTS[self.density])

    def share(self, stage: str, segment: str) -> float:
        """The normalised budget share of one segment."""
        total = sum(float(getattr(self, f)) for _, _, f in self.segments())
        for st, seg, f in self.segments():
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

    def release_fields(self) -> dict[str, Any]:
        """The settings that shape what is released (the noise and every released value), without
        those that only post-process it (centres, thresholds, lattice, acceptance): a release is named
        by these, so changing a post-processing setting can never make the same statistics new."""
        return {k: v for k, v in asdict(self).items() if k not in _POST_PROCESSING}

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
        (DP_HIST_STAGE, "var"): 1.0,  # capped squares over the caps' norm: a vector of norm <= 1
    }
    return bounds[(stage, segment)]


def _real_l1(cfg: DpSelection, stage: str, segment: str) -> float:
    """A segment's real-valued per-record L1 bound (Cauchy-Schwarz from the L2 bound where needed)."""
    bounds = {
        (DP_MEAN_STAGE, "sum"): cfg.bound * math.sqrt(cfg.k0),
        (DP_MEAN_STAGE, "count"): 1.0,
        (DP_MOMENTS_STAGE, "sum"): cfg.centred_clip * math.sqrt(cfg.k0),
        # off-diagonals released times sqrt(2): sum_i z_i^2 + sqrt(2) sum_{i<j} |z_i z_j|
        # = |z|^2 + (|z|_1^2 - |z|^2) / sqrt(2) <= C^2 (1 + (k0 - 1) / sqrt(2))
        (DP_MOMENTS_STAGE, "outer"): cfg.centred_clip**2 * (1 + (cfg.k0 - 1) / math.sqrt(2)),
        (DP_HIST_STAGE, "counts"): 1.0,
        (DP_HIST_STAGE, "offsets"): float(cfg.dims),
        (DP_HIST_STAGE, "var"): math.sqrt(cfg.dims),
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
        (DP_HIST_STAGE, "var"): cfg.dims,
    }
    return lengths[(stage, segment)]


def segment_scales(cfg: DpSelection) -> dict[tuple[str, str], int]:
    """The integer scale ``q_s`` of each segment: ``round(gamma * sqrt(share_s) / D2_s)``, at least 1
    (a zero share still releases the segment, at the smallest resolution)."""
    return {
        (stage, seg): max(1, round(cfg.gamma * math.sqrt(cfg.share(stage, seg)) / _real_l2(cfg, stage, seg)))
        for stage, seg, _ in cfg.segments()
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
        for st, seg, _ in cfg.segments():
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
