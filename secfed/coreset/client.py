"""The client half of secure coreset selection: private features in, summable vectors out.

A :class:`CoresetClient` holds one institution's record indices and features for the round. For each
stage it reads the server's public broadcast and returns its contribution (one float64 array per
segment of the stage's public layout), which the federation masks and sums. The only client state
kept between stages is derived from the broadcasts (cached) plus the election slots it chose, which
is how it later recognises that it won. Its final output is the list of *its own record indices* to
train on: for each global cluster it won, the record nearest that cluster's centre.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.config import CoresetConfig
from secfed.coreset.election import Ballot, SlotSource, default_slot_source, election_stage, vote
from secfed.coreset.grid import (
    HISTOGRAM_STAGE,
    OCCUPANCY_STAGE,
    histogram_contribution,
    occupancy_contribution,
)
from secfed.coreset.layout import Contribution, Float
from secfed.coreset.local import LocalClusters, cluster_points
from secfed.coreset.server import SELECTION_STAGE, GlobalClusters
from secfed.coreset.space import (
    PCA_STAGE,
    SharedSpace,
    feature_blocks,
    pca_contribution,
    project,
    projection_matrix,
)

__all__ = ["ClientSelection", "CoresetClient", "LocalView", "nearest_records"]


@dataclass(frozen=True)
class LocalView:
    """A client's private picture of its data in the round's shared space (never sent anywhere).

    ``points[i]`` is the shared-space position of record ``indices[i]``; ``cells`` the grid cell of
    each local centroid.
    """

    indices: NDArray[np.int64]
    points: Float
    clusters: LocalClusters
    cells: NDArray[np.int64]


@dataclass(frozen=True)
class ClientSelection:
    """What this client trains on: ``records[i]`` (a record index) represents global cluster ``clusters[i]``."""

    records: NDArray[np.int64]
    clusters: tuple[int, ...]


def nearest_records(points: Float, centres: Float) -> NDArray[np.int64]:
    """Row of ``points`` nearest each centre, taking each row at most once (centres in order).

    Two won clusters whose nearest record coincides would otherwise spend two budget slots on one
    record; the later cluster takes its nearest record not already taken (if any remain).
    """
    taken: set[int] = set()
    out: list[int] = []
    for centre in centres:
        order = np.argsort(np.linalg.norm(points - centre, axis=1), kind="stable")
        free = [int(i) for i in order if int(i) not in taken]
        if free:
            taken.add(free[0])
            out.append(free[0])
    return np.asarray(out, dtype=np.int64)


class CoresetClient:
    """One institution's coreset state for a round (see the module docstring).

    ``features`` has one row per record (``indices[i]`` names row ``i``'s record); ``rng`` is the
    election's slot randomness, a CSPRNG unless a test injects a seeded one.
    """

    def __init__(self, indices: NDArray[np.int64], features: Float, *, rng: SlotSource | None = None) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or indices.shape != (len(features),):
            raise ValueError(f"indices {indices.shape} must name each of the {features.shape} feature rows")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("record indices must be unique")
        self.indices = indices
        self.features = features
        self._rng: SlotSource = rng if rng is not None else default_slot_source()
        self._choices: dict[tuple[int, int], int] = {}
        self._projected_key: tuple[int, str] | None = None
        self._projected: Float = np.zeros((0, 0))
        self._view_key: str | None = None
        self._view: LocalView | None = None

    def _projected_points(self, config: CoresetConfig, round_seed: int) -> Float:
        key = (round_seed, json.dumps(config.to_json(), sort_keys=True))
        if key != self._projected_key:
            unit = feature_blocks(self.features, config.feature_blocks)
            proj = projection_matrix(self.features.shape[1], config.k0, round_seed)
            self._projected = project(unit, proj, config.bound)
            self._projected_key = key
        return self._projected

    def local_view(self, broadcast: Mapping[str, Any]) -> LocalView:
        """Shared-space points, local clusters and centroid cells under a broadcast's space (cached)."""
        config = CoresetConfig.from_json(dict(broadcast["config"]))
        round_seed = int(broadcast["round_seed"])
        key = json.dumps([round_seed, broadcast["config"], broadcast["space"]], sort_keys=True)
        if key != self._view_key or self._view is None:
            space = SharedSpace.from_json(dict(broadcast["space"]))
            points = space.coords(self._projected_points(config, round_seed))
            clusters = cluster_points(
                points, min_cluster_size=config.local_min_cluster_size, noise=config.local_noise
            )
            cells = (
                space.grid.cell_of(clusters.centroids) if len(clusters.centroids) else np.zeros(0, np.int64)
            )
            self._view = LocalView(self.indices, points, clusters, cells)
            self._view_key = key
        return self._view

    def contribute(self, broadcast: Mapping[str, Any]) -> Contribution:
        """This client's vector for the stage named by ``broadcast["stage"]``."""
        stage = str(broadcast["stage"])
        config = CoresetConfig.from_json(dict(broadcast["config"]))
        round_seed = int(broadcast["round_seed"])
        if stage == PCA_STAGE:
            self._choices.clear()  # a new round (or a restarted attempt): earlier slots mean nothing
            return pca_contribution(self._projected_points(config, round_seed))
        view = self.local_view(broadcast)
        grid = SharedSpace.from_json(dict(broadcast["space"])).grid
        if stage == OCCUPANCY_STAGE:
            return occupancy_contribution(grid, view.clusters.centroids)
        allowed = np.asarray(broadcast["allowed"], dtype=np.int64)
        if stage == HISTOGRAM_STAGE:
            return histogram_contribution(grid, allowed, view.clusters.centroids)
        ballot = Ballot.from_json(dict(broadcast["ballot"]))
        if stage == election_stage(ballot.attempt):
            return self._vote(ballot, GlobalClusters.from_json(dict(broadcast["clusters"])), view)
        raise ValueError(f"unknown coreset stage {stage!r}")

    def _vote(self, ballot: Ballot, clusters: GlobalClusters, view: LocalView) -> Contribution:
        open_ids = np.asarray(ballot.clusters, dtype=np.int64)
        mine = set(clusters.cluster_of(view.cells).tolist()) - {-1}
        eligible = np.array([int(g) in mine for g in open_ids], dtype=bool)
        centres = clusters.centres[open_ids] if len(open_ids) else np.zeros((0, view.points.shape[1]))
        if len(view.points):
            dist = np.linalg.norm(view.points[None, :, :] - centres[:, None, :], axis=2).min(axis=1)
        else:
            dist = np.full(len(open_ids), np.inf)
        vector, choices = vote(
            ballot, eligible & np.isfinite(dist), dist, clusters.radii[open_ids], self._rng
        )
        for cluster, slot in choices.items():
            self._choices[(ballot.attempt, cluster)] = slot
        return vector

    def nearest_candidate(self, broadcast: Mapping[str, Any]) -> NDArray[np.int64]:
        """A non-winner's one record to train on: its record nearest any global cluster centre.

        Every cohort member trains in the train stage, so the train sum always holds data of every
        contributor (never one winner's update beside zeros). With no clusters at all (every cell
        suppressed) it is the record nearest the shared space's origin, the cohort mean.
        """
        view = self.local_view(broadcast)
        if not len(view.points):
            return np.zeros(0, dtype=np.int64)
        clusters = GlobalClusters.from_json(dict(broadcast["clusters"])) if "clusters" in broadcast else None
        centres = (
            clusters.centres
            if clusters is not None and clusters.n_clusters
            else np.zeros((1, view.points.shape[1]))
        )
        dist = np.linalg.norm(view.points[:, None, :] - centres[None, :, :], axis=2).min(axis=1)
        return view.indices[[int(np.argmin(dist))]]

    def selection(self, broadcast: Mapping[str, Any]) -> ClientSelection:
        """The records this client trains on, from the final public broadcast (``coreset-selection``).

        A client won cluster ``g`` iff it wrote into the slot the server announced for ``g``; it then
        trains on its record nearest ``g``'s centre (the indices carried from the features).
        """
        if broadcast["stage"] != SELECTION_STAGE:
            raise ValueError(f"selection needs the {SELECTION_STAGE!r} broadcast, got {broadcast['stage']!r}")
        clusters = GlobalClusters.from_json(dict(broadcast["clusters"]))
        won = [
            int(cluster)
            for cluster, attempt, slot in broadcast["winners"]
            if self._choices.get((int(attempt), int(cluster))) == int(slot)
        ]
        if not won:
            return ClientSelection(np.zeros(0, dtype=np.int64), ())
        view = self.local_view(broadcast)
        rows = nearest_records(view.points, clusters.centres[np.asarray(won, dtype=np.int64)])
        return ClientSelection(view.indices[rows], tuple(won[: len(rows)]))
