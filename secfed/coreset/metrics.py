"""Quality metrics of a coreset, all measured in the round's shared space.

* :func:`coverage`: mean distance from every record to its nearest selected record, divided by the
  same for as many uniformly random records (averaged over ``draws`` draws). Below 1 means the
  selection covers the data better than chance; selecting every record gives 0.
* :func:`clustering_ari`: adjusted Rand index between two labellings of the same local centroids
  (secure vs plaintext global clusters), next to :func:`plaintext_stability`, the ARI of plaintext
  clustering against itself when every centroid moves by up to half a grid cell per axis. Secure
  clustering cannot be expected to agree with plaintext better than plaintext agrees with itself.
* :func:`suppressed_share`: fraction of local centroids in cells suppressed for having too few
  institutions (they never get a representative of their own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import adjusted_rand_score

from secfed.coreset.layout import Float

__all__ = [
    "clustering_ari",
    "coverage",
    "mean_nearest_distance",
    "plaintext_stability",
    "pooled_rows",
    "suppressed_share",
]


def mean_nearest_distance(points: Float, chosen: NDArray[np.int64], *, chunk: int = 4096) -> float:
    """Mean over ``points`` of the Euclidean distance to the nearest of ``points[chosen]``."""
    if not len(chosen):
        raise ValueError("no records chosen: the distance to the nearest one is undefined")
    targets = points[chosen]
    total = 0.0
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        d2 = ((block[:, None, :] - targets[None, :, :]) ** 2).sum(axis=2)
        total += float(np.sqrt(d2.min(axis=1)).sum())
    return total / len(points)


def coverage(points: Float, selected: NDArray[np.int64], *, seed: int = 0, draws: int = 20) -> float:
    """``mean_nearest_distance(selected) / E[mean_nearest_distance(random set of the same size)]``."""
    selected = np.unique(np.asarray(selected, dtype=np.int64))
    gen = np.random.default_rng(seed)
    base = np.mean(
        [
            mean_nearest_distance(points, gen.choice(len(points), size=len(selected), replace=False))
            for _ in range(draws)
        ]
    )
    if base == 0:
        return 0.0
    return mean_nearest_distance(points, selected) / float(base)


def pooled_rows(
    indices: Sequence[NDArray[np.int64]], selected: Sequence[NDArray[np.int64]]
) -> NDArray[np.int64]:
    """Rows of the clients' pooled points (client order) holding each client's selected record indices."""
    rows: list[NDArray[np.int64]] = []
    offset = 0
    for idx, sel in zip(indices, selected, strict=True):
        lookup = {int(v): i for i, v in enumerate(idx)}
        rows.append(np.asarray([offset + lookup[int(s)] for s in sel], dtype=np.int64))
        offset += len(idx)
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def clustering_ari(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    """Adjusted Rand index of two labellings of the same items (-1 counts as a label of its own)."""
    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))


def plaintext_stability(
    centroids: Float,
    labels: NDArray[np.int64],
    relabel: Callable[[Float], NDArray[np.int64]],
    *,
    half_cell: Float,
    seed: int = 0,
    draws: int = 5,
) -> float:
    """Mean ARI of ``labels`` against ``relabel(centroids + jitter)``, jitter uniform in ``± half_cell``."""
    gen = np.random.default_rng(seed)
    scores = [
        clustering_ari(labels, relabel(centroids + gen.uniform(-1.0, 1.0, size=centroids.shape) * half_cell))
        for _ in range(draws)
    ]
    return float(np.mean(scores))


def suppressed_share(cells: Sequence[NDArray[np.int64]], allowed: NDArray[np.int64]) -> float:
    """Fraction of all local centroids (``cells[c]``: client ``c``'s centroid cells) outside ``allowed``."""
    pooled = np.concatenate(list(cells)) if cells else np.zeros(0, dtype=np.int64)
    if not len(pooled):
        return 0.0
    return float(np.mean(~np.isin(pooled, allowed)))
