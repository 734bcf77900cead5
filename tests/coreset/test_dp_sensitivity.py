"""Per-record sensitivity of the DP coreset release (secfed.coreset.dp_config / dp_release), measured.

The ledger charges every release stage ``SkellamEvent(lam, l1, l2)`` with ``(l1, l2)`` from
:func:`stage_sensitivities`; that is only honest if adding or removing one record really moves the
stage's integer vector (before noise) by at most ``l1`` in L1 and ``l2`` in L2, for any data, with the
stage's public plan (the released mean, the released plane) held fixed. These tests measure that change
on random data and on adversarial rows (huge norms, rows on the clip radius, rows exactly on grid lines
and at the grid's edge, empty data sets), and check the real-valued per-record bounds the module
docstrings state before scaling. Finally, the ledger's events, composed by an RDP computation written
here from the published Skellam bound, must come to the configured epsilon.

Measuring a change under randomized rounding: an institution rounds each record's scaled vector on its
own, from its stream, so the change of the sum is that record's rounded vector *in distribution*. To
measure it on concrete vectors the two data sets must round their common records alike, which holds
for streams that are (a) constant (every rounding up, or every rounding down: the two extreme
outcomes, for any record order, so removal of any record is measured too), or (b) random but keyed per
call, with the new record appended last (the common records keep their uniforms in every segment).
With the AES stream itself a record added would shift the later segments' uniforms and re-round the
other records, which is not a sensitivity but a different random outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secfed.coreset import dp_release
from secfed.coreset.dp_config import (
    DP_HIST_STAGE,
    DP_MEAN_STAGE,
    DP_MOMENTS_STAGE,
    DP_STAGES,
    DpSelection,
    calibrated_lambda,
    segment_scales,
    selection_events,
    stage_sensitivities,
)
from secfed.coreset.dp_release import (
    contribution,
    release_layout,
)
from secfed.dp.csprng import AesCtrGaussian
from secfed.dp.skellam import skellam_events_epsilon
from tests.coreset.dp_support import SILENT, ConstantStream, noiseless_plans, random_rows

FloatArray = npt.NDArray[np.float64]
MAX_RECORDS = 10_000

CONFIGS = {
    "gauss": DpSelection(epsilon=1.0),
    "histogram": DpSelection(epsilon=1.0, density="histogram"),
    # odd sizes, a zero share (scale 1), small gamma (coarse integers: rounding matters more)
    "odd-histogram": DpSelection(
        epsilon=3.0,
        density="histogram",
        k0=5,
        dims=3,
        bins=4,
        bound=0.7,
        centred_clip=0.9,
        gamma=50.0,
        share_mean_count=0.0,
        share_hist_offsets=0.3,
    ),
    "odd-gauss": DpSelection(
        epsilon=0.5,
        k0=5,
        dims=3,
        bound=2.0,
        centred_clip=0.6,
        var_cap=1.5,
        model_bins=10,
        gamma=37.0,
        share_moments_sum=0.0,
    ),
}


class _PerCallStream(AesCtrGaussian):
    """Random uniforms keyed by (seed, call number): the k-th call of two such streams starts with the
    same values however long it is, so records appended last leave the others' uniforms unchanged."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed, self.calls = seed, 0

    def uniform(self, n: int) -> FloatArray:
        self.calls += 1
        out: FloatArray = np.random.default_rng([self.seed, self.calls]).random(n)
        return out


def _ceil() -> AesCtrGaussian:
    return ConstantStream(0.0)


def _floor() -> AesCtrGaussian:
    return ConstantStream(1.0 - 2.0**-53)


def _per_call(seed: int) -> Callable[[], AesCtrGaussian]:
    def make() -> AesCtrGaussian:
        return _PerCallStream(seed)

    return make


CONSTANT_STREAMS: dict[str, Callable[[], AesCtrGaussian]] = {"ceil": _ceil, "floor": _floor}


