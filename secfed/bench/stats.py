"""Small statistics helpers shared by the benchmarks (medians of repeated runs)."""

from __future__ import annotations

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


def emit(result: dict[str, Any], out: Path | None, as_json: bool) -> bool:
    """Write the result JSON to ``out`` (if given) and print it when ``as_json``; True if printed."""
    text = json.dumps(result, indent=2, sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        print(text)
    return as_json
