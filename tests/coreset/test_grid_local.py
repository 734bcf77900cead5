"""Grid cells with overflow bins, the summed histogram, and intra-client clustering."""

from __future__ import annotations

import numpy as np
import pytest

from secfed.coreset.grid import (
    Grid,
    histogram_contribution,
    histogram_layout,
    occupancy_contribution,
    occupancy_layout,
)
from secfed.coreset.layout import sum_contributions
from secfed.coreset.local import cluster_points, weighted_centroids

GRID = Grid(lo=np.array([-1.0, -2.0]), hi=np.array([1.0, 2.0]), bins=4)


def test_overflow_bins_catch_outliers_and_no_centroid_is_lost():
    far = np.array([[-1e9, 0.0], [1e9, 1e9], [0.99, -2.0], [1.0, 2.0], [-1.0, -2.0001], [0.0, 0.0]])
    bins = GRID.axis_bins(far)
    np.testing.assert_array_equal(bins, [[0, 3], [5, 5], [4, 1], [5, 5], [1, 0], [3, 3]])
    cells = GRID.cell_of(far)
    assert np.all((cells >= 0) & (cells < GRID.n_cells)) and GRID.n_cells == 36
    allowed = np.arange(GRID.n_cells, dtype=np.int64)
    hist = histogram_contribution(GRID, allowed, far)
    assert hist["counts"].sum() == len(far)
    np.testing.assert_allclose(hist["coords"].reshape(-1, 2).sum(axis=0), far.sum(axis=0))
    with pytest.raises(ValueError):
        GRID.cell_of(np.array([[np.nan, 0.0]]))


def test_cell_centres_inside_and_beyond_the_range():
    centres = GRID.cell_centres(GRID.cell_of(np.array([[-0.9, -1.9], [5.0, -5.0]])))
    np.testing.assert_allclose(centres, [[-0.75, -1.5], [1.25, -2.5]])


def test_summed_histogram_equals_the_histogram_of_the_pooled_centroids():
    gen = np.random.default_rng(0)
    per_client = [gen.normal(size=(n, 2)) for n in (5, 9, 3)]
    occ = sum_contributions(occupancy_layout(GRID), [occupancy_contribution(GRID, c) for c in per_client])
    expected_flags = np.zeros(GRID.n_cells)
    for c in per_client:
        expected_flags[np.unique(GRID.cell_of(c))] += 1
    np.testing.assert_array_equal(occ.get("flags"), expected_flags)

    allowed = np.flatnonzero(expected_flags >= 1).astype(np.int64)[::2]  # a subset: others contribute nothing
    layout = histogram_layout(len(allowed), 2, coord_bound=10.0, max_records=100)
    total = sum_contributions(layout, [histogram_contribution(GRID, allowed, c) for c in per_client])
    pooled = np.concatenate(per_client)
    cells = GRID.cell_of(pooled)
    for k, cell in enumerate(allowed):
        inside = pooled[cells == cell]
        assert total.get("counts")[k] == len(inside)
        assert total.get("flags")[k] == expected_flags[cell]
        np.testing.assert_allclose(total.get("coords").reshape(-1, 2)[k], inside.sum(axis=0), atol=1e-12)


def test_grid_round_trips_through_json():
    again = Grid.from_json(GRID.to_json())
    np.testing.assert_array_equal(again.lo, GRID.lo)
    np.testing.assert_array_equal(again.hi, GRID.hi)
    assert again.bins == GRID.bins


def test_local_clusters_find_blobs_and_keep_noise_as_singletons():
    gen = np.random.default_rng(1)
    blobs = np.concatenate([gen.normal(size=(15, 2)) * 0.05, gen.normal(size=(15, 2)) * 0.05 + 5.0])
    points = np.concatenate([blobs, [[20.0, -20.0]]])
    kept = cluster_points(points, min_cluster_size=5, noise="singleton")
    assert kept.labels[-1] >= 0 and kept.sizes[kept.labels[-1]] == 1
    np.testing.assert_allclose(kept.centroids[kept.labels[-1]], [20.0, -20.0])
    assert len(set(kept.labels[:15].tolist())) == 1 and len(set(kept.labels[15:30].tolist())) == 1
    dropped = cluster_points(points, min_cluster_size=5, noise="drop")
    assert dropped.labels[-1] == -1
    assert len(dropped.centroids) == len(kept.centroids) - 1
    assert sum(dropped.sizes) == 30


def test_too_few_points_are_all_singletons_and_centroids_are_weighted():
    one = cluster_points(np.array([[1.0, 2.0]]), min_cluster_size=2)
    np.testing.assert_allclose(one.centroids, [[1.0, 2.0]])
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    cents, sizes = weighted_centroids(pts, np.array([0, 0, 1]), np.array([3.0, 1.0, 0.0]), 2)
    np.testing.assert_allclose(cents, [[0.25, 0.0], [10.0, 0.0]])  # zero total weight: plain mean
    np.testing.assert_array_equal(sizes, [2, 1])