def _axis_plans(cfg: DpSelection) -> dict[str, dict[str, Any]]:
    """Hand-made plans: the plane is the first ``dims`` axes around the origin, with equal noisy spreads
    and a grid of width 0.5 (grid lines exactly representable, so rows can sit exactly on them)."""
    half_range = cfg.bins / 4.0
    plane = {
        "centre": [0.0] * cfg.k0,
        "basis": np.eye(cfg.k0)[:, : cfg.dims].tolist(),
        "std": [0.5] * cfg.dims,
        "grid": {"lo": [-half_range] * cfg.dims, "hi": [half_range] * cfg.dims, "bins": cfg.bins},
    }
    return {DP_MEAN_STAGE: {}, DP_MOMENTS_STAGE: {"mean": [0.05] * cfg.k0}, DP_HIST_STAGE: {"plane": plane}}


def _data_plans(cfg: DpSelection) -> dict[str, dict[str, Any]]:
    """Plans as a release derives them, from the noiseless sums of four institutions' random data."""
    return noiseless_plans(
        cfg,
        [random_rows(700 + i, 40, cfg.k0) for i in range(4)],
        release_seed=3,
        stream=_ceil,
        max_records=MAX_RECORDS,
    )


PLANS = {
    (cfg_id, kind): maker(cfg)
    for cfg_id, cfg in CONFIGS.items()
    for kind, maker in (("data", _data_plans), ("axes", _axis_plans))
}


def _prenoise(
    cfg: DpSelection, stage: str, rows: FloatArray, plan: dict[str, Any], stream: AesCtrGaussian
) -> FloatArray:
    """The stage's integer vector before noise (``NoiseShare(0, 1)`` draws none), segments concatenated."""
    values = contribution(cfg, stage, rows, plan, SILENT, stream, max_records=MAX_RECORDS)
    layout = release_layout(cfg, stage, max_records=MAX_RECORDS)
    out = np.concatenate([values[name] for name in layout.names])
    assert np.array_equal(out, np.round(out))
    return out


def _datasets(cfg: DpSelection) -> dict[str, FloatArray]:
    k0, dims = cfg.k0, cfg.dims
    lines = -cfg.bins / 4.0 + 0.5 * np.arange(cfg.bins + 1)  # every grid line of the axis plan, both edges
    on_lines = np.zeros((len(lines), k0))
    on_lines[:, :dims] = lines[:, None]
    corners = np.zeros((2, k0))
    corners[0, :dims], corners[1, :dims] = lines[0], lines[-1]  # the grid's lower corner; its upper edge
    return {
        "empty": np.zeros((0, k0)),
        "random-1": random_rows(1, 1, k0),
        "random-9": random_rows(2, 9, k0),
        "random-25": random_rows(3, 25, k0, scale=1.0),
        "huge": np.vstack([random_rows(4, 4, k0, scale=1e6), np.eye(k0)[:1] * 1e150]),
        "grid-lines": np.vstack([on_lines, corners]),
        "clip-radius": np.vstack([np.eye(k0) * cfg.bound, -np.eye(k0) * cfg.bound]),
    }


def _candidates(cfg: DpSelection, plan_mean: FloatArray) -> dict[str, FloatArray]:
    """Records to add: the extreme ones for each segment's bound, and some ordinary ones."""
    k0, dims = cfg.k0, cfg.dims
    on_line = np.zeros(k0)
    on_line[:dims] = 0.5  # a grid line of the axis plan on every axis
    at_edge = np.zeros(k0)
    at_edge[:dims] = cfg.bins / 4.0  # exactly the grid's upper edge: the overflow bin
    return {
        "on-clip-axis": np.eye(k0)[0] * cfg.bound,
        "on-clip-diagonal": np.ones(k0) * cfg.bound / math.sqrt(k0),  # every coordinate positive: worst L1
        "centred-diagonal": plan_mean + 10.0,  # z = C / sqrt(k0) (1, ..., 1): the outer products' worst L1
        "centred-axis": plan_mean + 10.0 * np.eye(k0)[0],
        "huge-positive": np.full(k0, 1e6),
        "huge-negative": np.full(k0, -1e6),
        "far-on-one-axis": np.eye(k0)[0] * 1e150,
        "zero": np.zeros(k0),
        "at-the-mean": plan_mean.copy(),
        "on-grid-line": on_line,
        "at-grid-edge": at_edge,
        "random": random_rows(9, 1, k0)[0],
    }


