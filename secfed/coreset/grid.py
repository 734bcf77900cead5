"""The public grid over the shared space, and the client vectors that histogram centroids on it.

The grid has ``bins`` interior bins per axis over ``[lo, hi)`` and one overflow bin at each end of
every axis (bin 0 below ``lo``, bin ``bins + 1`` at or above ``hi``), so ``(bins + 2) ** dims`` cells
in all. The range comes from securely summed PCA statistics, not from a fixed box, and the overflow
bins mean no centroid is ever clipped away: an outlying centroid still lands in a cell and, thanks
to the summed coordinates, the server even knows where in that (unbounded) cell its cohort's
centroids lie.

Two client stages use the grid:

``coreset-occupancy``: ``flags`` (one per cell) is 1 where the client has at least one local
centroid. Summed, it is the number of institutions per cell; cells with fewer than ``min_cohort``
are suppressed *before* anything else about them is revealed.

``coreset-histogram`` over the allowed cells only (their list is public): ``counts`` (centroids per
cell), ``flags`` (again, to notice a client that dropped between the two stages) and ``coords``
(per cell, the sum of its centroids' coordinates, ``cell x axis`` row-major). Summed, they give the
centroid count and the mean centroid position of each allowed cell, both over at least
``min_cohort`` institutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.layout import Contribution, Float, Layout, SegmentInfo

__all__ = [
    "HISTOGRAM_STAGE",
    "OCCUPANCY_STAGE",
    "Grid",
    "histogram_contribution",
    "histogram_layout",
    "occupancy_contribution",
    "occupancy_layout",
]

OCCUPANCY_STAGE = "coreset-occupancy"
HISTOGRAM_STAGE = "coreset-histogram"


@dataclass(frozen=True)
class Grid:
    """A regular grid on ``[lo, hi)`` per axis with an overflow bin at each end (public)."""

    lo: Float
    hi: Float
    bins: int

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1 or self.lo.size == 0:
            raise ValueError("grid lo and hi must be 1-D arrays of the same, non-zero length")
        if not np.all(self.hi > self.lo):
            raise ValueError("grid hi must exceed lo on every axis")
        if self.bins < 1:
            raise ValueError(f"grid bins must be >= 1, got {self.bins}")

    @property
    def dims(self) -> int:
        return int(self.lo.size)

    @property
    def side(self) -> int:
        """Bins per axis, overflow bins included."""
        return self.bins + 2

    @property
    def n_cells(self) -> int:
        return int(self.side**self.dims)

    @property
    def width(self) -> Float:
        """Width of an interior bin on each axis."""
        out: Float = (self.hi - self.lo) / self.bins
        return out

    def axis_bins(self, points: Float) -> NDArray[np.int64]:
        """Per-axis bin of each point: 0 below ``lo``, ``1..bins`` inside, ``bins + 1`` at or above ``hi``."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if pts.shape[1] != self.dims:
            raise ValueError(f"points have {pts.shape[1]} dimensions, the grid {self.dims}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points must be finite to fall in a grid cell")
        # Clip in float before the cast: a far outlier would overflow int64.
        scaled = np.floor((pts - self.lo) / self.width)
        return (np.clip(scaled, -1, self.bins) + 1).astype(np.int64)

    def cell_of(self, points: Float) -> NDArray[np.int64]:
        """Flat cell index of each point (row-major over the per-axis bins)."""
        per_axis = self.axis_bins(points)
        flat: NDArray[np.int64] = np.asarray(
            np.ravel_multi_index(tuple(per_axis.T), (self.side,) * self.dims), dtype=np.int64
        )
        return flat

    def cell_centres(self, cells: NDArray[np.int64]) -> Float:
        """Geometric centre of each cell; an overflow bin is placed half a bin beyond the range."""
        per_axis = np.stack(
            np.unravel_index(np.asarray(cells, dtype=np.int64), (self.side,) * self.dims), axis=1
        )
        centres: Float = self.lo + (per_axis.astype(np.float64) - 0.5) * self.width
        return centres

    def to_json(self) -> dict[str, Any]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "bins": self.bins}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grid:
        return cls(
            lo=np.asarray(data["lo"], dtype=np.float64),
            hi=np.asarray(data["hi"], dtype=np.float64),
            bins=int(data["bins"]),
        )


def occupancy_layout(grid: Grid) -> Layout:
    """``flags``: one 0/1 per cell (``grid.n_cells``)."""
    return Layout(OCCUPANCY_STAGE, (SegmentInfo("flags", grid.n_cells, 1.0, True),))


def occupancy_contribution(grid: Grid, centroids: Float) -> Contribution:
    """1 in every cell holding at least one of this client's centroids, else 0."""
    flags = np.zeros(grid.n_cells, dtype=np.float64)
    if len(centroids):
        flags[grid.cell_of(centroids)] = 1.0
    return {"flags": flags}


def histogram_layout(n_allowed: int, dims: int, *, coord_bound: float, max_records: int) -> Layout:
    """``counts`` and ``flags`` (one per allowed cell) and ``coords`` (``n_allowed * dims``).

    Bounds: a client has at most ``max_records`` centroids, each coordinate at most ``coord_bound``
    in absolute value, so ``|coords| <= max_records * coord_bound``.
    """
    return Layout(
        HISTOGRAM_STAGE,
        (
            SegmentInfo("counts", n_allowed, float(max_records), True),
            SegmentInfo("flags", n_allowed, 1.0, True),
            SegmentInfo("coords", n_allowed * dims, float(max_records) * coord_bound, False),
        ),
    )


def histogram_contribution(grid: Grid, allowed: NDArray[np.int64], centroids: Float) -> Contribution:
    """Counts, flags and coordinate sums of this client's centroids in the allowed cells.

    Centroids in suppressed cells contribute nothing (the server never learns more about those cells
    than their institution counts from the occupancy stage).
    """
    n = len(allowed)
    counts = np.zeros(n, dtype=np.float64)
    coords = np.zeros((n, grid.dims), dtype=np.float64)
    if len(centroids):
        cells = grid.cell_of(centroids)
        pos = np.searchsorted(allowed, cells)
        pos_clipped = np.minimum(pos, max(n - 1, 0))
        inside = (pos < n) & (allowed[pos_clipped] == cells) if n else np.zeros(len(cells), dtype=bool)
        np.add.at(counts, pos[inside], 1.0)
        np.add.at(coords, pos[inside], centroids[inside])
    flags = (counts > 0).astype(np.float64)
    return {"counts": counts, "flags": flags, "coords": coords.reshape(-1)}
