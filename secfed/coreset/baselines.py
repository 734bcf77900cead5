"""Baselines for secure coreset selection: plaintext FedHDS (INSECURE) and random selection.

:func:`plaintext_fedhds_INSECURE` is FedHDS as the paper runs it: every client sends its local
centroids *in the clear* and the server clusters them. It exists only to measure what secure
selection costs in quality; a federation must never run it (the server learns every client's
centroids and which client holds which). It works in the same shared space as the secure protocol
(same features, projection and federated PCA) so the two differ only in what the server sees.

:func:`random_selection` draws the same number of records uniformly from the cohort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import HDBSCAN, KMeans

from secfed.coreset.client import nearest_records
from secfed.coreset.config import LocalNoise
from secfed.coreset.layout import Float
from secfed.coreset.local import LocalClusters, cluster_points

__all__ = ["PlaintextRun", "plaintext_fedhds_INSECURE", "random_selection"]


@dataclass(frozen=True)
class PlaintextRun:
    """INSECURE baseline result.

    ``selected[c]``: client ``c``'s selected record indices. ``centroids``/``owners``: every local
    centroid the server received and its client (what the secure protocol hides), ``labels`` their
    global cluster (-1: noise, if dropped).
    """

    selected: list[NDArray[np.int64]]
    centroids: Float
    owners: NDArray[np.int64]
    labels: NDArray[np.int64]
    local: list[LocalClusters]

    @property
    def n_selected(self) -> int:
        return sum(len(s) for s in self.selected)


def global_labels(
    centroids: Float, *, min_cluster_size: int, noise: Literal["drop", "singleton"] = "drop"
) -> NDArray[np.int64]:
    """HDBSCAN over the pooled local centroids (the paper's inter-client step)."""
    if len(centroids) < max(min_cluster_size, 2):
        labels = np.full(len(centroids), -1, dtype=np.int64)
    else:
        labels = np.asarray(
            HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(centroids).labels_, np.int64
        )
    if noise == "singleton":
        idx = np.flatnonzero(labels < 0)
        labels[idx] = labels.max(initial=-1) + 1 + np.arange(len(idx))
    return labels


def plaintext_fedhds_INSECURE(  # noqa: N802 (the name must shout)
    points: Sequence[Float],
    indices: Sequence[NDArray[np.int64]],
    *,
    local_min_cluster_size: int = 2,
    global_min_cluster_size: int = 2,
    local_noise: LocalNoise = "singleton",
    global_noise: Literal["drop", "singleton"] = "drop",
    max_selected: int | None = None,
    seed: int = 0,
) -> PlaintextRun:
    """INSECURE: FedHDS with the server seeing every client's centroids (benchmark baseline only).

    ``points[c]`` are client ``c``'s records in the shared space, ``indices[c]`` their record indices.
    Per global cluster the member centroid nearest the cluster's mean is chosen, and its owner trains
    on its record nearest that centroid. ``max_selected`` (default: none, as in the paper) merges
    clusters by count-weighted k-means, like the secure server does to meet its budget.
    """
    local = [cluster_points(p, min_cluster_size=local_min_cluster_size, noise=local_noise) for p in points]
    centroids = (
        np.concatenate([lc.centroids for lc in local]) if local else np.zeros((0, 0), dtype=np.float64)
    )
    owners = np.concatenate([np.full(len(lc.centroids), c, dtype=np.int64) for c, lc in enumerate(local)])
    labels = global_labels(centroids, min_cluster_size=global_min_cluster_size, noise=global_noise)
    n_clusters = int(labels.max(initial=-1)) + 1
    if max_selected is not None and n_clusters > max_selected:
        means = np.stack([centroids[labels == g].mean(axis=0) for g in range(n_clusters)])
        sizes = np.bincount(labels[labels >= 0], minlength=n_clusters).astype(np.float64)
        merged = KMeans(n_clusters=max_selected, n_init=4, random_state=seed).fit(means, sample_weight=sizes)
        labels = np.where(labels >= 0, np.asarray(merged.labels_, dtype=np.int64)[np.maximum(labels, 0)], -1)
        n_clusters = max_selected
    wins: list[list[Float]] = [[] for _ in points]
    for g in range(n_clusters):
        members = np.flatnonzero(labels == g)
        if not len(members):
            continue
        centre = centroids[members].mean(axis=0)
        chosen = members[np.argmin(np.linalg.norm(centroids[members] - centre, axis=1))]
        wins[int(owners[chosen])].append(centroids[chosen])
    selected = [
        np.asarray(indices[c], dtype=np.int64)[nearest_records(points[c], np.array(w))]
        if w
        else np.zeros(0, dtype=np.int64)
        for c, w in enumerate(wins)
    ]
    return PlaintextRun(selected=selected, centroids=centroids, owners=owners, labels=labels, local=local)


def random_selection(
    indices: Sequence[NDArray[np.int64]], n_select: int, *, seed: int
) -> list[NDArray[np.int64]]:
    """``n_select`` records drawn uniformly without replacement from the union of the clients' records."""
    sizes = [len(i) for i in indices]
    total = sum(sizes)
    if not 0 <= n_select <= total:
        raise ValueError(f"cannot select {n_select} of {total} records")
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n_select, replace=False))
    bounds = np.cumsum([0, *sizes])
    return [
        np.asarray(indices[c], dtype=np.int64)[
            picks[(picks >= bounds[c]) & (picks < bounds[c + 1])] - bounds[c]
        ]
        for c in range(len(indices))
    ]
