"""Synthetic clients for coreset tests: Gaussian blobs in a small feature space, shared across clients."""

from __future__ import annotations

import numpy as np

from secfed.coreset.config import CoresetConfig
from secfed.coreset.election import SeededSlots
from secfed.coreset.pipeline import ClientData

#: A small configuration that keeps every test fast: 24-D features, 8-D projection, 2-D shared space.
SMALL = CoresetConfig(k0=8, dims=2, bins=8, range_std=2.5, max_fraction=0.2)


def blob_clients(
    n_clients: int = 5,
    per_client: int = 40,
    *,
    dim: int = 24,
    n_blobs: int = 6,
    seed: int = 0,
    index_offset: int = 1000,
) -> list[ClientData]:
    """Clients drawing records from ``n_blobs`` shared blobs; record indices start at ``index_offset * c``.

    Indices are deliberately not ``0..n-1`` so a test notices rows being confused with record indices.
    """
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(n_blobs, dim)) * 3.0
    clients = []
    for c in range(n_clients):
        which = gen.integers(n_blobs, size=per_client)
        feats = centres[which] + gen.normal(size=(per_client, dim)) * 0.4
        idx = index_offset * (c + 1) + gen.permutation(per_client * 3)[:per_client]
        clients.append(ClientData(indices=idx.astype(np.int64), features=feats))
    return clients


def seeded(n: int, seed: int = 0) -> list[SeededSlots]:
    return [SeededSlots(seed * 1000 + c) for c in range(n)]
