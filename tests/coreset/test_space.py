"""Public projection and federated PCA: the summed statistics give exactly the pooled-data PCA."""

from __future__ import annotations

import numpy as np
import pytest

from secfed.coreset.layout import CohortSum, sum_contributions
from secfed.coreset.space import (
    derive_seed,
    fit_shared_space,
    pca_contribution,
    pca_layout,
    project,
    projection_matrix,
)


def _clients(seed: int = 0, k0: int = 6) -> list[np.ndarray]:
    gen = np.random.default_rng(seed)
    scales = np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])[:k0]
    return [gen.normal(size=(n, k0)) * scales + gen.normal(size=k0) for n in (7, 30, 12, 1)]


def test_summed_pca_statistics_equal_those_of_the_pooled_points():
    parts = _clients()
    layout = pca_layout(6, bound=2.0, max_records=100)
    total = sum_contributions(layout, [pca_contribution(p) for p in parts])
    pooled = pca_contribution(np.concatenate(parts))
    for name in ("sum", "outer", "count"):
        np.testing.assert_allclose(total.get(name), pooled[name], rtol=1e-12, atol=1e-10)
    assert total.n_contributors == 4
    assert [s.length for s in layout.segments] == [6, 21, 1]


def test_shared_space_matches_numpy_pca_on_the_union():
    parts = _clients()
    union = np.concatenate(parts)
    total = sum_contributions(pca_layout(6, bound=2.0, max_records=100), [pca_contribution(p) for p in parts])
    space = fit_shared_space(total, dims=2, bins=8, range_std=2.0)
    np.testing.assert_allclose(space.mean, union.mean(axis=0), rtol=1e-12)
    cov = np.cov(union, rowvar=False, bias=True)
    vals, vecs = np.linalg.eigh(cov)
    for j in range(2):
        ref = vecs[:, -1 - j]
        assert abs(abs(float(ref @ space.basis[:, j])) - 1.0) < 1e-9  # same axis up to sign
        assert space.std[j] == pytest.approx(np.sqrt(vals[-1 - j]), rel=1e-9)
    coords = space.coords(union)
    np.testing.assert_allclose(coords.std(axis=0), space.std, rtol=1e-9)
    np.testing.assert_allclose(space.grid.hi, 2.0 * space.std)
    np.testing.assert_allclose(space.grid.lo, -2.0 * space.std)
    assert space.total_records == len(union)


def test_shared_space_is_a_deterministic_function_of_the_sums():
    parts = _clients()
    layout = pca_layout(6, bound=2.0, max_records=100)
    a = fit_shared_space(
        sum_contributions(layout, [pca_contribution(p) for p in parts]), dims=2, bins=8, range_std=2.0
    )
    b = fit_shared_space(
        sum_contributions(layout, [pca_contribution(p) for p in parts[::-1]]), dims=2, bins=8, range_std=2.0
    )
    np.testing.assert_allclose(a.basis, b.basis, atol=1e-12)  # signs fixed, not left to eigh
    assert np.all(a.basis[np.argmax(np.abs(a.basis), axis=0), [0, 1]] > 0)


def test_degenerate_cohort_still_gets_a_valid_grid():
    same = np.ones((5, 4))
    total = CohortSum("coreset-pca", pca_contribution(same), 1)
    space = fit_shared_space(total, dims=2, bins=4, range_std=2.0)
    assert np.all(space.grid.hi > space.grid.lo)


def test_projection_is_public_per_round_and_bounded():
    a = projection_matrix(50, 8, round_seed=3)
    np.testing.assert_array_equal(a, projection_matrix(50, 8, round_seed=3))
    assert not np.allclose(a, projection_matrix(50, 8, round_seed=4))
    assert derive_seed(3, "projection") != derive_seed(3, "merge")
    gen = np.random.default_rng(0)
    x = gen.normal(size=(200, 50))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = project(x * 10.0, a, bound=2.0)
    assert np.all(np.linalg.norm(y, axis=1) <= 2.0 + 1e-12)
    unit = project(x, a, bound=2.0)
    assert abs(float(np.mean(np.linalg.norm(unit, axis=1) ** 2)) - 1.0) < 0.2  # JL keeps norms on average


def test_layout_bounds_hold_for_any_client_within_the_caps():
    layout = pca_layout(4, bound=2.0, max_records=50)
    gen = np.random.default_rng(1)
    pts = gen.normal(size=(50, 4))
    pts *= 2.0 / np.linalg.norm(pts, axis=1, keepdims=True)  # every point on the bound
    contrib = pca_contribution(pts)
    for seg in layout.segments:
        assert np.all(np.abs(contrib[seg.name]) <= seg.bound)
