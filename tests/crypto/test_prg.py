"""Tests for the AES-128-CTR mask generator."""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secfed.crypto.prg import MaskAccumulator, keystream_params, mask_vector

SEED = bytes(range(32))
SALT = b"secfed-kat-salt"
LABEL = b"kat"

# Frozen outputs of mask_vector(SEED, salt=SALT, label=LABEL, length=8, bits=...).
# Changing them means clients and servers of different versions disagree on masks.
KAT_U32 = [0xFF328AC1, 0x1231367C, 0x02F7A7BA, 0x3162FED6]
KAT_U64 = [0x1231367CFF328AC1, 0x3162FED602F7A7BA]


def _reference_stream(seed: bytes, salt: bytes, label: bytes, nbytes: int) -> bytes:
    """Re-derive the stream from its specification, sharing no code with secfed."""
    domain = b"secfed/prg/v1"
    info = len(domain).to_bytes(4, "big") + domain + len(label).to_bytes(4, "big") + label
    prk = hmac.new(salt, seed, hashlib.sha256).digest()
    t1 = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    okm = t1  # HKDF with L = 32 needs only the first block: 16-byte AES-128 key, 16-byte counter block
    enc = Cipher(algorithms.AES(okm[:16]), modes.CTR(okm[16:])).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


# --- (a) AES-128-CTR against NIST SP 800-38A F.5.1 -------------------------------------------


def test_keystream_matches_nist_sp800_38a_f51() -> None:
    from secfed.crypto.prg import _keystream_into

    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    icb = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172a"
        "ae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52ef"
        "f69f2445df4f9b17ad2b417be66c3710"
    )
    ciphertext = bytes.fromhex(
        "874d6191b620e3261bef6864990db6ce"
        "9806f66b7970fdff8617187bb9fffdff"
        "5ae4df3edbd5d35e5b4f09020db03eab"
        "1e031dda2fbe03d1792170a0f3009cee"
    )
    stream = bytearray(len(plaintext))
    _keystream_into(key, icb, memoryview(bytes(len(plaintext))), memoryview(stream))
    assert bytes(p ^ s for p, s in zip(plaintext, stream, strict=True)) == ciphertext


# --- (b) frozen known answer, re-derived independently ----------------------------------------


def test_mask_vector_frozen_known_answer() -> None:
    v32 = mask_vector(SEED, salt=SALT, label=LABEL, length=8, bits=32)
    v64 = mask_vector(SEED, salt=SALT, label=LABEL, length=8, bits=64)
    assert v32.dtype == np.uint32 and v64.dtype == np.uint64
    assert [int(w) for w in v32[:4]] == KAT_U32
    assert [int(w) for w in v64[:2]] == KAT_U64


