"""Shamir t-of-n secret sharing of 32-byte secrets.

Each client shares its self-mask seed and its pairwise-agreement private key
among the other clients, so that the server can recover exactly one of the two
for every client after dropouts, but only with the help of ``threshold``
honest survivors.  Shamir's scheme is information-theoretically hiding: any
``threshold - 1`` shares are consistent with every possible secret, so a
coalition below the threshold learns nothing, regardless of computing power.

Field choice: the secret is read as a 256-bit big-endian integer and used as
the constant term of a random polynomial over GF(p) with ``p = 2**521 - 1``.

* ``p > 2**256`` so every 32-byte secret is a field element as-is; no
  reduction (which would lose information) and no chunking.
* It is a Mersenne prime, a constant anyone can verify and nobody can have
  chosen with a hidden structure.
* Because the field is ~2^265 times larger than the secret space, a
  reconstruction from garbled shares, or from shares of different sharings,
  lands at or above 2**256 with overwhelming probability, which
  :func:`reconstruct` reports as an error instead of returning garbage.  This
  is a sanity check, *not* integrity: Shamir is linear, so an adversary who
  adds ``d`` to a share shifts the result by a known small multiple of ``d``
  undetected.  Shares must therefore travel authenticated (AEAD).

The price is 66-byte share values, irrelevant next to model updates.

Evaluation points are ``x = roster position + 1`` (``x = 0`` would hand out
the secret itself) and are serialized in 2 bytes, so positions are limited to
``[0, 65535)``.  Random coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import functools
import operator
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "ShamirError",
    "Share",
    "reconstruct",
    "reconstruct_verified",
    "split",
]

PRIME: Final = 2**521 - 1
SECRET_BYTES: Final = 32
SHARE_BYTES: Final = (PRIME.bit_length() + 7) // 8  # 66: fixed width of a serialized share value
_X_BYTES: Final = 2
_MAX_X: Final = 2 ** (8 * _X_BYTES) - 1  # 65535
_SECRET_BOUND: Final = 2 ** (8 * SECRET_BYTES)


class ShamirError(ValueError):
    """Invalid parameters, malformed shares, or shares that do not reconstruct."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Share:
    """One point ``(x, f(x))`` on the sharing polynomial.

    Validated on construction so that no out-of-range value (for example
    ``x = 0``, which would be the secret itself) can reach interpolation.
    """

    x: int
    value: int

    def __post_init__(self) -> None:
        if not _is_int(self.x) or not 1 <= self.x <= _MAX_X:
            raise ShamirError(f"share x must be an int in [1, {_MAX_X}], got {self.x!r}")
        if not _is_int(self.value) or not 0 <= self.value < PRIME:
            raise ShamirError("share value must be an int in [0, PRIME)")

    def to_bytes(self) -> bytes:
        """Fixed-width encoding: 2-byte big-endian ``x`` then ``SHARE_BYTES`` big-endian value."""
        return self.x.to_bytes(_X_BYTES, "big") + self.value.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Parse :meth:`to_bytes` output; raises :class:`ShamirError` on bad width or range."""
        if len(raw) != _X_BYTES + SHARE_BYTES:
            raise ShamirError(f"serialized share must be {_X_BYTES + SHARE_BYTES} bytes, got {len(raw)}")
        return cls(
            x=int.from_bytes(raw[:_X_BYTES], "big"),
            value=int.from_bytes(raw[_X_BYTES:], "big"),
        )


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    """Horner evaluation of ``sum(coeffs[i] * x**i)`` mod PRIME."""
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, threshold: int, positions: Sequence[int]) -> dict[int, Share]:
    """Share ``secret`` so that any ``threshold`` of the holders can recover it.

    Returns ``{position: Share(x=position + 1, ...)}`` for each distinct
    0-based roster position.  The ``threshold - 1`` non-constant coefficients
    are uniform in GF(p), which is what makes fewer shares reveal nothing.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be exactly {SECRET_BYTES} bytes")
    try:
        # operator.index normalises numpy integers to int and rejects floats.
        pos = [operator.index(p) for p in positions]
    except TypeError as exc:
        raise ShamirError("positions must be integers") from exc
    if len(set(pos)) != len(pos):
        raise ShamirError("positions must be distinct")
    for p in pos:
        if not 0 <= p < _MAX_X:
            raise ShamirError(f"position must be in [0, {_MAX_X}), got {p}")
    if not _is_int(threshold) or not 1 <= threshold <= len(pos):
        raise ShamirError(f"threshold must be in [1, {len(pos)}], got {threshold!r}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {p: Share(x=p + 1, value=_eval_poly(coeffs, p + 1)) for p in pos}


@functools.lru_cache(maxsize=64)
def _barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``1 / prod_{j != i} (x_i - x_j)`` for each basis point (cached: the same holders answer for
    most dealers, so a session inverts once per holder set, not once per term)."""
    weights = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den = den * (xi - xj) % PRIME
        weights.append(pow(den, -1, PRIME))
    return tuple(weights)


def _evaluate(points: Sequence[tuple[int, int]], at: int) -> int:
    """Lagrange interpolation of the unique degree < len(points) polynomial, evaluated at ``at``.

    ``f(at) = sum_i y_i * w_i * prod_{j != i} (at - x_j)`` with the weights above; the products come
    from prefix and suffix products of ``at - x_j``. The points must have distinct x, so every
    weight exists.
    """
    xs = tuple(x for x, _ in points)
    weights = _barycentric_weights(xs)
    diffs = [(at - x) % PRIME for x in xs]
    prefix = [1]
    for d in diffs[:-1]:
        prefix.append(prefix[-1] * d % PRIME)
    total, suffix = 0, 1
    for i in range(len(xs) - 1, -1, -1):
        total = (total + points[i][1] * weights[i] % PRIME * prefix[i] % PRIME * suffix) % PRIME
        suffix = suffix * diffs[i] % PRIME
    return total


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares.

    All shares are checked first: a repeated ``x`` with the same value is
    tolerated (the same share delivered twice), a repeated ``x`` with a
    different value is an error.  Exactly the first ``threshold`` distinct
    shares are then interpolated; extra shares are *not* cross-checked, so
    shares must be authenticated (they travel under AEAD).  A result
    ``>= 2**256`` cannot be a secret and means the shares were garbled or came
    from different sharings; a deliberate small additive tweak is *not*
    caught here (see the module docstring).
    """
    if not _is_int(threshold) or threshold < 1:
        raise ShamirError(f"threshold must be a positive int, got {threshold!r}")
    distinct: dict[int, int] = {}
    for share in shares:
        if not isinstance(share, Share):
            raise ShamirError(f"expected Share, got {type(share).__name__}")
        seen = distinct.setdefault(share.x, share.value)
        if seen != share.value:
            raise ShamirError(f"conflicting shares for x={share.x}")
    if len(distinct) < threshold:
        raise ShamirError(f"need {threshold} distinct shares, got {len(distinct)}")
    points = list(distinct.items())[:threshold]  # dicts keep first-insertion order
    secret = _evaluate(points, 0)
    if secret >= _SECRET_BOUND:
        raise ShamirError("reconstruction out of range: shares are corrupt or inconsistent")
    return secret.to_bytes(SECRET_BYTES, "big")


def reconstruct_verified(shares: Sequence[Share], threshold: int) -> bytes:
    """Like :func:`reconstruct`, but every share must lie on the one polynomial the first ``threshold``
    define: for shares known to be the dealer's own (each checked against its signed commitment), a
    share off the polynomial proves an inconsistent dealing rather than a corrupt holder."""
    secret = reconstruct(shares, threshold)
    distinct = list({s.x: s.value for s in shares}.items())
    basis = distinct[:threshold]
    for x, value in distinct[threshold:]:
        if _evaluate(basis, x) != value:
            raise ShamirError(
                f"share x={x} does not lie on the polynomial of the others: inconsistent dealing"
            )
    return secret
