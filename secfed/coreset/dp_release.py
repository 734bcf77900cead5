"""The once-per-federation DP release of coreset statistics: what an institution sends, what the server makes of it.

Three stages (:data:`~secfed.coreset.dp_config.DP_STAGES`), each a secure-aggregation session over
integer segments. An institution's vector for a stage is, per segment ``s``,
``sum over its records of round_r(q_s * value_s(record)) + Sk(lam / h)`` per coordinate, where
``round_r`` is randomized rounding (unbiased; floor or ceiling) applied to each record's scaled vector
on its own, and the Skellam share is drawn from the institution's own AES-CTR stream. Nothing but
integers reaches the ring, and every coordinate carries a share whether the institution has a record
there or not (an empty cell's zero is noised like any other count).

Per-record values (x: the record's feature row, block-normalised and projected by the federation's
public matrix ``R`` to ``k0`` dimensions, norm about 1):

* ``coreset-dp-mean``: ``sum`` = clip(x, bound) (L2 <= bound); ``count`` = 1.
* ``coreset-dp-moments``: z = clip(x - m, centred_clip) with m the released mean (public after the
  first stage): ``sum`` = z (L2 <= C); ``outer`` = the upper triangle of z z^T with the off-diagonal
  entries times sqrt(2), whose L2 norm is exactly the Frobenius norm of z z^T, |z|^2 <= C^2 (the same
  bound as the plain triangle, with half the noise variance on every off-diagonal entry).
* ``coreset-dp-hist``, with y = (x - c) V the record's coordinates in the released principal plane:

  - density ``"gauss"``: ``var`` = min(y_a^2, v_a) / |v| per axis, v = (var_cap * s0)^2 from the plane's
    noisy standard deviations s0 (public after the second stage): a vector of L2 norm <= 1.
  - density ``"histogram"``, k the record's grid cell: ``counts[k]`` = 1; ``offsets[k]`` = (y - centre of
    k) / half-width per axis, clipped to [-1, 1] (L2 <= sqrt(dims)).

  Both are normalised by public values, so their sensitivity does not depend on the plane or the grid
  and the whole release is calibrated before any of it is seen.

The server (:func:`next_release_stage`) only post-processes the decoded sums, deterministically from
the sums and public settings, so every institution recomputes each plan and the final
:class:`DpRelease` itself and refuses one that differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secfed.coreset.dp_config import (
    DP_HIST_STAGE,
    DP_MEAN_STAGE,
    DP_MOMENTS_STAGE,
    DP_STAGES,
    DpSelection,
    calibrated_lambda,
    segment_scales,
)
from secfed.coreset.grid import Grid
from secfed.coreset.layout import CohortSum, Contribution, Float, Layout, SegmentInfo
from secfed.coreset.space import derive_seed, feature_blocks, projection_matrix
from secfed.dp.csprng import AesCtrGaussian
from secfed.dp.skellam import skellam

__all__ = [
    "DpRelease",
    "DpStagePlan",
    "NoiseShare",
    "contribution",
    "next_release_stage",
    "projected_rows",
    "release_layout",
]

#: A share's noise is never expected beyond this many of its standard deviations (a Skellam tail that
#: far out has probability far below 2^-128); the segment bounds leave room for it, and a draw beyond
#: it (which cannot happen in practice) stops the institution rather than wrap the ring or clip noise.
_NOISE_CAP_SIGMAS = 64.0
_MIN_VARIANCE = 1e-6
#: Lloyd iterations of the server's k-means at most (it converges in a few dozen on these sizes).
_LLOYD_STEPS = 100
#: The Gaussian model's variance per axis is at least this fraction of the moments' estimate.
_MIN_SPREAD = 0.05


@dataclass(frozen=True)
class NoiseShare:
    """What one institution adds: ``Sk(lam_total / honest)`` per coordinate (``honest = t - c``)."""

    lam_total: float
    honest: int

    def __post_init__(self) -> None:
        if isinstance(self.honest, bool) or not isinstance(self.honest, int) or self.honest < 1:
            raise ValueError(f"honest contributors must be an integer >= 1, got {self.honest!r}")

    @property
    def lam(self) -> float:
        return self.lam_total / self.honest

    @property
    def cap(self) -> int:
        """The largest share magnitude the segment bounds make room for."""
        return math.ceil(_NOISE_CAP_SIGMAS * math.sqrt(2.0 * self.lam) + _NOISE_CAP_SIGMAS)


def projected_rows(features: Float, feature_blocks_n: int, cfg: DpSelection, release_seed: int) -> Float:
    """Each record's block-normalised features under the federation's public projection (not clipped:
    every stage clips what it releases itself)."""
    features = np.asarray(features, dtype=np.float64)
    if not np.all(np.isfinite(features)):
        raise ValueError("feature rows must be finite to take part in a DP release")
    unit = feature_blocks(features, feature_blocks_n)
    out: Float = unit @ projection_matrix(unit.shape[1], cfg.k0, release_seed)
    return out


def _segment_specs(cfg: DpSelection, stage: str) -> list[tuple[str, int, float, int]]:
    """(name, length, per-record max |coordinate| in real units, rounded coordinates per record)."""
    if stage == DP_MEAN_STAGE:
        return [("sum", cfg.k0, cfg.bound, cfg.k0), ("count", 1, 1.0, 0)]
    if stage == DP_MOMENTS_STAGE:
        c = cfg.centred_clip
        return [("sum", cfg.k0, c, cfg.k0), ("outer", cfg.upper_length, c * c, cfg.upper_length)]
    if stage == DP_HIST_STAGE and cfg.density == "gauss":
        return [("var", cfg.dims, 1.0, cfg.dims)]
    if stage == DP_HIST_STAGE:
        return [("counts", cfg.n_cells, 1.0, 0), ("offsets", cfg.n_cells * cfg.dims, 1.0, cfg.dims)]
    raise ValueError(f"not a DP release stage: {stage!r}")


def release_layout(cfg: DpSelection, stage: str, *, max_records: int) -> Layout:
    """The public layout of a release stage: integer segments whose per-client bound covers the largest
    scaled sum ``max_records`` records can make, their rounding, and the cap of the largest share any
    session can ask for (one honest contributor carrying all of ``lam``), so the spec is fixed before
    the session's ``t`` and ``c`` are."""
    scales = segment_scales(cfg)
    largest = NoiseShare(calibrated_lambda(cfg), 1)
    segments = []
    for name, length, per_record, _ in _segment_specs(cfg, stage):
        q = scales[(stage, name)]
        bound = float(max_records) * (q * per_record + 1.0) + largest.cap
        segments.append(SegmentInfo(name, length, bound, True))
    return Layout(stage, tuple(segments))


