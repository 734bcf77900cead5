"""Tests for HKDF-SHA256 and the injective field encoding."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from secfed.crypto.kdf import encode_fields, hkdf_sha256

# RFC 5869 Appendix A, test cases 1-3 (SHA-256).
RFC5869 = [
    (
        b"\x0b" * 22,
        bytes(range(0x00, 0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        b"\x0b" * 22,
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869, ids=["tc1", "tc2", "tc3"])
def test_rfc5869_sha256(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert hkdf_sha256(ikm, salt=salt, info=info, length=length).hex() == okm


def test_hkdf_prefix_consistency_and_separation() -> None:
    long = hkdf_sha256(b"k" * 32, salt=b"s", info=b"i", length=100)
    assert hkdf_sha256(b"k" * 32, salt=b"s", info=b"i", length=32) == long[:32]
    assert hkdf_sha256(b"k" * 32, salt=b"s", info=b"j", length=32) != long[:32]
    assert hkdf_sha256(b"k" * 32, salt=b"t", info=b"i", length=32) != long[:32]


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_bad_length(length: int) -> None:
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", salt=b"", info=b"", length=length)


def test_hkdf_max_length_ok() -> None:
    assert len(hkdf_sha256(b"k", salt=b"", info=b"", length=255 * 32)) == 255 * 32


def test_encode_fields_known_answer() -> None:
    # Frozen: changing this breaks every derived key and every signature.
    assert encode_fields(b"secfed", "r\u00e9", 7, b"") == bytes.fromhex(
        "00000006" + "736563666564" + "00000003" + "72c3a9" + "00000008" + "0000000000000007" + "00000000"
    )
    assert encode_fields() == b""
    assert encode_fields(2**64 - 1) == bytes.fromhex("00000008ffffffffffffffff")


def test_encode_fields_boundary_shifts_are_distinguished() -> None:
    assert encode_fields("ab", "c") != encode_fields("a", "bc")
    assert encode_fields("abc") != encode_fields("ab", "c")
    assert encode_fields(b"", b"x") != encode_fields(b"x", b"")
    assert encode_fields(b"") != encode_fields()
    assert encode_fields(b"", b"") != encode_fields(b"")
    assert encode_fields(1, 2) != encode_fields(2, 1)
    assert encode_fields(256) != encode_fields(1, 0)


def test_encode_fields_injective_on_small_universe() -> None:
    # Every tuple of up to 3 fields over a small alphabet must encode uniquely.
    atoms: list[bytes] = [b"", b"\x00", b"\x00\x00", b"a", b"ab", b"\x00\x00\x00\x01", b"\x00\x00\x00\x00"]
    seen: dict[bytes, tuple[bytes, ...]] = {}
    for n in range(4):
        for combo in itertools.product(atoms, repeat=n):
            enc = encode_fields(*combo)
            assert seen.setdefault(enc, combo) == combo
    assert len(seen) == sum(len(atoms) ** n for n in range(4))


def test_encode_fields_type_conversions() -> None:
    assert encode_fields("ab") == encode_fields(b"ab")
    assert encode_fields(7) == encode_fields((7).to_bytes(8, "big"))
    buffer_like: Any = bytearray(b"xy")  # accepted at runtime although not in the signature
    assert encode_fields(buffer_like) == encode_fields(b"xy")


@pytest.mark.parametrize("bad", [-1, 2**64, -(2**70)])
def test_encode_fields_int_range(bad: int) -> None:
    with pytest.raises(ValueError):
        encode_fields(bad)


def test_encode_fields_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        encode_fields(True)
    with pytest.raises(TypeError):
        encode_fields(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_fields([1, 2])  # type: ignore[arg-type]
