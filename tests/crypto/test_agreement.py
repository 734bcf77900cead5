"""Tests for X25519 key agreement."""

from __future__ import annotations

import pytest

from secfed.crypto.agreement import (
    AgreementError,
    KeyPair,
    agree,
    generate_keypair,
    private_from_bytes,
    private_to_bytes,
    public_of,
)

# RFC 7748 §6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Little-endian u-coordinates of small-order points (and non-canonical
# encodings of them) on Curve25519: each forces the shared secret to zero.
LOW_ORDER_POINTS = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # u = p - 1
    bytes.fromhex("ed" + "ff" * 30 + "7f"),  # u = p  (== 0)
    bytes.fromhex("ee" + "ff" * 30 + "7f"),  # u = p + 1 (== 1)
]


def test_rfc7748_public_keys() -> None:
    assert public_of(private_from_bytes(ALICE_PRIVATE)) == ALICE_PUBLIC
    assert public_of(private_from_bytes(BOB_PRIVATE)) == BOB_PUBLIC


def test_rfc7748_shared_secret_both_directions() -> None:
    assert agree(private_from_bytes(ALICE_PRIVATE), BOB_PUBLIC) == SHARED
    assert agree(private_from_bytes(BOB_PRIVATE), ALICE_PUBLIC) == SHARED


def test_generated_keys_agree_symmetrically() -> None:
    a, b, c = generate_keypair(), generate_keypair(), generate_keypair()
    assert isinstance(a, KeyPair)
    assert len(a.public) == 32
    assert a.public == public_of(a.private)
    ab = agree(a.private, b.public)
    assert ab == agree(b.private, a.public)
    assert len(ab) == 32
    # A third party's secret with either side is different.
    assert agree(a.private, c.public) != ab
    assert agree(c.private, b.public) != ab


def test_fresh_keypairs_differ() -> None:
    assert len({generate_keypair().public for _ in range(8)}) == 8


def test_private_serialization_round_trip() -> None:
    kp = generate_keypair()
    raw = private_to_bytes(kp.private)
    assert len(raw) == 32
    restored = private_from_bytes(raw)
    assert public_of(restored) == kp.public
    assert private_to_bytes(private_from_bytes(ALICE_PRIVATE)) == ALICE_PRIVATE


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_bad_public_length_rejected(length: int) -> None:
    with pytest.raises(AgreementError):
        agree(generate_keypair().private, b"\x09" * length)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_bad_private_length_rejected(length: int) -> None:
    with pytest.raises(AgreementError):
        private_from_bytes(b"\x01" * length)


def test_agreement_error_is_value_error() -> None:
    assert issubclass(AgreementError, ValueError)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_points_rejected(point: bytes) -> None:
    with pytest.raises(AgreementError):
        agree(private_from_bytes(ALICE_PRIVATE), point)
    with pytest.raises(AgreementError):
        agree(generate_keypair().private, point)