@pytest.mark.parametrize("bits", [32, 64])
def test_mask_vector_matches_independent_composition(bits: int) -> None:
    length = 1000
    ref = _reference_stream(SEED, SALT, LABEL, length * bits // 8)
    expected = np.frombuffer(ref, dtype="<u4" if bits == 32 else "<u8")
    got = mask_vector(SEED, salt=SALT, label=LABEL, length=length, bits=32 if bits == 32 else 64)
    np.testing.assert_array_equal(got, expected)
    words = [int.from_bytes(ref[i : i + bits // 8], "little") for i in range(0, len(ref), bits // 8)]
    assert words[: 4 if bits == 32 else 2] == (KAT_U32 if bits == 32 else KAT_U64)


def test_keystream_params_matches_reference() -> None:
    key, icb = keystream_params(SEED, salt=SALT, label=LABEL)
    assert len(key) == 16 and len(icb) == 16
    enc = Cipher(algorithms.AES(key), modes.CTR(icb)).encryptor()
    assert enc.update(bytes(64)) == _reference_stream(SEED, SALT, LABEL, 64)


def test_mask_vector_is_owned_writeable_native() -> None:
    v = mask_vector(SEED, salt=SALT, label=LABEL, length=16, bits=32)
    assert v.flags.owndata and v.flags.writeable and v.flags.c_contiguous
    assert v.dtype == np.dtype(np.uint32) and v.dtype.isnative
    v[0] = 0  # writeable
    assert mask_vector(SEED, salt=SALT, label=LABEL, length=0, bits=64).shape == (0,)


def test_mask_vector_prefix_stable_across_lengths() -> None:
    long = mask_vector(SEED, salt=SALT, label=LABEL, length=1001, bits=32)
    short = mask_vector(SEED, salt=SALT, label=LABEL, length=7, bits=32)
    np.testing.assert_array_equal(long[:7], short)


# --- (c) domain separation ---------------------------------------------------------------------


def test_different_inputs_give_different_streams() -> None:
    base = mask_vector(SEED, salt=SALT, label=LABEL, length=64, bits=32)
    variants = [
        mask_vector(SEED, salt=SALT, label=b"kat2", length=64, bits=32),
        mask_vector(SEED, salt=b"other-salt", label=LABEL, length=64, bits=32),
        mask_vector(bytes(32), salt=SALT, label=LABEL, length=64, bits=32),
        mask_vector(SEED[:-1] + b"\x20", salt=SALT, label=LABEL, length=64, bits=32),
        mask_vector(SEED, salt=SALT, label=b"", length=64, bits=32),
    ]
    streams = [base, *variants]
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            assert not np.array_equal(streams[i], streams[j])
            # Not merely different: essentially no word agrees.
            assert int(np.count_nonzero(streams[i] == streams[j])) <= 1
    # Deterministic.
    np.testing.assert_array_equal(base, mask_vector(SEED, salt=SALT, label=LABEL, length=64, bits=32))


# --- (d) accumulator ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_accumulator_add_then_subtract_is_identity(dtype: type[np.unsignedinteger[Any]]) -> None:
    original = mask_vector(b"\x07" * 32, salt=b"x", label=b"init", length=4097, bits=64).astype(dtype)
    out = original.copy()
    acc = MaskAccumulator(out)
    acc.add(SEED, salt=SALT, label=b"a")
    acc.add(SEED, salt=SALT, label=b"b", sign=-1)
    assert not np.array_equal(out, original)
    acc.add(SEED, salt=SALT, label=b"a", sign=-1)
    acc.add(SEED, salt=SALT, label=b"b")
    np.testing.assert_array_equal(out, original)
    assert acc.out is out


def test_accumulator_equals_mask_vector_sum_mod_2_32() -> None:
    n = 5000
    out = np.zeros(n, dtype=np.uint32)
    acc = MaskAccumulator(out)
    specs = [(bytes([i]) * 32, 1 if i % 3 else -1) for i in range(6)]
    expected = np.zeros(n, dtype=np.int64)
    for seed, sign in specs:
        acc.add(seed, salt=SALT, label=b"L", sign=sign)
        expected += sign * mask_vector(seed, salt=SALT, label=b"L", length=n, bits=32).astype(np.int64)
    np.testing.assert_array_equal(out, np.mod(expected, 2**32).astype(np.uint32))


def test_accumulator_equals_mask_vector_sum_mod_2_64() -> None:
    n = 300
    start = [int(w) for w in mask_vector(b"\x09" * 32, salt=b"", label=b"s", length=n, bits=64)]
    out = np.array(start, dtype=np.uint64)
    acc = MaskAccumulator(out)
    expected = list(start)
    for i, sign in enumerate([1, 1, -1, 1, -1, -1]):
        seed = bytes([100 + i]) * 32
        acc.add(seed, salt=SALT, label=b"L", sign=sign)
        stream = mask_vector(seed, salt=SALT, label=b"L", length=n, bits=64)
        expected = [(e + sign * int(s)) % 2**64 for e, s in zip(expected, stream, strict=True)]
    assert [int(w) for w in out] == expected


def test_accumulator_empty_vector() -> None:
    out = np.zeros(0, dtype=np.uint32)
    MaskAccumulator(out).add(SEED, salt=SALT, label=LABEL)
    assert out.shape == (0,)


# --- (e) statistics ----------------------------------------------------------------------------


def _chi2_sf_odd_dof(x: float, dof: int) -> float:
    """Chi-square survival function for odd ``dof`` without scipy.

    Uses Q(1/2, y) = erfc(sqrt(y)) and Q(a + 1, y) = Q(a, y) + y^a e^-y / Gamma(a + 1).
    """
    assert dof % 2 == 1
    y = x / 2
    q = math.erfc(math.sqrt(y))
    a = 0.5
    while a < dof / 2:
        q += math.exp(a * math.log(y) - y - math.lgamma(a + 1)) if y > 0 else 0.0
        a += 1
    return min(q, 1.0)


def _high_nibble_p_value(words: npt.NDArray[np.uint32]) -> float:
    """p-value of a chi-square goodness-of-fit test of the top 4 bits against uniform."""
    counts = np.bincount((words >> np.uint32(28)).astype(np.int64), minlength=16)
    expected = words.size / 16
    stat = float(((counts - expected) ** 2 / expected).sum())
    return _chi2_sf_odd_dof(stat, 15)


P_THRESHOLD = 1e-6  # a correct PRG fails this with probability 1e-6: it cannot realistically flake


def test_chi2_helper_sanity() -> None:
    # Known quantiles of chi-square(15): median ~14.339, upper 5% ~24.996, upper 1% ~30.578.
    assert _chi2_sf_odd_dof(14.339, 15) == pytest.approx(0.5, abs=1e-3)
    assert _chi2_sf_odd_dof(24.996, 15) == pytest.approx(0.05, abs=1e-4)
    assert _chi2_sf_odd_dof(30.578, 15) == pytest.approx(0.01, abs=1e-4)
    assert _chi2_sf_odd_dof(1.0, 1) == pytest.approx(0.31731, abs=1e-4)


def test_high_nibbles_are_uniform() -> None:
    words = mask_vector(b"\x5a" * 32, salt=b"stat", label=b"chi2", length=10**5, bits=32)
    assert _high_nibble_p_value(words) > P_THRESHOLD


def test_statistic_rejects_non_random_data() -> None:
    n = 10**5
    assert _high_nibble_p_value(np.arange(n, dtype=np.uint32)) < P_THRESHOLD
    assert _high_nibble_p_value(np.full(n, 0xDEADBEEF, dtype=np.uint32)) < P_THRESHOLD
    # Subtler: uniform over only the lower half of the ring.
    half = (np.arange(n, dtype=np.uint64) * 21475 % 2**31).astype(np.uint32)
    assert _high_nibble_p_value(half) < P_THRESHOLD


# --- (f) bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_bad_seed_length(seed: bytes) -> None:
    with pytest.raises(ValueError):
        mask_vector(seed, salt=SALT, label=LABEL, length=4, bits=32)
    with pytest.raises(ValueError):
        keystream_params(seed, salt=SALT, label=LABEL)
    with pytest.raises(ValueError):
        MaskAccumulator(np.zeros(4, dtype=np.uint32)).add(seed, salt=SALT, label=LABEL)


@pytest.mark.parametrize("bits", [0, 8, 16, 31, 128])
def test_bad_bits(bits: int) -> None:
    with pytest.raises(ValueError):
        mask_vector(SEED, salt=SALT, label=LABEL, length=4, bits=bits)  # type: ignore[call-overload]


def test_bad_length() -> None:
    with pytest.raises(ValueError):
        mask_vector(SEED, salt=SALT, label=LABEL, length=-1, bits=32)
    with pytest.raises(TypeError):
        mask_vector(SEED, salt=SALT, label=LABEL, length=4.0, bits=32)  # type: ignore[call-overload]


def test_numpy_integer_length_accepted() -> None:
    v = mask_vector(SEED, salt=SALT, label=LABEL, length=np.int64(4), bits=32)  # type: ignore[call-overload]
    assert [int(w) for w in v] == KAT_U32


@pytest.mark.parametrize("sign", [0, 2, -2])
def test_bad_sign(sign: int) -> None:
    out = np.zeros(4, dtype=np.uint32)
    with pytest.raises(ValueError):
        MaskAccumulator(out).add(SEED, salt=SALT, label=LABEL, sign=sign)
    assert not out.any()


def test_bad_accumulator_arrays() -> None:
    bad_arrays: list[Any] = [
        np.zeros(4, dtype=np.int32),
        np.zeros(4, dtype=np.float64),
        np.zeros(4, dtype=np.uint16),
        np.zeros((2, 2), dtype=np.uint32),
        np.zeros(8, dtype=np.uint32)[::2],
    ]
    for bad in bad_arrays:
        with pytest.raises(ValueError):
            MaskAccumulator(bad)
    ro = np.zeros(4, dtype=np.uint32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        MaskAccumulator(ro)
