"""Anonymous slot election: one representative per global cluster, owner unknown to the server.

For each open global cluster ``g`` the election vector has ``S = buckets * slots_per_bucket`` slots.
Every client with a local centroid in one of ``g``'s cells volunteers: it measures the distance
``d`` from ``g``'s centre to its *nearest record* (the record it would train on), maps it to a
distance bucket ``b = min(buckets - 1, floor(buckets * d / radius_g))`` (``radius_g`` is public),
and writes 1 into slot ``b * slots_per_bucket + u`` with ``u`` drawn uniformly by a CSPRNG. The
cohort sum of these one-hot vectors is all the server sees: how many volunteers chose each slot.

The server (:func:`secfed.coreset.server.resolve_election`) looks at the *lowest non-empty bucket*:
its lowest slot with count exactly 1 wins. So the nearest volunteers win, ties between equally
near volunteers are broken uniformly at random, and only the client that wrote into the winning
slot can know it won (a count of 1 means nobody else chose it). If every occupied slot of that
bucket collided, the cluster is retried in a fresh election stage with fresh randomness; in the
last allowed attempt any unique slot is accepted. A cluster with no volunteer at all (its
centroid holders dropped out) stays without a representative.

Randomness must be unpredictable to the server, or it could link slots to clients: the default
source is :class:`secrets.SystemRandom`. Tests and benchmarks inject :class:`SeededSlots`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from secfed.coreset.layout import Contribution, Float, Layout, SegmentInfo

__all__ = [
    "Ballot",
    "SeededSlots",
    "SlotSource",
    "Winner",
    "default_slot_source",
    "distance_bucket",
    "election_layout",
    "election_stage",
    "vote",
]


class SlotSource(Protocol):
    """Where a client's slot randomness comes from (``secrets.SystemRandom`` fits)."""

    def randrange(self, stop: int, /) -> int: ...


def default_slot_source() -> SlotSource:
    """A CSPRNG: the server must not be able to predict which slot a client picks."""
    return secrets.SystemRandom()


class SeededSlots:
    """A *predictable* slot source for tests and benchmarks only (never in a real federation)."""

    def __init__(self, seed: int) -> None:
        self._gen = np.random.default_rng(seed)

    def randrange(self, stop: int, /) -> int:
        return int(self._gen.integers(stop))


def election_stage(attempt: int) -> str:
    """The stage name of election attempt ``attempt`` (0-based)."""
    return f"coreset-election-{attempt}"


@dataclass(frozen=True)
class Ballot:
    """One election stage (public): which clusters are still open, in vector order."""

    attempt: int
    clusters: tuple[int, ...]
    buckets: int
    slots_per_bucket: int

    @property
    def slots(self) -> int:
        return self.buckets * self.slots_per_bucket

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "clusters": list(self.clusters),
            "buckets": self.buckets,
            "slots_per_bucket": self.slots_per_bucket,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ballot:
        return cls(
            attempt=int(data["attempt"]),
            clusters=tuple(int(c) for c in data["clusters"]),
            buckets=int(data["buckets"]),
            slots_per_bucket=int(data["slots_per_bucket"]),
        )


@dataclass(frozen=True)
class Winner:
    """The public outcome for one cluster: the winning slot of election ``attempt``."""

    cluster: int
    attempt: int
    slot: int


def election_layout(ballot: Ballot) -> Layout:
    """``slots``: ``len(ballot.clusters) * ballot.slots`` entries, cluster-major, each 0 or 1 per client."""
    return Layout(
        election_stage(ballot.attempt),
        (SegmentInfo("slots", max(len(ballot.clusters), 1) * ballot.slots, 1.0, True),),
    )


def distance_bucket(distance: float, radius: float, buckets: int) -> int:
    """Bucket ``0..buckets-1`` of a volunteer's distance (linear in ``distance / radius``, clamped)."""
    if radius <= 0:
        return 0
    return int(min(buckets - 1, np.floor(buckets * max(distance, 0.0) / radius)))


def vote(
    ballot: Ballot,
    eligible: NDArray[np.bool_],
    distances: Float,
    radii: Float,
    rng: SlotSource,
) -> tuple[Contribution, dict[int, int]]:
    """A client's election vector and the slot it chose per cluster it volunteered for.

    ``eligible``, ``distances`` and ``radii`` are indexed by position in ``ballot.clusters``. The
    returned choices (``cluster -> slot``) stay on the client: they are how it recognises a win.
    """
    n = len(ballot.clusters)
    if not (len(eligible) == len(distances) == len(radii) == n):
        raise ValueError("eligible, distances and radii must have one entry per ballot cluster")
    slots = np.zeros((max(n, 1), ballot.slots), dtype=np.float64)
    choices: dict[int, int] = {}
    for pos, cluster in enumerate(ballot.clusters):
        if not eligible[pos]:
            continue
        bucket = distance_bucket(float(distances[pos]), float(radii[pos]), ballot.buckets)
        slot = bucket * ballot.slots_per_bucket + rng.randrange(ballot.slots_per_bucket)
        slots[pos, slot] = 1.0
        choices[cluster] = slot
    return {"slots": slots.reshape(-1)}, choices
