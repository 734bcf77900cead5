"""Deterministic derivations shared by clients and server: session ids, keys, labels, commitments.

Keeping them in one place guarantees the two sides derive bit-identical values, and makes the domain
separation explicit: every derived key or stream is bound to the session id and to the ordered pair
or owner it belongs to, so nothing from one session, round, pair or purpose is usable in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from secfed.crypto.kdf import encode_fields, hkdf_sha256
from secfed.secagg.config import PROTOCOL_VERSION
from secfed.secagg.messages import AdvertiseKeys


def session_id(round_: int, config_digest: bytes, adverts: Iterable[AdvertiseKeys]) -> bytes:
    """SHA-256 over the sorted adverts' signed payloads, the round, the version and the config.

    Two clients given different key lists (a split view) compute different ids; every later message
    is bound to the id, so the split is detected at the latest in the consistency check.
    """
    payloads = [a.signed_payload() for a in sorted(adverts, key=lambda a: a.client_id)]
    return hashlib.sha256(
        encode_fields(
            b"secfed/secagg/session/v1", PROTOCOL_VERSION, round_, config_digest, len(payloads), *payloads
        )
    ).digest()


def share_key(shared_secret: bytes, sid: bytes, sender: str, recipient: str) -> bytes:
    """AES-256-GCM key for the shares ``sender`` encrypts to ``recipient`` (direction-bound)."""
    return hkdf_sha256(
        shared_secret,
        salt=sid,
        info=encode_fields(b"secfed/secagg/share-key/v1", sender, recipient),
        length=32,
    )


def share_ad(sid: bytes, sender: str, recipient: str) -> bytes:
    """Associated data of a share ciphertext: a ciphertext relayed to anyone else fails to open."""
    return encode_fields(b"secfed/secagg/share-ad/v1", sid, sender, recipient)


def share_plaintext(sender: str, recipient: str, s_share: bytes, b_share: bytes) -> bytes:
    return encode_fields(sender, recipient, s_share, b_share)


def pair_label(low: str, high: str, spec_hash: bytes, length: int, ring_bits: int) -> bytes:
    """PRG label of the pairwise mask between two clients, ``low`` first in roster order."""
    return encode_fields(b"pair", low, high, spec_hash, length, ring_bits)


def self_label(owner: str, spec_hash: bytes, length: int, ring_bits: int) -> bytes:
    """PRG label of a client's self mask (the one that protects it if it is wrongly declared dropped)."""
    return encode_fields(b"self", owner, spec_hash, length, ring_bits)


def share_hash(sid: bytes, dealer: str, holder: str, kind: bytes, share: bytes) -> bytes:
    """Hash commitment to one share (``kind`` ``b"s"`` or ``b"b"``), bound to the session and both parties.

    No salt: the secrets are 256-bit random values that already have public commitments (the
    b-commitment, the advertised mask key), so a share's hash lets fewer than ``t`` holders test a
    guess of the secret no better than those do."""
    return hashlib.sha256(encode_fields(b"secfed/secagg/share/v1", sid, dealer, holder, kind, share)).digest()


def b_commitment(sid: bytes, owner: str, b_seed: bytes) -> bytes:
    """Hash commitment to the self-mask seed, so the server can check a reconstruction."""
    return hashlib.sha256(encode_fields(b"secfed/secagg/b-commit/v1", sid, owner, b_seed)).digest()


def parse_fields(blob: bytes, count: int) -> list[bytes]:
    """Inverse of ``encode_fields`` for byte fields; ``ValueError`` unless exactly ``count`` fields."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ValueError("truncated field length")
        size = int.from_bytes(blob[pos : pos + 4], "big")
        pos += 4
        if pos + size > len(blob):
            raise ValueError("truncated field")
        fields.append(blob[pos : pos + size])
        pos += size
    if len(fields) != count:
        raise ValueError(f"expected {count} fields, got {len(fields)}")
    return fields
