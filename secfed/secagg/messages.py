"""Protocol messages: plain, immutable values that the state machines take and return.

They carry no transport concerns; the gRPC layer converts them to and from protobuf. Ids are client
ids (the SAN of the client's certificate), never positions, so that a message means the same thing
whatever order a relay puts it in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secfed.crypto.kdf import encode_fields
from secfed.secagg.config import PROTOCOL_VERSION

ADVERT_CONTEXT = b"secfed/secagg/advertise/v1"
CONSISTENCY_CONTEXT = b"secfed/secagg/consistency/v1"
MASKED_INPUT_CONTEXT = b"secfed/secagg/masked-input/v1"
SHARE_COMMITMENT_CONTEXT = b"secfed/secagg/share-commitment/v2"


@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 1 upload: two fresh X25519 public keys, signed with the client's certificate key."""

    client_id: str
    round: int
    config_digest: bytes
    model_hash: bytes
    pk_cipher: bytes
    pk_mask: bytes
    signature: bytes
    cert_chain: tuple[bytes, ...]
    # Sessions of this round the client joined and abandoned without unmasking (secrets erased): its
    # signed word that no share of it will reveal them (see secfed.fl.releases).
    abandoned: tuple[bytes, ...] = ()

    def signed_payload(self) -> bytes:
        """The exact bytes the signature covers: context, version, round, id, keys, model, config and
        the abandoned sessions."""
        return encode_fields(
            ADVERT_CONTEXT,
            PROTOCOL_VERSION,
            self.round,
            self.client_id,
            self.pk_cipher,
            self.pk_mask,
            self.model_hash,
            self.config_digest,
            len(self.abandoned),
            *self.abandoned,
        )


@dataclass(frozen=True)
class AdvertBroadcast:
    """Phase 1 relay: every advert the server accepted (the set U1)."""

    round: int
    config_digest: bytes
    adverts: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class ShareCommitment:
    """A dealer's signed word on the two shares it sent one holder (see :func:`share_commitment_payload`).

    Makes shares attributable: a share revealed at unmask counts only if it hashes to ``s`` or ``b``,
    so a holder cannot substitute another (it would be caught as the liar), and shares that match
    yet do not lie on one polynomial, or reconstruct a secret that fails its public check, carry the
    dealer's own signature: the fault is provably the dealer's, never the holder's who forwarded them.
    """

    s: bytes
    b: bytes
    # The dealer's commitment to its self-mask seed (the same in every holder's commitment, and equal to
    # ShareKeysUpload.b_commitment): signed here so a reconstruction that fails it is provably the
    # dealer's fault (see secfed.secagg.faultproof).
    seed_commitment: bytes
    signature: bytes


def share_commitment_payload(
    session_id: bytes,
    dealer: str,
    holder: str,
    ciphertext_digest: bytes,
    commitment: ShareCommitment,
    pk_mask: bytes,
) -> bytes:
    """What a dealer signs for each holder: the session, both parties, the SHA-256 of the ciphertext
    (so a server that alters it in transit breaks the signature, and a holder's complaint about it is
    credible), the two share hashes, and the public checks of the two secrets (the seed commitment and
    the advertised mask key), so that shares failing those checks are the dealer's signed fault."""
    return encode_fields(
        SHARE_COMMITMENT_CONTEXT,
        session_id,
        dealer,
        holder,
        ciphertext_digest,
        commitment.s,
        commitment.b,
        commitment.seed_commitment,
        pk_mask,
    )


def ciphertext_digest(ciphertext: bytes) -> bytes:
    """The digest of a share ciphertext that a share commitment signs (a proof carries only this)."""
    return hashlib.sha256(ciphertext).digest()


@dataclass(frozen=True)
class ShareKeysUpload:
    """Phase 2 upload: one AES-GCM ciphertext of (s-share, b-share) per peer, a commitment to b, and
    per peer the dealer's signed commitment to the two shares."""

    session_id: bytes
    sender: str
    ciphertexts: Mapping[str, bytes]
    b_commitment: bytes
    commitments: Mapping[str, ShareCommitment] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareKeysRelay:
    """Phase 2 relay to one recipient: the ciphertexts addressed to it with their dealers' signed
    commitments (both keyed by dealer), and the set U2."""

    session_id: bytes
    recipient: str
    u2: tuple[str, ...]
    ciphertexts: Mapping[str, bytes]
    commitments: Mapping[str, ShareCommitment] = field(default_factory=dict)


@dataclass(frozen=True)
class ComputeReady:
    """Compute-phase upload: this client has computed its input and will upload it when asked.

    Nothing private has left the client yet: a session aborted before the masked-input phase opens
    released nothing, and the client may reuse its computed input in a retry.
    """

    session_id: bytes
    sender: str
    # Dealers whose shares to this client failed their signed commitment (see ShareCommitment), and, with
    # a complaint, this client's X25519 cipher private key of the session: anyone can then open the
    # dealer's ciphertext and see who lied (the complainer sends no input in this session).
    complaints: tuple[str, ...] = ()
    cipher_key: bytes = b""


