"""The one-run empirical privacy audit: its statistics, its verdicts, and ``secfed audit empirical``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from secfed.cli import main
from secfed.dp.empirical import (
    AuditConfig,
    epsilon_lower_bound,
    guesses_per_side,
    p_value,
    run_audit,
)

DELTA = 1e-5


def _binomial_tail(r: int, v: int, p: float) -> float:
    return sum(math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(v, r + 1))


def test_p_value_is_the_binomial_tail_plus_the_delta_term() -> None:
    # delta = 0: exactly P[Binomial(r, e^eps/(1+e^eps)) >= v].
    assert p_value(100, 10, 9, 0.0, 0.0) == pytest.approx(11 / 1024)
    p = math.exp(1.0) / (1 + math.exp(1.0))
    assert p_value(100, 20, 17, 1.0, 0.0) == pytest.approx(_binomial_tail(20, 17, p))
    # delta > 0 adds 2 m delta max_i (f(v-i) - f(v)) / i.
    m, r, v, eps, delta = 1000, 20, 17, 1.0, 1e-4
    f = [_binomial_tail(r, k, p) for k in range(r + 1)]
    alpha = max((f[v - i] - f[v]) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(f[v] + 2 * m * delta * alpha)
    assert p_value(10, 4, 0, 2.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="correct"):
        p_value(10, 4, 5, 1.0, 0.0)


def test_lower_bound_behaves() -> None:
    # Chance-level guessing proves nothing; perfect guessing proves more with more guesses.
    assert epsilon_lower_bound(1000, 200, 100, DELTA) == 0.0
    bounds = [epsilon_lower_bound(10_000, r, r, DELTA) for r in (20, 100, 400)]
    assert 0 < bounds[0] < bounds[1] < bounds[2]
    # The bound is where the p-value crosses 5 %.
    bound = epsilon_lower_bound(10_000, 400, 370, DELTA)
    assert p_value(10_000, 400, 370, bound, DELTA) < 0.05 <= p_value(10_000, 400, 370, bound + 1e-3, DELTA)
    # More correct guesses, higher bound; a larger delta, lower bound.
    assert epsilon_lower_bound(10_000, 400, 380, DELTA) > bound > epsilon_lower_bound(10_000, 400, 360, DELTA)
    assert epsilon_lower_bound(10_000, 400, 370, 1e-3) < bound
    assert guesses_per_side(20_000, 0.01) == 200 and guesses_per_side(10, 0.01) == 1


def test_lower_bound_is_valid_for_a_mechanism_with_known_epsilon() -> None:
    """Randomized response on each canary's membership bit is exactly eps-DP, and guessing from the
    released bit makes every guess right with probability e^eps / (1 + e^eps): the worst case of the
    theorem.  The bound may exceed the true eps in at most 5 % of runs: 9 of these fixed 100 seeds
    (5.5 % over 1000 seeds); more than 12 has probability < 0.3 % for a valid bound, while an invalid
    one (e.g. a tail computed at too small a success probability) overshoots far more often.  It
    should also come reasonably close to the true eps."""
    eps_true, m = 1.0, 4000
    k = guesses_per_side(m, 0.1)
    over, bounds = 0, []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        member = rng.random(m) < 0.5
        keep = rng.random(m) < math.exp(eps_true) / (1 + math.exp(eps_true))
        reported = np.where(keep, member, ~member).astype(np.float64)
        scores = reported + 1e-6 * rng.random(m)  # the auditor ranks by the released bit
        order = np.argsort(scores, kind="stable")
        correct = int(member[order[-k:]].sum() + (~member[order[:k]]).sum())
        over += p_value(m, 2 * k, correct, eps_true, 0.0) < 0.05  # i.e. the bound exceeds eps_true
        if seed < 20:
            bounds.append(epsilon_lower_bound(m, 2 * k, correct, 0.0))
    assert over <= 12
    assert 0.75 * eps_true < float(np.median(bounds)) < eps_true


def test_correct_dp_sgd_passes_and_is_deterministic() -> None:
    result = run_audit(AuditConfig(seed=0))
    assert result.passed and result.lower_bound < result.claimed_epsilon
    assert result.claimed_epsilon == pytest.approx(1.5, abs=0.01) and result.claimed_epsilon <= 1.5
    assert result.guesses == 400 and result.correct > 200  # better than chance: the canaries are there
    again = run_audit(AuditConfig(seed=0))
    assert (again.correct, again.lower_bound) == (result.correct, result.lower_bound)


@pytest.mark.parametrize("seed", [0, 1])
def test_under_noised_dp_sgd_is_caught(seed: int) -> None:
    result = run_audit(AuditConfig(noise_scale=0.33, seed=seed))
    assert not result.passed and result.lower_bound > result.claimed_epsilon
    assert result.noise_scale == 0.33 and result.claimed_epsilon <= 1.5  # the claim ignores the bug


def test_cli_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports" / "audit.json"
    code = main(
        [
            "audit",
            "empirical",
            "--json",
            "--canaries",
            "2000",
            "--steps",
            "20",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    keys = {
        "claimed_epsilon",
        "lower_bound",
        "delta",
        "canaries",
        "guesses",
        "correct",
        "noise_multiplier",
        "noise_scale",
        "sample_rate",
        "steps",
        "passed",
    }
    assert keys <= set(printed)
    assert printed["canaries"] == 2000 and printed["steps"] == 20 and printed["passed"] is True
    assert printed["lower_bound"] <= printed["claimed_epsilon"]
    assert json.loads(out.read_text()) == printed


def test_cli_human_output_and_failing_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "empirical", "--noise-scale", "0.2", "--canaries", "4000", "--steps", "50"])
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in text and "claimed epsilon" in text and "lower bound" in text
    assert main(["audit", "empirical", "--canaries", "1"]) == 2
    assert "canaries" in capsys.readouterr().err
