"""A lying server against the DP coreset release and the local choice (secfed.coreset.dp_release,
dp_choice, dp_pipeline): what it can and cannot learn or steer. Each test's docstring states the attack.

Model: the server runs the secure-aggregation sessions, chooses cohorts, and may collude with up to
``c`` institutions, which add no noise and tell it their data. Each honest institution adds
``Sk(lam_total / h)`` with ``h = t - c`` (:class:`NoiseShare`); SecAgg's threshold ``t`` means no sum is
ever decoded with fewer than ``t`` contributors, of whom at least ``h`` are honest. What these tests can
check here, without SecAgg, is the arithmetic that guarantee rests on: one honest member alone carries
only ``1 / h`` of the target (so isolating it would breach the budget, which is why SecAgg's threshold
must forbid it), and any ``h`` honest members together carry at least the target.

Statistics as in ``test_dp_noise.py``: fixed stream seeds (deterministic), thresholds at six standard
errors of a variance estimate (false failure below ~1e-9 per assertion on fresh seeds).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.coreset.dp_choice import local_choice, offers, padded_choice
from secfed.coreset.dp_config import DP_HIST_STAGE, DP_STAGES, DpSelection, calibrated_lambda, segment_scales
from secfed.coreset.dp_pipeline import DpRun, DpStageRecord, run_dp_release
from secfed.coreset.dp_release import (
    DpRelease,
    DpStagePlan,
    NoiseShare,
    contribution,
    next_release_stage,
    release_layout,
)
from secfed.coreset.layout import CohortSum
from secfed.dp.csprng import AesCtrGaussian

FloatArray = npt.NDArray[np.float64]
SILENT = NoiseShare(0.0, 1)
MAX_RECORDS = 1000
HONEST = 3  # t - c of every session here
COHORT = 5

#: Both density models; the Gaussian one on a coarse lattice (144 points instead of 1,600) so that
#: the dozens of releases below stay fast: the lattice only shapes the final centres.
CONFIGS = {
    "gauss": DpSelection(epsilon=1.0, model_bins=12),
    "histogram": DpSelection(epsilon=1.0, density="histogram"),
}


def _cohort_rows(seed: int, k0: int = 8) -> list[FloatArray]:
    """Five institutions, 20 to 60 records each, from three shared blobs (a plane worth releasing)."""
    gen = np.random.default_rng(seed)
    blobs = gen.normal(size=(3, k0)) * 0.5
    out = []
    for _ in range(COHORT):
        n = int(gen.integers(20, 61))
        out.append(blobs[gen.integers(3, size=n)] + gen.normal(size=(n, k0)) * 0.15)
    return out


def _release_run(
    cfg: DpSelection, rows: list[FloatArray], noisy: list[bool], seeds: list[int], release_seed: int
) -> DpRun:
    return run_dp_release(
        rows,
        cfg,
        honest=HONEST,
        max_fraction=0.2,
        release_seed=release_seed,
        max_records=MAX_RECORDS,
        streams=[AesCtrGaussian.from_test_seed(s) for s in seeds],
        noisy=noisy,
    )


def _replayed_prenoise(
    cfg: DpSelection, transcript: list[DpStageRecord], k: int, rows: FloatArray, seed: int, share: NoiseShare
) -> dict[str, FloatArray]:
    """What an institution sent in stage ``k`` before its noise: its stream replayed through the earlier
    stages with the share it used, then stage ``k`` without noise (rounding is drawn before noise)."""
    stream = AesCtrGaussian.from_test_seed(seed)
    for rec in transcript[:k]:
        contribution(cfg, rec.name, rows, rec.plan, share, stream, max_records=MAX_RECORDS)
    rec = transcript[k]
    return contribution(cfg, rec.name, rows, rec.plan, SILENT, stream, max_records=MAX_RECORDS)


def _server_residuals(cfg: DpSelection, noisy: list[bool]) -> dict[str, FloatArray]:
    """Run enough releases for >= 2400 residual coordinates; in every stage the server subtracts the colluders' (noiseless, known)
    vectors from the sum and compares what is left with the honest members' true pre-noise sum. Returns
    the residuals per segment (``stage/segment``), pooled over runs."""
    share = NoiseShare(calibrated_lambda(cfg), HONEST)
    pooled: dict[str, list[FloatArray]] = {}
    per_run = sum(release_layout(cfg, stage, max_records=MAX_RECORDS).total_length for stage in DP_STAGES)
    for run_index in range(max(5, -(-2400 // per_run))):
        rows = _cohort_rows(run_index)
        seeds = [10_000 * run_index + i for i in range(COHORT)]
        run = _release_run(cfg, rows, noisy, seeds, release_seed=run_index)
        assert [rec.name for rec in run.transcript] == list(DP_STAGES)
        for k, rec in enumerate(run.transcript):
            for name, total in rec.total.values.items():
                colluders = sum(rec.contributions[i][name] for i in range(COHORT) if not noisy[i])
                recovered = total - colluders  # the server's estimate of the honest members' sum
                truth = sum(
                    _replayed_prenoise(cfg, run.transcript, k, rows[i], seeds[i], share)[name]
                    for i in range(COHORT)
                    if noisy[i]
                )
                for i in range(COHORT):  # the replay is exact: a colluder's vector is its pre-noise one
                    if not noisy[i]:
                        replay = _replayed_prenoise(cfg, run.transcript, k, rows[i], seeds[i], SILENT)[name]
                        assert np.array_equal(replay, rec.contributions[i][name])
                pooled.setdefault(f"{rec.name}/{name}", []).append(np.asarray(recovered - truth))
    return {key: np.concatenate(parts) for key, parts in pooled.items()}


def _six_sigma(samples: int) -> float:
    """Six standard errors of a second moment of ``samples`` Skellam values (lam in the millions:
    excess kurtosis negligible), relative to its expectation."""
    return 6.0 * math.sqrt(2.0 / samples)


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_isolating_one_honest_institution_leaves_only_its_own_share(cfg_id: str) -> None:
    """Attack: "isolate one institution". The server runs every release stage over a cohort where all
    members but one are colluders adding no noise, and subtracts their (known) vectors from each sum: what
    is left is the victim's own statistics plus its own share only.

    Guaranteed: that residual has exactly the victim's share's variance, 2 lam_total / h per coordinate
    in ring units (so its histogram counts, in records, are off by a noise of standard deviation
    sqrt(2 lam_total / h) / q). That is 1/h of the calibrated target: a share is sized on the promise
    that at least h honest shares are in every decoded sum, which SecAgg's threshold (t >= h + c) has to
    keep; this test pins that the noise arithmetic gives the victim exactly its share, no more, no less."""
    cfg = CONFIGS[cfg_id]
    lam = calibrated_lambda(cfg)
    residuals = _server_residuals(cfg, [True] + [False] * (COHORT - 1))
    pooled = np.concatenate(list(residuals.values()))
    ratio = float((pooled**2).mean() / (2.0 * lam / HONEST))
    assert abs(ratio - 1.0) < _six_sigma(pooled.size), ratio  # the share, and only the share
    assert float((pooled**2).mean()) < 2.0 * lam * (
        1.0 / HONEST + _six_sigma(pooled.size)
    )  # 1/h of the target
    if cfg.density == "histogram":
        counts = residuals[f"{DP_HIST_STAGE}/counts"] / segment_scales(cfg)[(DP_HIST_STAGE, "counts")]
        expected_sd = math.sqrt(2.0 * lam / HONEST) / segment_scales(cfg)[(DP_HIST_STAGE, "counts")]
        assert abs(float(counts.std()) / expected_sd - 1.0) < _six_sigma(counts.size)


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_any_h_honest_members_carry_the_target_whatever_the_colluders_do(cfg_id: str) -> None:
    """Attack: the server puts exactly ``h`` honest members with ``c`` colluders (no noise, data known),
    the fewest honest ones SecAgg's threshold lets through, and subtracts the colluders' vectors.

    Guaranteed: the honest members' sum still carries the calibrated target, variance >= 2 lam_total per
    coordinate of every stage (here exactly it); so what the server recovers of a single record's
    histogram cell count is off by noise of standard deviation >= sqrt(2 lam_total) / q records."""
    cfg = CONFIGS[cfg_id]
    lam = calibrated_lambda(cfg)
    residuals = _server_residuals(cfg, [True] * HONEST + [False] * (COHORT - HONEST))
    pooled = np.concatenate(list(residuals.values()))
    ratio = float((pooled**2).mean() / (2.0 * lam))
    assert ratio > 1.0 - _six_sigma(pooled.size), ratio
    assert abs(ratio - 1.0) < _six_sigma(pooled.size), ratio
    if cfg.density == "histogram":
        q = segment_scales(cfg)[(DP_HIST_STAGE, "counts")]
        counts = residuals[f"{DP_HIST_STAGE}/counts"] / q  # the error on each cell's count, in records
        assert float(counts.std()) > math.sqrt(2.0 * lam) / q * (1.0 - _six_sigma(counts.size))


def _exact(value: Any) -> Any:
    """A JSON value with every float written as its exact hex form."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return value