@dataclass(frozen=True)
class MaskedInputRequest:
    """Masked-input relay: the clients that are ready (their inputs are what this session sums)."""

    session_id: bytes
    ready: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class MaskedInputUpload:
    """Phase 3 upload: the masked ring vector, one array per segment, signed by its sender.

    The signature (over :func:`masked_input_payload`) lets any cohort member check, later, that a
    masked input the server shows it really is the sender's: the basis of verified sums.
    """

    session_id: bytes
    sender: str
    spec_hash: bytes
    segments: Mapping[str, NDArray[np.unsignedinteger]]
    signature: bytes = b""

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.segments.values())


def masked_input_payload(msg: MaskedInputUpload, b_commitment: bytes) -> bytes:
    """What a client signs with its masked input: session, sender, spec, the vector's digest and the
    commitment to its self-mask seed (so a revealed seed can be checked against the signer's word)."""
    digest = hashlib.sha256()
    for name in sorted(msg.segments):
        values = np.ascontiguousarray(msg.segments[name])
        digest.update(encode_fields(name, values.dtype.str.replace(">", "<").replace("=", "<")))
        digest.update(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    return encode_fields(
        MASKED_INPUT_CONTEXT, msg.session_id, msg.sender, msg.spec_hash, digest.digest(), b_commitment
    )


@dataclass(frozen=True, eq=False)
class SumEvidence:
    """What lets a cohort member recompute a session's sum itself, every piece checkable.

    ``inputs``: the survivors' signed masked inputs; ``b_commitments`` and ``b_seeds``: each
    survivor's commitment and its reconstructed self-mask seed; ``mask_keys``: each dropped client's
    reconstructed mask private key. The server learned all of it anyway; showing it to the cohort
    lets each institution derive the next stage's plan from a sum it checked, not from the server's word.
    """

    session_id: bytes
    inputs: Mapping[str, MaskedInputUpload]
    b_commitments: Mapping[str, bytes]
    b_seeds: Mapping[str, bytes]
    mask_keys: Mapping[str, bytes]


@dataclass(frozen=True)
class ConsistencyRequest:
    """Phase 4 relay: the set U3 of clients whose masked input the server holds."""

    session_id: bytes
    u3: tuple[str, ...]


def consistency_payload(session_id: bytes, model_hash: bytes, u3: tuple[str, ...]) -> bytes:
    """What a client signs in phase 4: the session, the model, and the survivor set, sorted."""
    members = sorted(u3)
    return encode_fields(CONSISTENCY_CONTEXT, session_id, model_hash, len(members), *members)


@dataclass(frozen=True)
class ConsistencySignature:
    """Phase 4 upload: the client's signature over :func:`consistency_payload`."""

    session_id: bytes
    sender: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 5 relay: U3, the dropped set the server claims, and the phase-4 signatures (from U4)."""

    session_id: bytes
    u3: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: Mapping[str, bytes]


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 5 upload: b-shares of survivors and s-shares of dropped peers; never both for one peer.

    A holder reveals nothing it holds no valid share of (the dealers it complained about)."""

    session_id: bytes
    sender: str
    b_shares: Mapping[str, bytes]
    s_shares: Mapping[str, bytes]


@dataclass(frozen=True)
class RevealedShare:
    """One share a holder revealed at unmask, with what its dealer signed about it for that holder."""

    share: bytes
    ciphertext_digest: bytes
    commitment: ShareCommitment


@dataclass(frozen=True)
class DealingFaultProof:
    """Evidence anyone holding the consortium CA can check that ``dealer`` dealt a wrong sharing in
    session ``session_id``: at least ``t`` of its ``kind`` shares (``b"b"``: self-mask seed, ``b"s"``:
    mask key), each under the dealer's own signature for its holder, that do not lie on one polynomial
    or reconstruct a secret failing the public check the dealer signed with them (``seed_commitment``
    or ``pk_mask``). An honest dealer never signs such shares, so the proof cannot frame one; see
    :mod:`secfed.secagg.faultproof` for its check and for why it lets a round be retried safely."""

    session_id: bytes
    dealer: str
    kind: bytes
    cert_chain: tuple[bytes, ...]
    pk_mask: bytes
    seed_commitment: bytes
    shares: Mapping[str, RevealedShare]


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The session's output at the server: the ring sum, decoded values, and who contributed."""

    session_id: bytes
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    ring_sum: NDArray[np.unsignedinteger]
    values: dict[str, NDArray[np.float64]] = field(default_factory=dict)