def _norms(change: FloatArray) -> tuple[float, float]:
    return float(np.abs(change).sum()), float(np.linalg.norm(change))


def _within(change: FloatArray, bound: tuple[float, float], what: object) -> tuple[float, float]:
    l1, l2 = _norms(change)
    assert l1 <= bound[0] * (1 + 1e-12), ("L1", what, l1, bound[0])
    assert l2 <= bound[1] * (1 + 1e-12), ("L2", what, l2, bound[1])
    return l1 / bound[0], l2 / bound[1]


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_one_record_moves_each_stage_by_at_most_its_sensitivity(cfg_id: str) -> None:
    """Adding an adversarial or ordinary record to any data set, or removing any one record, moves each
    stage's pre-noise integer vector by at most ``stage_sensitivities`` in L1 and L2, with the plans
    fixed, whichever way the rounding goes; the change is exactly the record's own rounded vector (it is
    rounded on its own). The extreme records come within a few per cent of the bounds, so the bounds
    are the worst case, not slack."""
    cfg = CONFIGS[cfg_id]
    sens = stage_sensitivities(cfg)
    reached: dict[str, list[float]] = {stage: [0.0, 0.0] for stage in DP_STAGES}
    for plan_kind in ("data", "axes"):
        plans = PLANS[(cfg_id, plan_kind)]
        mean = np.asarray(plans[DP_MOMENTS_STAGE]["mean"])
        candidates = _candidates(cfg, mean)
        for data_name, rows in _datasets(cfg).items():
            for stage in DP_STAGES:
                plan = plans[stage]
                streams = {**CONSTANT_STREAMS, "per-call-0": _per_call(0), "per-call-1": _per_call(1)}
                for stream_name, make in streams.items():
                    base = _prenoise(cfg, stage, rows, plan, make())
                    for name, x in candidates.items():
                        grown = _prenoise(cfg, stage, np.vstack([rows, x]), plan, make())
                        what = (plan_kind, data_name, stage, stream_name, "add", name)
                        ratios = _within(grown - base, sens[stage], what)
                        reached[stage] = [max(a, b) for a, b in zip(reached[stage], ratios, strict=True)]
                        if stream_name in CONSTANT_STREAMS:  # rounded on its own: the change is its vector
                            alone = _prenoise(cfg, stage, x[None, :], plan, make())
                            assert np.array_equal(grown - base, alone), what
                    if stream_name not in CONSTANT_STREAMS:
                        continue
                    for i in range(len(rows)):  # removing any record (constant streams: any position)
                        shrunk = _prenoise(cfg, stage, np.delete(rows, i, axis=0), plan, make())
                        _within(
                            base - shrunk,
                            sens[stage],
                            (plan_kind, data_name, stage, stream_name, "remove", i),
                        )
    for stage, (l1_ratio, l2_ratio) in reached.items():
        # the rounding allowance (n in L1, sqrt(n) in L2) is not quite reachable at the extremes; it
        # weighs ~1 / gamma: within 1 % at the default gamma = 1000, 10 % at the coarse 37 and 50
        assert min(l1_ratio, l2_ratio) > (0.99 if cfg.gamma >= 1000 else 0.9), (stage, l1_ratio, l2_ratio)


