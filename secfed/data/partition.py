"""Splitting one dataset across simulated institutions, IID or with realistic label skew.

Federated experiments need the same split on every run and on every machine, so each function is a
pure function of its inputs and ``seed`` (numpy's PCG64 generator, stable across platforms). Each
works on record *indices* and checks before returning that every index lands in exactly one client:
a partition that silently dropped or duplicated records would bias every result built on it.
Clients must not end up empty (an institution with no data cannot train), so the functions refuse
inputs too small for that rather than return empty parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secfed.data.formats import Record

__all__ = ["category_shards", "dirichlet", "hold_out_category", "iid"]

#: How often :func:`dirichlet` redraws before giving up on ``min_per_client``.
DIRICHLET_MAX_TRIES = 1000


def _check_partition(n_records: int, parts: list[list[int]]) -> None:
    """Raise unless ``parts`` holds each of ``range(n_records)`` exactly once (an internal invariant)."""
    flat = sorted(i for part in parts for i in part)
    if flat != list(range(n_records)):
        raise AssertionError("partition lost or duplicated records; this is a bug in secfed.data.partition")


def _materialise(records: Sequence[Record], parts: list[list[int]]) -> list[list[Record]]:
    _check_partition(len(records), parts)
    return [[records[i] for i in part] for part in parts]


def _check_clients(n_clients: int) -> None:
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")


def iid(records: Sequence[Record], n_clients: int, seed: int) -> list[list[Record]]:
    """Shuffle and deal into ``n_clients`` parts whose sizes differ by at most one."""
    _check_clients(n_clients)
    if len(records) < n_clients:
        raise ValueError(
            f"cannot give {n_clients} clients at least one record each from {len(records)} records"
        )
    order = np.random.default_rng(seed).permutation(len(records))
    parts = [[int(i) for i in chunk] for chunk in np.array_split(order, n_clients)]
    return _materialise(records, parts)


def category_shards(
    records: Sequence[Record], n_clients: int, shards_per_client: int = 2, seed: int = 0
) -> list[list[Record]]:
    """Label-skewed split as the FedIT reference makes it from Dolly.

    Records are sorted by category (shuffled first, so a shard is a random sample of its categories),
    cut into ``n_clients * shards_per_client`` contiguous shards of near-equal size, and the shards are
    dealt to clients at random: each client gets exactly ``shards_per_client`` shards, so it sees only
    a few categories (a shard can straddle a category boundary).
    """
    _check_clients(n_clients)
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    n_shards = n_clients * shards_per_client
    if len(records) < n_shards:
        raise ValueError(f"cannot cut {len(records)} records into {n_shards} non-empty shards")
    rng = np.random.default_rng(seed)
    shuffled = [int(i) for i in rng.permutation(len(records))]
    by_category = sorted(shuffled, key=lambda i: records[i].category)  # stable: keeps the shuffle within
    shards = np.array_split(np.asarray(by_category, dtype=np.int64), n_shards)
    deal = rng.permutation(n_shards)
    parts = [
        [int(i) for s in deal[c * shards_per_client : (c + 1) * shards_per_client] for i in shards[int(s)]]
        for c in range(n_clients)
    ]
    return _materialise(records, parts)


def dirichlet(
    records: Sequence[Record], n_clients: int, alpha: float, seed: int, min_per_client: int = 1
) -> list[list[Record]]:
    """Per category, split its records among clients in proportions drawn from ``Dir(alpha)``.

    Small ``alpha`` (0.1) gives each client few categories; large ``alpha`` (100) approaches IID. The
    whole draw is repeated until every client has at least ``min_per_client`` records, at most
    ``DIRICHLET_MAX_TRIES`` times; a clear error says when ``alpha`` is too small for that.
    """
    _check_clients(n_clients)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_per_client < 0:
        raise ValueError(f"min_per_client must be >= 0, got {min_per_client}")
    if n_clients * min_per_client > len(records):
        raise ValueError(
            f"cannot give {n_clients} clients at least {min_per_client} records each from {len(records)} records"
        )
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.category, []).append(i)
    categories = sorted(groups)
    rng = np.random.default_rng(seed)
    for _ in range(DIRICHLET_MAX_TRIES):
        counts = np.zeros((len(categories), n_clients), dtype=np.int64)
        for k, cat in enumerate(categories):
            size = len(groups[cat])
            proportions = rng.dirichlet(np.full(n_clients, alpha, dtype=np.float64))
            # Cut points from the cumulative proportions: the counts always sum exactly to `size`.
            cuts = np.floor(np.cumsum(proportions)[:-1] * size).astype(np.int64)
            cuts = np.clip(cuts, 0, size)
            counts[k] = np.diff(np.concatenate(([0], cuts, [size])))
        if int(counts.sum(axis=0).min()) >= min_per_client:
            break
    else:
        raise ValueError(
            f"dirichlet partition: no draw in {DIRICHLET_MAX_TRIES} gave each of {n_clients} clients "
            f">= {min_per_client} records (alpha={alpha}, {len(records)} records in {len(categories)} "
            "categories); raise alpha, lower min_per_client or use fewer clients"
        )
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for k, cat in enumerate(categories):
        members = [groups[cat][int(j)] for j in rng.permutation(len(groups[cat]))]
        start = 0
        for c in range(n_clients):
            n = int(counts[k, c])
            parts[c].extend(members[start : start + n])
            start += n
    return _materialise(records, parts)


def hold_out_category(records: Sequence[Record], category: str) -> tuple[list[Record], list[Record]]:
    """Split off one category, e.g. to test generalisation to a task no client trained on."""
    held = [r for r in records if r.category == category]
    if not held:
        present = sorted({r.category for r in records})
        raise ValueError(f"category {category!r} not in the records; present: {present}")
    rest = [r for r in records if r.category != category]
    return rest, held