def _clip_rows(rows: Float, radius: float) -> Float:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Float = rows * np.minimum(1.0, radius / np.maximum(norms, np.finfo(np.float64).tiny))
    return out


def _upper(z: Float) -> Float:
    """Per row, the upper triangle (diagonal included, row-major) of ``z_i z_i^T``, off-diagonal entries
    times sqrt(2) (so the vector's norm is the whole matrix's Frobenius norm)."""
    rows, cols = np.triu_indices(z.shape[1])
    out: Float = z[:, rows] * z[:, cols] * np.where(rows == cols, 1.0, math.sqrt(2.0))
    return out


def _unupper(values: Float, k: int) -> Float:
    """The symmetric matrix whose :func:`_upper` vector is ``values``."""
    rows, cols = np.triu_indices(k)
    full = np.zeros((k, k), dtype=np.float64)
    full[rows, cols] = values / np.where(rows == cols, 1.0, math.sqrt(2.0))
    out: Float = full + np.triu(full, 1).T
    return out


def _rounded(scaled: Float, stream: AesCtrGaussian) -> Float:
    """Unbiased randomized rounding of every entry (floor, or ceiling with the fractional part's chance)."""
    low = np.floor(scaled)
    up = stream.uniform(scaled.size).reshape(scaled.shape) < (scaled - low)
    out: Float = low + up
    return out


class _Plane:
    """The released principal plane, its noisy standard deviation per axis and its grid (public after
    the moments stage)."""

    def __init__(self, centre: Float, basis: Float, std: Float, grid: Grid) -> None:
        self.centre, self.basis, self.std, self.grid = centre, basis, std, grid

    def coords(self, rows: Float) -> Float:
        out: Float = (rows - self.centre) @ self.basis
        return out

    def var_caps(self, cfg: DpSelection) -> Float:
        """The public per-axis cap ``v`` of a record's squared coordinate (density ``"gauss"``)."""
        out: Float = (cfg.var_cap * self.std) ** 2
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "centre": self.centre.tolist(),
            "basis": self.basis.tolist(),
            "std": self.std.tolist(),
            "grid": self.grid.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Plane:
        return cls(
            np.asarray(data["centre"], dtype=np.float64),
            np.asarray(data["basis"], dtype=np.float64),
            np.asarray(data["std"], dtype=np.float64),
            Grid.from_json(dict(data["grid"])),
        )


