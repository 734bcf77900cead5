"""Public settings of coreset selection (the same for the server and every client of a round)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["CoresetConfig", "LocalNoise", "Positions"]

#: What intra-client HDBSCAN noise points become: their own singleton clusters, or nothing.
LocalNoise = Literal["singleton", "drop"]
#: Where the server places a histogram cell: at the mean of the centroids in it (securely summed
#: coordinates) or at the geometric centre of the cell.
Positions = Literal["mean", "centre"]


@dataclass(frozen=True)
class CoresetConfig:
    """Every knob of secure FedHDS selection; all of it is public.

    Shared space: ``feature_blocks`` layer blocks per feature row (normalised separately, see
    :func:`secfed.coreset.space.feature_blocks`), a public Gaussian projection to ``k0``
    dimensions, then federated PCA to ``dims`` dimensions. Projected points are scaled into the ball
    of radius ``bound`` so that every summed statistic has a public per-client bound (SecAgg clips).
    ``max_records`` is the public cap on one client's records, used only for those bounds.

    Grid: ``bins`` interior bins per axis over ``± range_std`` standard deviations (from the summed
    PCA statistics), plus one overflow bin at each end of each axis so no centroid is ever lost.
    Cells with centroids of fewer than ``min_cohort`` institutions are suppressed.

    Clustering: HDBSCAN ``local_min_cluster_size`` on each client, ``global_min_cluster_size`` on the
    server over cell positions repeated by their centroid counts. At most ``max_fraction`` of the
    cohort's records are selected per round (the largest global clusters are kept).

    Election: each cluster has ``slot_buckets * slots_per_bucket`` slots; a volunteer writes 1 into a
    random slot of the bucket of its distance to the cluster centre; at most ``max_election_attempts``
    election stages per round resolve collisions.

    Defaults were measured on 800 Dolly records (10 clients x 80, SmolLM2 last-token features of 7
    layers). Production raises ``min_cohort`` to ``c + 2`` (5 at n = 10 with a third colluding), and
    that floor decides the grid: over 5 rounds, 6 bins give coverage 0.81 selecting 2.3 % of
    records, 8 bins 0.85 and 12 bins 0.98 (no better than random: most cells are suppressed), so
    ``bins=6`` is the non-DP default (results in ``benchmarks/results/coreset-floor5-bins*.json``).
    Local noise as singletons and cells placed at their centroid means each gained about 0.04
    coverage over the alternatives; 16 slots per bucket need 1.6 election stages on average, 8 need 2.
    """

    feature_blocks: int = 1
    k0: int = 64
    dims: int = 2
    bound: float = 2.0
    max_records: int = 100_000
    bins: int = 6
    range_std: float = 2.5
    min_cohort: int = 2
    local_min_cluster_size: int = 2
    global_min_cluster_size: int = 2
    local_noise: LocalNoise = "singleton"
    positions: Positions = "mean"
    max_fraction: float = 0.05
    slot_buckets: int = 4
    slots_per_bucket: int = 16
    max_election_attempts: int = 8

    def __post_init__(self) -> None:
        positive = ("feature_blocks", "k0", "dims", "max_records", "bins", "slot_buckets", "slots_per_bucket")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CoresetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dims > self.k0:
            raise ValueError(f"dims ({self.dims}) cannot exceed k0 ({self.k0})")
        if not self.bound > 0 or not self.range_std > 0:
            raise ValueError("bound and range_std must be > 0")
        if self.min_cohort < 1:
            raise ValueError(f"min_cohort must be >= 1, got {self.min_cohort}")
        if self.local_min_cluster_size < 2 or self.global_min_cluster_size < 2:
            raise ValueError("HDBSCAN min_cluster_size must be >= 2")
        if self.local_noise not in ("singleton", "drop"):
            raise ValueError(f"local_noise must be 'singleton' or 'drop', got {self.local_noise!r}")
        if self.positions not in ("mean", "centre"):
            raise ValueError(f"positions must be 'mean' or 'centre', got {self.positions!r}")
        if not 0 < self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction}")
        if self.max_election_attempts < 1:
            raise ValueError("max_election_attempts must be >= 1")

    @property
    def slots(self) -> int:
        """Slots per global cluster in an election vector."""
        return self.slot_buckets * self.slots_per_bucket

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CoresetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown coreset settings: {sorted(unknown)}")
        return cls(**data)
