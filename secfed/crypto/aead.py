"""AES-256-GCM authenticated encryption for client-to-client messages.

Shamir shares of mask seeds are relayed between clients *through the server*,
which must learn nothing from them and must not be able to alter, swap or
replay them undetected.  AEAD gives confidentiality and integrity in one
primitive; the associated data binds each ciphertext to its context (protocol
label, round, sender, recipient via :func:`secfed.crypto.kdf.encode_fields`),
so a ciphertext moved to another context fails to open.

Nonces are 96 random bits from ``os.urandom``.  Random nonces are safe for up
to roughly 2^32 messages per key (NIST SP 800-38D §8.3); keys here are derived
per client pair and per round, so each key encrypts only a handful of
messages.  Random nonces avoid having to keep nonce-counter state consistent
across retries and restarts, where a repeat would be catastrophic for GCM.

Every failure to open (wrong key, wrong AD, tampering, truncation) is reported
as the single :class:`DecryptionError`, so callers cannot accidentally leak
*why* decryption failed and never need to import ``cryptography`` exceptions.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "DecryptionError", "open_sealed", "seal"]

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16


class DecryptionError(Exception):
    """A sealed message failed authentication or is malformed."""


def _check_key(key: bytes) -> None:
    # A wrong-length key is a programming error, not an attack: ValueError.
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM key must be {KEY_BYTES} bytes")


def _seal_with_nonce(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt with a caller-chosen nonce; only for known-answer tests.

    Production code must go through :func:`seal`, which picks the nonce: a
    repeated (key, nonce) pair would break both confidentiality and integrity.
    """
    _check_key(key)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    return bytes(nonce) + AESGCM(bytes(key)).encrypt(nonce, plaintext, associated_data)


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Return ``nonce (12 B) || ciphertext || tag (16 B)`` under a 32-byte key."""
    return _seal_with_nonce(key, os.urandom(NONCE_BYTES), plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Authenticate and decrypt a message produced by :func:`seal`.

    Raises :class:`DecryptionError` if the message is too short to hold a
    nonce and tag, or if authentication fails for any reason.
    """
    _check_key(key)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("sealed message is truncated")
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return AESGCM(bytes(key)).decrypt(nonce, body, associated_data)
    except InvalidTag:
        # Suppress the chained exception: the cause carries no useful detail
        # and callers should only ever see our own error type.
        raise DecryptionError("authentication failed") from None
