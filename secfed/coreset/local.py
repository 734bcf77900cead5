"""Intra-client clustering: HDBSCAN on a client's points in the shared space, weighted centroids.

Runs on the client only; nothing here leaves it except through the summed grid vectors.

HDBSCAN (scikit-learn's) marks low-density points as noise (-1). With the default
``noise="singleton"`` each noise point becomes a cluster of its own, so its centroid is the point
itself: outlying records are exactly the ones a coverage-oriented coreset must not forget, and a
client with few records (where HDBSCAN finds little structure) still describes all of them.
``noise="drop"`` follows the density view instead (noise records are never represented).

A centroid is the mean of its members weighted by HDBSCAN's membership strength (``probabilities_``),
so a cluster's core pulls its centroid more than its fringe; a cluster whose strengths are all zero
falls back to the plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import HDBSCAN

from secfed.coreset.config import LocalNoise
from secfed.coreset.layout import Float

__all__ = ["LocalClusters", "cluster_points", "weighted_centroids"]


@dataclass(frozen=True)
class LocalClusters:
    """One client's clusters: ``labels[i]`` is the cluster of point ``i`` (-1: dropped noise).

    ``centroids[c]`` is cluster ``c``'s weighted centroid and ``sizes[c]`` its number of members.
    """

    labels: NDArray[np.int64]
    centroids: Float
    sizes: NDArray[np.int64]

    def members(self, cluster: int) -> NDArray[np.int64]:
        return np.flatnonzero(self.labels == cluster).astype(np.int64)


def weighted_centroids(
    points: Float, labels: NDArray[np.int64], weights: Float, n_clusters: int
) -> tuple[Float, NDArray[np.int64]]:
    """Per cluster ``0..n_clusters-1``: Σ wᵢxᵢ / Σ wᵢ over its members (plain mean if Σ wᵢ = 0), and sizes."""
    dims = points.shape[1]
    centroids = np.zeros((n_clusters, dims), dtype=np.float64)
    sizes = np.zeros(n_clusters, dtype=np.int64)
    for c in range(n_clusters):
        idx = labels == c
        sizes[c] = int(idx.sum())
        w = weights[idx]
        centroids[c] = (
            (w[:, None] * points[idx]).sum(axis=0) / w.sum() if w.sum() > 0 else points[idx].mean(axis=0)
        )
    return centroids, sizes


def cluster_points(points: Float, *, min_cluster_size: int, noise: LocalNoise = "singleton") -> LocalClusters:
    """HDBSCAN on ``points`` (``n x dims``) and weighted centroids; deterministic for given points.

    Fewer points than ``min_cluster_size`` cannot form a cluster: they are all noise.
    """
    n = len(points)
    if n >= max(min_cluster_size, 2):
        model = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(points)
        raw = np.asarray(model.labels_, dtype=np.int64)
        strength = np.asarray(model.probabilities_, dtype=np.float64)
    else:
        raw = np.full(n, -1, dtype=np.int64)
        strength = np.ones(n, dtype=np.float64)
    labels = raw.copy()
    n_clusters = int(raw.max()) + 1 if n and raw.max() >= 0 else 0
    noise_idx = np.flatnonzero(raw < 0)
    if noise == "singleton":
        labels[noise_idx] = n_clusters + np.arange(len(noise_idx))
        strength[noise_idx] = 1.0
        n_clusters += len(noise_idx)
    centroids, sizes = weighted_centroids(points, labels, strength, n_clusters)
    return LocalClusters(labels=labels, centroids=centroids, sizes=sizes)
