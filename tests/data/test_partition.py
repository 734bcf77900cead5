"""Partitions: every record lands in exactly one client, deterministically, with the promised skew."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.data.formats import Record
from secfed.data.partition import category_shards, dirichlet, hold_out_category, iid

CATS = ("a", "b", "c", "d", "e")


@st.composite
def record_lists(draw: st.DrawFn, min_size: int = 1) -> list[Record]:
    """Records over a few categories; equal (duplicate) records are allowed, as in real data."""
    n = draw(st.integers(min_size, 120))
    cats = draw(st.lists(st.sampled_from(CATS), min_size=n, max_size=n))
    texts = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    return [Record(f"q{t}", "", f"a{t}", c) for c, t in zip(cats, texts, strict=True)]


def assert_partition(records: list[Record], parts: list[list[Record]], n_clients: int) -> None:
    assert len(parts) == n_clients
    flat = [r for part in parts for r in part]
    assert Counter(flat) == Counter(records)  # same multiset
    assert Counter(map(id, flat)) == Counter(map(id, records))  # each input object exactly once


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(records=record_lists(), n_clients=st.integers(1, 12), seed=seeds)
def test_iid_is_a_balanced_deterministic_partition(records, n_clients, seed) -> None:
    if len(records) < n_clients:
        with pytest.raises(ValueError, match="at least one record"):
            iid(records, n_clients, seed)
        return
    parts = iid(records, n_clients, seed)
    assert_partition(records, parts, n_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert parts == iid(records, n_clients, seed)


@settings(max_examples=60, deadline=None)
@given(records=record_lists(), n_clients=st.integers(1, 8), spc=st.integers(1, 3), seed=seeds)
def test_category_shards_deals_exactly_shards_per_client(records, n_clients, spc, seed) -> None:
    n_shards = n_clients * spc
    if len(records) < n_shards:
        with pytest.raises(ValueError, match="non-empty shards"):
            category_shards(records, n_clients, spc, seed)
        return
    parts = category_shards(records, n_clients, spc, seed)
    assert_partition(records, parts, n_clients)
    low, high = len(records) // n_shards, -(-len(records) // n_shards)
    for part in parts:  # exactly `spc` shards, each of size floor or ceil(n / n_shards)
        assert spc * low <= len(part) <= spc * high
    assert parts == category_shards(records, n_clients, spc, seed)


@settings(max_examples=30, deadline=None)
@given(n_clients=st.integers(1, 6), spc=st.integers(1, 3), shard=st.integers(1, 5), seed=seeds)
def test_category_shards_skew_when_categories_fill_shards(n_clients, spc, shard, seed) -> None:
    """With one shard's worth of records per category, each client holds exactly `spc` whole categories."""
    n_shards = n_clients * spc
    records = [Record(f"q{k}-{i}", "", "r", f"cat{k:02d}") for k in range(n_shards) for i in range(shard)]
    parts = category_shards(records, n_clients, spc, seed)
    assert_partition(records, parts, n_clients)
    for part in parts:
        counts = Counter(r.category for r in part)
        assert len(counts) == spc
        assert set(counts.values()) == {shard}


def test_category_shards_differs_across_seeds() -> None:
    records = [Record(f"q{i}", "", "r", CATS[i % 5]) for i in range(100)]
    assert category_shards(records, 5, 2, seed=0) != category_shards(records, 5, 2, seed=1)


@settings(max_examples=60, deadline=None)
@given(
    records=record_lists(min_size=10),
    n_clients=st.integers(1, 5),
    alpha=st.sampled_from([0.3, 1.0, 10.0, 1000.0]),
    min_per_client=st.integers(0, 2),
    seed=seeds,
)
def test_dirichlet_partition_respects_min_per_client(records, n_clients, alpha, min_per_client, seed) -> None:
    try:
        parts = dirichlet(records, n_clients, alpha, seed, min_per_client=min_per_client)
    except ValueError as err:  # only allowed when the request is (practically) impossible
        assert "min_per_client" in str(err) or "at least" in str(err)
        return
    assert_partition(records, parts, n_clients)
    assert all(len(p) >= min_per_client for p in parts)
    assert parts == dirichlet(records, n_clients, alpha, seed, min_per_client=min_per_client)


def test_dirichlet_skew_follows_alpha() -> None:
    records = [Record(f"q{i}", "", "r", CATS[i % 5]) for i in range(2000)]

    def mean_categories_per_client(alpha: float) -> float:
        parts = dirichlet(records, 10, alpha, seed=3)
        return sum(len({r.category for r in p}) for p in parts) / len(parts)

    assert mean_categories_per_client(0.05) < 3 < mean_categories_per_client(100.0) == 5


def test_dirichlet_errors_are_clear() -> None:
    records = [Record(f"q{i}", "", "r", "only") for i in range(50)]
    with pytest.raises(ValueError, match="no draw in 1000"):
        dirichlet(records, 10, alpha=1e-3, seed=0, min_per_client=1)
    with pytest.raises(ValueError, match="at least 6 records each"):
        dirichlet(records, 10, alpha=1.0, seed=0, min_per_client=6)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(records, 2, alpha=0.0, seed=0)


def test_bad_client_counts() -> None:
    records = [Record("q", "", "r", "a")] * 4
    with pytest.raises(ValueError, match="n_clients"):
        iid(records, 0, 0)
    with pytest.raises(ValueError, match="n_clients"):
        category_shards(records, 0)
    with pytest.raises(ValueError, match="n_clients"):
        dirichlet(records, 0, 1.0, 0)
    with pytest.raises(ValueError, match="shards_per_client"):
        category_shards(records, 1, 0)


@given(records=record_lists(), category=st.sampled_from(CATS))
def test_hold_out_category(records, category) -> None:
    present = {r.category for r in records}
    if category not in present:
        with pytest.raises(ValueError, match=f"category '{category}' not in the records"):
            hold_out_category(records, category)
        return
    rest, held = hold_out_category(records, category)
    assert held and all(r.category == category for r in held)
    assert all(r.category != category for r in rest)
    assert Counter(rest + held) == Counter(records)
    assert rest == [r for r in records if r.category != category]
