"""End-to-end secure selection: the right records, only cohort sums at the server, suppression, determinism."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from secfed.coreset import client as client_mod
from secfed.coreset import server
from secfed.coreset.client import nearest_records
from secfed.coreset.election import Ballot
from secfed.coreset.grid import (
    Grid,
    histogram_contribution,
    histogram_layout,
    occupancy_contribution,
    occupancy_layout,
)
from secfed.coreset.layout import CohortSum, sum_contributions
from secfed.coreset.pipeline import ClientData, run_secure
from secfed.coreset.server import GlobalClusters
from tests.coreset.support import SMALL, blob_clients, seeded


def test_each_winner_trains_on_its_record_nearest_the_cluster_centre():
    clients = blob_clients(5, 40, seed=1)
    run = run_secure(clients, SMALL, 7, rngs=seeded(5))
    clusters = GlobalClusters.from_json(run.final.broadcast["clusters"])
    assert run.n_selected == run.final.summary["n_winners"] > 0
    not_first_member = 0
    for data, view, sel in zip(clients, run.views, run.selections, strict=True):
        assert np.all(np.isin(sel.records, data.indices))  # record indices, not row numbers
        for record, cluster in zip(sel.records, sel.clusters, strict=True):
            row = int(np.flatnonzero(view.indices == record)[0])
            dist = np.linalg.norm(view.points - clusters.centres[cluster], axis=1)
            assert dist[row] == pytest.approx(dist.min())
            # ... which is usually not simply the first record of the client's cluster in that cell
            in_cluster = np.flatnonzero(clusters.cluster_of(view.cells)[view.clusters.labels] == cluster)
            not_first_member += int(len(in_cluster) > 0 and in_cluster[0] != row)
    assert not_first_member > 0


def test_nearest_records_takes_each_record_once():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    np.testing.assert_array_equal(
        nearest_records(pts, np.array([[0.9, 0.0], [0.2, 0.0], [0.95, 0.0]])), [1, 0, 2]
    )
    assert len(nearest_records(pts[:1], np.array([[0.0, 0.0], [1.0, 1.0]]))) == 1


def test_selection_is_deterministic_for_a_fixed_seed_and_within_budget():
    clients = blob_clients(5, 40, seed=4)
    a = run_secure(clients, SMALL, 11, rngs=seeded(5))
    b = run_secure(clients, SMALL, 11, rngs=seeded(5))
    for x, y in zip(a.selected, b.selected, strict=True):
        np.testing.assert_array_equal(x, y)
    for ra, rb in zip(a.transcript, b.transcript, strict=True):
        for name in ra.total.values:
            np.testing.assert_array_equal(ra.total.get(name), rb.total.get(name))
    assert a.final.broadcast == b.final.broadcast
    assert a.n_selected <= int(SMALL.max_fraction * 200) == a.final.summary["budget"]
    other = run_secure(clients, SMALL, 12, rngs=seeded(5))  # a new round draws a new public projection
    assert not np.allclose(other.transcript[0].total.get("sum"), a.transcript[0].total.get("sum"))


def test_budget_merges_clusters_instead_of_exceeding_it():
    clients = blob_clients(5, 40, seed=4, n_blobs=12)
    tight = replace(SMALL, bins=16, max_fraction=0.02)
    run = run_secure(clients, tight, 3, rngs=seeded(5))
    assert run.final.summary["budget"] == 4
    assert 0 < run.final.summary["n_clusters"] <= 4 and run.n_selected <= 4


PUBLIC_TYPES = (int, float, str, bool, Grid, Ballot, type(None))


def test_white_box_the_server_only_ever_receives_cohort_sums(monkeypatch):
    clients = blob_clients(4, 30, seed=5)
    sent: dict[str, list[dict[str, np.ndarray]]] = {}
    received: list[tuple[str, CohortSum]] = []
    allowed_seen: list[np.ndarray] = []

    original_contribute = client_mod.CoresetClient.contribute

    def spy_contribute(self, broadcast):
        vec = original_contribute(self, broadcast)
        sent.setdefault(broadcast["stage"], []).append({k: v.copy() for k, v in vec.items()})
        return vec

    def guard(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            for arg in [*args, *kwargs.values()]:
                if isinstance(arg, CohortSum):
                    received.append((name, arg))
                elif isinstance(arg, np.ndarray):
                    # the only array a server function takes is the allowed-cell list it derived itself
                    assert arg.dtype == np.int64 and any(np.array_equal(arg, a) for a in allowed_seen), name
                else:
                    assert isinstance(arg, PUBLIC_TYPES), (name, type(arg))
            out = fn(*args, **kwargs)
            if name == "allowed_cells":
                allowed_seen.append(out)
            return out

        return wrapped

    monkeypatch.setattr(client_mod.CoresetClient, "contribute", spy_contribute)
    for name in ("fit_shared_space", "allowed_cells", "cluster_histogram", "resolve_election"):
        monkeypatch.setattr(server, name, guard(name, getattr(server, name)))
    original_next = server.next_stage

    def spy_next(config, round_seed, done):
        assert all(isinstance(d, CohortSum) for d in done)
        return original_next(config, round_seed, done)

    monkeypatch.setattr(server, "next_stage", spy_next)
    run = run_secure(clients, SMALL, 2, rngs=seeded(4))

    stages_seen = {total.stage for _, total in received}
    assert {"coreset-pca", "coreset-occupancy", "coreset-histogram", "coreset-election-0"} <= stages_seen
    for name, total in received:
        vectors = sent[total.stage]
        assert len(vectors) == len(clients) == total.n_contributors >= SMALL.min_cohort
        for seg, value in total.values.items():
            np.testing.assert_allclose(value, sum(v[seg] for v in vectors), err_msg=f"{name}/{seg}")
        flat = np.concatenate([total.get(s) for s in sorted(total.values)])
        for v in vectors:
            single = np.concatenate([v[s] for s in sorted(v)])
            assert not np.array_equal(flat, single), f"{name} received one client's vector"
    assert run.n_selected > 0
    # The server's stage planner is stateless: the same sums give the same plan, whatever ran before.
    done = [r.total for r in run.transcript]
    assert original_next(SMALL, 2, done) == original_next(SMALL, 2, done)


def _spy_hdbscan(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    fitted: list[np.ndarray] = []
    real_hdbscan: Any = getattr(server, "HDBSCAN")  # noqa: B009 (not re-exported)

    class SpyHDBSCAN(real_hdbscan):  # type: ignore[misc]
        def fit(self, x, y=None):
            fitted.append(np.array(x))
            return super().fit(x, y)

    monkeypatch.setattr(server, "HDBSCAN", SpyHDBSCAN)
    return fitted


def test_single_institution_cells_never_reach_the_server_clustering(monkeypatch):
    fitted = _spy_hdbscan(monkeypatch)
    clients = blob_clients(4, 30, seed=6)
    config = replace(SMALL, bins=24)  # a fine grid: many cells hold one institution's centroids only
    run = run_secure(clients, config, 4, rngs=seeded(4))
    flags = next(r for r in run.transcript if r.name == "coreset-occupancy").total.get("flags")
    lonely = set(np.flatnonzero(flags == 1).tolist())
    assert len(lonely) >= 3
    allowed = set(run.final.broadcast["allowed"])
    assert allowed and not lonely & allowed
    assert allowed == set(np.flatnonzero(flags >= 2).tolist())
    clusters = GlobalClusters.from_json(run.final.broadcast["clusters"])
    assert not lonely & set(clusters.cells.tolist())
    histogram = next(r for r in run.transcript if r.name == "coreset-histogram")
    assert histogram.total.get("counts").size == len(allowed)  # suppressed cells are not even in the layout
    grid = Grid.from_json(run.final.broadcast["space"]["grid"])
    assert fitted
    for x in fitted:
        assert not lonely & set(grid.cell_of(x).tolist())


def test_suppression_at_the_server_functions_directly(monkeypatch):
    fitted = _spy_hdbscan(monkeypatch)
    grid = Grid(lo=np.array([0.0, 0.0]), hi=np.array([4.0, 4.0]), bins=4)
    shared = np.array([[0.5, 0.5], [0.6, 0.4], [2.5, 2.5]])
    per_client = [shared, shared + 0.01, np.concatenate([shared, [[3.5, 0.5]]])]  # (3.5, 0.5): client 2 only
    occ = sum_contributions(occupancy_layout(grid), [occupancy_contribution(grid, c) for c in per_client])
    allowed = server.allowed_cells(occ, min_cohort=2)
    lonely_cell = int(grid.cell_of(np.array([[3.5, 0.5]]))[0])
    assert occ.get("flags")[lonely_cell] == 1 and lonely_cell not in allowed
    layout = histogram_layout(len(allowed), 2, coord_bound=10.0, max_records=10)
    hist = sum_contributions(layout, [histogram_contribution(grid, allowed, c) for c in per_client])
    clusters = server.cluster_histogram(
        hist,
        grid=grid,
        allowed=allowed,
        min_cohort=2,
        min_cluster_size=2,
        positions="mean",
        max_clusters=10,
        seed=0,
    )
    assert lonely_cell not in clusters.cells.tolist()
    assert fitted and not np.any(np.all(np.isclose(fitted[0], [3.5, 0.5]), axis=1))
    assert hist.get("counts").sum() == 9  # 3 clients x 3 shared centroids; the loner's 4th is not summed
    # a client dropping between occupancy and histogram re-suppresses a cell that fell below min_cohort
    hist_dropped = sum_contributions(
        layout, [histogram_contribution(grid, allowed, c) for c in per_client[:1]]
    )
    again = server.cluster_histogram(
        hist_dropped,
        grid=grid,
        allowed=allowed,
        min_cohort=2,
        min_cluster_size=2,
        positions="mean",
        max_clusters=10,
        seed=0,
    )
    assert again.n_clusters == 0


def test_a_client_without_records_takes_part_with_zeros():
    clients = blob_clients(4, 30, seed=2)
    empty = ClientData(np.zeros(0, dtype=np.int64), np.zeros((0, clients[0].features.shape[1])))
    run = run_secure([*clients, empty], SMALL, 1, rngs=seeded(5))
    assert run.n_selected > 0 and len(run.selected[-1]) == 0
    for record in run.transcript:
        assert all(not v.any() for v in record.contributions[-1].values())
