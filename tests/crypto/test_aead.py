"""Tests for AES-256-GCM sealing."""

from __future__ import annotations

import pytest

from secfed.crypto.aead import DecryptionError, _seal_with_nonce, open_sealed, seal

KEY = bytes(range(32))
AD = b"secfed/test/ad"

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13, 14 and 16 (AES-256).
GCM_VECTORS = [
    ("tc13", "00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    (
        "tc14",
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "tc16",
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


@pytest.mark.parametrize(
    ("name", "key", "iv", "pt", "ad", "ct", "tag"), GCM_VECTORS, ids=[v[0] for v in GCM_VECTORS]
)
def test_gcm_known_answer(name: str, key: str, iv: str, pt: str, ad: str, ct: str, tag: str) -> None:
    sealed = _seal_with_nonce(bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(pt), bytes.fromhex(ad))
    assert sealed == bytes.fromhex(iv + ct + tag)
    assert open_sealed(bytes.fromhex(key), sealed, bytes.fromhex(ad)) == bytes.fromhex(pt)


@pytest.mark.parametrize("plaintext", [b"", b"x", b"share" * 100, bytes(range(256))])
def test_round_trip(plaintext: bytes) -> None:
    sealed = seal(KEY, plaintext, AD)
    assert len(sealed) == 12 + len(plaintext) + 16
    assert open_sealed(KEY, sealed, AD) == plaintext


def test_nonces_are_fresh() -> None:
    sealed = {seal(KEY, b"same message", AD) for _ in range(16)}
    assert len(sealed) == 16
    assert len({s[:12] for s in sealed}) == 16


def test_wrong_associated_data() -> None:
    sealed = seal(KEY, b"secret share", AD)
    for ad in [b"", AD + b"\x00", AD[:-1], b"secfed/test/AD"]:
        with pytest.raises(DecryptionError):
            open_sealed(KEY, sealed, ad)


def test_wrong_key() -> None:
    sealed = seal(KEY, b"secret share", AD)
    other = bytes([KEY[0] ^ 1]) + KEY[1:]
    with pytest.raises(DecryptionError):
        open_sealed(other, sealed, AD)


def test_every_flipped_bit_detected() -> None:
    sealed = seal(KEY, b"0123456789abcdef!", AD)
    for i in range(len(sealed)):  # nonce, ciphertext and tag alike
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= bit
            with pytest.raises(DecryptionError):
                open_sealed(KEY, bytes(tampered), AD)


def test_truncation_and_extension_detected() -> None:
    sealed = seal(KEY, b"secret share", AD)
    for n in range(len(sealed)):
        with pytest.raises(DecryptionError):
            open_sealed(KEY, sealed[:n], AD)
    with pytest.raises(DecryptionError):
        open_sealed(KEY, sealed + b"\x00", AD)


def test_invalid_tag_does_not_leak() -> None:
    sealed = seal(KEY, b"m", AD)
    with pytest.raises(DecryptionError) as info:
        open_sealed(KEY, sealed, b"other")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert not isinstance(info.value, ValueError)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33])
def test_bad_key_length(length: int) -> None:
    with pytest.raises(ValueError):
        seal(b"\x00" * length, b"m", AD)
    with pytest.raises(ValueError):
        open_sealed(b"\x00" * length, bytes(40), AD)


def test_bad_nonce_length() -> None:
    with pytest.raises(ValueError):
        _seal_with_nonce(KEY, bytes(8), b"m", AD)