def contribution(
    cfg: DpSelection,
    stage: str,
    rows: Float,
    plan: Mapping[str, Any],
    share: NoiseShare,
    stream: AesCtrGaussian,
    *,
    max_records: int,
) -> Contribution:
    """One institution's noised integer vector for ``stage``.

    ``rows`` are its :func:`projected_rows`; ``plan`` the stage's public plan (``mean`` for the moments
    stage, ``plane`` for the histogram); ``stream`` its own CSPRNG (rounding and noise)."""
    if len(rows) > max_records:
        raise ValueError(f"{len(rows)} records exceed the public cap max_records = {max_records}")
    scales = segment_scales(cfg)
    per_record: dict[str, Float]
    if stage == DP_MEAN_STAGE:
        per_record = {
            "sum": _clip_rows(rows, cfg.bound) * scales[(stage, "sum")],
            "count": np.full((len(rows), 1), float(scales[(stage, "count")])),
        }
        values = {name: _rounded(v, stream).sum(axis=0) for name, v in per_record.items()}
    elif stage == DP_MOMENTS_STAGE:
        mean = np.asarray(plan["mean"], dtype=np.float64)
        z = _clip_rows(rows - mean, cfg.centred_clip)
        per_record = {
            "sum": z * scales[(stage, "sum")],
            "outer": _upper(z) * scales[(stage, "outer")],
        }
        values = {name: _rounded(v, stream).sum(axis=0) for name, v in per_record.items()}
    elif stage == DP_HIST_STAGE and cfg.density == "gauss":
        plane = _Plane.from_json(dict(plan["plane"]))
        caps = plane.var_caps(cfg)
        spread = np.minimum(plane.coords(rows) ** 2, caps) / np.linalg.norm(caps)
        values = {"var": _rounded(spread * scales[(stage, "var")], stream).sum(axis=0)}
    elif stage == DP_HIST_STAGE:
        plane = _Plane.from_json(dict(plan["plane"]))
        y = plane.coords(rows)
        cells = plane.grid.cell_of(y) if len(rows) else np.zeros(0, dtype=np.int64)
        half = plane.grid.width / 2.0
        offsets = np.clip((y - plane.grid.cell_centres(cells)) / half, -1.0, 1.0)
        counts = np.zeros(cfg.n_cells, dtype=np.float64)
        np.add.at(counts, cells, float(scales[(stage, "counts")]))
        summed = np.zeros((cfg.n_cells, cfg.dims), dtype=np.float64)
        np.add.at(summed, cells, _rounded(offsets * scales[(stage, "offsets")], stream))
        values = {"counts": counts, "offsets": summed.reshape(-1)}
    else:
        raise ValueError(f"not a DP release stage: {stage!r}")
    layout = release_layout(cfg, stage, max_records=max_records)
    out: Contribution = {}
    for seg in layout.segments:
        noise = skellam(share.lam, seg.length, stream).astype(np.float64)
        if np.any(np.abs(noise) > share.cap):  # never in practice (module constant); never clip noise
            raise RuntimeError("a Skellam share beyond its cap: refusing to release this stage")
        out[seg.name] = values[seg.name] + noise
    return out


@dataclass(frozen=True)
class DpStagePlan:
    """The next release stage and its public plan (what the institutions need to compute it)."""

    name: str
    broadcast: dict[str, Any]


