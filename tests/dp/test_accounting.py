"""Privacy accounting: PLD epsilon, the RDP cross-check, noise calibration, input validation."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from secfed.dp.accounting import (
    CALIBRATION_TOLERANCE,
    PLD_DISCRETIZATION,
    PLD_FALLBACK_EPSILON,
    DpEvent,
    EpsilonReport,
    calibrate_noise,
    epsilon_pld,
    epsilon_rdp,
    epsilon_report,
)

DELTA = 1e-5


def _sgd(noise: float, rate: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
    )


def _direct_pld(events: list[tuple[float, float, int]], delta: float, interval: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    for noise, rate, steps in events:  # one compose call per event: no grouping
        accountant.compose(_sgd(noise, rate, steps))
    return float(accountant.get_epsilon(delta))


def _gaussian_delta(epsilon: float, sigma: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism with sensitivity 1 and noise sigma
    (Balle & Wang 2018, Theorem 8): Phi(1/(2s) - eps*s) - e^eps * Phi(-1/(2s) - eps*s)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return phi(1 / (2 * sigma) - epsilon * sigma) - math.exp(epsilon) * phi(
        -1 / (2 * sigma) - epsilon * sigma
    )


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    low, high = 0.0, 100.0
    for _ in range(200):
        mid = (low + high) / 2
        if _gaussian_delta(mid, sigma) > delta:
            low = mid
        else:
            high = mid
    return high


@pytest.mark.parametrize(
    ("noise", "rate", "steps"),
    [(1.1, 256 / 60000, 2000), (1.0, 0.01, 1000), (0.8, 0.05, 300), (3.0, 0.5, 50)],
)
def test_pld_epsilon_matches_dp_accounting_called_directly(noise: float, rate: float, steps: int) -> None:
    event = DpEvent(noise, rate, steps)
    assert epsilon_pld([event], DELTA) == pytest.approx(
        _direct_pld([(noise, rate, steps)], DELTA, PLD_DISCRETIZATION), rel=1e-9
    )
    direct_rdp = rdp_privacy_accountant.RdpAccountant(orders=[float(a) for a in range(2, 129)])
    direct_rdp.compose(_sgd(noise, rate, steps))
    # Our order set contains the direct one, so ours can only be as tight or tighter.
    assert epsilon_rdp([event], DELTA) <= float(direct_rdp.get_epsilon(DELTA)) + 1e-12


def test_merging_equal_events_matches_composing_them_one_by_one() -> None:
    """Events with equal parameters are merged before composing; the result must not change."""
    raw = [(1.2, 0.02, 30), (0.9, 0.05, 20), (1.2, 0.02, 30), (0.9, 0.05, 25), (1.2, 0.02, 40)]
    ours = epsilon_pld([DpEvent(*e) for e in raw], DELTA)
    assert ours == pytest.approx(_direct_pld(raw, DELTA, PLD_DISCRETIZATION), rel=1e-6)


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (4.0, 16), (0.8, 4)])
def test_full_batch_matches_the_exact_gaussian_mechanism(sigma: float, steps: int) -> None:
    """Published closed form: with q = 1, T Gaussian steps of noise sigma are one Gaussian mechanism
    with noise sigma / sqrt(T), whose exact epsilon(delta) is known (analytic Gaussian mechanism).
    PLD rounds pessimistically, so it may exceed the exact value slightly but never fall below it."""
    exact = _gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
    pld = epsilon_pld([DpEvent(sigma, 1.0, steps)], DELTA)
    assert exact - 1e-6 <= pld <= exact + 0.01


@pytest.mark.parametrize(("noise", "rate", "steps"), [(1.1, 256 / 60000, 3000), (1.0, 0.02, 500)])
def test_coarser_pld_grid_is_a_slightly_looser_upper_bound(noise: float, rate: float, steps: int) -> None:
    fine = _direct_pld([(noise, rate, steps)], DELTA, 1e-4)
    ours = epsilon_pld([DpEvent(noise, rate, steps)], DELTA)
    assert fine <= ours + 1e-9  # pessimistic rounding: still an upper bound
    assert ours <= fine * 1.005


def test_rdp_is_looser_than_pld_and_both_grow_with_steps() -> None:
    previous = EpsilonReport(0.0, 0.0, DELTA)
    for steps in (10, 100, 1000):
        report = epsilon_report([DpEvent(1.0, 0.01, steps)], DELTA)
        assert report.rdp >= report.pld > 0
        assert report.pld > previous.pld and report.rdp > previous.rdp
        previous = report
    # With a loose accountant the gap is visible but bounded: PLD is not suspiciously small.
    assert previous.pld > 0.7 * previous.rdp


def test_zero_noise_is_infinite_and_no_steps_is_zero() -> None:
    report = epsilon_report([DpEvent(1.0, 0.1, 10), DpEvent(0.0, 0.1, 1)], DELTA)
    assert math.isinf(report.pld) and math.isinf(report.rdp)
    assert report.to_mapping() == {"epsilon_pld": None, "epsilon_rdp": None, "delta": DELTA}
    assert epsilon_pld([], DELTA) == 0.0
    assert epsilon_pld([DpEvent(0.0, 0.1, 0)], DELTA) == 0.0  # no step taken, nothing released
    assert epsilon_rdp([DpEvent(1.0, 0.1, 0)], DELTA) == 0.0


def test_very_weak_noise_falls_back_to_rdp_instead_of_exhausting_memory() -> None:
    """The PLD of sigma = 0.02 over 1000 steps needs a grid of about 10^9 points (it was killed for
    lack of memory when tried); the accountant must answer at once with the RDP upper bound."""
    events = [DpEvent(0.02, 0.5, 1000)]
    assert epsilon_pld(events, DELTA) == epsilon_rdp(events, DELTA) > PLD_FALLBACK_EPSILON
    assert calibrate_noise(500.0, DELTA, 0.5, 1000, 1) > 0.02


def test_more_noise_or_larger_delta_gives_smaller_epsilon() -> None:
    base = epsilon_pld([DpEvent(1.0, 0.05, 100)], DELTA)
    assert epsilon_pld([DpEvent(1.5, 0.05, 100)], DELTA) < base
    assert epsilon_pld([DpEvent(1.0, 0.05, 100)], 1e-3) < base
    assert epsilon_pld([DpEvent(1.0, 0.02, 100)], DELTA) < base


@pytest.mark.parametrize(
    ("target", "rate", "steps", "rounds"),
    [(1.5, 0.1, 100, 1), (3.0, 0.01, 200, 10), (8.0, 0.05, 50, 5)],
)
def test_calibration_hits_the_target_from_below(target: float, rate: float, steps: int, rounds: int) -> None:
    sigma = calibrate_noise(target, DELTA, rate, steps, rounds)
    total = steps * rounds
    assert epsilon_pld([DpEvent(sigma, rate, total)], DELTA) <= target
    # Any noticeably smaller sigma (outside the documented tolerance) overshoots the target.
    assert epsilon_pld([DpEvent(sigma * (1 - CALIBRATION_TOLERANCE), rate, total)], DELTA) > target
    assert epsilon_pld([DpEvent(sigma, rate, total)], DELTA) > 0.97 * target


def test_calibration_is_monotone() -> None:
    by_target = [calibrate_noise(t, DELTA, 0.05, 100, 3) for t in (0.5, 1.0, 2.0, 4.0)]
    assert by_target == sorted(by_target, reverse=True)
    by_rounds = [calibrate_noise(2.0, DELTA, 0.05, 100, r) for r in (1, 3, 10)]
    assert by_rounds == sorted(by_rounds)
    by_rate = [calibrate_noise(2.0, DELTA, q, 100, 3) for q in (0.01, 0.05, 0.2)]
    assert by_rate == sorted(by_rate)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon_pld([], 0.0), "delta"),
        (lambda: epsilon_pld([], 1.0), "delta"),
        (lambda: epsilon_rdp([], -1e-5), "delta"),
        (lambda: DpEvent(1.0, 0.0, 10), "sample_rate"),
        (lambda: DpEvent(1.0, 1.5, 10), "sample_rate"),
        (lambda: DpEvent(1.0, 0.1, -1), "steps"),
        (lambda: DpEvent(1.0, 0.1, True), "steps"),
        (lambda: DpEvent(-0.5, 0.1, 10), "noise_multiplier"),
        (lambda: DpEvent(math.nan, 0.1, 10), "noise_multiplier"),
        (lambda: calibrate_noise(0.0, DELTA, 0.1, 10, 1), "target_epsilon"),
        (lambda: calibrate_noise(1.0, DELTA, 0.1, 10, 0), "rounds"),
        (lambda: calibrate_noise(1.0, DELTA, 0.1, 0, 1), "steps_per_round"),
        (lambda: DpEvent.from_mapping({"noise_multiplier": 1.0, "sample_rate": 0.1}), "steps"),
        (lambda: DpEvent.from_mapping({"noise_multiplier": "1", "sample_rate": 0.1, "steps": 1}), "number"),
    ],
)
def test_invalid_inputs_are_refused_with_a_clear_message(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@dataclasses.dataclass(frozen=True)
class _RoundEvent:
    """Same fields as ``secfed.dp.sgd.DpRoundEvent`` (not imported: it pulls in torch/opacus)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    expected_batch_size: int
    n_records: int
    empty_batches: int


def test_event_mapping_round_trip_and_conversion_from_a_training_release() -> None:
    event = DpEvent(1.25, 0.03, 40, round=7)
    assert DpEvent.from_mapping(event.to_mapping()) == event
    assert DpEvent(1.0, 0.5, 2).to_mapping() == {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 2}
    release = _RoundEvent(1.25, 0.03, 40, 1.0, 12, 400, 0)
    assert DpEvent.from_release(release, round=7) == event
    # Field-compatible: every accounting field exists under the same name on the training record.
    accounting_fields = {f.name for f in dataclasses.fields(DpEvent)} - {"round"}
    assert accounting_fields <= {f.name for f in dataclasses.fields(_RoundEvent)}