def _fingerprint(step: DpStagePlan | DpRelease) -> str:
    """Every bit of a plan or release (floats as hex): equal fingerprints mean bitwise-equal results."""
    data = step.to_json() if isinstance(step, DpRelease) else {"name": step.name, "plan": step.broadcast}
    return json.dumps(_exact(data), sort_keys=True)


def _on_the_wire(total: CohortSum) -> CohortSum:
    """The sum as an institution receives it: a copy through JSON (exact for float64 via repr)."""
    values = {
        k: np.asarray(json.loads(json.dumps(v.tolist())), dtype=np.float64) for k, v in total.values.items()
    }
    return CohortSum(total.stage, values, total.n_contributors)


_REPLAY_SCRIPT = """
import json, sys
import numpy as np
from secfed.coreset.dp_config import DpSelection
from secfed.coreset.dp_release import NoiseShare, next_release_stage
from secfed.coreset.layout import CohortSum
data = json.load(sys.stdin)
cfg = DpSelection.from_json(data["cfg"])
sums = [CohortSum(s["stage"], {k: np.asarray(v) for k, v in s["values"].items()}, s["n"]) for s in data["sums"]]
share = NoiseShare(*data["share"])
out = []
for k in range(len(sums) + 1):
    step = next_release_stage(cfg, sums[:k], max_fraction=0.2, release_seed=data["seed"], hist_share=share)
    out.append(step.to_json() if k == len(sums) else {"name": step.name, "plan": step.broadcast})
print(json.dumps(out))
"""


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_the_server_cannot_move_the_plan(cfg_id: str) -> None:
    """Attack: the server sends a plan (the mean the moments are centred on, the plane and grid, the final
    centres and region counts) other than the one the released sums imply, to steer what the next stage
    reveals or which records get chosen.

    Defence checked: every plan and the release are a deterministic function of the sums and public
    settings, bit for bit: recomputed from a JSON copy of the sums, after disturbing numpy's global
    random state, and in a fresh process with another hash seed and one BLAS thread, they are identical to
    what the run broadcast. So each institution recomputes them and refuses any difference; and a
    different sum (one unit in one coordinate) gives a different plan, so the server cannot pick a plan
    without changing the sums SecAgg decoded."""
    cfg = CONFIGS[cfg_id]
    share = NoiseShare(calibrated_lambda(cfg), HONEST)
    rows = [np.vstack([r] * 4) for r in _cohort_rows(77)]  # enough records for histogram cells to be kept
    run = _release_run(cfg, rows, [True] * COHORT, [500 + i for i in range(COHORT)], release_seed=9)
    sums = [rec.total for rec in run.transcript]
    broadcast = [DpStagePlan(rec.name, rec.plan) for rec in run.transcript]
    for k in range(len(DP_STAGES) + 1):
        np.random.seed(1000 + k)  # the server's post-processing must not read numpy's global generator
        again = next_release_stage(
            cfg, [_on_the_wire(s) for s in sums[:k]], max_fraction=0.2, release_seed=9, hist_share=share
        )
        first = next_release_stage(cfg, sums[:k], max_fraction=0.2, release_seed=9, hist_share=share)
        assert _fingerprint(again) == _fingerprint(first), k
        if k < len(DP_STAGES):
            assert isinstance(again, DpStagePlan)
            assert _fingerprint(again) == _fingerprint(broadcast[k]), k
        else:
            assert isinstance(again, DpRelease) and _fingerprint(again) == _fingerprint(run.release)
            assert len(again.centres) > 0
    for k in range(1, len(DP_STAGES) + 1):  # a one-unit change in any stage's sum changes what follows
        last = sums[k - 1]
        values = {name: v.copy() for name, v in last.values.items()}
        first_segment = next(iter(values))
        values[first_segment][int(np.argmax(values[first_segment]))] += 1.0  # e.g. the fullest cell
        moved = [*sums[: k - 1], CohortSum(last.stage, values, last.n_contributors)]
        after = next_release_stage(cfg, moved, max_fraction=0.2, release_seed=9, hist_share=share)
        before = next_release_stage(cfg, sums[:k], max_fraction=0.2, release_seed=9, hist_share=share)
        assert _fingerprint(after) != _fingerprint(before), k
    payload = {
        "cfg": cfg.to_json(),
        "seed": 9,
        "share": [share.lam_total, share.honest],
        "sums": [
            {"stage": s.stage, "n": s.n_contributors, "values": {k: v.tolist() for k, v in s.values.items()}}
            for s in sums
        ],
    }
    if cfg_id != "gauss":
        return  # one fresh process is enough (it costs seconds): the default density model
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _REPLAY_SCRIPT],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    elsewhere = json.loads(done.stdout)  # JSON floats are exact (shortest repr round-trips)
    here = [*({"name": step.name, "plan": step.broadcast} for step in broadcast), run.release.to_json()]
    assert [_exact(x) for x in elsewhere] == [_exact(x) for x in here]


