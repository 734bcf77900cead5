"""Gaussian noise for DP-SGD drawn from a cryptographic stream (AES-256-CTR), not from torch's generator.

Why: the Gaussian mechanism protects a gradient only if the adversary cannot predict the noise added to
it. torch's generators are statistical ones (Mersenne Twister on CPU, Philox on CUDA): anyone who learns
their state (624 outputs of MT19937 suffice) can predict every later draw and subtract the noise, and a
63-bit seed does not change that. Opacus's own answer (``secure_mode`` with ``torchcsprng``) does not
work with the torch we use, so this module is the replacement. It is deliberately small and pure: bytes
from a cipher, deterministic arithmetic on the host (numpy, plus torch's ``cos``/``sin`` kernels; see
Speed below), one copy into a torch tensor.

The construction (the exact stream is fixed, so a known-answer test can pin it):

* **Uniform bytes.** AES-256 in CTR mode (the ``cryptography`` package, i.e. OpenSSL, with AES-NI where
  the CPU has it) encrypting zeros, so the output is the keystream ``AES_K(0), AES_K(1), ...`` with a
  128-bit big-endian counter starting at 0. A key is used by one generator only, so the fixed starting
  counter never repeats a (key, counter) pair, and 2^128 blocks never wrap. AES-CTR is a standard,
  fast PRG whose output is indistinguishable from random bytes without the key; a keystream block
  reveals nothing about the key or the other blocks, unlike an MT19937 output.
* **The key** is ``os.urandom(32)`` (the OS CSPRNG), fresh for every instance: it is never derived from
  torch's seed, ``settings.seed`` or anything else in the configuration, so reseeding torch or knowing
  the run's seeds reproduces nothing. The only exception is :meth:`AesCtrGaussian.from_test_seed`, which
  derives the key from an integer with HKDF-SHA256 and exists only so that tests can reproduce a run.
* **Uniform doubles.** AES block ``i`` gives two little-endian 64-bit words; their top 53 bits make
  ``u1 = ((w0 >> 11) + 1) / 2^53`` in ``(0, 1]`` and ``u2 = (w1 >> 11) / 2^53`` in ``[0, 1)``, both
  exact in float64. ``u1 >= 2^-53``, so ``log(u1)`` is finite (``>= -36.8``) and ``log(0)`` cannot
  happen; ``u1 = 1`` only gives radius 0.
* **Normals (Box-Muller).** ``r = sqrt(-2 ln u1)``, and normals ``2i, 2i+1`` are ``r cos(2 pi u2)``,
  ``r sin(2 pi u2)``, in float64: an exact transform (in real arithmetic) with no branches and no
  rejection loop (the polar method's loop would make the bytes consumed, and the time taken, depend
  on the stream), so it vectorises over whole arrays. An odd request discards the last sine, and the
  next request starts at the next block, so successive draws never reuse keystream.
  Because ``u1 >= 2^-53`` the largest magnitude is ``sqrt(2 * 53 ln 2) ~ 8.57``: the tail beyond that
  (probability ~1e-17 per draw) is truncated, which no statistical test at our sizes can see.
* **DP noise** (:meth:`AesCtrGaussian.gaussian`) is ``std * (Z1 + Z2 + Z3 + Z4) / 2`` for four
  consecutive standard-normal draws of the tensor's size, computed in float64 and rounded once to the
  tensor's dtype. The sum keeps the countermeasure of Opacus's ``secure_mode`` against the
  floating-point attacks on Gaussian samplers (Jin et al., arXiv:2112.05307; Holohan & Braghin,
  arXiv:2107.10138, section 5.1): the floats one draw can produce form a sparse, structured set, so
  an observer of ``x + noise`` can test which ``x`` it came from; with a sum of four the same test
  means searching about 2^159 combinations. ``/ 2`` is exact, so the variance is ``std^2``.

Key material: Python cannot promise to erase a secret. ``os.urandom`` returns an immutable ``bytes``
object that is copied into a ``bytearray`` and dropped at once, but its memory is freed, not wiped; the
``bytearray`` is overwritten with zeros as soon as OpenSSL has expanded the key. The expanded key
schedule then lives in OpenSSL's cipher context until :meth:`AesCtrGaussian.close` (or garbage
collection) releases it; the keystream passes through a reused buffer and the noise itself is, by
design, added to the gradient. Nothing here defends against an attacker who can read the process's
memory while it runs; the point is that the noise cannot be *predicted* from outputs or seeds.

Speed: the cipher and the arithmetic run on whole arrays in chunks of 64 Ki normals (a 512 KiB
keystream buffer, reused; no Python loop per element). The arithmetic is numpy's, except ``cos`` and
``sin``, which are torch's vectorised float64 kernels applied to the numpy buffers in place (numpy's
float64 ``sin``/``cos`` call scalar libm and took ~14 ns per value against ~4 ns): deterministic
functions of the uniform bytes, no torch generator is involved. So the noise for a few million adapter
parameters takes a fraction of a second per step on one CPU core (the four Box-Muller draws of the sum
cost four times one ``torch.randn``-like draw; the AES keystream itself is a small part of the time).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["AesCtrGaussian", "derive_test_key"]

KEY_BYTES = 32  # AES-256
_BLOCK = 16  # one AES block gives one Box-Muller pair
_PAIRS_PER_CHUNK = 1 << 15  # 512 KiB of keystream, 64 Ki normals per chunk: cache-sized work arrays
_SUMMANDS = 4  # DP noise is the sum of four standard normals over 2 (see the module docstring)
_TEST_KDF_SALT = b"secfed-dp-noise-test-seed-v1"
_TEST_KDF_INFO = b"aes-256-ctr gaussian noise key (tests only)"


def derive_test_key(seed: int) -> bytes:
    """The AES key :meth:`AesCtrGaussian.from_test_seed` uses: HKDF-SHA256 of the decimal ``seed``.

    For tests only: a key derived from a small integer is as guessable as the integer.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_TEST_KDF_SALT, info=_TEST_KDF_INFO)
    return kdf.derive(str(seed).encode("ascii"))


