"""Who masks with whom.

The protocol takes the neighbourhood as an input rather than assuming everyone pairs with everyone,
so sparse SecAgg+ graphs (Bell et al. 2020, the path past ~100 clients per round) can be added as
another implementation without touching the state machines. Today only the complete graph exists;
with a sparse graph the thresholds would apply per neighbourhood, which the config checks would then
have to follow.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol


class Neighbourhood(Protocol):
    def neighbours(self, client_id: str, members: Collection[str]) -> frozenset[str]:
        """The peers of ``client_id`` among ``members`` (never itself)."""
        ...


class CompleteGraph:
    """Every client pairs with every other member (the original Bonawitz et al. protocol)."""

    def neighbours(self, client_id: str, members: Collection[str]) -> frozenset[str]:
        return frozenset(m for m in members if m != client_id)
