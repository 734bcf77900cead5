"""Shared pieces of the DP-selection tests: constant rounding streams, random projected rows, and the
public plans a release derives from the noiseless sums of a few institutions' data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from secfed.coreset.dp_config import DP_STAGES, DpSelection
from secfed.coreset.dp_release import (
    DpStagePlan,
    NoiseShare,
    contribution,
    next_release_stage,
    release_layout,
)
from secfed.coreset.layout import CohortSum, sum_contributions
from secfed.dp.csprng import AesCtrGaussian

FloatArray = npt.NDArray[np.float64]
#: A share that adds no noise: the tests see the rounded values themselves.
SILENT = NoiseShare(0.0, 1)


class ConstantStream(AesCtrGaussian):
    """A stream whose every uniform is ``value``: 0.0 rounds every fractional value up (the rounding
    draws ``up`` when ``u < frac``), ``1 - 2^-53`` rounds every one down. Deterministic per record, so a
    record rounds the same whatever its position in the data."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def uniform(self, n: int) -> FloatArray:
        return np.full(n, self.value, dtype=np.float64)


def random_rows(seed: int, n: int, k0: int = 8, scale: float = 0.4) -> FloatArray:
    """Projected rows as the release sees them: norm about 1 at the default scale, some beyond every clip."""
    out: FloatArray = np.random.default_rng(seed).normal(size=(n, k0)) * scale
    return out


def noiseless_plans(
    cfg: DpSelection,
    rows: Sequence[FloatArray],
    *,
    release_seed: int,
    stream: Callable[[], AesCtrGaussian],
    max_records: int,
) -> dict[str, dict[str, Any]]:
    """Each stage's public plan as a release derives it, from the noiseless sums of ``rows`` (one array
    per institution, each rounded with a fresh ``stream()``)."""
    plans: dict[str, dict[str, Any]] = {}
    sums: list[CohortSum] = []
    for stage in DP_STAGES:
        step = next_release_stage(cfg, sums, max_fraction=0.2, release_seed=release_seed)
        assert isinstance(step, DpStagePlan) and step.name == stage
        plans[stage] = step.broadcast
        parts = [
            contribution(cfg, stage, r, step.broadcast, SILENT, stream(), max_records=max_records)
            for r in rows
        ]
        sums.append(sum_contributions(release_layout(cfg, stage, max_records=max_records), parts))
    return plans