class AesCtrGaussian:
    """Standard-normal and DP-noise samples from an AES-256-CTR keystream; see the module docstring.

    ``AesCtrGaussian()`` draws a fresh key from ``os.urandom`` (the only constructor for real runs).
    One instance is one stream: draws continue where the previous one stopped. Draws are serialised
    by a lock, so sharing an instance between threads is safe but gives each thread an unpredictable
    share of the stream; DP-SGD uses one instance per training run.
    """

    def __init__(self) -> None:
        self._setup(bytearray(os.urandom(KEY_BYTES)))

    @classmethod
    def from_test_seed(cls, seed: int) -> AesCtrGaussian:
        """A reproducible stream keyed by :func:`derive_test_key` ``(seed)``. FOR TESTS ONLY: anyone who
        knows or guesses ``seed`` can regenerate the noise and remove it, so there is no privacy."""
        return cls._from_key(derive_test_key(seed))

    @classmethod
    def _from_key(cls, key: bytes) -> AesCtrGaussian:
        """A stream under an explicit key (tests: known-answer checks against an independent AES)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"the key must be {KEY_BYTES} bytes, got {len(key)}")
        instance = cls.__new__(cls)
        instance._setup(bytearray(key))
        return instance

    def _setup(self, key: bytearray) -> None:
        try:
            cipher = Cipher(algorithms.AES(key), modes.CTR(bytes(_BLOCK)))
            self._encryptor: CipherContext | None = cipher.encryptor()
            del cipher  # holds a reference to `key`
        finally:
            key[:] = bytes(len(key))  # OpenSSL has its own (expanded) copy now
        self._lock = threading.Lock()
        self._zeros = memoryview(bytes(_BLOCK * _PAIRS_PER_CHUNK))
        # update_into wants room for one block more than it writes (cryptography's documented rule)
        self._keystream_out = bytearray(_BLOCK * (_PAIRS_PER_CHUNK + 1))
        self._keystream = np.frombuffer(self._keystream_out, dtype=np.uint8)  # a view of the same memory

    def close(self) -> None:
        """Release the cipher context (and with it OpenSSL's copy of the key); later draws raise."""
        with self._lock:
            encryptor, self._encryptor = self._encryptor, None
            self._keystream.fill(0)
        if encryptor is not None:
            encryptor.finalize()

    def __enter__(self) -> AesCtrGaussian:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _fill(self, out: npt.NDArray[np.float64]) -> None:
        """Fill ``out`` (1-D, even length, contiguous) with standard normals, pair ``i`` from block ``i``."""
        pairs_total = out.shape[0] // 2
        pairs_view = out.reshape(pairs_total, 2)
        chunk = min(pairs_total, _PAIRS_PER_CHUNK)
        bits = np.empty(chunk, dtype=np.uint64)
        radius, theta, cos, sin = (np.empty(chunk, dtype=np.float64) for _ in range(4))
        theta_t, cos_t, sin_t = torch.from_numpy(theta), torch.from_numpy(cos), torch.from_numpy(sin)
        with self._lock:
            encryptor = self._encryptor
            if encryptor is None:
                raise RuntimeError("this noise generator has been closed")
            done = 0
            while done < pairs_total:
                pairs = min(chunk, pairs_total - done)
                written = encryptor.update_into(self._zeros[: _BLOCK * pairs], self._keystream_out)
                if written != _BLOCK * pairs:
                    raise RuntimeError(f"AES-CTR returned {written} bytes, expected {_BLOCK * pairs}")
                words = self._keystream[: _BLOCK * pairs].view("<u8").reshape(pairs, 2)
                b, r, t = bits[:pairs], radius[:pairs], theta[:pairs]
                # u1 = ((w0 >> 11) + 1) / 2^53 in (0, 1]: every step is exact in float64
                np.right_shift(words[:, 0], 11, out=b)
                np.add(b, 1, out=b)
                np.multiply(b, 2.0**-53, out=r)
                # r = sqrt(-2 ln u1), finite since u1 >= 2^-53
                np.log(r, out=r)
                np.multiply(r, -2.0, out=r)
                np.sqrt(r, out=r)
                # theta = 2 pi u2, u2 = (w1 >> 11) / 2^53 in [0, 1)
                np.right_shift(words[:, 1], 11, out=b)
                np.multiply(b, 2.0 * math.pi * 2.0**-53, out=t)
                # cos/sin through torch's vectorised float64 kernels (deterministic functions of theta,
                # no generator involved): numpy's float64 sin/cos are scalar libm calls, ~3x slower
                torch.cos(theta_t[:pairs], out=cos_t[:pairs])
                torch.sin(theta_t[:pairs], out=sin_t[:pairs])
                dest = pairs_view[done : done + pairs]
                np.multiply(r, cos[:pairs], out=dest[:, 0])
                np.multiply(r, sin[:pairs], out=dest[:, 1])
                done += pairs
            self._keystream.fill(0)  # no keystream left lying in the reused buffer

    def uniform(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` independent uniforms in ``[0, 1)`` (float64, multiples of 2^-53): the top 53 bits of
        each little-endian 64-bit word of the next ``ceil(n / 2)`` blocks of the stream.

        For the integer noise samplers (:mod:`secfed.dp.skellam`), which need uniforms, not normals."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        pairs_total = (n + 1) // 2
        out = np.empty(2 * pairs_total, dtype=np.float64)
        with self._lock:
            encryptor = self._encryptor
            if encryptor is None:
                raise RuntimeError("this noise generator has been closed")
            done = 0
            while done < pairs_total:
                pairs = min(_PAIRS_PER_CHUNK, pairs_total - done)
                written = encryptor.update_into(self._zeros[: _BLOCK * pairs], self._keystream_out)
                if written != _BLOCK * pairs:
                    raise RuntimeError(f"AES-CTR returned {written} bytes, expected {_BLOCK * pairs}")
                words = self._keystream[: _BLOCK * pairs].view("<u8")
                np.multiply(np.right_shift(words, 11), 2.0**-53, out=out[2 * done : 2 * (done + pairs)])
                done += pairs
            self._keystream.fill(0)
        return out[:n]

    def standard_normal(self, n: int) -> npt.NDArray[np.float64]:
        """``n`` independent N(0, 1) samples (float64), the next ``ceil(n / 2)`` blocks of the stream."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        out = np.empty(2 * ((n + 1) // 2), dtype=np.float64)
        self._fill(out)
        return out[:n]

    def gaussian(
        self,
        shape: Sequence[int] | torch.Size,
        *,
        std: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """N(0, std^2) noise of ``shape``: ``std * (Z1 + Z2 + Z3 + Z4) / 2`` from four consecutive
        :meth:`standard_normal` draws, summed in float64, rounded once to ``dtype``, moved to ``device``.

        Used for every coordinate of DP-SGD's noised gradient sum. ``std == 0`` returns zeros without
        touching the stream (no noise, as Opacus does for ``noise_multiplier = 0``).
        """
        if not isinstance(std, int | float) or isinstance(std, bool) or not math.isfinite(std) or std < 0:
            raise ValueError(f"std must be a finite number >= 0, got {std!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        size = math.prod(shape)
        if std == 0 or size == 0:
            return torch.zeros(tuple(shape), dtype=dtype, device=device)
        total = np.zeros(2 * ((size + 1) // 2), dtype=np.float64)
        draw = np.empty_like(total)
        for _ in range(_SUMMANDS):
            self._fill(draw)
            total += draw
        del draw
        total *= 0.5 * float(std)  # 0.5 * std is exact, so one rounding per coordinate
        noise = torch.from_numpy(total[:size]).to(dtype).reshape(tuple(shape))
        return noise.to(device)
