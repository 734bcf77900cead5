"""Opening the shares a dealer sent one holder, and checking them against the dealer's signed word.

One function for both sides, because both must reach the same verdict: the holder opens its shares at
ShareKeys and complains if they are bad; the server, given the complaining holder's revealed cipher key
(see :class:`secfed.secagg.messages.ComputeReady`), opens the very same ciphertext and decides who lied:
the dealer signed the ciphertext and the share hashes, and anyone can recompute the share key from the
holder's revealed private key and the dealer's signed public key, so a failure here is the dealer's and
a success means the complaint was false.
"""

from __future__ import annotations

from secfed.crypto import aead, shamir
from secfed.secagg import derive
from secfed.secagg.errors import Phase, ShareDecryptionError
from secfed.secagg.messages import ShareCommitment

__all__ = ["open_dealt_shares"]


def open_dealt_shares(
    agreed: bytes,
    session_id: bytes,
    dealer: str,
    holder: str,
    holder_x: int,
    sealed: bytes,
    commitment: ShareCommitment,
) -> tuple[bytes, bytes]:
    """The (s-share, b-share) bytes ``dealer`` sent ``holder``, or :class:`ShareDecryptionError` naming
    the dealer. ``agreed`` is their X25519 shared secret, ``holder_x`` the holder's evaluation point."""
    phase = Phase.SHARE_KEYS
    key = derive.share_key(agreed, session_id, dealer, holder)
    try:
        plaintext = aead.open_sealed(key, sealed, derive.share_ad(session_id, dealer, holder))
        frm, to, s_raw, b_raw = derive.parse_fields(plaintext, 4)
        s_share, b_share = shamir.Share.from_bytes(s_raw), shamir.Share.from_bytes(b_raw)
    except (aead.DecryptionError, ValueError) as exc:
        raise ShareDecryptionError(phase, f"share ciphertext does not open: {exc}", client_id=dealer) from exc
    if (frm.decode(errors="replace"), to.decode(errors="replace")) != (dealer, holder):
        raise ShareDecryptionError(phase, "share plaintext names other parties", client_id=dealer)
    if s_share.x != holder_x or b_share.x != holder_x:
        raise ShareDecryptionError(phase, "share is for another roster position", client_id=dealer)
    bad = [
        name
        for name, kind, raw, committed in (
            ("s-share", b"s", s_raw, commitment.s),
            ("b-share", b"b", b_raw, commitment.b),
        )
        if derive.share_hash(session_id, dealer, holder, kind, raw) != committed
    ]
    if bad:
        raise ShareDecryptionError(
            phase, f"{' and '.join(bad)} do not match the dealer's signed commitment", client_id=dealer
        )
    return s_raw, b_raw
