"""Small statistics helpers shared by the benchmarks (medians of repeated runs)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_of_dicts(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise median over repeated runs that report the same keys."""
    return {key: median([r[key] for r in runs]) for key in runs[0]} if runs else {}


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--out``, the output flags every ``secfed bench`` command reads through ``emit``."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")


def emit(result: dict[str, Any], out: Path | None, as_json: bool) -> bool:
    """Write the result JSON to ``out`` (if given) and print it when ``as_json``; True if printed."""
    text = json.dumps(result, indent=2, sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        print(text)
    return as_json


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``a - b`` over paired items, with a 95 % percentile-bootstrap interval.

    Two methods scored on the same 80 test records differ by record difficulty as much as by method;
    resampling the *pairs* keeps that shared difficulty out of the interval, so "A beats B by 0.5"
    can be told apart from noise. Percentile bootstrap (Efron & Tibshirani 1993, ch. 13), seeded so a
    result file is reproducible. The RNG is numpy's: this is statistics, not a secret.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("no paired scores to compare")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    import numpy as np

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "delta": float(diff.mean()),
        "ci95": [float(lo), float(hi)],
        "n": len(diff),
        "resamples": resamples,
    }
