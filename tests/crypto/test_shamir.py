"""Tests for Shamir secret sharing."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.crypto.shamir import PRIME, SHARE_BYTES, ShamirError, Share, reconstruct, split


def _lagrange_eval(points: Sequence[tuple[int, int]], x: int) -> int:
    """Evaluate the unique degree < len(points) polynomial through ``points`` at ``x`` (test-local)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if j != i:
                term = term * (x - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


def test_constants() -> None:
    assert PRIME == 2**521 - 1
    assert PRIME > 2**256
    assert SHARE_BYTES == 66
    assert (PRIME - 1).to_bytes(SHARE_BYTES, "big")  # the largest value fits


@pytest.mark.parametrize("n", range(1, 8))
def test_exhaustive_subsets(n: int) -> None:
    for t in range(1, n + 1):
        secret = secrets.token_bytes(32)
        positions = list(range(n))
        shares = split(secret, t, positions)
        assert sorted(shares) == positions
        assert all(shares[p].x == p + 1 for p in positions)
        for size in range(1, n + 1):
            for subset in itertools.combinations(positions, size):
                picked = [shares[p] for p in subset]
                if size >= t:
                    assert reconstruct(picked, t) == secret
                    assert reconstruct(picked[::-1], t) == secret
                else:
                    with pytest.raises(ShamirError):
                        reconstruct(picked, t)
                    # Pretending the threshold is lower interpolates the wrong polynomial.
                    try:
                        wrong = reconstruct(picked, size)
                    except ShamirError:
                        continue
                    assert wrong != secret


@pytest.mark.parametrize("t", range(2, 7))
def test_fewer_than_threshold_shares_are_consistent_with_any_secret(t: int) -> None:
    """Information-theoretic hiding: t-1 shares fit every candidate secret equally well.

    For any candidate c there is exactly one polynomial of degree <= t-1 through
    (0, c) and the t-1 observed points, so the observed shares carry no
    information about which candidate was shared.
    """
    secret = secrets.token_bytes(32)
    shares = split(secret, t, list(range(t + 3)))
    seen = [shares[p] for p in range(1, t)]  # t-1 shares (x = 2..t)
    fresh_x = t + 3  # an x not among the observed ones
    candidates = [bytes(32), b"\xff" * 32, secrets.token_bytes(32), secret]
    for candidate in candidates:
        points = [(0, int.from_bytes(candidate, "big"))] + [(s.x, s.value) for s in seen]
        # The interpolant really passes through the observed shares ...
        assert all(_lagrange_eval(points, s.x) == s.value for s in seen)
        # ... and completing the observed shares with one point of it yields the candidate.
        completion = Share(x=fresh_x, value=_lagrange_eval(points, fresh_x))
        assert reconstruct([*seen, completion], t) == candidate


@pytest.mark.parametrize("secret", [bytes(32), b"\xff" * 32, b"\x00" * 31 + b"\x01", b"\x80" + bytes(31)])
def test_edge_secrets(secret: bytes) -> None:
    shares = split(secret, 3, [0, 4, 9, 65534])
    assert reconstruct(list(shares.values()), 3) == secret
    assert reconstruct([shares[65534], shares[0], shares[9]], 3) == secret


def test_frozen_lagrange_known_answer() -> None:
    # f(x) = s + 2x + 3x^2 with s = 0x000102...1f; f(1) = s+5, f(2) = s+16, f(3) = s+33.
    s = int.from_bytes(bytes(range(32)), "big")
    assert s == 0x000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F
    hand = [Share(1, s + 5), Share(2, s + 16), Share(3, s + 33)]
    assert reconstruct(hand, 3) == bytes(range(32))
    assert reconstruct(hand[::-1], 3) == bytes(range(32))
    other = [Share(x, (s + 2 * x + 3 * x * x) % PRIME) for x in (7, 200, 65535)]
    assert reconstruct(other, 3) == bytes(range(32))
    # The line through the first two points meets x = 0 at s + 5 - 11 = s - 6.
    assert reconstruct(hand[:2], 2) == (s - 6).to_bytes(32, "big")


def test_extra_shares_beyond_threshold_use_first_distinct() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 3, range(5))
    ordered = [shares[p] for p in range(5)]
    corrupt_last = [*ordered[:3], Share(ordered[3].x, (ordered[3].value + 1) % PRIME)]
    assert reconstruct(corrupt_last, 3) == secret
    garbled_first = [Share(ordered[0].x, secrets.randbelow(PRIME)), *ordered[1:]]
    with pytest.raises(ShamirError):  # lands >= 2**256 except with probability ~2**-265
        reconstruct(garbled_first, 3)


