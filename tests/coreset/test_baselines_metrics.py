"""Coverage and ARI metrics, the INSECURE plaintext FedHDS baseline and random selection."""

from __future__ import annotations

import numpy as np
import pytest

from secfed.coreset.baselines import global_labels, plaintext_fedhds_INSECURE, random_selection
from secfed.coreset.metrics import (
    clustering_ari,
    coverage,
    mean_nearest_distance,
    plaintext_stability,
    pooled_rows,
    suppressed_share,
)


def _points(n: int = 300, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return np.concatenate([gen.normal(size=(n // 3, 2)) * 0.2 + c for c in ([0, 0], [4, 0], [0, 4])])


def test_coverage_is_zero_for_everything_and_near_one_for_random():
    pts = _points()
    assert coverage(pts, np.arange(len(pts))) == 0.0
    gen = np.random.default_rng(5)
    scores = [coverage(pts, gen.choice(len(pts), 15, replace=False), seed=s) for s in range(10)]
    assert 0.85 < float(np.mean(scores)) < 1.15
    spread = np.array([0, 1, 2, 100, 101, 102, 200, 201, 202])  # three from each blob beats chance
    clumped = np.arange(9)  # nine from one blob is far worse than chance
    assert coverage(pts, spread) < 0.9 < 1.5 < coverage(pts, clumped)


def test_mean_nearest_distance_by_hand():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert mean_nearest_distance(pts, np.array([0])) == pytest.approx((0 + 5 + 10) / 3)
    assert mean_nearest_distance(pts, np.array([1]), chunk=1) == pytest.approx(10 / 3)
    with pytest.raises(ValueError):
        mean_nearest_distance(pts, np.zeros(0, dtype=np.int64))


def test_pooled_rows_and_suppressed_share():
    idx = [np.array([10, 11, 12]), np.array([7, 3])]
    np.testing.assert_array_equal(pooled_rows(idx, [np.array([12]), np.array([3, 7])]), [2, 4, 3])
    assert suppressed_share([np.array([1, 2]), np.array([2, 5])], np.array([2])) == 0.5


def test_ari_helpers():
    a = np.array([0, 0, 1, 1, -1])
    assert clustering_ari(a, a) == 1.0
    assert clustering_ari(a, np.array([5, 5, 7, 7, 9])) == 1.0
    pts = _points(90)
    labels = global_labels(pts, min_cluster_size=5)
    stable = plaintext_stability(
        pts, labels, lambda c: global_labels(c, min_cluster_size=5), half_cell=np.array([0.01, 0.01])
    )
    shaky = plaintext_stability(
        pts, labels, lambda c: global_labels(c, min_cluster_size=5), half_cell=np.array([3.0, 3.0])
    )
    assert stable > 0.9 > shaky


def test_plaintext_baseline_picks_the_record_nearest_the_chosen_centroid():
    gen = np.random.default_rng(3)
    blobs = [np.array([0.0, 0.0]), np.array([5.0, 5.0])]
    points = [np.concatenate([gen.normal(size=(12, 2)) * 0.3 + b for b in blobs]) for _ in range(3)]
    indices = [np.arange(24) + 100 * (c + 1) for c in range(3)]
    run = plaintext_fedhds_INSECURE(points, indices, local_min_cluster_size=4, global_min_cluster_size=2)
    n_clusters = int(run.labels.max()) + 1
    assert run.n_selected == n_clusters >= 2
    expected: dict[int, set[int]] = {c: set() for c in range(3)}
    for g in range(n_clusters):
        members = np.flatnonzero(run.labels == g)
        centre = run.centroids[members].mean(axis=0)
        chosen = members[np.argmin(np.linalg.norm(run.centroids[members] - centre, axis=1))]
        owner = int(run.owners[chosen])
        row = int(np.argmin(np.linalg.norm(points[owner] - run.centroids[chosen], axis=1)))
        expected[owner].add(int(indices[owner][row]))
    assert {c: set(run.selected[c].tolist()) for c in range(3)} == expected
    capped = plaintext_fedhds_INSECURE(points, indices, local_min_cluster_size=4, max_selected=1)
    assert capped.n_selected == 1


def test_random_selection_draws_the_budget_from_the_union():
    idx = [np.arange(5) + 10, np.arange(3) + 50, np.arange(0, dtype=np.int64)]
    picks = random_selection(idx, 6, seed=1)
    assert sum(len(p) for p in picks) == 6
    assert all(np.isin(p, i).all() for p, i in zip(picks, idx, strict=True))
    again = random_selection(idx, 6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(picks, again, strict=True))
    with pytest.raises(ValueError):
        random_selection(idx, 9, seed=0)
