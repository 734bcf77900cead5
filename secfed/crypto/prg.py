"""Pseudorandom mask vectors from AES-128-CTR.

Secure aggregation hides each client's update ``x`` as ``x + sum(masks)`` in
the ring Z_(2^bits); the masks are expanded from short 32-byte seeds (pairwise
X25519-derived seeds, and each client's self-mask seed) so that they can be
re-created from Shamir-recovered seeds when clients drop out.  The expansion
must therefore be (a) a cryptographic PRG, so that masked updates reveal
nothing, and (b) bit-for-bit deterministic across machines, so that the server
recomputes exactly the same mask a client added.

Construction: ``(key, icb) = HKDF-SHA256(seed, salt, encode_fields("secfed/prg/v1",
label), 32)`` and the stream is the AES-128-CTR keystream under ``key`` starting
at counter block ``icb`` (OpenSSL increments the full 128-bit block,
big-endian), read as little-endian unsigned words.

* Running the seed through HKDF with a per-use ``label`` and per-round
  ``salt`` gives every (seed, salt, label) an independent AES key, so reusing
  one pairwise seed for several rounds or several tensors never reuses a
  keystream.  With a fresh key per stream, the IV needs no uniqueness argument.
* AES-128 rather than AES-256: the seeds come from X25519, which offers about
  128-bit security, so a longer AES key would buy nothing, while the ten-round
  cipher is ~25 % faster on the hot path below.
* AES-CTR is a PRF-based PRG with hardware support (AES-NI), i.e. the fastest
  secure option available through ``cryptography``; this is the hot path
  (a client adds tens of streams of 10^6 words each round).
* Because 2^bits divides 2^(8*bytes), every word is exactly uniform over the
  ring when the keystream is: no modular reduction bias.
* The byte order is pinned to little-endian so results do not depend on the
  host; on little-endian hosts the conversion is free.
* ``bits`` is deliberately *not* part of the derivation: the 64-bit stream is
  the same bytes as the 32-bit one.  A session fixes one ring size, so no
  seed is ever expanded for both; callers that mix sizes must separate them
  through ``label``.

Never substitute a non-cryptographic generator here: a predictable mask
reveals the client's update.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple, overload

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secfed.crypto.kdf import encode_fields, hkdf_sha256

__all__ = [
    "CHUNK_BYTES",
    "SEED_BYTES",
    "MaskAccumulator",
    "RingBits",
    "Stream",
    "keystream_params",
    "mask_vector",
]

RingBits = Literal[32, 64]

SEED_BYTES: Final = 32
_PRG_DOMAIN: Final = b"secfed/prg/v1"
_AES_KEY_BYTES: Final = 16
_BLOCK_BYTES: Final = 16
_WIRE_DTYPES: Final[dict[int, np.dtype[np.unsignedinteger[Any]]]] = {
    32: np.dtype("<u4"),
    64: np.dtype("<u8"),
}
_NATIVE_DTYPES: Final[dict[int, np.dtype[np.unsignedinteger[Any]]]] = {
    32: np.dtype(np.uint32),
    64: np.dtype(np.uint64),
}


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be exactly {SEED_BYTES} bytes")


def _check_bits(bits: int) -> None:
    if bits not in _WIRE_DTYPES:
        raise ValueError(f"ring size must be 32 or 64 bits, got {bits!r}")


def keystream_params(seed: bytes, *, salt: bytes, label: bytes) -> tuple[bytes, bytes]:
    """Derive the AES-128 key and 16-byte initial counter block for one stream.

    Exposed (rather than private) so that tests and interoperable
    implementations can check the derivation step on its own.
    """
    _check_seed(seed)
    okm = hkdf_sha256(
        bytes(seed),
        salt=salt,
        info=encode_fields(_PRG_DOMAIN, label),
        length=_AES_KEY_BYTES + _BLOCK_BYTES,
    )
    return okm[:_AES_KEY_BYTES], okm[_AES_KEY_BYTES:]


def _keystream_into(key: bytes, icb: bytes, zeros: memoryview, out: memoryview) -> None:
    """Write the AES-CTR keystream for ``(key, icb)`` into ``out``.

    Encrypting an all-zero buffer yields the raw keystream.  ``update_into``
    writes straight into the caller's buffer, so no intermediate ``bytes`` of
    the stream size is allocated.  ``zeros`` and ``out`` must have equal length
    (CTR is a stream mode, OpenSSL reports block size 1 for it, so no padding
    slack is needed in ``out``).
    """
    encryptor = Cipher(algorithms.AES(key), modes.CTR(icb)).encryptor()
    written = encryptor.update_into(zeros, out)
    if written != len(out):  # pragma: no cover - would indicate a backend change
        raise RuntimeError("AES-CTR produced a short keystream")


@overload
def mask_vector(
    seed: bytes, *, salt: bytes, label: bytes, length: int, bits: Literal[32]
) -> npt.NDArray[np.uint32]: ...
@overload
def mask_vector(
    seed: bytes, *, salt: bytes, label: bytes, length: int, bits: Literal[64]
) -> npt.NDArray[np.uint64]: ...
@overload
def mask_vector(
    seed: bytes, *, salt: bytes, label: bytes, length: int, bits: RingBits
) -> npt.NDArray[np.unsignedinteger[Any]]: ...
def mask_vector(
    seed: bytes, *, salt: bytes, label: bytes, length: int, bits: RingBits
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Expand ``seed`` into ``length`` uniformly random words of ``bits`` bits.

    Returns a freshly allocated, writeable, native-endian ``np.uint32`` or
    ``np.uint64`` array that the caller owns.
    """
    _check_seed(seed)
    _check_bits(bits)
    # operator.index accepts numpy integers (e.g. ``int(np.prod(shape))`` forgotten) but not floats.
    length = operator.index(length)
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    wire = _WIRE_DTYPES[bits]
    out = np.empty(length, dtype=wire)
    if length:
        key, icb = keystream_params(seed, salt=salt, label=label)
        raw = out.view(np.uint8).data
        # bytes(n) is calloc-backed, so the zero source costs almost nothing.
        _keystream_into(key, icb, memoryview(bytes(len(raw))), raw)
    # No-op on little-endian hosts; a byte-swapping copy on big-endian ones.
    return out.astype(_NATIVE_DTYPES[bits], copy=False)


