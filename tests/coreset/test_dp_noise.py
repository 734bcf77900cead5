"""The Skellam shares of the DP coreset release (secfed.coreset.dp_release): every institution noises
every coordinate of every stage, the values stay integers inside the public layout, and the shares of any
survivor set add up to at least the calibrated target.

What these defend: a coordinate left without noise (an empty histogram cell, a segment forgotten) would
publish its exact value through the secure sum; a share of the wrong size would make the ledger's epsilon
a fiction; a non-integer or out-of-bound value would be clipped or wrapped by the ring's fixed-point
encoder, silently changing what was released.

Statistics: every stream is keyed from a fixed test seed (``AesCtrGaussian.from_test_seed``, and
hypothesis runs derandomized), so each check is deterministic. The thresholds are chosen so that a
correct implementation would fail them with probability below about 1e-9 per assertion on fresh seeds
(six standard errors of a variance estimate, kurtosis included; chi-square p > 1e-6; binomial tails at
1e-9), which keeps the whole file's false-failure probability under 1e-5 should the seeds ever change.

Coupling: the noiseless vector of an institution is the same call with ``NoiseShare(0, 1)`` and the same
stream seed. Rounding draws come first and a zero share draws nothing, so ``noisy - noiseless`` is exactly
the noise the institution added, record data or not.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from secfed.coreset.dp_config import (
    DP_HIST_STAGE,
    DP_MEAN_STAGE,
    DP_MOMENTS_STAGE,
    DP_STAGES,
    DpSelection,
    calibrated_lambda,
    segment_scales,
)
from secfed.coreset.dp_release import (
    NoiseShare,
    contribution,
    release_layout,
)
from secfed.dp.csprng import AesCtrGaussian
from tests.coreset.dp_support import SILENT, ConstantStream, noiseless_plans, random_rows

#: Both density models of the third stage: the Gaussian spread (default; a ``var`` segment of ``dims``
#: coordinates) and the per-cell histogram (``counts`` and ``offsets`` over every grid cell).
CONFIGS = {"gauss": DpSelection(epsilon=1.0), "histogram": DpSelection(epsilon=1.0, density="histogram")}
LAMS = {cfg_id: calibrated_lambda(cfg) for cfg_id, cfg in CONFIGS.items()}
MAX_RECORDS = 64
FloatArray = npt.NDArray[np.float64]

#: (lam_total or None for the configuration's calibrated lam, honest): the calibrated share as a
#: session with t - c = 3 sizes it (lam / h ~ 2.8e6: Hormann's PTRS), the largest one a session can ask
#: for (t - c = 1), and two small ones (sequential inversion below lam = 10).
SHARE_SPECS: dict[str, tuple[float | None, int]] = {
    "calibrated-h3": (None, 3),
    "calibrated-h1": (None, 1),
    "lam12-h4": (12.0, 4),
    "lam1.5-h1": (1.5, 1),
}


def _share(cfg_id: str, share_id: str) -> NoiseShare:
    lam_total, honest = SHARE_SPECS[share_id]
    return NoiseShare(LAMS[cfg_id] if lam_total is None else lam_total, honest)


CEIL, FLOOR = 0.0, 1.0 - 2.0**-53


PLANS = {
    cfg_id: noiseless_plans(
        cfg,
        [random_rows(900 + i, 30, cfg.k0) for i in range(4)],
        release_seed=5,
        stream=lambda: ConstantStream(0.5),
        max_records=MAX_RECORDS,
    )
    for cfg_id, cfg in CONFIGS.items()
}


def _vector(
    cfg_id: str, stage: str, rows: FloatArray, share: NoiseShare, stream: AesCtrGaussian
) -> FloatArray:
    cfg = CONFIGS[cfg_id]
    values = contribution(cfg, stage, rows, PLANS[cfg_id][stage], share, stream, max_records=MAX_RECORDS)
    layout = release_layout(cfg, stage, max_records=MAX_RECORDS)
    layout.check(values)
    return np.concatenate([values[name] for name in layout.names])


def _noise(cfg_id: str, stage: str, rows: FloatArray, share: NoiseShare, seed: int) -> FloatArray:
    """Exactly the noise an institution with ``rows`` added (see the module docstring: coupling)."""
    noisy = _vector(cfg_id, stage, rows, share, AesCtrGaussian.from_test_seed(seed))
    clean = _vector(cfg_id, stage, rows, SILENT, AesCtrGaussian.from_test_seed(seed))
    return noisy - clean


def _six_sigma(samples: int, lam_share: float) -> float:
    """Six standard errors of a second moment estimated from ``samples`` Sk(lam_share) values, relative
    to its expectation: var(X^2) = sigma^4 (2 + excess kurtosis), Skellam's excess kurtosis 1 / (2 lam)."""
    return 6.0 * math.sqrt((2.0 + 1.0 / (2.0 * lam_share)) / samples)