def _release_with_centres(centres: FloatArray, region_counts: FloatArray, k0: int = 8) -> DpRelease:
    """A release whose plane is the first two axes (plane coordinates = a row's first two entries)."""
    plane = {
        "centre": [0.0] * k0,
        "basis": np.eye(k0)[:, :2].tolist(),
        "std": [1.0, 1.0],
        "grid": {"lo": [-1.0, -1.0], "hi": [1.0, 1.0], "bins": 4},
    }
    return DpRelease(plane, centres, region_counts, float(region_counts.sum()), len(centres))


def _clustered_rows(
    gen: np.random.Generator, centres: FloatArray, per_centre: npt.NDArray[np.int64]
) -> FloatArray:
    """Rows in tight clusters around the centres (plane coordinates), other coordinates random."""
    parts = []
    for centre, n in zip(centres, per_centre, strict=True):
        block = gen.normal(size=(int(n), 8))
        block[:, :2] = centre + gen.normal(size=(int(n), 2)) * 0.01
        parts.append(block)
    return np.vstack(parts) if parts else np.zeros((0, 8))


@settings(max_examples=120, deadline=None)
@given(
    n_centres=st.integers(min_value=1, max_value=12),
    members=st.integers(min_value=1, max_value=6),
    max_fraction=st.floats(min_value=0.01, max_value=1.0),
    oversample=st.floats(min_value=0.25, max_value=8.0),
    round_seed=st.integers(min_value=0, max_value=2**40),
    data_seed=st.integers(min_value=0, max_value=2**20),
)
def test_the_local_choice_is_capped_takes_only_offered_centres_and_pads_to_fixed_work(
    n_centres: int, members: int, max_fraction: float, oversample: float, round_seed: int, data_seed: int
) -> None:
    """Attack: a release (or an offer) crafted to make an institution train on many records, or on
    records near centres offered to someone else, or on none or a data-dependent number (so that its
    update, its absence or its training time betrays whether it holds data near a centre).

    Checked for every member: the choice has at most floor(max_fraction * n) records, distinct and its
    own; each taken record lies in the cluster of a centre ``offers`` gave to that member (clusters are
    well separated, so a record's nearest centre names the centre that took it); and the padded choice
    it trains on keeps the chosen records and has exactly max(1, floor(max_fraction * n)) records (n at
    most), whatever it accepted: at least one for every member with data."""
    gen = np.random.default_rng(data_seed)
    centres = np.stack([np.arange(n_centres) * 10.0, np.zeros(n_centres)], axis=1)
    roster = [f"inst{i:02d}" for i in range(members)]
    holdings = gen.integers(0, 6, size=(members, n_centres))
    region = holdings.sum(axis=0).astype(np.float64) * gen.uniform(0.2, 3.0, size=n_centres)
    release = _release_with_centres(centres, np.maximum(region, 1.0))
    assignment = offers(n_centres, roster, round_seed)
    for m, me in enumerate(roster):
        rows = _clustered_rows(gen, centres, holdings[m])
        chosen = local_choice(
            rows,
            release,
            me=me,
            roster=roster,
            round_seed=round_seed,
            oversample=oversample,
            max_fraction=max_fraction,
            stream=AesCtrGaussian.from_test_seed(data_seed + m),
        )
        assert len(chosen) <= math.floor(max_fraction * len(rows))
        assert len(set(chosen.tolist())) == len(chosen)
        assert np.all((chosen >= 0) & (chosen < len(rows)))
        took = np.argmin(np.abs(rows[chosen, 0][:, None] - centres[None, :, 0]), axis=1)
        assert all(assignment[g] == me for g in took.tolist()), (me, took, assignment)
        trains = padded_choice(rows, release, chosen, max_fraction=max_fraction)
        assert len(trains) == min(len(rows), max(1, math.floor(max_fraction * len(rows))))
        assert trains[: len(chosen)].tolist() == chosen.tolist()
        assert len(set(trains.tolist())) == len(trains)
        assert np.all((trains >= 0) & (trains < len(rows)))


def test_the_padding_never_leaves_a_member_with_data_untrained() -> None:
    """The padding on its own, when nothing was accepted: the records nearest any centre (the first
    records when the release kept no centre), exactly max(1, floor(max_fraction * n)) of them, and
    nothing only for a member without records."""
    release = _release_with_centres(np.array([[0.0, 0.0], [5.0, 5.0]]), np.array([3.0, 4.0]))
    rows = np.zeros((4, 8))
    rows[:, :2] = [[9.0, 9.0], [4.0, 4.5], [-3.0, 0.0], [20.0, 0.0]]
    none = np.zeros(0, dtype=np.int64)
    assert padded_choice(rows, release, none, max_fraction=0.1).tolist() == [1]
    assert padded_choice(rows, release, none, max_fraction=0.5).tolist() == [1, 2]
    empty = _release_with_centres(np.zeros((0, 2)), np.zeros(0))
    assert padded_choice(rows, empty, none, max_fraction=0.1).tolist() == [0]
    assert padded_choice(np.zeros((0, 8)), release, none, max_fraction=0.5).tolist() == []