def test_small_additive_corruption_is_not_detected() -> None:
    """Shamir is malleable: why shares must travel authenticated (AEAD), not just range-checked.

    Adding d to the share at x=1 shifts the result by d * L_1(0) = d * (2/1) * (3/2) = 3d.
    """
    s = int.from_bytes(secrets.token_bytes(31), "big")  # leave headroom below 2**256
    shares = split(s.to_bytes(32, "big"), 3, [0, 1, 2])
    tweaked = [Share(1, (shares[0].value + 1) % PRIME), shares[1], shares[2]]
    assert reconstruct(tweaked, 3) == (s + 3).to_bytes(32, "big")


def test_shares_from_different_sharings_detected() -> None:
    a = split(secrets.token_bytes(32), 2, [0, 1])
    b = split(secrets.token_bytes(32), 2, [0, 1])
    with pytest.raises(ShamirError):
        reconstruct([a[0], b[1]], 2)


def test_duplicate_x_handling() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 2, [0, 1, 2])
    # The same share twice counts once.
    with pytest.raises(ShamirError):
        reconstruct([shares[0], shares[0]], 2)
    assert reconstruct([shares[0], shares[0], shares[2]], 2) == secret
    # Same x, different value: refuse rather than guess.
    conflicting = Share(shares[0].x, (shares[0].value + 1) % PRIME)
    with pytest.raises(ShamirError):
        reconstruct([shares[0], shares[1], conflicting], 2)
    with pytest.raises(ShamirError):
        reconstruct([shares[1], shares[2], shares[0], conflicting], 2)


def test_serialization_round_trip() -> None:
    shares = split(secrets.token_bytes(32), 2, [0, 1, 65534])
    for share in shares.values():
        raw = share.to_bytes()
        assert len(raw) == 2 + SHARE_BYTES
        assert Share.from_bytes(raw) == share
    edge = Share(x=65535, value=PRIME - 1)
    assert Share.from_bytes(edge.to_bytes()) == edge
    assert Share(1, 0).to_bytes() == b"\x00\x01" + bytes(SHARE_BYTES)


def test_deserialization_rejects_bad_input() -> None:
    good = Share(5, 12345).to_bytes()
    for raw in [b"", good[:-1], good + b"\x00", good[:2]]:
        with pytest.raises(ShamirError):
            Share.from_bytes(raw)
    with pytest.raises(ShamirError):  # x = 0 would be the secret itself
        Share.from_bytes(b"\x00\x00" + good[2:])
    with pytest.raises(ShamirError):  # value == PRIME
        Share.from_bytes(good[:2] + PRIME.to_bytes(SHARE_BYTES, "big"))
    with pytest.raises(ShamirError):  # value beyond 2**521
        Share.from_bytes(good[:2] + b"\xff" * SHARE_BYTES)


def test_share_constructor_validates() -> None:
    for x, value in [(0, 1), (-1, 1), (65536, 1), (1, -1), (1, PRIME)]:
        with pytest.raises(ShamirError):
            Share(x, value)


def test_split_rejects_bad_parameters() -> None:
    s = bytes(32)
    bad_calls = [
        (b"\x00" * 31, 1, [0]),
        (b"\x00" * 33, 1, [0]),
        (s, 0, [0, 1]),
        (s, 3, [0, 1]),
        (s, 1, []),
        (s, 2, [0, 0, 1]),
        (s, 1, [-1]),
        (s, 1, [65535]),
    ]
    for secret, t, positions in bad_calls:
        with pytest.raises(ShamirError):
            split(secret, t, positions)


def test_numpy_integer_positions_accepted() -> None:
    import numpy as np

    shares = split(bytes(range(32)), 2, list(np.arange(3, dtype=np.int64)))
    assert all(type(k) is int and type(v.x) is int for k, v in shares.items())
    assert reconstruct([shares[2], shares[0]], 2) == bytes(range(32))
    with pytest.raises(ShamirError):
        split(bytes(32), 1, [1.0])  # type: ignore[list-item]


def test_reconstruct_rejects_bad_threshold() -> None:
    shares = list(split(bytes(32), 1, [0, 1]).values())
    with pytest.raises(ShamirError):
        reconstruct(shares, 0)
    with pytest.raises(ShamirError):
        reconstruct([], 1)


def test_coefficients_are_random() -> None:
    a = split(bytes(32), 2, [0, 1])
    b = split(bytes(32), 2, [0, 1])
    assert a[0] != b[0]  # same secret, same x, fresh polynomial
    assert a[1] != b[1]


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), data=st.data())
def test_property_random_subsets(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=30), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    positions = data.draw(
        st.lists(st.integers(min_value=0, max_value=65534), min_size=n, max_size=n, unique=True),
        label="positions",
    )
    shares = split(secret, t, positions)
    subset = data.draw(st.permutations(positions), label="order")[:t]
    picked = [Share.from_bytes(shares[p].to_bytes()) for p in subset]
    assert reconstruct(picked, t) == secret
