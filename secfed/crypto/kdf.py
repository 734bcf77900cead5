"""HKDF-SHA256 and an injective field encoding for domain separation.

Every secret in the protocol (pairwise mask seeds, AEAD keys, PRG keys) is
derived from a raw Diffie-Hellman output or a random seed with HKDF (RFC 5869)
rather than used directly: raw X25519 outputs are not uniformly random byte
strings, and HKDF's ``info`` parameter lets one input secret feed several
independent keys without any of them revealing anything about the others.

That independence only holds if two different purposes can never produce the
same ``info``.  :func:`encode_fields` is the one place that turns structured
context (protocol labels, round numbers, client ids, ...) into bytes, and it
does so with a length-prefixed encoding that is injective, so two different
field tuples never collide.  The same encoding is used for AEAD associated data
and for signed payloads, where a collision would let an attacker re-interpret a
signature or ciphertext in another context.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["encode_fields", "hkdf_sha256"]

_HASH_LEN = 32
_MAX_OKM = 255 * _HASH_LEN  # RFC 5869 §2.3: L <= 255 * HashLen
_MAX_FIELD = 2**32 - 1  # must fit the 4-byte length prefix
_INT_BOUND = 2**64


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """Derive ``length`` bytes with HKDF-SHA256 (extract-then-expand, RFC 5869).

    ``salt`` and ``info`` are keyword-only and mandatory so that no caller can
    silently forget domain separation; pass ``b""`` explicitly when a salt is
    genuinely unavailable (RFC 5869 then uses a zero-filled key, which is
    equivalent).  ``length`` is checked against the RFC limit here so the error
    names the real cause instead of surfacing from deep inside the library.
    """
    if not 1 <= length <= _MAX_OKM:
        raise ValueError(f"HKDF-SHA256 output length must be in [1, {_MAX_OKM}], got {length}")
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info)
    return kdf.derive(ikm)


def encode_fields(*fields: bytes | str | int) -> bytes:
    """Encode a tuple of fields as an unambiguous byte string.

    Each field is first converted to bytes:

    * ``bytes`` (or ``bytearray``/``memoryview``) as-is;
    * ``str`` as UTF-8;
    * ``int`` as 8-byte big-endian unsigned, so it must lie in ``[0, 2**64)``
      (``ValueError`` otherwise).  ``bool`` is rejected (``TypeError``) because
      ``True`` silently becoming ``1`` is almost always a bug.

    and then emitted as a 4-byte big-endian length followed by those bytes.

    Why this is injective: the decoder reading the output left to right always
    knows where each field ends (the length comes first), so the byte string
    determines the exact sequence of converted fields, including their count
    and empty fields.  ``("ab", "c")`` and ``("a", "bc")`` therefore differ,
    which plain concatenation would not guarantee.

    The encoding is not type-tagged: ``"ab"`` and ``b"ab"`` encode identically,
    and ``7`` encodes like ``(7).to_bytes(8, "big")``.  Callers must use a fixed
    schema (a constant protocol label as the first field, and a fixed type at
    each position), which every call site in secfed does; within one schema
    the encoding is injective.
    """
    out = bytearray()
    for field in fields:
        raw: bytes
        if isinstance(field, bool):
            raise TypeError("bool is not an allowed field type; convert it explicitly")
        if isinstance(field, int):
            if not 0 <= field < _INT_BOUND:
                raise ValueError(f"integer field must be in [0, 2**64), got {field}")
            raw = field.to_bytes(8, "big")
        elif isinstance(field, str):
            raw = field.encode("utf-8")
        elif isinstance(field, bytes | bytearray | memoryview):
            raw = bytes(field)
        else:
            raise TypeError(f"unsupported field type {type(field).__name__}")
        if len(raw) > _MAX_FIELD:
            raise ValueError("field too long for a 4-byte length prefix")
        out += len(raw).to_bytes(4, "big")
        out += raw
    return bytes(out)
