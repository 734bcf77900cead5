"""Anonymous slot election: one owner per cluster, collisions retried, nearest bucket first."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secfed.coreset.client import CoresetClient
from secfed.coreset.election import Ballot, SeededSlots, distance_bucket, election_layout, vote
from secfed.coreset.layout import CohortSum, sum_contributions
from secfed.coreset.pipeline import wire
from secfed.coreset.server import Selection, next_stage, resolve_election
from tests.coreset.support import SMALL, blob_clients

BALLOT = Ballot(attempt=0, clusters=(10, 11, 12, 13, 14), buckets=2, slots_per_bucket=3)


def _sum(rows: list[list[int]]) -> CohortSum:
    return CohortSum("coreset-election-0", {"slots": np.asarray(rows, dtype=np.float64).reshape(-1)}, 4)


def test_resolution_rules():
    rows = [
        [0, 1, 1, 0, 0, 0],  # cluster 10: lowest unique slot of the nearest bucket
        [2, 0, 0, 1, 0, 0],  # 11: nearest bucket all collided, a farther unique exists -> retry
        [0, 0, 0, 0, 0, 0],  # 12: nobody volunteered
        [0, 0, 0, 3, 1, 0],  # 13: nearest occupied bucket is bucket 1; its unique slot wins
        [2, 0, 0, 2, 0, 0],  # 14: collisions only -> retry
    ]
    out = resolve_election(_sum(rows), BALLOT, last_attempt=False)
    assert [(w.cluster, w.slot) for w in out.winners] == [(10, 1), (13, 4)]
    assert out.retry == (11, 14)
    assert out.unclaimed == (12,)
    last = resolve_election(_sum(rows), BALLOT, last_attempt=True)
    assert [(w.cluster, w.slot) for w in last.winners] == [(10, 1), (11, 3), (13, 4)]  # farther beats none
    assert last.retry == () and last.unclaimed == (12, 14)


def test_vote_writes_one_slot_in_the_distance_bucket():
    radii = np.ones(5)
    dist = np.array([0.1, 0.6, 5.0, 0.49, 0.0])
    eligible = np.array([True, True, True, False, True])
    vec, choices = vote(BALLOT, eligible, dist, radii, SeededSlots(0))
    slots = vec["slots"].reshape(5, 6)
    assert slots.sum(axis=1).tolist() == [1, 1, 1, 0, 1]
    assert set(choices) == {10, 11, 12, 14}
    for pos, cluster in enumerate(BALLOT.clusters):
        if cluster in choices:
            assert slots[pos, choices[cluster]] == 1
            assert choices[cluster] // 3 == distance_bucket(dist[pos], 1.0, 2)
    assert distance_bucket(0.49, 1.0, 2) == 0 and distance_bucket(0.5, 1.0, 2) == 1
    assert distance_bucket(99.0, 1.0, 2) == 1
    assert election_layout(BALLOT).total_length == 30


class Switchable:
    """Slot source that returns slot 0 (forcing collisions between identical clients) while ``collide``."""

    def __init__(self, seed: int) -> None:
        self.collide = False
        self._seeded = SeededSlots(seed)

    def randrange(self, stop: int, /) -> int:
        return 0 if self.collide else self._seeded.randrange(stop)


def _run(clients, rngs, config, collide_until: int):
    """Drive the stages by hand (as the federation does), colliding in election attempts < collide_until."""
    actors = [CoresetClient(c.indices, c.features, rng=r) for c, r in zip(clients, rngs, strict=True)]
    done: list[CohortSum] = []
    plan = next_stage(config, 5, done)
    stages = []
    while not isinstance(plan, Selection):
        stages.append(plan.name)
        attempt = plan.broadcast.get("ballot", {}).get("attempt", -1)
        for r in rngs:
            r.collide = 0 <= attempt < collide_until
        done.append(sum_contributions(plan.layout, [a.contribute(wire(plan.broadcast)) for a in actors]))
        plan = next_stage(config, 5, done)
    return plan, [a.selection(wire(plan.broadcast)) for a in actors], stages


def test_collisions_are_detected_and_retried_until_every_cluster_has_exactly_one_owner():
    base = blob_clients(1, 40, seed=2)[0]
    clients = [base, base, base]  # identical data: identical distances, so forced slots really collide
    rngs = [Switchable(s) for s in range(3)]
    plan, selections, stages = _run(clients, rngs, SMALL, collide_until=1)
    n_clusters = plan.summary["n_clusters"]
    assert n_clusters >= 2
    assert "coreset-election-1" in stages  # attempt 0 collided everywhere
    assert plan.summary["unclaimed"] == [] and plan.summary["n_winners"] == n_clusters
    owners = [c for s in selections for c in s.clusters]
    assert sorted(owners) == list(range(n_clusters))  # exactly one owner per global cluster
    first = next(i for i, s in enumerate(stages) if s == "coreset-election-1")
    assert first == 4  # pca, occupancy, histogram, election-0, then the retry


def test_an_election_that_never_resolves_stops_at_the_attempt_limit():
    base = blob_clients(1, 40, seed=2)[0]
    config = replace(SMALL, max_election_attempts=3)
    rngs = [Switchable(s) for s in range(3)]
    plan, selections, stages = _run([base, base, base], rngs, config, collide_until=99)
    assert stages[-1] == "coreset-election-2" and plan.summary["election_attempts"] == 3
    assert plan.summary["n_winners"] == 0
    assert len(plan.summary["unclaimed"]) == plan.summary["n_clusters"] > 0
    assert all(len(s.records) == 0 for s in selections)


def test_a_client_that_did_not_write_the_winning_slot_never_claims_the_cluster():
    clients = blob_clients(4, 30, seed=3)
    rngs = [Switchable(s) for s in range(4)]
    plan, selections, _ = _run(clients, rngs, SMALL, collide_until=0)
    winners = {c: (a, s) for c, a, s in plan.broadcast["winners"]}
    claimed = [c for s in selections for c in s.clusters]
    assert sorted(claimed) == sorted(winners)
    with pytest.raises(ValueError, match="coreset-selection"):
        CoresetClient(clients[0].indices, clients[0].features).selection({"stage": "coreset-pca"})
