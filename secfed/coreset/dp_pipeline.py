"""An in-memory run of the DP release and the local choice over a list of institutions (tests, benchmarks).

It drives :func:`~secfed.coreset.dp_release.contribution` and
:func:`~secfed.coreset.dp_release.next_release_stage` exactly as the federation does, except that each
stage's secure aggregation is the plain sum of the institutions' integer vectors (exact: SecAgg sums
integers without rounding). Plans go through a JSON round trip as on the wire. The transcript keeps
every institution's vector beside the sum, for the statistical tests of the noise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.dp_choice import local_choice
from secfed.coreset.dp_config import DpSelection, calibrated_lambda
from secfed.coreset.dp_release import (
    DpRelease,
    DpStagePlan,
    NoiseShare,
    contribution,
    next_release_stage,
    release_layout,
)
from secfed.coreset.layout import CohortSum, Contribution, Float, sum_contributions
from secfed.dp.csprng import AesCtrGaussian

__all__ = ["DpRun", "DpStageRecord", "choose", "run_dp_release"]


@dataclass(frozen=True)
class DpStageRecord:
    """One release stage as it ran: its public plan, each institution's vector, and the sum."""

    name: str
    plan: dict[str, Any]
    contributions: tuple[Contribution, ...]
    total: CohortSum


@dataclass(frozen=True)
class DpRun:
    release: DpRelease
    transcript: list[DpStageRecord]
    share: NoiseShare


def _wire(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    return out


def run_dp_release(
    rows: Sequence[Float],
    cfg: DpSelection,
    *,
    honest: int,
    max_fraction: float,
    release_seed: int,
    max_records: int = 100_000,
    streams: Sequence[AesCtrGaussian] | None = None,
    noisy: Sequence[bool] | None = None,
) -> DpRun:
    """Release over institutions whose projected rows are ``rows``; ``streams[i]`` is institution ``i``'s
    CSPRNG (fresh ones by default). ``noisy[i] = False`` makes institution ``i`` add no noise at all
    (a colluder's choice; used to test that the honest shares alone carry the target)."""
    share = NoiseShare(calibrated_lambda(cfg), honest)
    silent = NoiseShare(0.0, 1)
    own = list(streams) if streams is not None else [AesCtrGaussian() for _ in rows]
    done: list[CohortSum] = []
    transcript: list[DpStageRecord] = []
    step = next_release_stage(
        cfg, done, max_fraction=max_fraction, release_seed=release_seed, hist_share=share
    )
    while isinstance(step, DpStagePlan):
        plan = _wire(step.broadcast)
        parts = tuple(
            contribution(
                cfg,
                step.name,
                r,
                plan,
                share if noisy is None or noisy[i] else silent,
                own[i],
                max_records=max_records,
            )
            for i, r in enumerate(rows)
        )
        layout = release_layout(cfg, step.name, max_records=max_records)
        total = sum_contributions(layout, parts)
        transcript.append(DpStageRecord(step.name, plan, parts, total))
        done.append(total)
        step = next_release_stage(
            cfg, done, max_fraction=max_fraction, release_seed=release_seed, hist_share=share
        )
    return DpRun(DpRelease.from_json(_wire(step.to_json())), transcript, share)


def choose(
    rows: Sequence[Float],
    release: DpRelease,
    cfg: DpSelection,
    *,
    round_seed: int,
    max_fraction: float,
    streams: Sequence[AesCtrGaussian] | None = None,
) -> list[NDArray[np.int64]]:
    """Every institution's local choice for one round (institution ``i`` is named ``str(i)``), without
    the fallback record a non-acceptor trains on: the coverage of the choice itself is what is measured."""
    roster = [str(i) for i in range(len(rows))]
    own = list(streams) if streams is not None else [AesCtrGaussian() for _ in rows]
    return [
        local_choice(
            r,
            release,
            me=roster[i],
            roster=roster,
            round_seed=round_seed,
            oversample=cfg.oversample,
            max_fraction=max_fraction,
            stream=own[i],
        )
        for i, r in enumerate(rows)
    ]
