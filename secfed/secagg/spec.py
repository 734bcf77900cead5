"""Vector specifications: what one secure-aggregation session sums.

A spec is an ordered list of named segments. Each segment has its own clip bound and fixed-point scale,
because one upload mixes very different quantities: weighted LoRA deltas (real numbers, clipped to
``W * c``), their weights (small integers), coreset histogram counts and election slots (integers).
The spec hash binds every message of a session to this exact layout, so a client and the server can
never disagree silently about which coordinate means what.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

RingBits = Literal[32, 64]
_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


@dataclass(frozen=True)
class Segment:
    """One named slice of the aggregated vector.

    ``clip`` bounds the absolute value of each coordinate *as uploaded* (already multiplied by any
    FedAvg weight), and ``frac_bits`` is the fixed-point scale ``f`` (values are multiplied by ``2**f``
    and rounded). Integer data (counts, slots) uses ``frac_bits=0``.
    """

    name: str
    length: int
    clip: float = 1.0
    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"segment name {self.name!r} must match {_NAME.pattern}")
        if not isinstance(self.length, int) or self.length <= 0:
            raise ValueError(f"segment {self.name!r}: length must be a positive int, got {self.length!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"segment {self.name!r}: clip must be finite and > 0, got {self.clip!r}")
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 52:
            raise ValueError(f"segment {self.name!r}: frac_bits must be an int in [0, 52]")


@dataclass(frozen=True)
class VectorSpec:
    """Ordered segments, the ring they are summed in, and derived offsets."""

    segments: tuple[Segment, ...]
    ring_bits: RingBits = 32

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a vector spec needs at least one segment")
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate segment names in spec: {names}")
        if self.ring_bits not in (32, 64):
            raise ValueError(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        for seg in self.segments:
            if seg.clip * 2.0**seg.frac_bits >= 2.0 ** (self.ring_bits - 1):
                raise ValueError(
                    f"segment {seg.name!r}: clip * 2^frac_bits does not fit a signed {self.ring_bits}-bit ring"
                )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.ring_bits == 32 else np.uint64

    @property
    def total_length(self) -> int:
        return sum(s.length for s in self.segments)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``{name: (start, stop)}`` of each segment in the flat vector."""
        out: dict[str, tuple[int, int]] = {}
        start = 0
        for seg in self.segments:
            out[seg.name] = (start, start + seg.length)
            start += seg.length
        return out

    def segment(self, name: str) -> Segment:
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def canonical(self) -> dict[str, object]:
        return {
            "version": 1,
            "ring_bits": self.ring_bits,
            "segments": [
                {"name": s.name, "length": s.length, "clip": float(s.clip).hex(), "frac_bits": s.frac_bits}
                for s in self.segments
            ],
        }

    def spec_hash(self) -> bytes:
        """SHA-256 of the canonical JSON form (floats as exact hex, so no rounding ambiguity)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).digest()

    def check_overflow(self, n_contributors: int) -> None:
        """Refuse a session whose worst-case sum could wrap around the ring.

        The condition is ``n * clip * 2^f < 2^(bits-1)`` per segment, where ``clip`` already includes
        the largest FedAvg weight ``W`` (so this is the design's ``n * W * c * 2^f`` bound). Rounding adds
        at most one unit per contributor, which the strict inequality leaves room for only when it
        holds with margin, so the bound used is ``n * (clip * 2^f + 1)``.
        """
        limit = 2 ** (self.ring_bits - 1)
        for seg in self.segments:
            worst = n_contributors * (math.ceil(seg.clip * 2**seg.frac_bits) + 1)
            if worst >= limit:
                raise ValueError(
                    f"segment {seg.name!r}: {n_contributors} contributors x clip {seg.clip} x 2^{seg.frac_bits} "
                    f"can overflow the {self.ring_bits}-bit ring; lower clip or frac_bits, or use ring_bits=64"
                )
