"""Skellam noise (secfed.dp.skellam): the samplers follow their distributions, the noise is
cryptographic, the shares sum to the target noise, and the RDP bound holds against an exact computation.

What these defend: an under-dispersed or biased sampler, or a predictable one, would make the released
selection statistics less private than the ledger says; a wrong RDP formula would understate epsilon.
The streams are keyed from fixed test seeds, so every statistical check here is deterministic (it
either always passes or always fails); the tolerances are five standard errors or p > 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from secfed.dp.csprng import AesCtrGaussian
from secfed.dp.skellam import calibrate_skellam, poisson, skellam, skellam_epsilon, skellam_rdp

N = 200_000


def _chi_square_p(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """p-value of a chi-square goodness-of-fit test, the outer bins pooled to expected counts >= 20."""
    expected = pmf * samples.size
    observed = np.array([np.count_nonzero(samples == k) for k in support], dtype=np.float64)
    keep = expected >= 20
    obs = np.append(observed[keep], samples.size - observed[keep].sum())
    exp = np.append(expected[keep], samples.size - expected[keep].sum())
    result = stats.chisquare(obs, exp)
    return float(result.pvalue)


@pytest.mark.parametrize("lam", [0.3, 2.0, 9.5, 10.0, 37.0, 1500.0])
def test_poisson_matches_its_distribution(lam: float) -> None:
    samples = poisson(lam, N, AesCtrGaussian.from_test_seed(int(lam * 10)))
    assert samples.dtype == np.int64 and samples.min() >= 0
    assert abs(samples.mean() - lam) < 5 * math.sqrt(lam / N)
    assert abs(samples.var() - lam) < 5 * lam * math.sqrt(2 / N) + 1e-9
    support = np.arange(0, int(lam + 12 * math.sqrt(lam) + 12))
    assert _chi_square_p(samples, stats.poisson.pmf(support, lam), support) > 1e-6


@pytest.mark.parametrize("lam", [0.5, 4.0, 60.0, 800.0])
def test_skellam_is_integer_centred_with_variance_two_lambda(lam: float) -> None:
    samples = skellam(lam, N, AesCtrGaussian.from_test_seed(7 + int(lam)))
    assert samples.dtype == np.int64
    sd = math.sqrt(2 * lam)
    assert abs(samples.mean()) < 5 * sd / math.sqrt(N)
    assert abs(samples.var() - 2 * lam) < 5 * 2 * lam * math.sqrt(2 / N) + 1e-9
    span = int(10 * sd) + 10
    support = np.arange(-span, span + 1)
    assert _chi_square_p(samples, stats.skellam.pmf(support, lam, lam), support) > 1e-6
    # tails: beyond 4 standard deviations, no more than a normal's share (plus the lattice's slack)
    assert np.mean(np.abs(samples) > 4 * sd + 1) < 5 * 2 * stats.norm.sf(4) + 5 / N


def test_shares_sum_to_the_target_noise_whoever_contributes() -> None:
    """Each of h honest institutions adds Sk(lam / h); the sum is Sk(lam), with variance 2 lam, and any
    larger survivor set only adds noise."""
    lam, h = 300.0, 4
    stream = AesCtrGaussian.from_test_seed(11)
    for survivors in (h, h + 3):
        total = np.sum([skellam(lam / h, N, stream) for _ in range(survivors)], axis=0)
        target = 2 * lam * survivors / h
        assert abs(total.var() - target) < 5 * target * math.sqrt(2 / N)
        assert total.var() >= 2 * lam * 0.97


def test_noise_is_cryptographic_not_reproducible_from_seeds() -> None:
    """Two fresh streams (os.urandom keys) never repeat each other; a test seed reproduces exactly."""
    assert not np.array_equal(skellam(50.0, 1000, AesCtrGaussian()), skellam(50.0, 1000, AesCtrGaussian()))
    first, second = (skellam(50.0, 1000, AesCtrGaussian.from_test_seed(3)) for _ in range(2))
    assert np.array_equal(first, second)


def _exact_rdp(alpha: float, lam: float, shift: int) -> float:
    """Renyi divergence of order alpha between Sk(lam) + shift and Sk(lam), summed over the support."""
    span = int(40 * math.sqrt(2 * lam)) + 60
    x = np.arange(-span, span)
    log_p = stats.skellam.logpmf(x - shift, lam, lam)
    log_q = stats.skellam.logpmf(x, lam, lam)
    finite = np.isfinite(log_p) & np.isfinite(log_q)
    return float(logsumexp(alpha * log_p[finite] + (1 - alpha) * log_q[finite]) / (alpha - 1))


@pytest.mark.parametrize("lam", [0.5, 2.0, 10.0, 200.0, 3000.0])
@pytest.mark.parametrize("shift", [1, 3])
def test_the_rdp_bound_holds_against_the_exact_divergence(lam: float, shift: int) -> None:
    """One coordinate, sensitivity ``shift`` (l1 = l2): the bound is never below the exact value, and
    for large lam it is tight (within 10 %) like the Gaussian's."""
    for alpha in (1.5, 2.0, 4.0, 16.0, 64.0):
        exact = _exact_rdp(alpha, lam, shift)
        bound = skellam_rdp(alpha, lam, shift, shift)
        assert exact <= bound + 1e-12, (alpha, exact, bound)
        if lam >= 200:
            assert bound <= exact * 1.1 + 1e-9


def test_epsilon_composes_and_calibration_hits_the_target() -> None:
    one = skellam_epsilon(400.0, 4.0, 2.0, 1e-6)
    assert 0 < one < skellam_epsilon(400.0, 4.0, 2.0, 1e-6, releases=3) < 3 * one + 1e-9
    assert skellam_epsilon(400.0, 4.0, 2.0, 1e-6) > skellam_epsilon(1600.0, 4.0, 2.0, 1e-6)
    assert skellam_epsilon(0.0, 4.0, 2.0, 1e-6) == math.inf
    lam = calibrate_skellam(1.0, 1e-6, l1=4.0, l2=2.0, releases=2)
    assert skellam_epsilon(lam, 4.0, 2.0, 1e-6, releases=2) <= 1.0
    assert skellam_epsilon(lam * 0.99, 4.0, 2.0, 1e-6, releases=2) > 1.0


def test_bad_parameters_are_refused() -> None:
    stream = AesCtrGaussian.from_test_seed(1)
    for lam in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="lam"):
            poisson(lam, 3, stream)
    with pytest.raises(ValueError, match="l2 <= l1"):
        skellam_rdp(2.0, 10.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="alpha"):
        skellam_rdp(1.0, 10.0, 1.0, 1.0)


def test_the_stream_gives_uniform_53_bit_doubles_without_reuse() -> None:
    """The uniforms the samplers consume: in [0, 1), multiples of 2^-53, uniform (Kolmogorov-Smirnov),
    and successive draws continue the keystream (an odd draw leaves its last word unused, never reused)."""
    stream = AesCtrGaussian.from_test_seed(5)
    u = stream.uniform(N)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))
    assert stats.kstest(u, "uniform").pvalue > 1e-6
    again = AesCtrGaussian.from_test_seed(5)
    first, second = again.uniform(3), again.uniform(2)
    np.testing.assert_array_equal(first, u[:3])
    np.testing.assert_array_equal(second, u[4:6])
