"""Read fields of an audit report without trusting their types.

The HTML page is a convenience view of the signed JSON, which is the authoritative record: the page must
render whatever JSON it is given. Reports quote data written by other parties and by older or newer
versions, so a field may be missing, of the wrong type or unknown. These accessors turn any such value into
a usable default (an empty mapping or list, ``None``) so that a section shows less instead of crashing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["as_int", "as_list", "as_map", "as_maps", "as_num", "as_text"]


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def as_maps(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list; other items are skipped."""
    return [item for item in as_list(value) if isinstance(item, Mapping)]


def as_num(value: Any) -> float | None:
    """A float, or None for anything that is not a number (bools are not numbers here; NaN is nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def as_int(value: Any) -> int | None:
    """An int for whole finite numbers (``3.0`` too), else None."""
    number = as_num(value)
    return int(number) if number is not None and math.isfinite(number) and number == int(number) else None


def as_text(value: Any) -> str | None:
    """Scalars as text; None and containers, which have no one-line rendering, as None."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    return str(value)
