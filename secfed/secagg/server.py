"""The server side of secure aggregation: collects uploads per phase and, at the end, the cohort sum.

The coordinator drives it: ``receive_*`` for each arriving message (validated completely *before*
anything is summed, so a bad upload never corrupts the sum), and ``close_*`` when every expected
client has answered or the phase deadline has passed. Closing a phase fixes its survivor set; a message
for a closed phase is refused as late, so a client declared dropped can never slip its masked input
into the sum after the others were asked for its pairwise-mask shares.

Masked inputs are added into one running ring vector as they arrive: memory stays O(d), whatever the
cohort size, and no individual (masked) vector outlives its ``receive_masked_input`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
from cryptography import x509

from secfed.crypto import shamir
from secfed.crypto.agreement import AgreementError, agree, private_from_bytes, public_of
from secfed.crypto.identity import IdentityError, TrustAnchor, verify_signature
from secfed.secagg import derive
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import (
    UPLOAD_PHASES,
    BelowThresholdError,
    ConfigError,
    DealerFaultError,
    LateMessageError,
    MalformedInputError,
    MemberFaultError,
    Phase,
    PhaseOrderError,
    ShareDecryptionError,
    UnmaskError,
)
from secfed.secagg.faultproof import WrongDealingError, reconstruct_dealt
from secfed.secagg.fixedpoint import decode
from secfed.secagg.graph import CompleteGraph, Neighbourhood
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    AggregateResult,
    ComputeReady,
    ConsistencyRequest,
    ConsistencySignature,
    DealingFaultProof,
    MaskedInputRequest,
    MaskedInputUpload,
    RevealedShare,
    ShareKeysRelay,
    ShareKeysUpload,
    SumEvidence,
    UnmaskRequest,
    UnmaskResponse,
    ciphertext_digest,
    consistency_payload,
    masked_input_payload,
    share_commitment_payload,
)
from secfed.secagg.shares import open_dealt_shares
from secfed.secagg.unmask import remove_masks

_ORDER = [*UPLOAD_PHASES, Phase.DONE]
_MAX_CIPHERTEXT = 1024
_MAX_SIGNATURE = 512


class ServerSession:
    """The server's part in one secure-aggregation session."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        trust: TrustAnchor | None = None,
        graph: Neighbourhood | None = None,
        keep_inputs: bool = False,
    ) -> None:
        """``keep_inputs`` keeps every masked input (for small vectors only) so that, once the sum is
        known, :meth:`evidence` lets every contributor recompute and so verify it."""
        config.validate()
        if trust is not None and config.consortium != trust.consortium_id:
            raise ConfigError(Phase.CONFIGURE, "the session names another consortium than the server's CA")
        self._keep_inputs = keep_inputs
        self._inputs: dict[str, MaskedInputUpload] = {}
        self._evidence: SumEvidence | None = None
        self._config = config
        self._digest = config.digest()
        self._trust = trust
        self._graph: Neighbourhood = graph or CompleteGraph()
        self._phase = Phase.ADVERTISE
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._certs: dict[str, x509.Certificate] = {}
        self._sid = b""
        self._share_uploads: dict[str, ShareKeysUpload] = {}
        self._u2: frozenset[str] = frozenset()
        self._ready_from: set[str] = set()
        self._ready: frozenset[str] = frozenset()
        self._sum = np.zeros(0, dtype=config.spec.dtype)
        self._inputs_from: set[str] = set()
        self._u3: tuple[str, ...] = ()
        self._signatures: dict[str, bytes] = {}
        self._dropped: tuple[str, ...] = ()
        self._unmask: dict[str, UnmaskResponse] = {}
        self.abort_reason: str | None = None
        # Members caught lying in this session (a holder revealing a share its dealer did not sign for
        # it), with the reason: their messages are refused, and the coordinator leaves them out.
        self.faults: dict[str, str] = {}
        # Per dealer, the holders that reported its shares to them invalid (``ComputeReady.complaints``).
        self.complaints: dict[str, list[str]] = {}
        self._faulty_dealers: set[str] = set()

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def session_id(self) -> bytes:
        return self._sid

    @property
    def survivors(self) -> tuple[str, ...]:
        """U3: the clients whose masked input the server holds (empty before the consistency phase)."""
        return self._u3

    @property
    def config(self) -> SessionConfig:
        return self._config

    def expected(self) -> frozenset[str]:
        """Clients the current phase is waiting for (the survivors of the previous phase)."""
        return {
            Phase.ADVERTISE: frozenset(self._config.roster),
            Phase.SHARE_KEYS: frozenset(self._adverts),
            Phase.COMPUTE: self._u2,
            Phase.MASKED_INPUT: self._ready,
            Phase.CONSISTENCY: frozenset(self._u3),
            Phase.UNMASK: frozenset(self._signatures),
        }.get(self._phase, frozenset())

    def received(self) -> frozenset[str]:
        """Clients that have answered the current phase so far."""
        return {
            Phase.ADVERTISE: frozenset(self._adverts),
            Phase.SHARE_KEYS: frozenset(self._share_uploads),
            Phase.COMPUTE: frozenset(self._ready_from),
            Phase.MASKED_INPUT: frozenset(self._inputs_from),
            Phase.CONSISTENCY: frozenset(self._signatures),
            Phase.UNMASK: frozenset(self._unmask),
        }.get(self._phase, frozenset())

    def abort(self, reason: str) -> None:
        """Give up the session (deadline, operator, transport failure); nothing more is accepted."""
        self.abort_reason = reason
        self._phase = Phase.ABORTED
        self._sum = np.zeros(0, dtype=self._config.spec.dtype)
        self._share_uploads.clear()
        self._unmask.clear()

    # -- phase 1 -------------------------------------------------------------------------------
    def receive_advert(self, msg: AdvertiseKeys, *, peer_chain: Sequence[bytes] | None = None) -> None:
        """Accept a key advert; ``peer_chain`` is the TLS peer's certificate chain, when there is a transport."""
        who = msg.client_id
        self._expect(Phase.ADVERTISE, who)
        bad = self._malformed(Phase.ADVERTISE, who)
        if who not in self._config.roster:
            raise bad("client is not in the round roster")
        if who in self._adverts:
            raise bad("duplicate advert")
        if msg.round != self._config.round or msg.config_digest != self._digest:
            raise bad("advert is for another round or configuration")
        if msg.model_hash != self._config.model_hash:
            raise bad("advert names another global model")
        if len(msg.pk_cipher) != 32 or len(msg.pk_mask) != 32 or not msg.cert_chain:
            raise bad("malformed keys or empty certificate chain")
        if len(msg.abandoned) > 64 or any(len(sid) != 32 for sid in msg.abandoned):
            raise bad("malformed list of abandoned sessions")
        if peer_chain is not None and (not peer_chain or peer_chain[0] != msg.cert_chain[0]):
            raise bad("the advert's certificate is not the TLS peer's certificate")
        if self._trust is not None:
            try:
                peer = self._trust.verify_client(msg.cert_chain)
                if peer.client_id != who:
                    raise bad(f"certificate belongs to {peer.client_id!r}")
                verify_signature(peer.certificate, msg.signature, msg.signed_payload())
            except IdentityError as exc:
                raise bad(f"advert refused ({exc.reason}): {exc}") from exc
            self._certs[who] = peer.certificate
        self._adverts[who] = msg

    def close_advertise(self) -> AdvertBroadcast:
        self._expect(Phase.ADVERTISE, None)
        self._require(len(self._adverts), self._config.threshold, Phase.ADVERTISE, "adverts")
        adverts = tuple(self._adverts[c] for c in self._config.roster if c in self._adverts)
        self._sid = derive.session_id(self._config.round, self._digest, adverts)
        self._phase = Phase.SHARE_KEYS
        return AdvertBroadcast(round=self._config.round, config_digest=self._digest, adverts=adverts)

    # -- phase 2 -------------------------------------------------------------------------------
    def receive_shares(self, msg: ShareKeysUpload) -> None:
        who = msg.sender
        self._expect(Phase.SHARE_KEYS, who)
        bad = self._malformed(Phase.SHARE_KEYS, who)
        self._check_member(who, self._adverts, Phase.SHARE_KEYS, msg.session_id)
        if who in self._share_uploads:
            raise bad("duplicate share upload")
        if set(msg.ciphertexts) != self._graph.neighbours(who, self._adverts.keys()):
            raise bad("ciphertexts must be addressed to exactly the sender's neighbours in U1")
        if any(len(ct) > _MAX_CIPHERTEXT for ct in msg.ciphertexts.values()) or len(msg.b_commitment) != 32:
            raise bad("oversized ciphertext or malformed commitment")
        if set(msg.commitments) != set(msg.ciphertexts) | {who}:
            raise bad("share commitments must cover exactly the sender's neighbours and itself")
        for holder, commitment in msg.commitments.items():
            if (
                len(commitment.s) != 32
                or len(commitment.b) != 32
                or len(commitment.signature) > _MAX_SIGNATURE
            ):
                raise bad("malformed share commitment")
            if commitment.seed_commitment != msg.b_commitment:
                raise bad(f"share commitment for {holder!r} names another seed commitment")
            if who in self._certs:  # known when the session checks identities (always, in a deployment)
                digest = ciphertext_digest(msg.ciphertexts.get(holder, b""))
                try:
                    verify_signature(
                        self._certs[who],
                        commitment.signature,
                        share_commitment_payload(
                            self._sid, who, holder, digest, commitment, self._adverts[who].pk_mask
                        ),
                    )
                except IdentityError as exc:
                    raise bad(f"share commitment for {holder!r} is not signed by the sender") from exc
        self._share_uploads[who] = msg

    def close_share_keys(self) -> dict[str, ShareKeysRelay]:
        """Fix U2 and route every ciphertext to its recipient."""
        self._expect(Phase.SHARE_KEYS, None)
        self._require(len(self._share_uploads), self._config.threshold, Phase.SHARE_KEYS, "share uploads")
        self._u2 = frozenset(self._share_uploads)
        u2 = tuple(c for c in self._config.roster if c in self._u2)
        relays = {
            v: ShareKeysRelay(
                session_id=self._sid,
                recipient=v,
                u2=u2,
                ciphertexts={
                    u: self._share_uploads[u].ciphertexts[v] for u in self._graph.neighbours(v, self._u2)
                },
                commitments={
                    u: self._share_uploads[u].commitments[v] for u in self._graph.neighbours(v, self._u2)
                },
            )
            for v in u2
        }
        self._phase = Phase.COMPUTE
        return relays

    # -- local computation ---------------------------------------------------------------------
    def receive_ready(self, msg: ComputeReady) -> None:
        """A client of U2 has finished its local computation (nothing private is in this message)."""
        who = msg.sender
        self._expect(Phase.COMPUTE, who)
        self._check_member(who, self._u2, Phase.COMPUTE, msg.session_id)
        if who in self._ready_from:
            raise self._malformed(Phase.COMPUTE, who)("duplicate ready notice")
        complaints = set(msg.complaints)
        if len(complaints) != len(msg.complaints) or not complaints <= self._graph.neighbours(who, self._u2):
            raise self._malformed(Phase.COMPUTE, who)("complaints must name distinct neighbours in U2")
        if bool(complaints) != bool(msg.cipher_key) or len(msg.cipher_key) not in (0, 32):
            raise self._malformed(Phase.COMPUTE, who)(
                "a complaint comes with the 32-byte cipher key, and only then"
            )
        self._ready_from.add(who)
        if complaints:
            self._judge(who, msg.cipher_key, sorted(complaints))

    def close_compute(self) -> MaskedInputRequest:
        """Fix the ready set and open the masked-input phase for it (a short phase: inputs are computed).

        A judged complaint (:meth:`_judge`) ends the session here, before any input is released, so the
        retry without the liar may sum the same inputs.
        """
        self._expect(Phase.COMPUTE, None)
        if self.faults:  # a judged complaint: end before any input is released
            who = sorted(self.faults)[0]
            reason = "; ".join(f"{c}: {why}" for c, why in sorted(self.faults.items()))
            self.abort(f"{Phase.COMPUTE.value}: {reason}; ended before any input was released")
            error = DealerFaultError if who in self._faulty_dealers else MemberFaultError
            raise error(
                Phase.COMPUTE,
                f"{self.faults[who]}; ended before any input was released",
                client_id=who,
                evidence={"complainers": sorted(self.complaints.get(who, []))},
            )
        floor = max(self._config.threshold, self._config.min_cohort)
        self._require(len(self._ready_from), floor, Phase.COMPUTE, "clients ready")
        self._ready = frozenset(self._ready_from)
        self._sum = np.zeros(self._config.spec.total_length, dtype=self._config.spec.dtype)
        self._phase = Phase.MASKED_INPUT
        return MaskedInputRequest(
            session_id=self._sid, ready=tuple(c for c in self._config.roster if c in self._ready)
        )

    def _judge(self, holder: str, cipher_key: bytes, dealers: list[str]) -> None:
        """Decide a complaint with evidence anyone can check: the holder's revealed cipher private key
        (it must match its signed advert), the dealer's signed public key, ciphertext and share hashes.

        If the dealer's shares open and match, the complaint was false and the holder is the liar;
        otherwise the dealer is, provably (it signed what does not open or does not match)."""
        try:
            own = private_from_bytes(cipher_key)
            if public_of(own) != self._adverts[holder].pk_cipher:
                raise ValueError("it is not the key the holder advertised")
        except ValueError as exc:
            self.faults[holder] = f"complained with a cipher key that does not check ({exc})"
            return
        x = self._config.position(holder) + 1
        for dealer in dealers:
            self.complaints.setdefault(dealer, []).append(holder)
            upload = self._share_uploads[dealer]
            try:
                agreed = agree(own, self._adverts[dealer].pk_cipher)
                open_dealt_shares(
                    agreed,
                    self._sid,
                    dealer,
                    holder,
                    x,
                    upload.ciphertexts[holder],
                    upload.commitments[holder],
                )
            except (ShareDecryptionError, AgreementError) as exc:
                self.faults.setdefault(dealer, f"dealt shares that do not check: {exc}")
                self._faulty_dealers.add(dealer)
                continue
            self.faults.setdefault(holder, f"complained about {dealer!r}, whose shares to it open and match")

    # -- phase 3 -------------------------------------------------------------------------------
    def receive_masked_input(self, msg: MaskedInputUpload) -> None:
        """Validate a masked vector completely, then add it into the running sum."""
        who = msg.sender
        self._expect(Phase.MASKED_INPUT, who)
        bad = self._malformed(Phase.MASKED_INPUT, who)
        self._check_member(who, self._ready, Phase.MASKED_INPUT, msg.session_id)
        if who in self._inputs_from:
            raise bad("duplicate masked input")
        spec = self._config.spec
        if msg.spec_hash != spec.spec_hash():
            raise bad("spec hash does not match the session's vector spec")
        names = [s.name for s in spec.segments]
        unknown = sorted(set(msg.segments) - set(names))
        missing = [n for n in names if n not in msg.segments]
        if unknown or missing:
            raise bad(f"unknown segments {unknown}, missing segments {missing}")
        for seg in spec.segments:
            arr = msg.segments[seg.name]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
                raise bad(f"segment {seg.name!r} must be a {np.dtype(spec.dtype).name} array")
            if arr.shape != (seg.length,):
                raise bad(f"segment {seg.name!r} has shape {arr.shape}, expected ({seg.length},)")
        if self._keep_inputs and who in self._certs:
            # The signature makes the input evidence a member can check (verified sums); a sum that
            # is never shown as evidence gains nothing from the server hashing every input again.
            payload = masked_input_payload(msg, self._share_uploads[who].b_commitment)
            try:
                verify_signature(self._certs[who], msg.signature, payload)
            except IdentityError as exc:
                raise bad("masked input signature does not verify") from exc
        for name, (start, stop) in spec.offsets().items():
            view = self._sum[start:stop]
            np.add(view, msg.segments[name], out=view)
        if self._keep_inputs:
            self._inputs[who] = msg
        self._inputs_from.add(who)

    def close_masked_input(self) -> ConsistencyRequest:
        self._expect(Phase.MASKED_INPUT, None)
        floor = max(self._config.threshold, self._config.min_cohort)
        self._require(len(self._inputs_from), floor, Phase.MASKED_INPUT, "masked inputs")
        self._u3 = tuple(c for c in self._config.roster if c in self._inputs_from)
        self._phase = Phase.CONSISTENCY
        return ConsistencyRequest(session_id=self._sid, u3=self._u3)

    # -- phase 4 -------------------------------------------------------------------------------
    def receive_consistency(self, msg: ConsistencySignature) -> None:
        who = msg.sender
        self._expect(Phase.CONSISTENCY, who)
        self._check_member(who, set(self._u3), Phase.CONSISTENCY, msg.session_id)
        if who in self._signatures:
            raise self._malformed(Phase.CONSISTENCY, who)("duplicate consistency signature")
        if who in self._certs:
            payload = consistency_payload(self._sid, self._config.model_hash, self._u3)
            try:
                verify_signature(self._certs[who], msg.signature, payload)
            except IdentityError as exc:
                raise self._malformed(Phase.CONSISTENCY, who)("signature does not verify") from exc
        self._signatures[who] = msg.signature

    def close_consistency(self) -> UnmaskRequest:
        self._expect(Phase.CONSISTENCY, None)
        self._require(
            len(self._signatures), self._config.threshold, Phase.CONSISTENCY, "consistency signatures"
        )
        self._dropped = tuple(c for c in self._config.roster if c in self._u2 and c not in self._u3)
        self._phase = Phase.UNMASK
        return UnmaskRequest(
            session_id=self._sid, u3=self._u3, dropped=self._dropped, signatures=dict(self._signatures)
        )

    # -- phase 5 -------------------------------------------------------------------------------
    def receive_unmask(self, msg: UnmaskResponse) -> None:
        who = msg.sender
        self._expect(Phase.UNMASK, who)
        bad = self._malformed(Phase.UNMASK, who)
        self._check_member(who, self._signatures, Phase.UNMASK, msg.session_id)
        if who in self._unmask:
            raise bad("duplicate unmask response")
        holders_of = self._graph.neighbours(who, self._u2) | {who}
        if set(msg.b_shares) != set(self._u3) & holders_of:
            raise bad("b-shares must cover exactly the sender's surviving neighbours")
        if set(msg.s_shares) != set(self._dropped) & holders_of:
            raise bad("s-shares must cover exactly the sender's dropped neighbours")
        x = self._config.position(who) + 1
        for kind, shares in ((b"b", msg.b_shares), (b"s", msg.s_shares)):
            for dealer, raw in shares.items():
                try:
                    share = shamir.Share.from_bytes(raw)
                except ValueError as exc:
                    raise bad(f"malformed share: {exc}") from exc
                if share.x != x:
                    raise bad("share evaluation point does not match the sender's roster position")
                committed = self._share_uploads[dealer].commitments[who]
                if derive.share_hash(self._sid, dealer, who, kind, raw) != (
                    committed.s if kind == b"s" else committed.b
                ):
                    # The dealer signed what it sent this holder; the holder revealed something else.
                    reason = f"revealed a share of {dealer!r} that is not the one {dealer!r} signed for it"
                    self.faults[who] = reason
                    raise bad(reason)
        self._unmask[who] = msg

    def finalize(self) -> AggregateResult:
        """Reconstruct the self masks of survivors and the pair masks of the dropped, remove them, decode."""
        self._expect(Phase.UNMASK, None)
        t = self._config.threshold
        self._require(len(self._unmask), t, Phase.UNMASK, "unmask responses")
        b_seeds = {
            v: self._reconstruct(
                v, b"b", {h: r.b_shares[v] for h, r in self._unmask.items() if v in r.b_shares}
            )
            for v in self._u3
        }
        mask_keys = {
            u: self._reconstruct(
                u, b"s", {h: r.s_shares[u] for h, r in self._unmask.items() if u in r.s_shares}
            )
            for u in self._dropped
        }
        ring_sum = self._sum
        remove_masks(
            ring_sum,
            self._config,
            self._sid,
            survivors=self._u3,
            b_seeds=b_seeds,
            mask_keys=mask_keys,
            pk_mask={u: a.pk_mask for u, a in self._adverts.items()},
            graph=self._graph,
        )
        if self._keep_inputs:
            # What a verifier needs to recompute this sum itself (every piece checkable: the inputs
            # carry their senders' signatures, the seeds match their commitments, the keys their
            # advertised public halves). Nothing here is more than the server itself learned.
            self._evidence = SumEvidence(
                session_id=self._sid,
                inputs={u: self._inputs[u] for u in self._u3},
                b_commitments={u: self._share_uploads[u].b_commitment for u in self._u3},
                b_seeds=b_seeds,
                mask_keys=mask_keys,
            )
        self._inputs = {}
        self._phase = Phase.DONE
        self._share_uploads.clear()
        self._unmask.clear()
        return AggregateResult(
            session_id=self._sid,
            contributors=self._u3,
            dropped=self._dropped,
            ring_sum=ring_sum,
            values=decode(ring_sum, self._config.spec),
        )

    def evidence(self) -> SumEvidence | None:
        """After :meth:`finalize` of a session that keeps its inputs: the material to verify its sum."""
        return self._evidence

    def _reconstruct(self, owner: str, kind: bytes, revealed: Mapping[str, bytes]) -> bytes:
        """Reconstruct ``owner``'s ``kind`` secret from the shares its holders revealed, each already
        checked against the commitment ``owner`` signed for that holder.

        No subset search: every share here is the one the dealer signed for its holder. If they do
        not form one sharing of the secret the dealer's public check names, the dealing itself is
        wrong and provably the dealer's: :class:`DealerFaultError` names it and carries a
        :class:`DealingFaultProof` that every member can check (see :mod:`secfed.secagg.faultproof`).
        Too few shares blame no one (a dealer more holders complained about than could collude never
        gets here: :meth:`close_compute` ends the session first).
        """
        t = self._config.threshold
        if len(revealed) < t:
            raise UnmaskError(Phase.UNMASK, f"only {len(revealed)} valid shares, need {t}", client_id=owner)
        upload, advert = self._share_uploads[owner], self._adverts[owner]
        try:
            return reconstruct_dealt(
                [shamir.Share.from_bytes(raw) for raw in revealed.values()],
                t,
                kind=kind,
                session_id=self._sid,
                dealer=owner,
                seed_commitment=upload.b_commitment,
                pk_mask=advert.pk_mask,
            )
        except WrongDealingError as exc:
            raise DealerFaultError(
                Phase.UNMASK,
                str(exc),
                client_id=owner,
                evidence={"holders": sorted(revealed)},
                proof=self._fault_proof(owner, kind, revealed),
            ) from exc

    def _fault_proof(self, owner: str, kind: bytes, revealed: Mapping[str, bytes]) -> DealingFaultProof:
        """The revealed shares of ``owner`` with everything it signed about them, for members to check."""
        upload, advert = self._share_uploads[owner], self._adverts[owner]
        return DealingFaultProof(
            session_id=self._sid,
            dealer=owner,
            kind=kind,
            cert_chain=advert.cert_chain,
            pk_mask=advert.pk_mask,
            seed_commitment=upload.b_commitment,
            shares={
                holder: RevealedShare(
                    share=raw,
                    ciphertext_digest=ciphertext_digest(upload.ciphertexts.get(holder, b"")),
                    commitment=upload.commitments[holder],
                )
                for holder, raw in sorted(revealed.items())
            },
        )

    # -- helpers -------------------------------------------------------------------------------
    def _expect(self, phase: Phase, who: str | None) -> None:
        if self._phase is phase:
            return
        if self._phase is Phase.ABORTED:
            raise PhaseOrderError(phase, f"session aborted: {self.abort_reason}", client_id=who)
        if _ORDER.index(self._phase) > _ORDER.index(phase):
            raise LateMessageError(phase, f"phase closed (now {self._phase.value})", client_id=who)
        raise PhaseOrderError(phase, f"not open yet (now {self._phase.value})", client_id=who)

    def _require(self, have: int, need: int, phase: Phase, what: str) -> None:
        if have < need:
            self.abort(f"{phase.value}: only {have} {what}, need {need}")
            raise BelowThresholdError(phase, f"only {have} {what}, need {need}; session aborted")

    def _check_member(
        self, who: str, members: Collection[str] | Mapping[str, object], phase: Phase, sid: bytes
    ) -> None:
        if sid != self._sid:
            raise MalformedInputError(phase, "message belongs to another session", client_id=who)
        if who not in members:
            raise MalformedInputError(phase, "sender is not among this phase's participants", client_id=who)

    @staticmethod
    def _malformed(phase: Phase, who: str) -> Callable[[str], MalformedInputError]:
        return lambda message: MalformedInputError(phase, message, client_id=who)