@dataclass(frozen=True)
class DpRelease:
    """The public result of the release: the principal plane, centres in it and a noisy record count per
    centre's region. Post-processing of the three noised sums only (free under DP)."""

    plane: dict[str, Any]
    centres: Float
    region_counts: Float
    records: float
    kept_cells: int

    def to_json(self) -> dict[str, Any]:
        return {
            "plane": self.plane,
            "centres": self.centres.tolist(),
            "region_counts": self.region_counts.tolist(),
            "records": self.records,
            "kept_cells": self.kept_cells,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DpRelease:
        plane = dict(data["plane"])
        dims = np.asarray(plane["basis"], dtype=np.float64).shape[-1]
        # An empty centre list comes back from JSON as shape (0,): give it the plane's dimensions.
        centres = np.asarray(data["centres"], dtype=np.float64)
        if centres.size == 0:
            centres = centres.reshape(0, dims)
        if centres.ndim != 2 or centres.shape[1] != dims:
            raise ValueError(f"DP release centres must be points of the plane's {dims} dimensions")
        counts = np.asarray(data["region_counts"], dtype=np.float64)
        if centres.ndim != 2 or counts.shape != (len(centres),):
            raise ValueError("a DP release needs one region count per centre")
        return cls(plane, centres, counts, float(data["records"]), int(data["kept_cells"]))

    def coords(self, rows: Float) -> Float:
        return _Plane.from_json(self.plane).coords(rows)


def _decoded(total: CohortSum, stage: str, cfg: DpSelection) -> dict[str, Float]:
    if total.stage != stage:
        raise ValueError(f"expected the sum of stage {stage!r}, got {total.stage!r}")
    scales = segment_scales(cfg)
    out: dict[str, Float] = {}
    for name, length, _, _ in _segment_specs(cfg, stage):
        values = total.get(name)
        if values.shape != (length,) or not np.all(np.isfinite(values)):
            raise ValueError(f"stage {stage!r}: segment {name!r} must be {length} finite numbers")
        out[name] = values / scales[(stage, name)]
    return out


def _mean(cfg: DpSelection, mean_sum: CohortSum) -> tuple[Float, float]:
    decoded = _decoded(mean_sum, DP_MEAN_STAGE, cfg)
    records = max(float(decoded["count"][0]), 1.0)
    return decoded["sum"] / records, records


def _plane(cfg: DpSelection, mean: Float, records: float, moments: CohortSum) -> _Plane:
    decoded = _decoded(moments, DP_MOMENTS_STAGE, cfg)
    mu = decoded["sum"] / records
    cov = _unupper(decoded["outer"], cfg.k0) / records - np.outer(mu, mu)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(values, kind="stable")[::-1][: cfg.dims]
    basis = vectors[:, order]
    # An eigenvector's sign is arbitrary (and BLAS-dependent): fix it so every institution agrees.
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(cfg.dims)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    std = np.sqrt(np.maximum(values[order], _MIN_VARIANCE))
    grid = Grid(lo=-cfg.range_std * std, hi=cfg.range_std * std, bins=cfg.bins)
    return _Plane(mean + mu, basis, std, grid)


def _lloyd(points: Float, weights: Float, k: int, gen: np.random.Generator) -> tuple[Float, float]:
    """One weighted k-means run (k-means++ start, Lloyd to convergence): centres and weighted inertia."""
    chosen = [int(gen.choice(len(points), p=weights / weights.sum()))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        mass = weights * nearest
        if not mass.sum() > 0:
            break
        chosen.append(int(gen.choice(len(points), p=mass / mass.sum())))
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(axis=1))
    centres = points[chosen].copy()
    for _ in range(_LLOYD_STEPS):
        label = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        mass = np.bincount(label, weights=weights, minlength=len(centres))
        sums = np.stack(
            [
                np.bincount(label, weights=weights * points[:, a], minlength=len(centres))
                for a in range(points.shape[1])
            ],
            axis=1,
        )
        moved = np.where(
            mass[:, None] > 0, sums / np.maximum(mass, np.finfo(np.float64).tiny)[:, None], centres
        )
        if np.array_equal(moved, centres):
            break
        centres = moved
    label = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    inertia = float((weights * ((points - centres[label]) ** 2).sum(axis=1)).sum())
    return centres, inertia


def _weighted_kmeans(points: Float, weights: Float, k: int, seed: int, *, starts: int = 4) -> Float:
    """Deterministic weighted k-means: the best of ``starts`` runs, all drawn from the public ``seed``.

    Written out rather than sklearn's KMeans so that the result depends only on its inputs and this
    code, not on thread counts or library versions: every institution must reproduce the centres."""
    gen = np.random.default_rng(seed)
    runs = [_lloyd(points, weights, k, gen) for _ in range(starts)]
    best: Float = min(runs, key=lambda run: run[1])[0]
    return best


def _gauss_release(
    cfg: DpSelection, plane: _Plane, records: float, hist: CohortSum, *, max_fraction: float, seed: int
) -> DpRelease:
    """Centres for a Gaussian model of the plane: its spread per axis from the ``var`` sum (at least
    a fraction of the moments' estimate, so noise cannot collapse it), weighted k-means on a lattice of
    the model's density, and each centre's share of the noisy record count."""
    decoded = _decoded(hist, DP_HIST_STAGE, cfg)
    caps = plane.var_caps(cfg)
    spread = decoded["var"] * np.linalg.norm(caps) / records
    std = np.sqrt(np.maximum(spread, _MIN_SPREAD * plane.std**2))
    axes = [np.linspace(-cfg.model_range * s, cfg.model_range * s, cfg.model_bins) for s in std]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, cfg.dims)
    density = np.exp(-0.5 * ((lattice / std) ** 2).sum(axis=1))
    weights = records * density / density.sum()
    keep = weights > 1e-6 * weights.max()
    budget = max(1, math.floor(max_fraction * records))
    k = max(1, min(round(cfg.centres_per_budget * budget), cfg.max_centres, int(keep.sum())))
    centres = _weighted_kmeans(lattice[keep], weights[keep], k, derive_seed(seed, "dp-centres"))
    nearest = np.argmin(((lattice[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    region = np.bincount(nearest, weights=weights, minlength=len(centres)).astype(np.float64)
    return DpRelease(plane.to_json(), centres, region, records, int(keep.sum()))


def _release(
    cfg: DpSelection,
    plane: _Plane,
    records: float,
    hist: CohortSum,
    share: NoiseShare,
    *,
    max_fraction: float,
    seed: int,
) -> DpRelease:
    decoded = _decoded(hist, DP_HIST_STAGE, cfg)
    scales = segment_scales(cfg)
    counts = decoded["counts"]
    grid = plane.grid
    half = grid.width / 2.0
    # The noise the sum carries, in records: every contributor added one share (post-processing of
    # public facts). Keeping cells above the noise rather than above the guaranteed minimum matters:
    # with more contributors than t - c the sum is noisier than the target (measured: coverage 1.04
    # instead of 0.92 on the Dolly split at epsilon 1 when the threshold ignored it).
    sigma = math.sqrt(2.0 * share.lam * max(hist.n_contributors, 1)) / scales[(DP_HIST_STAGE, "counts")]
    offsets = decoded["offsets"].reshape(cfg.n_cells, cfg.dims) * half
    position = grid.cell_centres(np.arange(cfg.n_cells)) + np.clip(
        offsets / np.maximum(counts, max(1.0, 2.0 * sigma))[:, None], -half, half
    )
    keep = counts > cfg.threshold_sigmas * sigma
    weights = np.where(keep, counts, 0.0)
    budget = max(1, math.floor(max_fraction * records))
    k = max(1, min(round(cfg.centres_per_budget * budget), cfg.max_centres, int(keep.sum())))
    if not keep.any():
        return DpRelease(plane.to_json(), np.zeros((0, cfg.dims)), np.zeros(0), records, 0)
    centres = _weighted_kmeans(position[keep], weights[keep], k, derive_seed(seed, "dp-centres"))
    nearest = np.argmin(((position[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    region = np.bincount(nearest, weights=weights, minlength=len(centres)).astype(np.float64)
    return DpRelease(plane.to_json(), centres, region, records, int(keep.sum()))


def next_release_stage(
    cfg: DpSelection,
    released: Sequence[CohortSum],
    *,
    max_fraction: float,
    release_seed: int,
    hist_share: NoiseShare | None = None,
) -> DpStagePlan | DpRelease:
    """The next stage to release given the sums released so far (in stage order), or the final release.

    ``hist_share`` is the share every contributor of the histogram stage added (its session's
    ``t - c``); needed, with the sum's contributor count, once all three sums are in."""
    if len(released) > len(DP_STAGES):
        raise ValueError(f"{len(released)} release sums, the release has {len(DP_STAGES)} stages")
    for got, stage in zip(released, DP_STAGES, strict=False):
        if got.stage != stage:
            raise ValueError(f"release sums out of order: {got.stage!r} where {stage!r} belongs")
    if not released:
        return DpStagePlan(DP_MEAN_STAGE, {})
    mean, records = _mean(cfg, released[0])
    if len(released) == 1:
        return DpStagePlan(DP_MOMENTS_STAGE, {"mean": mean.tolist()})
    plane = _plane(cfg, mean, records, released[1])
    if len(released) == 2:
        return DpStagePlan(DP_HIST_STAGE, {"plane": plane.to_json()})
    if cfg.density == "gauss":
        return _gauss_release(cfg, plane, records, released[2], max_fraction=max_fraction, seed=release_seed)
    if hist_share is None:
        raise ValueError("the final release needs the histogram stage's noise share")
    return _release(
        cfg, plane, records, released[2], hist_share, max_fraction=max_fraction, seed=release_seed
    )
