"""The paired bootstrap the method comparisons quote: exact where it can be, and it must tell a
consistent improvement from noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.bench.stats import paired_bootstrap


def test_identical_scores_give_a_zero_interval() -> None:
    scores = [10.0, 25.0, 0.0, 70.0]
    assert paired_bootstrap(scores, scores) == {"delta": 0.0, "ci95": [0.0, 0.0], "n": 4, "resamples": 10_000}


def test_a_constant_shift_is_exact_whatever_the_record_difficulty() -> None:
    # Records differ wildly in difficulty, but B is always A - 1.5: pairing removes the difficulty.
    a = list(np.linspace(0, 90, 40))
    b = [x - 1.5 for x in a]
    out = paired_bootstrap(a, b)
    assert out["delta"] == pytest.approx(1.5)
    assert out["ci95"] == pytest.approx([1.5, 1.5])


def test_noise_straddles_zero_and_a_real_gain_does_not() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 60, 80)
    noise = rng.normal(0, 5, 80)
    lo, hi = paired_bootstrap(list(base + noise - noise.mean()), list(base))["ci95"]
    assert lo < 0 < hi
    lo, hi = paired_bootstrap(list(base + noise - noise.mean() + 3.0), list(base))["ci95"]
    assert 0 < lo < 3.0 < hi


def test_seeded_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    a, b = list(rng.uniform(0, 1, 30)), list(rng.uniform(0, 1, 30))
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3)["ci95"] != paired_bootstrap(a, b, seed=4)["ci95"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=30))
def test_the_interval_holds_the_mean_difference_and_lies_within_the_extremes(
    pairs: list[tuple[float, float]],
) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    out = paired_bootstrap(a, b, resamples=500)
    diffs = [x - y for x, y in pairs]
    lo, hi = out["ci95"]
    assert min(diffs) - 1e-9 <= lo <= hi <= max(diffs) + 1e-9
    assert out["delta"] == pytest.approx(sum(diffs) / len(diffs))


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([1.0], [1.0, 2.0], {}, "different lengths"),
        ([], [], {}, "no paired scores"),
        ([1.0], [1.0], {"resamples": 0}, "resamples must be"),
    ],
)
def test_bad_input_is_refused(a: list[float], b: list[float], kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b, **kwargs)
