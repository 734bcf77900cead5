"""Fixed-point encoding of real vectors into the aggregation ring, and back.

Values are clipped to each segment's bound, scaled by ``2**frac_bits`` and rounded *stochastically*
(up with probability equal to the fractional part), so the encoding is unbiased: the expected decoded
sum equals the true sum, which matters when thousands of tiny LoRA deltas are averaged. Negative
numbers use two's complement in the ring, so modular addition of encodings is addition of values as
long as the session's overflow check holds.

Rounding randomness comes from the AES-CTR generator with a fresh OS seed, not from numpy: it is not
a secret mask, but it must not be predictable either (it would leak low-order bits of the input).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from secfed.crypto.prg import mask_vector
from secfed.secagg.spec import VectorSpec

_ROUNDING_SALT = b"secfed/stochastic-rounding/v1"
#: Coordinates encoded at a time (each chunk draws its rounding bits from a fresh OS seed).
ENCODE_CHUNK = 1 << 20


@dataclass(frozen=True)
class EncodeReport:
    """What the encoder did to the input: how much of it had to be clipped."""

    clipped: dict[str, int]
    total: dict[str, int]

    @property
    def clipped_fraction(self) -> float:
        total = sum(self.total.values())
        return sum(self.clipped.values()) / total if total else 0.0

    def segment_fraction(self, name: str) -> float:
        return self.clipped[name] / self.total[name]


def _round_up_mask(fraction: NDArray[np.float64]) -> NDArray[np.bool_]:
    """True where a value in [0, 1) rounds up: with probability equal to the value (32 random bits each)."""
    words = mask_vector(os.urandom(32), salt=_ROUNDING_SALT, label=b"round", length=fraction.size, bits=32)
    fraction *= 2.0**32
    return words < fraction


def encode(
    values: Mapping[str, ArrayLike], spec: VectorSpec
) -> tuple[NDArray[np.unsignedinteger], EncodeReport]:
    """Encode ``{segment: values}`` into one flat ring vector laid out as ``spec`` says.

    Raises ``ValueError`` naming the segment for a missing or unknown segment, a wrong shape, or a
    non-finite value (NaN would otherwise turn into an arbitrary ring element).
    """
    names = {s.name for s in spec.segments}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown segment(s) {unknown}; the spec has {sorted(names)}")
    out = np.empty(spec.total_length, dtype=spec.dtype)
    signed = np.int32 if spec.ring_bits == 32 else np.int64
    clipped: dict[str, int] = {}
    total: dict[str, int] = {}
    for seg, (start, _stop) in zip(spec.segments, spec.offsets().values(), strict=True):
        if seg.name not in values:
            raise ValueError(f"segment {seg.name!r} is missing from the input")
        x = np.asarray(values[seg.name], dtype=np.float64)
        if x.shape != (seg.length,):
            raise ValueError(f"segment {seg.name!r}: expected shape ({seg.length},), got {x.shape}")
        clipped[seg.name] = 0
        total[seg.name] = seg.length
        # In chunks: the temporaries (clipped, scaled, floors, rounding words) stay O(chunk) instead of
        # several times the vector, which at adapter scale (10^8 coordinates) is gigabytes.
        for a in range(0, seg.length, ENCODE_CHUNK):
            part = x[a : a + ENCODE_CHUNK]
            if not np.all(np.isfinite(part)):
                raise ValueError(f"segment {seg.name!r}: input has NaN or infinite values")
            clipped[seg.name] += int(np.count_nonzero(np.abs(part) > seg.clip))
            scaled = np.clip(part, -seg.clip, seg.clip)
            scaled *= 2.0**seg.frac_bits
            rounded = np.floor(scaled)
            np.subtract(scaled, rounded, out=scaled)  # scaled now holds the fractional parts
            rounded += _round_up_mask(scaled)
            out[start + a : start + a + len(part)] = rounded.astype(signed).view(spec.dtype)
    return out, EncodeReport(clipped=clipped, total=total)


def to_signed(ring: NDArray[np.unsignedinteger], ring_bits: int) -> NDArray[np.signedinteger]:
    """Reinterpret ring elements as two's-complement signed integers (no copy)."""
    return ring.view(np.int32 if ring_bits == 32 else np.int64)


def decode(ring_sum: NDArray[np.unsignedinteger], spec: VectorSpec) -> dict[str, NDArray[np.float64]]:
    """Decode a flat ring vector (typically a sum) into ``{segment: float64 values}``."""
    if ring_sum.shape != (spec.total_length,) or ring_sum.dtype != spec.dtype:
        raise ValueError(
            f"ring vector must be shape ({spec.total_length},) {np.dtype(spec.dtype).name}, "
            f"got {ring_sum.shape} {ring_sum.dtype}"
        )
    signed = to_signed(ring_sum, spec.ring_bits)
    return {
        seg.name: signed[start:stop].astype(np.float64) * (2.0**-seg.frac_bits)
        for seg, (start, stop) in zip(spec.segments, spec.offsets().values(), strict=True)
    }
