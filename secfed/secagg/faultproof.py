"""A dealer's wrong sharing, decided from its own signatures, and the proof of it that members check.

Why a proof, and why it is enough to retry a round. A dealer can sign shares that each match its
commitments yet do not form one sharing of its secret (they do not lie on one polynomial, or they
reconstruct a secret other than the one its public check names). Holders cannot see that at
ShareKeys, each holding one share; the server sees it at unmask, after the masked inputs were sent and
the honest members revealed their shares of the survivors' seeds. The session's sum then cannot be
finished by an honest server, but a server colluding with the dealer can finish it (the dealer hands it
the secret): the server may hold the sum over the session's survivors U3.

A retry must therefore never let the server sum the honest members' same inputs over a cohort that
differs from U3 by an honest member (differencing). It may sum them over U3 minus members *proven*
malicious: the difference between the two sums is their inputs, which a colluding server knows anyway.
So the coordinator retries the round with exactly U3 minus the proven dealers, carrying the proof, and
each member re-releases its input only into that cohort and unmasks only that survivor set (see
:mod:`secfed.fl.releases`).

The proof is sound because everything in it is under the dealer's signature for this session: each
share's hash and the two public checks (seed commitment, advertised mask key) are in the payload the
dealer signed for each holder (:func:`~secfed.secagg.messages.share_commitment_payload`). An honest
dealer's signed shares, any ``t`` or more of them at distinct points, always reconstruct its committed
secret; so a set that does not was dealt wrong, whoever forwarded it (a share moved to another holder
breaks the signature, which names the holder). The threshold ``t`` is not taken
from the proof: the verifier uses the one of the session it took part in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set

from secfed.crypto import shamir
from secfed.crypto.agreement import private_from_bytes, public_of
from secfed.crypto.identity import IdentityError, TrustAnchor, verify_signature
from secfed.secagg import derive
from secfed.secagg.messages import DealingFaultProof, share_commitment_payload

__all__ = [
    "InvalidFaultProofError",
    "WrongDealingError",
    "check_fault_proof",
    "proven_dealers",
    "reconstruct_dealt",
]

_KINDS = (b"b", b"s")
log = logging.getLogger("secfed.secagg.faultproof")


class WrongDealingError(Exception):
    """The dealer's signed shares do not yield its committed secret: the fault is the dealer's."""


class InvalidFaultProofError(ValueError):
    """A fault proof does not establish the fault it claims (forged, incomplete or of an honest dealer)."""


def _matches(
    kind: bytes, secret: bytes, session_id: bytes, dealer: str, seed_commitment: bytes, pk_mask: bytes
) -> bool:
    """The public check of a reconstructed secret: the seed commitment for ``b``, the mask key for ``s``."""
    if kind == b"b":
        return derive.b_commitment(session_id, dealer, secret) == seed_commitment
    try:
        return public_of(private_from_bytes(secret)) == pk_mask
    except ValueError:  # not even a key: certainly not the advertised one
        return False


def reconstruct_dealt(
    shares: Sequence[shamir.Share],
    threshold: int,
    *,
    kind: bytes,
    session_id: bytes,
    dealer: str,
    seed_commitment: bytes,
    pk_mask: bytes,
) -> bytes:
    """``dealer``'s ``kind`` secret from shares already checked against its signed commitments, or
    :class:`WrongDealingError` if they do not form one sharing of the secret its public check names.

    The one rule both sides apply: the server when it unmasks, a member when it checks a proof."""
    try:
        secret = shamir.reconstruct_verified(shares, threshold)
    except shamir.ShamirError as exc:
        raise WrongDealingError(f"the shares it signed do not form one sharing of a secret ({exc})") from exc
    if not _matches(kind, secret, session_id, dealer, seed_commitment, pk_mask):
        raise WrongDealingError(
            "the shares it signed reconstruct a secret that does not match its own commitment"
        )
    return secret


def check_fault_proof(
    proof: DealingFaultProof, trust: TrustAnchor, threshold: int, members: Set[str] | None = None
) -> str:
    """The dealer's fault the proof establishes (a sentence), or :class:`InvalidFaultProofError`.

    ``threshold`` is the session's, as the verifier knows it from taking part, never the proof's word:
    with a smaller one any honest sharing would look wrong (so below 2, as in a record that lost it,
    nothing is proven). ``members``, when given, is the session's U2: every share's holder must be one."""
    if threshold < 2:
        raise InvalidFaultProofError(f"a threshold of {threshold} proves nothing (no session has one)")
    if proof.kind not in _KINDS:
        raise InvalidFaultProofError(f"unknown share kind {proof.kind!r}")
    strangers = sorted(set(proof.shares) - set(members)) if members is not None else []
    if strangers:
        raise InvalidFaultProofError(f"shares of holders outside the session: {strangers}")
    try:
        dealer = trust.verify_client(proof.cert_chain)
    except IdentityError as exc:
        raise InvalidFaultProofError(f"the dealer's certificate is refused ({exc.reason}): {exc}") from exc
    if dealer.client_id != proof.dealer:
        raise InvalidFaultProofError(f"the certificate belongs to {dealer.client_id!r}, not {proof.dealer!r}")
    shares: list[shamir.Share] = []
    for holder, revealed in sorted(proof.shares.items()):
        payload = share_commitment_payload(
            proof.session_id,
            proof.dealer,
            holder,
            revealed.ciphertext_digest,
            revealed.commitment,
            proof.pk_mask,
        )
        try:
            verify_signature(dealer.certificate, revealed.commitment.signature, payload)
        except IdentityError as exc:
            raise InvalidFaultProofError(
                f"the commitment for {holder!r} is not signed by the dealer"
            ) from exc
        if revealed.commitment.seed_commitment != proof.seed_commitment:
            raise InvalidFaultProofError(f"the commitment for {holder!r} names another seed commitment")
        committed = revealed.commitment.b if proof.kind == b"b" else revealed.commitment.s
        if derive.share_hash(proof.session_id, proof.dealer, holder, proof.kind, revealed.share) != committed:
            raise InvalidFaultProofError(f"the share of {holder!r} is not the one the dealer signed for it")
        try:
            shares.append(shamir.Share.from_bytes(revealed.share))
        except ValueError as exc:
            raise InvalidFaultProofError(f"the share of {holder!r} is malformed: {exc}") from exc
    # No check for two shares at one point: the holder is in each signed payload, so two can share a
    # point only if the dealer signed them so, which no honest dealer does (reconstruction then fails).
    if len(shares) < threshold:
        raise InvalidFaultProofError(
            f"only {len(shares)} signed shares, the session's threshold is {threshold}"
        )
    try:
        reconstruct_dealt(
            shares,
            threshold,
            kind=proof.kind,
            session_id=proof.session_id,
            dealer=proof.dealer,
            seed_commitment=proof.seed_commitment,
            pk_mask=proof.pk_mask,
        )
    except WrongDealingError as exc:
        return str(exc)
    raise InvalidFaultProofError("the signed shares reconstruct the committed secret: the dealing is sound")


def proven_dealers(
    proofs: Sequence[DealingFaultProof],
    trust: TrustAnchor,
    session_id: bytes,
    threshold: int,
    members: Set[str] | None = None,
) -> Mapping[str, str]:
    """Dealer -> fault, for each proof about ``session_id`` that checks; the others are ignored (a
    server's false proof proves nothing and earns nothing: the retry then needs the full cohort)."""
    found: dict[str, str] = {}
    for proof in proofs:
        if proof.session_id != session_id:
            continue
        try:
            found[proof.dealer] = check_fault_proof(proof, trust, threshold, members)
        # A proof is the server's bytes: whatever goes wrong while checking one (a refusal, or an
        # exception of a library parsing them), it proves nothing, and the other proofs still count.
        except Exception:
            log.warning("fault-proof-refused dealer=%r", proof.dealer, exc_info=True)
            continue
    return found
