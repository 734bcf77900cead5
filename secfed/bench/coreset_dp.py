"""The DP part of ``secfed bench coreset --selection-epsilon E``: DP selection beside today's secure one.

Each benchmark round is one federation's release (its own public release seed, fresh CSPRNG noise and
rounding at every institution) followed by one round of local choices, run in memory exactly as the
federation runs them (:mod:`secfed.coreset.dp_pipeline`). Institutions assume ``c = floor(n / 3)``
colluders and the smallest safe threshold ``t``, so each adds ``Sk(lam / (t - c))``.

Coverage is measured in one fixed, non-DP reference space, the same for every method: the exact 2-D
PCA of all records under the release's public projection (``k0`` dimensions). Today's secure
selection and a random one of the same size are measured there too, so the three figures compare.
Why that space (and why its ``k0`` is small) is in ``docs/research/coreset-dp/design.md``: coverage in a
2-D plane is fragile, and the exact version of the space the method works in is the fair reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.dp_config import DpSelection, calibrated_lambda, segment_scales
from secfed.secagg.config import default_colluding, required_threshold

__all__ = ["dp_round", "dp_summary", "noise_std_per_coordinate", "plot_svg"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def honest_contributors(n: int) -> int:
    """``t - c`` of a session of ``n`` institutions with the design's defaults."""
    c = default_colluding(n)
    return required_threshold(n, c) - c


def noise_std_per_coordinate(cfg: DpSelection, n: int) -> dict[str, dict[str, float]]:
    """Per released segment, the noise standard deviation in the segment's real units: ``target`` (what
    ``t - c`` honest institutions guarantee) and ``all_contribute`` (what the sum holds when all ``n`` do)."""
    lam = calibrated_lambda(cfg)
    h = honest_contributors(n)
    out: dict[str, dict[str, float]] = {}
    for (stage, segment), q in segment_scales(cfg).items():
        out[f"{stage}.{segment}"] = {
            "target": math.sqrt(2.0 * lam) / q,
            "all_contribute": math.sqrt(2.0 * lam * n / h) / q,
        }
    return out


def _reference(rows: Sequence[FloatArray]) -> FloatArray:
    """Exact 2-D PCA of every record's projected row (the fixed non-DP reference space)."""
    x = np.concatenate(rows)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out: FloatArray = centred @ vt[:2].T
    return out


def dp_round(
    features: Sequence[FloatArray],
    blocks: int,
    cfg: DpSelection,
    *,
    release_seed: int,
    max_fraction: float,
    secure_rows: IntArray,
) -> dict[str, Any]:
    """One federation's DP release and one round of choices; coverage of it, of today's secure selection
    (``secure_rows``, pooled row numbers) and of random, all in the same reference space."""
    from secfed.coreset.dp_choice import offer_seed
    from secfed.coreset.dp_pipeline import choose, run_dp_release
    from secfed.coreset.dp_release import projected_rows
    from secfed.coreset.metrics import coverage
    from secfed.coreset.space import derive_seed

    rows = [projected_rows(f, blocks, cfg, release_seed) for f in features]
    run = run_dp_release(
        rows,
        cfg,
        honest=honest_contributors(len(rows)),
        max_fraction=max_fraction,
        release_seed=release_seed,
    )
    chosen = choose(rows, run.release, cfg, round_seed=offer_seed(release_seed, 0), max_fraction=max_fraction)
    offsets = np.cumsum([0] + [len(r) for r in rows])
    pooled = np.concatenate([offsets[i] + c for i, c in enumerate(chosen)]).astype(np.int64)
    reference = _reference(rows)
    n = len(reference)
    random_rows = np.random.default_rng(derive_seed(release_seed, "bench-dp-random")).choice(
        n, size=max(1, len(pooled)), replace=False
    )
    return {
        "release_seed": release_seed,
        "records": n,
        "dp_selected": len(pooled),
        "dp_selected_fraction": len(pooled) / n,
        "centres": len(run.release.centres),
        "kept_cells": run.release.kept_cells,
        "noisy_record_count": run.release.records,
        "coverage_secure_dp": coverage(reference, pooled, seed=release_seed) if len(pooled) else None,
        "coverage_secure_in_dp_reference": coverage(reference, secure_rows, seed=release_seed)
        if len(secure_rows)
        else None,
        "coverage_random_in_dp_reference": coverage(reference, random_rows, seed=release_seed),
    }


def dp_summary(cfg: DpSelection, rounds: Sequence[Mapping[str, Any]], n_clients: int) -> dict[str, Any]:
    """The benchmark's DP fields (medians over rounds, i.e. over independent releases)."""

    def med(key: str) -> float | None:
        values = [float(r[key]) for r in rounds if r[key] is not None]
        return median(values) if values else None

    return {
        "selection_epsilon": cfg.epsilon,
        "selection_delta": cfg.delta,
        "selection_dp": cfg.to_json(),
        "honest_contributors": honest_contributors(n_clients),
        "skellam_lambda_total": calibrated_lambda(cfg),
        "noise_std_per_coordinate": noise_std_per_coordinate(cfg, n_clients),
        "coverage_secure_dp": med("coverage_secure_dp"),
        "coverage_secure_in_dp_reference": med("coverage_secure_in_dp_reference"),
        "coverage_random_in_dp_reference": med("coverage_random_in_dp_reference"),
        "dp_selected_fraction": med("dp_selected_fraction"),
        "dp_selected_fraction_max": max(float(r["dp_selected_fraction"]) for r in rounds),
        "dp_per_round": list(rounds),
    }


def plot_svg(sweep: Sequence[Mapping[str, Any]], n_clients: int) -> str:
    """A standalone SVG: coverage of DP selection per selection epsilon, beside today's secure (non-DP)
    selection and random ones in the same reference space (lower is better)."""
    from secfed.audit.charts import Bars, bar_chart, standalone_svg

    ordered = sorted(sweep, key=lambda e: float(e["selection_epsilon"]))
    names = [f"eps {float(e['selection_epsilon']):g}" for e in ordered] + ["off (secure, no DP)", "random"]
    values = [float(e["coverage_secure_dp"] or 0.0) for e in ordered]
    values += [
        float(ordered[0]["coverage_secure_in_dp_reference"] or 0.0),
        float(ordered[0]["coverage_random_in_dp_reference"] or 0.0),
    ]
    chart = bar_chart(
        chart_id="coreset-dp",
        title=f"Coverage of the selection ({n_clients} institutions; lower is better)",
        desc="Median coverage over releases of DP selection per selection epsilon, today's secure selection "
        "without DP and a random selection of the same size, in one fixed reference space",
        categories=names,
        layers=[Bars("coverage (median over releases)", tuple(values), "#1f6fb2")],
        x_label="selection",
        y_label="coverage",
    )
    return standalone_svg(chart)
