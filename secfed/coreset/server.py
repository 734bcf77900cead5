"""The server half of secure coreset selection: it plans stages and reads cohort sums, nothing else.

:func:`next_stage` is the whole server. It is a pure function of the public configuration, the
public round seed and the :class:`~secfed.coreset.layout.CohortSum` of every stage done so far this
round, so the server stores nothing but those sums (recomputing from them is cheap and makes a
restarted attempt trivially consistent). Stages, in order:

1. ``coreset-pca`` -> :func:`secfed.coreset.space.fit_shared_space`: mean, principal axes, grid.
2. ``coreset-occupancy`` -> :func:`allowed_cells`: cells with centroids of >= ``min_cohort``
   institutions; the others are suppressed before anything else about them is summed.
3. ``coreset-histogram`` -> :func:`cluster_histogram`: HDBSCAN over the allowed cells' positions
   repeated by their centroid counts; clusters merged down to the round's budget if needed.
4. ``coreset-election-<k>`` -> :func:`resolve_election`, repeated for collided clusters.

The result is a public broadcast naming, per global cluster, the winning (attempt, slot); only the
client that wrote into that slot can tell it is the owner.

What the server learns (state this in the audit report): the cohort's PCA statistics; the number of
institutions with a centroid in each grid cell; for allowed cells, their centroid counts and the
mean position of those centroids; per election slot, how many clients chose it (so, anonymously,
how many volunteers each cluster had and in which distance buckets). None of it is covered by the
DP guarantee unless noise is added to these sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import HDBSCAN, KMeans

from secfed.coreset.config import CoresetConfig, Positions
from secfed.coreset.election import Ballot, Winner, election_layout, election_stage
from secfed.coreset.grid import HISTOGRAM_STAGE, OCCUPANCY_STAGE, Grid, histogram_layout, occupancy_layout
from secfed.coreset.layout import CohortSum, Float, Layout
from secfed.coreset.space import PCA_STAGE, derive_seed, fit_shared_space, pca_layout

__all__ = [
    "SELECTION_STAGE",
    "ElectionOutcome",
    "GlobalClusters",
    "Selection",
    "StagePlan",
    "allowed_cells",
    "cluster_histogram",
    "next_stage",
    "resolve_election",
]

#: Name of the final broadcast (not a SecAgg stage): it rides on the training stage's config.
SELECTION_STAGE = "coreset-selection"


@dataclass(frozen=True)
class GlobalClusters:
    """The server's global clusters (public broadcast).

    ``cells`` are the allowed cells that were clustered (flat ids, ascending) and ``cell_cluster[i]``
    the cluster of ``cells[i]``. Per cluster: ``centres`` (count-weighted mean of its cells'
    positions), ``sizes`` (centroid counts) and ``radii`` (public distance scale of the election).
    """

    cells: NDArray[np.int64]
    cell_cluster: NDArray[np.int64]
    centres: Float
    sizes: NDArray[np.int64]
    radii: Float

    @property
    def n_clusters(self) -> int:
        return len(self.centres)

    def cluster_of(self, cells: NDArray[np.int64]) -> NDArray[np.int64]:
        """Cluster of each given cell, -1 for cells outside every cluster (suppressed or empty)."""
        cells = np.asarray(cells, dtype=np.int64)
        if not len(self.cells):
            return np.full(len(cells), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.cells, cells), len(self.cells) - 1)
        return np.where(self.cells[pos] == cells, self.cell_cluster[pos], -1).astype(np.int64)

    @classmethod
    def empty(cls, dims: int) -> GlobalClusters:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros((0, dims)), none, np.zeros(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "dims": int(self.centres.shape[1]),
            "cells": self.cells.tolist(),
            "cell_cluster": self.cell_cluster.tolist(),
            "centres": self.centres.tolist(),
            "sizes": self.sizes.tolist(),
            "radii": self.radii.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GlobalClusters:
        centres = np.asarray(data["centres"], dtype=np.float64)
        return cls(
            cells=np.asarray(data["cells"], dtype=np.int64),
            cell_cluster=np.asarray(data["cell_cluster"], dtype=np.int64),
            centres=centres.reshape(len(data["sizes"]), int(data["dims"])),
            sizes=np.asarray(data["sizes"], dtype=np.int64),
            radii=np.asarray(data["radii"], dtype=np.float64),
        )


def allowed_cells(occupancy: CohortSum, *, min_cohort: int) -> NDArray[np.int64]:
    """Cells (flat ids, ascending) holding centroids of at least ``min_cohort`` institutions."""
    flags = occupancy.get("flags")
    return np.flatnonzero(np.rint(flags) >= min_cohort).astype(np.int64)


def _dense_labels(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Relabel to 0..k-1 in order of first appearance (stable ids whatever the clusterer numbered)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def cluster_histogram(
    histogram: CohortSum,
    *,
    grid: Grid,
    allowed: NDArray[np.int64],
    min_cohort: int,
    min_cluster_size: int,
    positions: Positions,
    max_clusters: int,
    seed: int,
) -> GlobalClusters:
    """Global clusters from the *summed* histogram of the allowed cells.

    A cell whose summed flags fell below ``min_cohort`` (clients dropped between the occupancy and
    histogram stages) is suppressed here too. Each remaining cell is placed at its centroids' mean
    (``positions="mean"``, from the summed coordinates) or its geometric centre, repeated as many
    times as it has centroids, and clustered by HDBSCAN; cells HDBSCAN calls noise become clusters
    of their own, so no allowed cell loses its representative. If that leaves more than
    ``max_clusters`` clusters (the round's budget), their centres are merged by count-weighted
    k-means (deterministic: ``seed`` is public) rather than dropping the small ones, which would
    leave the fringe of the data without representatives.
    """
    counts = np.rint(histogram.get("counts")).astype(np.int64)
    flags = np.rint(histogram.get("flags")).astype(np.int64)
    coords = histogram.get("coords").reshape(len(allowed), grid.dims)
    keep = (flags >= min_cohort) & (counts > 0)
    cells = np.asarray(allowed, dtype=np.int64)[keep]
    counts, coords = counts[keep], coords[keep]
    if not len(cells):
        return GlobalClusters.empty(grid.dims)
    if positions == "mean":
        pos: Float = coords / counts[:, None]
    else:
        pos = grid.cell_centres(cells)
    owner = np.repeat(np.arange(len(cells)), counts)
    if len(owner) >= min_cluster_size and len(cells) > 1:
        labels = np.asarray(
            HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(pos[owner]).labels_, dtype=np.int64
        )
        # Repeats of one cell sit at one point and so share a label; take the majority to be safe.
        cell_label = np.array([np.bincount(labels[owner == k] + 1).argmax() - 1 for k in range(len(cells))])
    else:
        cell_label = np.full(len(cells), -1, dtype=np.int64)
    noise = np.flatnonzero(cell_label < 0)
    cell_label[noise] = cell_label.max(initial=-1) + 1 + np.arange(len(noise))
    cell_label = _dense_labels(cell_label)
    centres, sizes = _weighted_centres(pos, counts, cell_label)
    if len(centres) > max_clusters:
        merged = KMeans(n_clusters=max_clusters, n_init=4, random_state=seed % 2**32).fit(
            centres, sample_weight=sizes.astype(np.float64)
        )
        cell_label = _dense_labels(np.asarray(merged.labels_, dtype=np.int64)[cell_label])
        centres, sizes = _weighted_centres(pos, counts, cell_label)
    half_diagonal = float(np.linalg.norm(grid.width)) / 2.0
    radii = np.array(
        [np.linalg.norm(pos[cell_label == g] - centres[g], axis=1).max() for g in range(len(centres))]
    )
    return GlobalClusters(
        cells=cells, cell_cluster=cell_label, centres=centres, sizes=sizes, radii=radii + half_diagonal
    )


def _weighted_centres(
    pos: Float, counts: NDArray[np.int64], labels: NDArray[np.int64]
) -> tuple[Float, NDArray[np.int64]]:
    n = int(labels.max()) + 1
    sizes = np.bincount(labels, weights=counts, minlength=n).astype(np.int64)
    sums = np.zeros((n, pos.shape[1]))
    np.add.at(sums, labels, pos * counts[:, None])
    centres: Float = sums / sizes[:, None]
    return centres, sizes


@dataclass(frozen=True)
class ElectionOutcome:
    """One election stage's result: winners, clusters to retry, and clusters nobody volunteered for."""

    winners: tuple[Winner, ...]
    retry: tuple[int, ...]
    unclaimed: tuple[int, ...]


def resolve_election(slots: CohortSum, ballot: Ballot, *, last_attempt: bool) -> ElectionOutcome:
    """Winners from the *summed* slot counts of one election stage.

    Per cluster: in the lowest non-empty distance bucket, the lowest slot with count exactly 1 wins.
    If every slot of that bucket collided, the cluster is retried, except in the last attempt, where
    the lowest slot with count 1 anywhere is accepted (a farther volunteer beats none); with no count
    of 1 at all the cluster stays unresolved. No volunteer at all: unclaimed.
    """
    counts = np.rint(slots.get("slots")).astype(np.int64)
    counts = counts[: len(ballot.clusters) * ballot.slots].reshape(len(ballot.clusters), ballot.slots)
    winners: list[Winner] = []
    retry: list[int] = []
    unclaimed: list[int] = []
    for pos, cluster in enumerate(ballot.clusters):
        row = counts[pos]
        if not row.any():
            unclaimed.append(cluster)
            continue
        per_bucket = row.reshape(ballot.buckets, ballot.slots_per_bucket)
        nearest = int(np.flatnonzero(per_bucket.sum(axis=1) > 0)[0])
        unique = np.flatnonzero(per_bucket[nearest] == 1)
        if len(unique):
            winners.append(
                Winner(cluster, ballot.attempt, nearest * ballot.slots_per_bucket + int(unique[0]))
            )
            continue
        anywhere = np.flatnonzero(row == 1)
        if last_attempt and len(anywhere):
            winners.append(Winner(cluster, ballot.attempt, int(anywhere[0])))
        elif not last_attempt:
            retry.append(cluster)
        else:
            unclaimed.append(cluster)
    return ElectionOutcome(tuple(winners), tuple(retry), tuple(unclaimed))


@dataclass(frozen=True)
class StagePlan:
    """The next SecAgg stage: its name, its public vector layout, and its public broadcast (JSON-able)."""

    name: str
    layout: Layout
    broadcast: dict[str, Any]


@dataclass(frozen=True)
class Selection:
    """The round's outcome (public): the broadcast clients read their selection from, and a summary."""

    broadcast: dict[str, Any]
    summary: dict[str, Any]


def _budget(config: CoresetConfig, total_records: int) -> int:
    return max(1, int(np.floor(config.max_fraction * total_records)))


def next_stage(config: CoresetConfig, round_seed: int, done: Sequence[CohortSum]) -> StagePlan | Selection:
    """The next stage of the round, or its :class:`Selection`, from the sums of the stages done so far.

    ``done`` holds the decoded cohort sums of this round's stages in order (empty: start the round).
    Its only client-derived inputs are those sums; everything else is public.
    """
    base: dict[str, Any] = {"round_seed": int(round_seed), "config": config.to_json()}
    pca = pca_layout(config.k0, bound=config.bound, max_records=config.max_records)
    if not done:
        return StagePlan(PCA_STAGE, pca, {**base, "stage": PCA_STAGE})
    _expect(done[0], PCA_STAGE)
    space = fit_shared_space(done[0], dims=config.dims, bins=config.bins, range_std=config.range_std)
    base["space"] = space.to_json()
    summary: dict[str, Any] = {
        "total_records": space.total_records,
        "budget": _budget(config, space.total_records),
        "n_cells": space.grid.n_cells,
    }
    if len(done) == 1:
        return StagePlan(OCCUPANCY_STAGE, occupancy_layout(space.grid), {**base, "stage": OCCUPANCY_STAGE})
    _expect(done[1], OCCUPANCY_STAGE)
    allowed = allowed_cells(done[1], min_cohort=config.min_cohort)
    summary["n_occupied_cells"] = int(np.count_nonzero(np.rint(done[1].get("flags"))))
    summary["n_allowed_cells"] = len(allowed)
    base["allowed"] = allowed.tolist()
    if not len(allowed):
        return _selection(base, summary, GlobalClusters.empty(config.dims), [], [], 0)
    if len(done) == 2:
        layout = histogram_layout(
            len(allowed),
            config.dims,
            coord_bound=space.coord_bound(config.bound),
            max_records=config.max_records,
        )
        return StagePlan(HISTOGRAM_STAGE, layout, {**base, "stage": HISTOGRAM_STAGE})
    _expect(done[2], HISTOGRAM_STAGE)
    clusters = cluster_histogram(
        done[2],
        grid=space.grid,
        allowed=allowed,
        min_cohort=config.min_cohort,
        min_cluster_size=config.global_min_cluster_size,
        positions=config.positions,
        max_clusters=_budget(config, space.total_records),
        seed=derive_seed(round_seed, "merge"),
    )
    base["clusters"] = clusters.to_json()
    winners: list[Winner] = []
    unclaimed: list[int] = []
    open_clusters: tuple[int, ...] = tuple(range(clusters.n_clusters))
    attempts = len(done) - 3
    if attempts > config.max_election_attempts:
        raise ValueError(
            f"{attempts} election stages exceed max_election_attempts={config.max_election_attempts}"
        )
    for attempt in range(attempts):
        ballot = Ballot(attempt, open_clusters, config.slot_buckets, config.slots_per_bucket)
        _expect(done[3 + attempt], election_stage(attempt))
        last = attempt + 1 >= config.max_election_attempts
        outcome = resolve_election(done[3 + attempt], ballot, last_attempt=last)
        winners.extend(outcome.winners)
        unclaimed.extend(outcome.unclaimed)
        open_clusters = outcome.retry
    if open_clusters:
        ballot = Ballot(attempts, open_clusters, config.slot_buckets, config.slots_per_bucket)
        name = election_stage(attempts)
        return StagePlan(name, election_layout(ballot), {**base, "stage": name, "ballot": ballot.to_json()})
    return _selection(base, summary, clusters, winners, unclaimed, attempts)


def _selection(
    base: dict[str, Any],
    summary: dict[str, Any],
    clusters: GlobalClusters,
    winners: Sequence[Winner],
    unclaimed: Sequence[int],
    attempts: int,
) -> Selection:
    ordered = sorted(winners, key=lambda w: w.cluster)
    broadcast = {
        **base,
        "stage": SELECTION_STAGE,
        "clusters": clusters.to_json(),
        "winners": [[w.cluster, w.attempt, w.slot] for w in ordered],
    }
    summary = {
        **summary,
        "n_clusters": clusters.n_clusters,
        "n_winners": len(ordered),
        "unclaimed": sorted(int(c) for c in unclaimed),
        "election_attempts": attempts,
    }
    return Selection(broadcast=broadcast, summary=summary)


def _expect(result: CohortSum, stage: str) -> None:
    if result.stage != stage:
        raise ValueError(f"expected the sum of stage {stage!r}, got {result.stage!r}")