@settings(max_examples=200, deadline=None)
@given(
    cfg_id=st.sampled_from(list(CONFIGS)),
    plan_kind=st.sampled_from(["data", "axes"]),
    stage=st.sampled_from(DP_STAGES),
    rows=hnp.arrays(
        np.float64,
        st.tuples(st.integers(min_value=0, max_value=6), st.just(5)),
        elements=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    ),
    record=hnp.arrays(np.float64, 5, elements=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)),
    stream=st.sampled_from(["ceil", "floor", "per-call"]),
    seed=st.integers(min_value=0, max_value=2**20),
)
def test_any_added_record_stays_within_the_sensitivity(
    cfg_id: str, plan_kind: str, stage: str, rows: FloatArray, record: FloatArray, stream: str, seed: int
) -> None:
    """The same property on arbitrary finite rows (hypothesis), padded to the configuration's ``k0``."""
    cfg = CONFIGS[cfg_id]
    pad = max(0, cfg.k0 - rows.shape[1])
    rows = np.hstack([rows, np.zeros((len(rows), pad))])[:, : cfg.k0]
    record = np.concatenate([record, np.zeros(pad)])[: cfg.k0]
    plan = PLANS[(cfg_id, plan_kind)][stage]

    def make() -> AesCtrGaussian:
        return _PerCallStream(seed) if stream == "per-call" else CONSTANT_STREAMS[stream]()

    change = _prenoise(cfg, stage, np.vstack([rows, record]), plan, make()) - _prenoise(
        cfg, stage, rows, plan, make()
    )
    _within(change, stage_sensitivities(cfg)[stage], (cfg_id, plan_kind, stage, stream))