#: The most keystream bytes a :class:`MaskAccumulator` holds at once (1 MiB: large enough that the
#: per-chunk overhead is noise next to AES, small enough to stay in cache while it is added).
CHUNK_BYTES: Final = 1 << 20


class Stream(NamedTuple):
    """One PRG stream to add: ``sign * mask_vector(seed, salt=salt, label=label)``."""

    seed: bytes
    salt: bytes
    label: bytes
    sign: int = 1


class MaskAccumulator:
    """Adds/subtracts many PRG streams into one ring vector, in chunks, reusing one scratch buffer.

    Each stream is generated and added one chunk at a time (one AES-CTR context per stream, fed chunk
    after chunk, so the bytes are exactly those of :func:`mask_vector`; :meth:`add_all` adds many
    streams per chunk while it is in cache), so the extra memory is one chunk whatever the vector's
    length: a client masking a 10^8-word adapter update holds the update
    and 1 MiB, not another copy of the update per stream. Unsigned numpy arithmetic wraps silently,
    which is exactly addition in Z_(2^bits).
    """

    def __init__(self, out: npt.NDArray[np.unsignedinteger[Any]], *, chunk_bytes: int = CHUNK_BYTES) -> None:
        """Wrap ``out`` (1-D, C-contiguous, writeable ``np.uint32``/``np.uint64``), modified in place;
        ``chunk_bytes`` (a positive multiple of 8) bounds the scratch keystream."""
        if not isinstance(out, np.ndarray):
            raise TypeError("out must be a numpy array")
        bits = {np.dtype(np.uint32): 32, np.dtype(np.uint64): 64}.get(out.dtype)
        if bits is None:
            raise ValueError(f"out must have dtype uint32 or uint64, got {out.dtype}")
        if out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a 1-D, C-contiguous, writeable array")
        if isinstance(chunk_bytes, bool) or operator.index(chunk_bytes) < 8 or chunk_bytes % 8:
            raise ValueError(f"chunk_bytes must be a positive multiple of 8, got {chunk_bytes!r}")
        self.out = out
        self.bits: RingBits = 32 if bits == 32 else 64
        scratch = min(out.size * out.itemsize, chunk_bytes)
        self._words = scratch // out.itemsize  # words per chunk
        self._zeros = memoryview(bytes(scratch))
        self._scratch = np.empty(scratch, dtype=np.uint8)
        self._stream = self._scratch.view(_WIRE_DTYPES[self.bits])

    def add(self, seed: bytes, *, salt: bytes, label: bytes, sign: int = 1) -> None:
        """Set ``out += sign * mask_vector(seed, ...)`` modulo ``2**bits``; ``sign`` is +1 or -1."""
        self.add_all([Stream(seed, salt, label, sign)])

    def add_all(self, streams: Sequence[Stream]) -> None:
        """Add every stream (each ``sign * mask_vector(seed, salt, label)``), chunk by chunk: all the
        streams' keystream for one chunk is added while that chunk of ``out`` is still in cache, so the
        vector crosses memory once rather than once per stream. Every stream is checked first."""
        for stream in streams:
            if stream.sign not in (1, -1) or isinstance(stream.sign, bool):
                raise ValueError(f"sign must be +1 or -1, got {stream.sign!r}")
            _check_seed(stream.seed)
        if self.out.size == 0 or not streams:
            return
        ciphers = []
        for stream in streams:
            key, icb = keystream_params(stream.seed, salt=stream.salt, label=stream.label)
            combine = np.add if stream.sign == 1 else np.subtract
            ciphers.append((Cipher(algorithms.AES(key), modes.CTR(icb)).encryptor(), combine))
        for start in range(0, self.out.size, self._words):
            part = self.out[start : start + self._words]
            nbytes = part.size * part.itemsize
            for encryptor, combine in ciphers:
                if encryptor.update_into(self._zeros[:nbytes], self._scratch.data[:nbytes]) != nbytes:
                    raise RuntimeError(
                        "AES-CTR produced a short keystream"
                    )  # pragma: no cover - backend change
                combine(part, self._stream[: part.size], out=part)
