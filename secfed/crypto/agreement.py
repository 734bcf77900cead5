"""X25519 key agreement (RFC 7748).

Clients use X25519 to establish pairwise secrets: one for the AEAD channel
through which Shamir shares are relayed by the (untrusted) server, one as the
seed of the pairwise masks that cancel in the aggregate.  Public keys travel as
raw 32-byte strings so that they can be signed and length-checked without any
encoding ambiguity.

The raw shared secret returned by :func:`agree` must never be used as a key
directly; pass it through :func:`secfed.crypto.kdf.hkdf_sha256` with a
context-specific ``info``.

Low-order points: a malicious peer (or server substituting keys) can send a
public key of small order, which forces the shared secret to the all-zero
string regardless of our private key.  That would make the "secret" known to
everyone, so :func:`agree` rejects it (RFC 7748 §6.1 recommends this check).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "KEY_BYTES",
    "AgreementError",
    "KeyPair",
    "agree",
    "generate_keypair",
    "private_from_bytes",
    "private_to_bytes",
    "public_of",
]

KEY_BYTES = 32
_ZERO = bytes(KEY_BYTES)


class AgreementError(ValueError):
    """Raised for malformed keys or a degenerate (all-zero) shared secret."""


@dataclass(frozen=True, eq=False)
class KeyPair:
    """An X25519 private key together with its raw public key.

    ``eq=False`` keeps identity equality: comparing private keys by value would
    invite non-constant-time comparisons of secret material.
    """

    private: X25519PrivateKey
    public: bytes


def public_of(private: X25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key for ``private``."""
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair() -> KeyPair:
    """Generate a fresh key pair from the OS CSPRNG (via OpenSSL)."""
    private = X25519PrivateKey.generate()
    return KeyPair(private=private, public=public_of(private))


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Compute the raw 32-byte X25519 shared secret with ``peer_public``.

    Raises :class:`AgreementError` if ``peer_public`` is not exactly 32 bytes
    or if the result is all zeros (the peer sent a low-order point).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise AgreementError(f"X25519 public key must be {KEY_BYTES} bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        # OpenSSL itself refuses all-zero outputs; normalise to our error type.
        raise AgreementError("X25519 agreement failed (low-order peer public key)") from exc
    # Defence in depth in case a backend stops performing the check.
    if hmac.compare_digest(shared, _ZERO):
        raise AgreementError("X25519 shared secret is all zeros (low-order peer public key)")
    return shared


def private_to_bytes(private: X25519PrivateKey) -> bytes:
    """Serialize a private key as its raw 32-byte scalar (handle with care)."""
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte private key; raises :class:`AgreementError` on bad length."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise AgreementError(f"X25519 private key must be {KEY_BYTES} bytes")
    return X25519PrivateKey.from_private_bytes(raw)