def _documented_real_bounds(cfg: DpSelection, stage: str, segment: str) -> tuple[float, float]:
    """(L1, L2) of one record's real-valued segment before scaling, as the module docstrings state them."""
    c = cfg.centred_clip
    return {
        (DP_MEAN_STAGE, "sum"): (cfg.bound * math.sqrt(cfg.k0), cfg.bound),  # clip(x, bound)
        (DP_MEAN_STAGE, "count"): (1.0, 1.0),
        (DP_MOMENTS_STAGE, "sum"): (c * math.sqrt(cfg.k0), c),  # z = clip(x - m, C)
        # upper triangle of z z^T, off-diagonals times sqrt(2): L2 = |z|^2, L1 <= C^2 (1 + (k0 - 1) / sqrt 2)
        (DP_MOMENTS_STAGE, "outer"): (c * c * (1 + (cfg.k0 - 1) / math.sqrt(2)), c * c),
        (DP_HIST_STAGE, "var"): (math.sqrt(cfg.dims), 1.0),  # min(y^2, v) / |v|
        (DP_HIST_STAGE, "counts"): (1.0, 1.0),
        (DP_HIST_STAGE, "offsets"): (float(cfg.dims), math.sqrt(cfg.dims)),  # each in [-1, 1]
    }[(stage, segment)]


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_real_valued_records_stay_within_the_documented_bounds(
    cfg_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before scaling and rounding, one record's value in each segment has at most the documented real L1
    and L2 norms (clip radius, centred clip, |z|^2 for the outer products, 1 for the capped spread, one
    count and offsets in [-1, 1] in one cell); and the rounding of its scaled vector (with the real AES
    stream) moves every coordinate by less than 1."""
    cfg = CONFIGS[cfg_id]
    scales = segment_scales(cfg)
    real: dict[tuple[str, str, str, str], FloatArray] = {}
    records: list[tuple[str, str, FloatArray]] = []
    for plan_kind in ("data", "axes"):
        mean = np.asarray(PLANS[(cfg_id, plan_kind)][DP_MOMENTS_STAGE]["mean"])
        records += [(plan_kind, name, x) for name, x in _candidates(cfg, mean).items()]
        records += [
            (plan_kind, f"random-{i}", x) for i, x in enumerate(random_rows(11, 30, cfg.k0, scale=0.8))
        ]
    with monkeypatch.context() as patch:
        patch.setattr(dp_release, "_rounded", lambda scaled, stream: scaled)  # the real scaled values
        for plan_kind, name, x in records:
            for stage in DP_STAGES:
                plan = PLANS[(cfg_id, plan_kind)][stage]
                values = contribution(cfg, stage, x[None, :], plan, SILENT, _ceil(), max_records=1)
                for segment, scaled in values.items():
                    real[(plan_kind, name, stage, segment)] = scaled
                    value = scaled / scales[(stage, segment)]
                    l1_bound, l2_bound = _documented_real_bounds(cfg, stage, segment)
                    what = (plan_kind, name, stage, segment)
                    assert np.abs(value).sum() <= l1_bound * (1 + 1e-12), what
                    assert np.linalg.norm(value) <= l2_bound * (1 + 1e-12), what
                    if segment in ("count", "counts"):  # exactly one record counted, in one place
                        assert np.array_equal(np.sort(value)[-1:], [1.0]) and np.count_nonzero(value) == 1
                    if segment == "offsets":  # only in the record's own cell
                        cell = int(np.flatnonzero(values["counts"])[0])
                        outside = np.delete(value.reshape(cfg.n_cells, cfg.dims), cell, axis=0)
                        assert not outside.any(), what
                    if segment == "var":
                        assert np.all(value >= 0), what
    for seed, (plan_kind, name, x) in enumerate(records):
        for stage in DP_STAGES:
            plan = PLANS[(cfg_id, plan_kind)][stage]
            rounded = contribution(
                cfg, stage, x[None, :], plan, SILENT, AesCtrGaussian.from_test_seed(seed), max_records=1
            )
            for segment, integers in rounded.items():
                scaled = real[(plan_kind, name, stage, segment)]
                assert np.all(np.abs(integers - scaled) < 1.0), (plan_kind, name, stage, segment)
                exact = scaled == np.round(scaled)
                assert np.array_equal(integers[exact], scaled[exact])


#: RDP orders of the check (those of the DP-SGD ledger: 2..128 and a few larger).
ORDERS = [float(a) for a in range(2, 129)] + [160.0, 192.0, 256.0, 320.0, 384.0, 512.0, 768.0, 1024.0]


def _skellam_rdp(alpha: float, lam: float, l1: float, l2: float) -> float:
    """Agarwal, Kairouz & Liu (NeurIPS 2021), the Skellam mechanism with Sk(lam) per coordinate:
    eps(alpha) = alpha l2^2 / (4 lam) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 lam^2), 3 l1 / (4 lam))."""
    return alpha * l2**2 / (4 * lam) + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * lam**2), 3 * l1 / (4 * lam)
    )


def _epsilon(lam: float, sensitivities: list[tuple[float, float]], delta: float) -> float:
    rdp = [sum(_skellam_rdp(a, lam, l1, l2) for l1, l2 in sensitivities) for a in ORDERS]
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(ORDERS, rdp, delta)
    return float(epsilon)


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_the_ledger_events_compose_to_the_configured_epsilon(cfg_id: str) -> None:
    """The three stage events carry the calibrated ``lam`` and the stages' sensitivities; composed here
    (RDP from the published bound, summed, converted by dp_accounting) they stay within epsilon, and
    ``lam`` is no larger than needed: 0.1 % less (the calibration's tolerance) would exceed epsilon."""
    cfg = CONFIGS[cfg_id]
    events = selection_events(cfg, round_=4)
    lam = calibrated_lambda(cfg)
    sens = stage_sensitivities(cfg)
    assert list(events) == list(DP_STAGES)
    for stage, event in events.items():
        assert (event.lam, event.l1, event.l2, event.what, event.round) == (lam, *sens[stage], stage, 4)
    pairs = [sens[stage] for stage in DP_STAGES]
    composed = _epsilon(lam, pairs, cfg.delta)
    assert composed <= cfg.epsilon * (1 + 1e-9), (composed, cfg.epsilon)
    assert _epsilon(lam * (1 - 1e-3), pairs, cfg.delta) > cfg.epsilon
    assert skellam_events_epsilon(events.values(), cfg.delta) == pytest.approx(composed, rel=1e-9)
    # the three stages really compose: any one of them alone costs strictly less
    for pair in pairs:
        assert _epsilon(lam, [pair], cfg.delta) < composed
