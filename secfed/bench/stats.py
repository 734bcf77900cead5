"""Small statistics helpers shared by the benchmarks (medians of repeated runs)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_of_dicts(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise median over repeated runs that report the same keys."""
    return {key: median([r[key] for r in runs]) for key in runs[0]} if runs else {}
