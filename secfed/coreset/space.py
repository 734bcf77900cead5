"""The shared low-dimensional space: a public random projection, then federated PCA from sums.

FedHDS's reference code ran t-SNE on each client separately, so no two clients' coordinates meant
the same thing. Here every client maps its features through the same two public linear maps:

1. a Gaussian random projection ``R`` (``d_in x k0``, entries ``N(0, 1/k0)``), drawn with numpy from
   a seed derived from the round seed (public randomness: the server may know it, and every client
   of the round gets the same matrix);
2. the top ``dims`` principal axes of the cohort's projected points, computed by the server from the
   *summed* statistics ``Σx`` (``k0``), ``Σxxᵀ`` (upper triangle, ``k0(k0+1)/2``) and ``n``.

Feature rows are first made unit vectors by :func:`feature_blocks`; projected rows longer than the
public ``bound`` are scaled back onto that ball (rare: JL norms concentrate near 1), which is what
gives every summed statistic a public per-client bound for secure aggregation's fixed point.
The grid's range comes from the same sums (``± range_std`` standard deviations of each principal
axis), so nothing depends on a guessed box.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from secfed.coreset.grid import Grid
from secfed.coreset.layout import CohortSum, Contribution, Float, Layout, SegmentInfo

__all__ = [
    "PCA_STAGE",
    "SharedSpace",
    "derive_seed",
    "feature_blocks",
    "fit_shared_space",
    "pca_contribution",
    "pca_layout",
    "project",
    "projection_matrix",
]

PCA_STAGE = "coreset-pca"
#: A principal axis whose variance is below this is treated as this (a degenerate cohort still gets a grid).
_MIN_STD = 1e-9


def feature_blocks(features: Float, n_blocks: int) -> Float:
    """Each layer block L2-normalised, blocks concatenated and scaled so that every row has norm 1.

    Hidden-state norms grow with depth and vary by layer; without this, the deepest layer would decide
    the geometry alone. Unit rows also give every later secure sum a public bound (module docstring).
    A zero block stays zero.
    """
    if n_blocks < 1 or features.ndim != 2 or features.shape[1] % n_blocks != 0:
        raise ValueError(f"cannot split features of shape {features.shape} into {n_blocks} equal blocks")
    parts = features.reshape(features.shape[0], n_blocks, features.shape[1] // n_blocks)
    norms = np.linalg.norm(parts, axis=2, keepdims=True)
    unit = np.divide(parts, norms, out=np.zeros_like(parts), where=norms > 0)
    out: Float = unit.reshape(features.shape) / np.sqrt(n_blocks)
    return out


def derive_seed(round_seed: int, purpose: str) -> int:
    """A 64-bit seed for one public purpose of one round (domain-separated, so purposes never share draws)."""
    digest = hashlib.sha256(f"secfed/coreset/{purpose}/{int(round_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def projection_matrix(d_in: int, k0: int, round_seed: int) -> Float:
    """The round's public random projection ``R`` (``d_in x k0``, entries ``N(0, 1/k0)``).

    The ``1/k0`` variance keeps squared norms unbiased (Johnson-Lindenstrauss), so unit features land
    near the unit sphere and the ``bound`` in :func:`project` almost never binds.
    """
    if d_in < 1 or k0 < 1:
        raise ValueError(f"projection needs d_in >= 1 and k0 >= 1, got {d_in} and {k0}")
    gen = np.random.default_rng(derive_seed(round_seed, "projection"))
    out: Float = gen.standard_normal((d_in, k0)) / np.sqrt(k0)
    return out


def project(features: Float, projection: Float, bound: float) -> Float:
    """``features @ projection`` with every row scaled into the ball of radius ``bound``."""
    if features.ndim != 2 or features.shape[1] != projection.shape[0]:
        raise ValueError(
            f"features of shape {features.shape} do not match a projection of {projection.shape}"
        )
    out: Float = features @ projection
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    result: Float = out * scale
    return result


def pca_layout(k0: int, *, bound: float, max_records: int) -> Layout:
    """``sum`` (k0), ``outer`` (upper triangle of Σxxᵀ, row-major, diagonal included) and ``count`` (1)."""
    return Layout(
        PCA_STAGE,
        (
            SegmentInfo("sum", k0, float(max_records) * bound, False),
            SegmentInfo("outer", k0 * (k0 + 1) // 2, float(max_records) * bound * bound, False),
            SegmentInfo("count", 1, float(max_records), True),
        ),
    )


def pca_contribution(points: Float) -> Contribution:
    """This client's PCA statistics of its projected points (``n x k0``)."""
    k0 = points.shape[1]
    outer = points.T @ points
    upper = np.triu_indices(k0)
    return {
        "sum": points.sum(axis=0),
        "outer": outer[upper].astype(np.float64),
        "count": np.array([float(len(points))]),
    }


def _unpack_outer(values: Float, k0: int) -> Float:
    full = np.zeros((k0, k0), dtype=np.float64)
    full[np.triu_indices(k0)] = values
    out: Float = full + np.triu(full, 1).T
    return out


@dataclass(frozen=True)
class SharedSpace:
    """The public map from projected features to the shared ``dims``-D space, and the round's grid.

    ``coords(x) = (x - mean) @ basis``; ``std`` is each axis's standard deviation over the cohort's
    points; ``total_records`` the cohort's record count (from the summed ``count``).
    """

    mean: Float
    basis: Float
    std: Float
    total_records: int
    grid: Grid

    def coords(self, projected: Float) -> Float:
        out: Float = (projected - self.mean) @ self.basis
        return out

    def coord_bound(self, bound: float) -> float:
        """Public bound on ``|coordinate|``: ``|(x - mean)·w| <= |x| + |mean| <= 2 * bound``."""
        return 2.0 * bound

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "basis": self.basis.tolist(),
            "std": self.std.tolist(),
            "total_records": self.total_records,
            "grid": self.grid.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SharedSpace:
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            basis=np.asarray(data["basis"], dtype=np.float64),
            std=np.asarray(data["std"], dtype=np.float64),
            total_records=int(data["total_records"]),
            grid=Grid.from_json(data["grid"]),
        )


def fit_shared_space(pca_sum: CohortSum, *, dims: int, bins: int, range_std: float) -> SharedSpace:
    """Server side: mean, top-``dims`` principal axes and grid from the cohort's *summed* PCA statistics.

    Eigenvector signs are fixed (largest-magnitude component positive) so the space, and with it the
    whole selection, is a deterministic function of the sums. The grid spans ``± range_std`` standard
    deviations of each axis around the cohort mean; overflow bins take everything beyond.
    """
    total = pca_sum.get("sum")
    k0 = total.size
    n = float(pca_sum.get("count")[0])
    if n < 1:
        raise ValueError("the PCA sum counts no records; there is nothing to select from")
    if dims > k0:
        raise ValueError(f"cannot keep {dims} principal axes of a {k0}-dimensional projection")
    mean = total / n
    cov = _unpack_outer(pca_sum.get("outer"), k0) / n - np.outer(mean, mean)
    cov = (cov + cov.T) / 2.0
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1][:dims]
    basis = eigvecs[:, order]
    pivot = np.argmax(np.abs(basis), axis=0)
    signs = np.sign(basis[pivot, np.arange(dims)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    std = np.sqrt(np.maximum(eigvals[order], _MIN_STD**2))
    grid = Grid(lo=-range_std * std, hi=range_std * std, bins=bins)
    return SharedSpace(mean=mean, basis=basis, std=std, total_records=round(n), grid=grid)
