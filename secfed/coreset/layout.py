"""Public vector layouts of the coreset stages, and the one kind of client data the server may hold.

Every client-to-server message of coreset selection is a set of named float64 segments that secure
aggregation *sums* over the cohort; the server only ever sees that sum, never a single client's
vector. :class:`Layout` is the public description of one stage's vector (segment names, lengths, a
public per-client bound for fixed-point clipping, and whether the values are integers), so the
federation can turn it into a SecAgg ``VectorSpec`` without knowing what the numbers mean.

:class:`CohortSum` is the decoded sum of one stage. Server-side functions in ``secfed.coreset``
accept client-derived data *only* as a ``CohortSum`` (the white-box leakage test checks every call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from secfed.secagg.spec import Segment, VectorSpec

__all__ = ["CohortSum", "Contribution", "Float", "Layout", "SegmentInfo", "sum_contributions"]

Float = NDArray[np.float64]
#: One client's vector for one stage: one float64 array per segment of the stage's layout.
Contribution = dict[str, Float]


@dataclass(frozen=True)
class SegmentInfo:
    """One named segment of a stage vector.

    ``bound`` is a public bound on ``|value|`` of every coordinate of *one client's* vector (the
    fixed-point clip of the SecAgg segment); it holds by construction, never by clipping data.
    ``integer`` segments (counts, flags, slots) are exact with zero fractional bits.
    """

    name: str
    length: int
    bound: float
    integer: bool

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"segment {self.name!r}: length must be positive, got {self.length}")
        if not (np.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"segment {self.name!r}: bound must be finite and > 0, got {self.bound}")


@dataclass(frozen=True)
class Layout:
    """The public layout of one stage's vector (the same for every client of the cohort)."""

    stage: str
    segments: tuple[SegmentInfo, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.segments]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"layout {self.stage!r}: segment names must be non-empty and unique: {names}")

    @property
    def total_length(self) -> int:
        return sum(s.length for s in self.segments)

    def zeros(self) -> Contribution:
        """The contribution of a client with nothing to report (it still takes part in the sum)."""
        return {s.name: np.zeros(s.length, dtype=np.float64) for s in self.segments}

    def check(self, values: Mapping[str, Float]) -> None:
        """Raise ``ValueError`` unless ``values`` has exactly this layout's segments and lengths."""
        if set(values) != {s.name for s in self.segments}:
            raise ValueError(f"stage {self.stage!r}: segments {sorted(values)} != layout {self.names}")
        for s in self.segments:
            arr = values[s.name]
            if arr.shape != (s.length,):
                raise ValueError(
                    f"stage {self.stage!r}: segment {s.name!r} has shape {arr.shape}, expected ({s.length},)"
                )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def vector_spec(self, *, frac_bits: int = 24, ring_bits: Literal[32, 64] = 64) -> VectorSpec:
        """The SecAgg spec of this stage: clip = the public bound; integers exact, reals ``frac_bits``.

        A 64-bit ring is the default: with the default caps, real segments need ``bound * 2**frac_bits``
        well beyond 2**31 for useful precision (coordinates are O(0.1); 2**-24 is far below that).
        """
        return VectorSpec(
            tuple(Segment(s.name, s.length, s.bound, 0 if s.integer else frac_bits) for s in self.segments),
            ring_bits=ring_bits,
        )


@dataclass(frozen=True)
class CohortSum:
    """The decoded secure-aggregation sum of one stage: ``values[name] = Σ_clients vector[name]``.

    ``n_contributors`` is the number of clients whose vectors are in the sum (SecAgg reports it).
    This is the *only* form in which client-derived data reaches server-side coreset code.
    """

    stage: str
    values: Mapping[str, Float]
    n_contributors: int = field(default=0)

    def get(self, name: str) -> Float:
        return np.asarray(self.values[name], dtype=np.float64)


def sum_contributions(layout: Layout, contributions: Sequence[Mapping[str, Float]]) -> CohortSum:
    """In-memory stand-in for secure aggregation: the plain sum of the clients' vectors.

    Used by the in-memory pipeline and tests; the federation replaces it by a SecAgg session whose
    decoded ``AggregateResult.values`` is (up to fixed-point rounding of non-integer segments) the same.
    """
    for c in contributions:
        layout.check(c)
    total = layout.zeros()
    for c in contributions:
        for name in total:
            total[name] = total[name] + c[name]
    return CohortSum(stage=layout.stage, values=total, n_contributors=len(contributions))