#: Every stage of both models with the calibrated share; the small shares on the longest vector (the
#: histogram's third stage, 432 coordinates) and on the shortest (the mean stage).
NOISE_CASES = [(cfg_id, stage, "calibrated-h3") for cfg_id in CONFIGS for stage in DP_STAGES] + [
    ("histogram", DP_HIST_STAGE, "lam12-h4"),
    ("histogram", DP_HIST_STAGE, "lam1.5-h1"),
    ("gauss", DP_MEAN_STAGE, "lam1.5-h1"),
]


@pytest.mark.parametrize(("cfg_id", "stage", "share_id"), NOISE_CASES)
def test_every_institution_noises_every_coordinate_with_variance_two_lam_over_h(
    cfg_id: str, stage: str, share_id: str
) -> None:
    """Each coordinate of each segment (empty histogram cells and an institution with no record at all
    included) carries an independent Sk(lam_total / honest): centred, variance 2 lam_total / honest, and
    nonzero about as often as the Skellam distribution says. A coordinate left out would show zero
    variance; a share scaled by the wrong ``honest`` a pooled variance off by that factor."""
    share = _share(cfg_id, share_id)
    length = release_layout(CONFIGS[cfg_id], stage, max_records=MAX_RECORDS).total_length
    reps = max(80, 2400 // length)  # >= 2400 values pooled per data set
    datasets = {"records": random_rows(1, 30), "no records": np.zeros((0, 8))}
    for what, rows in datasets.items():
        if what == "no records":
            clean = _vector(cfg_id, stage, rows, SILENT, AesCtrGaussian.from_test_seed(2))
            assert not clean.any(), "an institution without records must have an all-zero noiseless vector"
        noise = np.stack([_noise(cfg_id, stage, rows, share, 1000 * reps + r) for r in range(reps)])
        assert noise.shape == (reps, length)
        assert np.array_equal(noise, np.round(noise)), "noise must be integer-valued"
        variance = 2.0 * share.lam
        # every coordinate is noised: nonzero in most repetitions (P(Sk(mu) = 0) from the pmf) ...
        p_zero = float(stats.skellam.pmf(0, share.lam, share.lam))
        min_nonzero = stats.binom.ppf(1e-9, reps, 1.0 - p_zero)
        nonzero = np.count_nonzero(noise, axis=0)
        assert nonzero.min() >= min_nonzero, (what, int(np.argmin(nonzero)), nonzero.min(), min_nonzero)
        # ... with its own second moment near 2 mu (loose per-coordinate bounds, beyond six standard errors)
        per_coordinate = (noise**2).mean(axis=0) / variance
        assert per_coordinate.min() > 0.2 and per_coordinate.max() < 3.0, (what, per_coordinate.min())
        # pooled: centred, second moment 2 mu within six standard errors
        pooled = noise.reshape(-1)
        assert abs(pooled.mean()) < 6.0 * math.sqrt(variance / pooled.size)
        ratio = float((pooled**2).mean() / variance)
        assert abs(ratio - 1.0) < _six_sigma(pooled.size, share.lam), (what, ratio)
        # independent coordinates: neighbours uncorrelated (one draw copied along a segment would not be)
        neighbours = (noise[:, 1:] * noise[:, :-1]).reshape(-1) / variance
        assert abs(float(neighbours.mean())) < 6.0 / math.sqrt(neighbours.size), what
        if share.lam < 10:  # small support: a chi-square goodness of fit against Skellam's pmf
            support = np.arange(-40, 41)
            expected = stats.skellam.pmf(support, share.lam, share.lam) * pooled.size
            observed = np.array([np.count_nonzero(pooled == k) for k in support], dtype=np.float64)
            keep = expected >= 20
            obs = np.append(observed[keep], pooled.size - observed[keep].sum())
            exp = np.append(expected[keep], pooled.size - expected[keep].sum())
            assert float(stats.chisquare(obs, exp).pvalue) > 1e-6


def _scaled_record_values(cfg_id: str, stage: str, rows: FloatArray) -> dict[str, FloatArray]:
    """Each record's scaled real-valued vector per segment, recomputed here from the module docstring
    (clip, centre, outer product with off-diagonals times sqrt(2), capped squares, grid cell and
    offset), shape (records, length)."""
    cfg, plan = CONFIGS[cfg_id], PLANS[cfg_id][stage]
    q = segment_scales(cfg)
    n = len(rows)

    def clip(x: FloatArray, radius: float) -> FloatArray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        out: FloatArray = x * np.minimum(1.0, radius / np.maximum(norms, 1e-300))
        return out

    if stage == DP_MEAN_STAGE:
        return {
            "sum": clip(rows, cfg.bound) * q[(stage, "sum")],
            "count": np.full((n, 1), float(q[(stage, "count")])),
        }
    if stage == DP_MOMENTS_STAGE:
        z = clip(rows - np.asarray(plan["mean"]), cfg.centred_clip)
        i, j = np.triu_indices(cfg.k0)
        weight = np.where(i == j, 1.0, math.sqrt(2.0))
        return {"sum": z * q[(stage, "sum")], "outer": z[:, i] * z[:, j] * weight * q[(stage, "outer")]}
    plane = plan["plane"]
    y = (rows - np.asarray(plane["centre"])) @ np.asarray(plane["basis"])
    if cfg.density == "gauss":
        caps = (cfg.var_cap * np.asarray(plane["std"])) ** 2
        return {"var": np.minimum(y**2, caps) / np.linalg.norm(caps) * q[(stage, "var")]}
    lo, hi = np.asarray(plane["grid"]["lo"]), np.asarray(plane["grid"]["hi"])
    width = (hi - lo) / cfg.bins
    axis_bin = np.clip(np.floor((y - lo) / width), -1, cfg.bins) + 1
    cell = np.zeros(n, dtype=np.int64)
    for d in range(cfg.dims):
        cell = cell * (cfg.bins + 2) + axis_bin[:, d].astype(np.int64)
    centre = lo + (axis_bin - 0.5) * width
    offset = np.clip((y - centre) / (width / 2), -1.0, 1.0)
    counts = np.zeros((n, cfg.n_cells))
    counts[np.arange(n), cell] = q[(stage, "counts")]
    offsets = np.zeros((n, cfg.n_cells, cfg.dims))
    offsets[np.arange(n), cell] = offset * q[(stage, "offsets")]
    return {"counts": counts, "offsets": offsets.reshape(n, -1)}


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
@pytest.mark.parametrize("stage", DP_STAGES)
def test_a_noiseless_contribution_is_the_exact_sum_of_scaled_rounded_records(cfg_id: str, stage: str) -> None:
    """With ``NoiseShare(0, 1)`` the vector is exactly sum over records of round(q_s * value): checked with
    streams that force every rounding up, then down (recomputed here record by record), and with a real
    stream (each coordinate an integer within one unit per record of the real scaled sum)."""
    cfg, plan = CONFIGS[cfg_id], PLANS[cfg_id][stage]
    rows = random_rows(3, 25)
    per_record = _scaled_record_values(cfg_id, stage, rows)
    for value, rounding in ((CEIL, np.ceil), (FLOOR, np.floor)):
        got = contribution(cfg, stage, rows, plan, SILENT, ConstantStream(value), max_records=MAX_RECORDS)
        assert set(got) == set(per_record)
        for name, scaled in per_record.items():
            assert np.array_equal(got[name], rounding(scaled).sum(axis=0)), (name, value)
    got = contribution(
        cfg, stage, rows, plan, SILENT, AesCtrGaussian.from_test_seed(4), max_records=MAX_RECORDS
    )
    for name, scaled in per_record.items():
        assert np.array_equal(got[name], np.round(got[name]))
        touching = np.count_nonzero(scaled, axis=0)  # records with a nonzero value in the coordinate
        assert np.all(np.abs(got[name] - scaled.sum(axis=0)) < np.maximum(touching, 1e-9)), name


def _adversarial_rows(kind: str, n: int, seed: int) -> FloatArray:
    gen = np.random.default_rng(seed)
    if kind == "random":
        return random_rows(seed, n)
    if kind == "huge":
        out: FloatArray = gen.normal(size=(n, 8)) * 1e6
        return out
    if kind == "on-clip":  # every record at the clip radius on one axis: the largest coordinate a record has
        return np.tile(np.eye(8)[0] * 1.5, (n, 1))
    if kind == "same-cell":  # all records in one histogram cell, far beyond the grid (overflow bin)
        return np.tile(np.full(8, 50.0), (n, 1))
    raise AssertionError(kind)


@settings(max_examples=150, deadline=None)
@example(
    cfg_id="gauss",
    stage=DP_MEAN_STAGE,
    kind="on-clip",
    n=MAX_RECORDS,
    share_id="calibrated-h1",
    stream="ceil",
    seed=0,
)
@example(
    cfg_id="histogram",
    stage=DP_MOMENTS_STAGE,
    kind="huge",
    n=MAX_RECORDS,
    share_id="calibrated-h1",
    stream="floor",
    seed=1,
)
@example(
    cfg_id="histogram",
    stage=DP_HIST_STAGE,
    kind="same-cell",
    n=MAX_RECORDS,
    share_id="calibrated-h1",
    stream="aes",
    seed=2,
)
@given(
    cfg_id=st.sampled_from(list(CONFIGS)),
    stage=st.sampled_from(DP_STAGES),
    kind=st.sampled_from(["random", "huge", "on-clip", "same-cell"]),
    n=st.integers(min_value=0, max_value=MAX_RECORDS),
    share_id=st.sampled_from(list(SHARE_SPECS)),
    stream=st.sampled_from(["aes", "ceil", "floor"]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_values_are_integers_within_the_layout_bounds(
    cfg_id: str, stage: str, kind: str, n: int, share_id: str, stream: str, seed: int
) -> None:
    """Every value of every segment is an integer (the ring's integer segments encode it exactly) and
    within the public per-client bound the layout declares, for up to ``max_records`` records of any
    shape (huge norms, all at the clip radius, all in one cell). With the real stream the noisy vector
    itself is checked; with the forced roundings (all up, all down) the noiseless vector plus the largest
    share any noise could add (``cap``: beyond it the institution refuses to send), since a constant
    stream cannot drive the Skellam sampler."""
    cfg, share = CONFIGS[cfg_id], _share(cfg_id, share_id)
    rows = _adversarial_rows(kind, n, seed)
    plan = PLANS[cfg_id][stage]
    layout = release_layout(cfg, stage, max_records=MAX_RECORDS)
    if stream == "aes":
        got = contribution(
            cfg, stage, rows, plan, share, AesCtrGaussian.from_test_seed(seed), max_records=MAX_RECORDS
        )
        room = 0
    else:
        forced = ConstantStream(CEIL if stream == "ceil" else FLOOR)
        got = contribution(cfg, stage, rows, plan, SILENT, forced, max_records=MAX_RECORDS)
        room = share.cap
    layout.check(got)
    for seg in layout.segments:
        assert seg.integer
        values = got[seg.name]
        assert np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)), seg.name
        assert np.abs(values).max() + room <= seg.bound, (seg.name, np.abs(values).max(), room, seg.bound)


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_the_bounds_hold_at_the_worst_case_with_many_records(cfg_id: str) -> None:
    """The per-record allowance of the layout (q * max |value| + 1) must cover rounding up at every record:
    2000 records on the clip radius, all rounded up, no noise, and a configuration whose noise cap is
    small (epsilon 1e5: lam ~ 5, cap 270 < 2000 x the 0.5 to 0.75 a rounding up adds here), so the cap's
    slack cannot hide a missing rounding allowance. The room left must hold the largest share a session
    can ask for (``t - c = 1``: one institution adds all of ``lam``), since the layout is fixed before
    the session's ``t`` and ``c`` are."""
    cfg = dataclasses.replace(CONFIGS[cfg_id], epsilon=1e5)
    many = 2000
    largest = NoiseShare(calibrated_lambda(cfg), 1)  # a session with t - c = 1: one share carries all of lam
    for stage in DP_STAGES:
        row = np.full(8, 1.0) if stage == DP_HIST_STAGE else np.eye(8)[0] * 40.0
        plan = PLANS[cfg_id][stage]
        got = contribution(
            cfg, stage, np.tile(row, (many, 1)), plan, SILENT, ConstantStream(CEIL), max_records=many
        )
        layout = release_layout(cfg, stage, max_records=many)
        for seg in layout.segments:
            assert np.abs(got[seg.name]).max() + largest.cap <= seg.bound, (stage, seg.name)


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(
    cfg_id=st.sampled_from(list(CONFIGS)),
    honest=st.integers(min_value=1, max_value=4),
    extra=st.integers(min_value=0, max_value=4),
    data=st.data(),
)
def test_the_sum_of_any_survivor_set_carries_at_least_the_target(
    cfg_id: str, honest: int, extra: int, data: st.DataObject
) -> None:
    """``s = honest + extra`` survivors, of which ``noisy >= honest`` add their share and the rest are
    colluders adding none: the sum's noise has variance exactly 2 lam_total * noisy / honest, so never
    less than the target 2 lam_total, and exactly the target when only ``honest`` institutions noise."""
    noisy = data.draw(st.integers(min_value=honest, max_value=honest + extra), label="noisy")
    lam = LAMS[cfg_id]
    share = NoiseShare(lam, honest)
    survivors = honest + extra
    length = sum(
        release_layout(CONFIGS[cfg_id], stage, max_records=MAX_RECORDS).total_length for stage in DP_STAGES
    )
    reps = max(4, 2400 // length)
    pooled = np.concatenate(
        [
            np.sum(
                [
                    _noise(
                        cfg_id,
                        stage,
                        random_rows(50 + i, 10 + i),
                        share if i < noisy else SILENT,
                        7919 * r + 31 * i + honest,
                    )
                    for i in range(survivors)
                ],
                axis=0,
            )
            for r in range(reps)
            for stage in DP_STAGES
        ]
    )
    assert pooled.size == reps * length
    ratio = float((pooled**2).mean() / (2.0 * lam))
    tolerance = _six_sigma(pooled.size, lam * noisy / honest) * noisy / honest
    assert ratio > 1.0 - _six_sigma(pooled.size, lam), (honest, survivors, noisy, ratio)
    assert abs(ratio - noisy / honest) < tolerance, (honest, survivors, noisy, ratio)
