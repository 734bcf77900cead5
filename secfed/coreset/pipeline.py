"""An in-memory run of secure coreset selection over a list of clients (tests and benchmarks).

It drives :class:`~secfed.coreset.client.CoresetClient` and :func:`~secfed.coreset.server.next_stage`
exactly as the federation does, except that each stage's "secure aggregation" is the plain sum of the
clients' vectors (:func:`~secfed.coreset.layout.sum_contributions`). Broadcasts go through a JSON
round trip, so anything that would not survive the wire fails here first. The transcript keeps every
client vector next to the sum the server received, for the white-box leakage test and for audits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.coreset import server
from secfed.coreset.client import ClientSelection, CoresetClient, LocalView
from secfed.coreset.config import CoresetConfig
from secfed.coreset.election import SlotSource
from secfed.coreset.layout import CohortSum, Contribution, Float, sum_contributions

__all__ = ["ClientData", "SecureRun", "StageRecord", "run_secure", "wire"]


@dataclass(frozen=True)
class ClientData:
    """One client's records for the round: ``features[i]`` describes record ``indices[i]``."""

    indices: NDArray[np.int64]
    features: Float


@dataclass(frozen=True)
class StageRecord:
    """One stage as it ran: the public broadcast, each client's vector, and the sum the server got."""

    name: str
    broadcast: dict[str, Any]
    contributions: tuple[Contribution, ...]
    total: CohortSum


@dataclass(frozen=True)
class SecureRun:
    """Result of :func:`run_secure`.

    ``selected[c]`` are client ``c``'s selected record indices; ``selections`` add the clusters they
    represent. ``views`` are the clients' private local views (simulation only: in a federation the
    server never has them), kept so benchmarks can measure coverage and suppression.
    """

    selected: list[NDArray[np.int64]]
    selections: list[ClientSelection]
    final: server.Selection
    transcript: list[StageRecord]
    views: list[LocalView]

    @property
    def n_selected(self) -> int:
        return sum(len(s) for s in self.selected)


def wire(broadcast: dict[str, Any]) -> dict[str, Any]:
    """The broadcast as a client receives it: through JSON and back (floats round-trip exactly)."""
    out: dict[str, Any] = json.loads(json.dumps(broadcast, allow_nan=False))
    return out


def run_secure(
    clients: Sequence[ClientData],
    config: CoresetConfig,
    round_seed: int,
    *,
    rngs: Sequence[SlotSource] | None = None,
) -> SecureRun:
    """Run every stage of one round for ``clients``; ``rngs[c]`` is client ``c``'s slot source.

    Without ``rngs`` each client uses a CSPRNG, as in a federation (the election is then random).
    """
    if rngs is not None and len(rngs) != len(clients):
        raise ValueError("give one slot source per client")
    actors = [
        CoresetClient(c.indices, c.features, rng=None if rngs is None else rngs[i])
        for i, c in enumerate(clients)
    ]
    done: list[CohortSum] = []
    transcript: list[StageRecord] = []
    plan = server.next_stage(config, round_seed, done)
    while isinstance(plan, server.StagePlan):
        broadcast = wire(plan.broadcast)
        contributions = tuple(a.contribute(broadcast) for a in actors)
        total = sum_contributions(plan.layout, contributions)
        transcript.append(StageRecord(plan.name, broadcast, contributions, total))
        done.append(total)
        plan = server.next_stage(config, round_seed, done)
    final_broadcast = wire(plan.broadcast)
    selections = [a.selection(final_broadcast) for a in actors]
    views = [a.local_view(final_broadcast) for a in actors]
    return SecureRun(
        selected=[s.records for s in selections],
        selections=selections,
        final=plan,
        transcript=transcript,
        views=views,
    )
