"""The client side of secure aggregation: a state machine that takes server messages and returns uploads.

Every check the design lists is made here, because the client is the party that must protect itself
from a lying server: adverts are verified against the pinned consortium CA and the round roster; the
configuration, model hash and round are bound into signatures; share ciphertexts are opened eagerly so
a misrouted one is caught before any input is sent; the dropped set is computed from the client's own
view and a server that lists a peer as both alive and dropped is refused; and one session answers at
most one unmask request, so both shares of a peer are never revealed. Any violation aborts the session
and erases its secrets.

Secrets are dropped from the object as soon as the session ends. Python cannot promise the memory is
overwritten (immutable ``bytes`` may linger until collected); what it guarantees is that nothing in the
process can reach them any more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
from cryptography import x509
from numpy.typing import ArrayLike, NDArray

from secfed.crypto import aead, shamir
from secfed.crypto.agreement import (
    AgreementError,
    KeyPair,
    agree,
    generate_keypair,
    private_from_bytes,
    private_to_bytes,
    public_of,
)
from secfed.crypto.identity import Identity, IdentityError, TrustAnchor, verify_signature
from secfed.crypto.prg import MaskAccumulator, Stream
from secfed.secagg import derive
from secfed.secagg.config import ClientPolicy, SessionConfig
from secfed.secagg.errors import (
    BelowThresholdError,
    ConfigError,
    ConfigMismatchError,
    InconsistentViewError,
    InvalidAdvertError,
    ModelHashMismatchError,
    Phase,
    PhaseOrderError,
    ReplayError,
    SecAggError,
    ShareDecryptionError,
    SignatureError,
)
from secfed.secagg.fixedpoint import EncodeReport, decode, encode
from secfed.secagg.graph import CompleteGraph, Neighbourhood
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    AggregateResult,
    ComputeReady,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInputRequest,
    MaskedInputUpload,
    ShareCommitment,
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

log = logging.getLogger("secfed.secagg")
P = ParamSpec("P")
R = TypeVar("R")


def _aborts_on_error(
    method: Callable[Concatenate[ClientSession, P], R],
) -> Callable[Concatenate[ClientSession, P], R]:
    """Any refusal ends the session and erases its secrets: a half-run session is never resumed."""

    def wrapper(self: ClientSession, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except SecAggError:
            if self._phase is not Phase.DONE:
                self._abort()
            raise

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class ClientSession:
    """One client's part in one secure-aggregation session."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustAnchor,
        config: SessionConfig,
        model_hash: bytes,
        inputs: Mapping[str, ArrayLike] | None = None,
        policy: ClientPolicy | None = None,
        graph: Neighbourhood | None = None,
        min_contributors: int | None = None,
        abandoned: tuple[bytes, ...] = (),
    ) -> None:
        self._phase = Phase.CONFIGURE
        self.client_id = identity.client_id
        policy = policy or ClientPolicy()
        policy.check(config)
        # The fewest contributors a sum this client helps unmask may have: at least c + 2, with c the
        # larger of the server's colluder bound and this institution's own, so any released sum
        # holds two honest institutions whatever c the server controls.
        self._floor = max(policy.release_floor(config), min_contributors or 0)
        if self._floor > len(config.roster):
            raise ConfigError(
                Phase.CONFIGURE, f"needs {self._floor} contributors, the roster has {len(config.roster)}"
            )
        if self.client_id not in config.roster:
            raise ConfigError(
                Phase.CONFIGURE, "this client is not in the round roster", client_id=self.client_id
            )
        if model_hash != config.model_hash:
            raise ModelHashMismatchError(
                Phase.CONFIGURE, "the configuration names a different global model than the one downloaded"
            )
        if config.consortium != trust.consortium_id:
            raise ConfigError(
                Phase.CONFIGURE,
                "the session names another consortium than this client's CA: its signatures would count "
                "in a federation this institution is not part of",
            )
        self._identity = identity
        self._trust = trust
        self._config = config
        self._digest = config.digest()
        self._graph: Neighbourhood = graph or CompleteGraph()
        self._inputs: Mapping[str, ArrayLike] | None = inputs
        self._cipher_keys: KeyPair | None = None
        self._mask_keys: KeyPair | None = None
        self._b_seed: bytes | None = None
        self._own_b_share: bytes | None = None
        self._peer_s_shares: dict[str, bytes] = {}
        self._peer_b_shares: dict[str, bytes] = {}
        # Dealers whose shares to this client did not match their signed commitment (or did not open):
        # nothing of theirs is revealed, and the unmask response names them.
        self._complaints: set[str] = set()
        # X25519(c_u, c_v) is symmetric: computed once to encrypt to v, reused to open v's shares.
        self._cipher_secrets: dict[str, bytes] = {}
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._certs: dict[str, x509.Certificate] = {}
        self._sid = b""
        self._u1: frozenset[str] = frozenset()
        self._u2: frozenset[str] = frozenset()
        self._ready_sent = False
        self._abandoned = tuple(abandoned)
        # Per earlier session id: the peers whose verified advert attests they abandoned it.
        self.abandonments: dict[bytes, set[str]] = {}
        self._u3: tuple[str, ...] = ()
        self.encode_report: EncodeReport | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def session_id(self) -> bytes:
        return self._sid

    @property
    def u2(self) -> frozenset[str]:
        """The clients that shared keys (known once the shares are relayed)."""
        return self._u2

    @property
    def survivors(self) -> frozenset[str]:
        """The survivor set U3 this client signed (empty before the consistency phase)."""
        return frozenset(self._u3)

    @property
    def holds_secrets(self) -> bool:
        """True while any key, seed or share is still reachable from this object."""
        return any(
            x is not None for x in (self._cipher_keys, self._mask_keys, self._b_seed, self._own_b_share)
        ) or bool(self._peer_s_shares or self._peer_b_shares or self._cipher_secrets)

    # -- phase 1 -------------------------------------------------------------------------------
    @_aborts_on_error
    def advertise(self) -> AdvertiseKeys:
        """Make two fresh X25519 key pairs and sign their public halves with the certificate key."""
        self._expect(Phase.CONFIGURE)
        self._cipher_keys = generate_keypair()
        self._mask_keys = generate_keypair()
        unsigned = AdvertiseKeys(
            client_id=self.client_id,
            round=self._config.round,
            config_digest=self._digest,
            model_hash=self._config.model_hash,
            pk_cipher=self._cipher_keys.public,
            pk_mask=self._mask_keys.public,
            signature=b"",
            cert_chain=self._identity.chain_der(),
            abandoned=self._abandoned,
        )
        self._phase = Phase.ADVERTISE
        return replace(unsigned, signature=self._identity.sign(unsigned.signed_payload()))

    # -- phase 2 -------------------------------------------------------------------------------
    @_aborts_on_error
    def on_advert_broadcast(self, msg: AdvertBroadcast) -> ShareKeysUpload:
        """Verify every advert, derive the session id, and send each peer its encrypted shares."""
        self._expect(Phase.ADVERTISE)
        phase = Phase.ADVERTISE
        if msg.round != self._config.round or msg.config_digest != self._digest:
            raise ReplayError(phase, "advert list is for another round or configuration")
        ids = [a.client_id for a in msg.adverts]
        if len(set(ids)) != len(ids):
            raise InvalidAdvertError(phase, "the advert list names a client twice")
        mine = next((a for a in msg.adverts if a.client_id == self.client_id), None)
        assert self._cipher_keys is not None and self._mask_keys is not None
        if mine is None or (mine.pk_cipher, mine.pk_mask) != (
            self._cipher_keys.public,
            self._mask_keys.public,
        ):
            raise InvalidAdvertError(phase, "the server dropped or replaced this client's own advert")
        if len(ids) < self._config.threshold:
            raise BelowThresholdError(
                phase, f"only {len(ids)} adverts, threshold is {self._config.threshold}"
            )
        for advert in msg.adverts:
            self._verify_advert(advert)
        keys = [k for a in msg.adverts for k in (a.pk_cipher, a.pk_mask)]
        if len(set(keys)) != len(keys):
            raise InvalidAdvertError(phase, "public keys are reused across adverts")
        self._adverts = {a.client_id: a for a in msg.adverts}
        self._u1 = frozenset(ids)
        for advert in msg.adverts:
            for earlier in advert.abandoned:
                self.abandonments.setdefault(earlier, set()).add(advert.client_id)
        self._sid = derive.session_id(self._config.round, self._digest, msg.adverts)

        self._b_seed = os.urandom(32)
        peers = self._graph.neighbours(self.client_id, self._u1)
        holders = sorted(peers | {self.client_id}, key=self._config.position)
        positions = [self._config.position(h) for h in holders]
        t = self._config.threshold
        s_shares = shamir.split(private_to_bytes(self._mask_keys.private), t, positions)
        b_shares = shamir.split(self._b_seed, t, positions)
        self._own_b_share = b_shares[self._config.position(self.client_id)].to_bytes()
        ciphertexts: dict[str, bytes] = {}
        commitments: dict[str, ShareCommitment] = {}
        seed_commitment = derive.b_commitment(self._sid, self.client_id, self._b_seed)
        for peer in sorted(peers):
            pos = self._config.position(peer)
            try:
                secret = agree(self._cipher_keys.private, self._adverts[peer].pk_cipher)
            except AgreementError as exc:
                raise InvalidAdvertError(
                    Phase.ADVERTISE, f"unusable cipher key: {exc}", client_id=peer
                ) from exc
            self._cipher_secrets[peer] = secret
            key = derive.share_key(secret, self._sid, self.client_id, peer)
            plaintext = derive.share_plaintext(
                self.client_id, peer, s_shares[pos].to_bytes(), b_shares[pos].to_bytes()
            )
            ciphertexts[peer] = aead.seal(key, plaintext, derive.share_ad(self._sid, self.client_id, peer))
            commitments[peer] = self._commit(
                peer, ciphertexts[peer], s_shares[pos], b_shares[pos], seed_commitment
            )
        me = self._config.position(self.client_id)
        commitments[self.client_id] = self._commit(
            self.client_id, b"", s_shares[me], b_shares[me], seed_commitment
        )
        del s_shares, b_shares
        self._phase = Phase.SHARE_KEYS
        return ShareKeysUpload(
            session_id=self._sid,
            sender=self.client_id,
            ciphertexts=ciphertexts,
            b_commitment=seed_commitment,
            commitments=commitments,
        )

    def _commit(
        self,
        holder: str,
        ciphertext: bytes,
        s_share: shamir.Share,
        b_share: shamir.Share,
        seed_commitment: bytes,
    ) -> ShareCommitment:
        """This dealer's signed word on the shares ``holder`` gets (its own included, ciphertext empty)."""
        assert self._mask_keys is not None
        unsigned = ShareCommitment(
            s=derive.share_hash(self._sid, self.client_id, holder, b"s", s_share.to_bytes()),
            b=derive.share_hash(self._sid, self.client_id, holder, b"b", b_share.to_bytes()),
            seed_commitment=seed_commitment,
            signature=b"",
        )
        payload = share_commitment_payload(
            self._sid, self.client_id, holder, ciphertext_digest(ciphertext), unsigned, self._mask_keys.public
        )
        return replace(unsigned, signature=self._identity.sign(payload))

    def _verify_advert(self, advert: AdvertiseKeys) -> None:
        phase = Phase.ADVERTISE
        who = advert.client_id
        if who not in self._config.roster:
            raise InvalidAdvertError(phase, "advert from a client outside the round roster", client_id=who)
        if advert.round != self._config.round:
            raise ReplayError(phase, f"advert signed for round {advert.round}", client_id=who)
        if advert.model_hash != self._config.model_hash:
            raise ModelHashMismatchError(phase, "peer was handed a different global model", client_id=who)
        if advert.config_digest != self._digest:
            raise ConfigMismatchError(
                phase, "peer was handed a different session configuration", client_id=who
            )
        if len(advert.pk_cipher) != 32 or len(advert.pk_mask) != 32 or advert.pk_cipher == advert.pk_mask:
            raise InvalidAdvertError(phase, "malformed or identical public keys", client_id=who)
        try:
            peer = self._trust.verify_client(advert.cert_chain)
        except IdentityError as exc:
            raise InvalidAdvertError(
                phase, f"certificate refused ({exc.reason}): {exc}", client_id=who
            ) from exc
        if peer.client_id != who:
            raise InvalidAdvertError(
                phase, f"certificate belongs to {peer.client_id!r}, not the advertised id", client_id=who
            )
        try:
            verify_signature(peer.certificate, advert.signature, advert.signed_payload())
        except IdentityError as exc:
            raise SignatureError(phase, "advert signature does not verify", client_id=who) from exc
        self._certs[who] = peer.certificate

    # -- phase 3: open the shares, then compute ----------------------------------------------
    @_aborts_on_error
    def on_share_relay(self, msg: ShareKeysRelay) -> None:
        """Open the shares addressed to this client; every check passes before any local work starts.

        The local computation (training, features) runs after this, and :meth:`ready` reports it done.
        """
        self._expect(Phase.SHARE_KEYS)
        phase = Phase.SHARE_KEYS
        self._check_session(msg.session_id, phase)
        if msg.recipient != self.client_id:
            raise ShareDecryptionError(phase, f"relay addressed to {msg.recipient!r}")
        u2 = frozenset(msg.u2)
        if len(u2) != len(msg.u2) or not u2 <= self._u1 or self.client_id not in u2:
            raise InconsistentViewError(
                phase, "U2 is not a duplicate-free subset of U1 containing this client"
            )
        if len(u2) < self._config.threshold:
            raise BelowThresholdError(phase, f"only {len(u2)} clients shared keys")
        peers = self._graph.neighbours(self.client_id, u2)
        if set(msg.ciphertexts) != peers or set(msg.commitments) != peers:
            raise InconsistentViewError(
                phase, "relayed ciphertexts or commitments do not match the neighbours in U2"
            )
        assert self._cipher_keys is not None and self._mask_keys is not None and self._b_seed is not None
        for sender, sealed in msg.ciphertexts.items():
            commitment = msg.commitments[sender]
            try:
                verify_signature(
                    self._certs[sender],
                    commitment.signature,
                    share_commitment_payload(
                        self._sid,
                        sender,
                        self.client_id,
                        ciphertext_digest(sealed),
                        commitment,
                        self._adverts[sender].pk_mask,
                    ),
                )
            except IdentityError as exc:
                # The server checked every dealer's signature on upload: an invalid one here was
                # altered in transit, by the server, not the dealer's doing.
                raise SignatureError(
                    phase, f"the relayed share commitment of {sender!r} is not signed by it"
                ) from exc
            try:
                s_raw, b_raw = open_dealt_shares(
                    self._cipher_secrets[sender],
                    self._sid,
                    sender,
                    self.client_id,
                    self._config.position(self.client_id) + 1,
                    sealed,
                    commitment,
                )
            except ShareDecryptionError as exc:
                # The dealer signed this ciphertext and commitment. This client complains in its ready
                # notice and reveals its cipher key for the session, so the server can open the same
                # ciphertext and see who lied; it then sends no input in this session (its key is out).
                self._complaints.add(sender)
                log.warning("share-complaint client=%s %s", self.client_id, exc)
                continue
            self._peer_s_shares[sender] = s_raw
            self._peer_b_shares[sender] = b_raw
        self._u2 = u2
        self._phase = Phase.COMPUTE

    @_aborts_on_error
    def ready(self, inputs: Mapping[str, ArrayLike] | None = None) -> ComputeReady:
        """Report the local computation done; ``inputs`` (unless given at construction) wait for the request.

        Nothing leaves the client here: the input is masked and sent only once the server opens the
        masked-input phase, so an attempt that fails before then has released nothing.
        """
        self._expect(Phase.COMPUTE)
        if self._ready_sent:
            raise PhaseOrderError(Phase.COMPUTE, "ready was already sent", client_id=self.client_id)
        if inputs is not None:
            self._inputs = inputs
        if self._inputs is None:
            raise PhaseOrderError(Phase.COMPUTE, "no input to contribute", client_id=self.client_id)
        self._ready_sent = True
        if not self._complaints:
            return ComputeReady(session_id=self._sid, sender=self.client_id)
        assert self._cipher_keys is not None
        return ComputeReady(
            session_id=self._sid,
            sender=self.client_id,
            complaints=tuple(sorted(self._complaints)),
            cipher_key=private_to_bytes(self._cipher_keys.private),
        )

    @_aborts_on_error
    def on_masked_input_request(self, msg: MaskedInputRequest) -> MaskedInputUpload:
        """Mask this client's input against every peer in U2 and upload it (the input is then released)."""
        self._expect(Phase.COMPUTE)
        phase = Phase.MASKED_INPUT
        self._check_session(msg.session_id, phase)
        if self._complaints:
            raise InconsistentViewError(
                phase,
                "this client revealed its cipher key with a complaint: it sends no input in this session",
            )
        if not self._ready_sent:
            raise PhaseOrderError(phase, "masked input requested before this client was ready")
        ready = frozenset(msg.ready)
        if len(ready) != len(msg.ready) or not ready <= self._u2 or self.client_id not in ready:
            raise InconsistentViewError(
                phase, "the ready set is not a duplicate-free subset of U2 containing this client"
            )
        if len(ready) < self._floor:
            raise BelowThresholdError(
                phase, f"only {len(ready)} clients are ready; at least {self._floor} needed"
            )
        assert self._inputs is not None
        ring, self.encode_report = encode(self._inputs, self._config.spec)
        self._inputs = None
        self._mask_in_place(ring, self._graph.neighbours(self.client_id, self._u2))
        self._phase = Phase.MASKED_INPUT
        spec = self._config.spec
        unsigned = MaskedInputUpload(
            session_id=self._sid,
            sender=self.client_id,
            spec_hash=spec.spec_hash(),
            segments={name: ring[a:b] for name, (a, b) in spec.offsets().items()},
        )
        assert self._b_seed is not None
        commitment = derive.b_commitment(self._sid, self.client_id, self._b_seed)
        return replace(unsigned, signature=self._identity.sign(masked_input_payload(unsigned, commitment)))

    def _mask_in_place(self, ring: NDArray[np.unsignedinteger], peers: frozenset[str]) -> None:
        """``y = x + PRG(b) + sum_{v after me} PRG(s_uv) - sum_{v before me} PRG(s_uv)`` in the ring."""
        assert self._mask_keys is not None and self._b_seed is not None
        spec = self._config.spec
        n, bits, spec_hash = spec.total_length, spec.ring_bits, spec.spec_hash()
        streams = [Stream(self._b_seed, self._sid, derive.self_label(self.client_id, spec_hash, n, bits))]
        me = self._config.position(self.client_id)
        for peer in sorted(peers, key=self._config.position):
            try:
                seed = agree(self._mask_keys.private, self._adverts[peer].pk_mask)
            except AgreementError as exc:
                raise InvalidAdvertError(
                    Phase.SHARE_KEYS, f"mask key agreement failed: {exc}", client_id=peer
                ) from exc
            low, high = (self.client_id, peer) if me < self._config.position(peer) else (peer, self.client_id)
            label = derive.pair_label(low, high, spec_hash, n, bits)
            streams.append(Stream(seed, self._sid, label, 1 if low == self.client_id else -1))
        MaskAccumulator(ring).add_all(streams)

    # -- phase 4 -------------------------------------------------------------------------------
    @_aborts_on_error
    def on_consistency_request(self, msg: ConsistencyRequest) -> ConsistencySignature:
        """Sign the survivor set U3, after checking it is a large enough subset of U2 with this client in it."""
        self._expect(Phase.MASKED_INPUT)
        phase = Phase.CONSISTENCY
        self._check_session(msg.session_id, phase)
        u3 = frozenset(msg.u3)
        if len(u3) != len(msg.u3) or not u3 <= self._u2 or self.client_id not in u3:
            raise InconsistentViewError(
                phase, "U3 is not a duplicate-free subset of U2 containing this client"
            )
        if len(u3) < self._floor:
            raise BelowThresholdError(
                phase, f"only {len(u3)} masked inputs; at least {self._floor} are needed"
            )
        self._u3 = tuple(sorted(u3))
        signature = self._identity.sign(consistency_payload(self._sid, self._config.model_hash, self._u3))
        self._phase = Phase.CONSISTENCY
        return ConsistencySignature(session_id=self._sid, sender=self.client_id, signature=signature)

    # -- phase 5 -------------------------------------------------------------------------------
    @_aborts_on_error
    def on_unmask_request(self, msg: UnmaskRequest) -> UnmaskResponse:
        """Reveal b-shares of survivors or s-shares of the dropped (own view), never both; then erase."""
        self._expect(Phase.CONSISTENCY)
        phase = Phase.UNMASK
        self._check_session(msg.session_id, phase)
        u3 = set(self._u3)
        dropped = self._u2 - u3
        claimed_dropped = set(msg.dropped)
        both = claimed_dropped & (u3 | set(msg.u3))
        if both:
            raise InconsistentViewError(phase, f"server lists {sorted(both)} as both alive and dropped")
        if set(msg.u3) != u3 or len(msg.u3) != len(u3):
            raise InconsistentViewError(phase, "U3 differs from the one this client signed")
        if claimed_dropped != dropped or len(msg.dropped) != len(claimed_dropped):
            raise InconsistentViewError(phase, "the server's dropped set differs from U2 minus U3")
        payload = consistency_payload(self._sid, self._config.model_hash, self._u3)
        signers = set(msg.signatures)
        if not signers <= u3:
            raise InconsistentViewError(phase, "consistency signatures from clients outside U3")
        if len(signers) < self._config.threshold:
            raise BelowThresholdError(phase, f"only {len(signers)} consistency signatures")
        for signer, signature in msg.signatures.items():
            cert = self._certs[signer]
            try:
                verify_signature(cert, signature, payload)
            except IdentityError as exc:
                raise SignatureError(
                    phase, "consistency signature does not verify", client_id=signer
                ) from exc
        b_shares = {v: self._peer_b_shares[v] for v in sorted(u3) if v in self._peer_b_shares}
        assert self._own_b_share is not None
        b_shares[self.client_id] = self._own_b_share
        s_shares = {u: self._peer_s_shares[u] for u in sorted(dropped) if u in self._peer_s_shares}
        self._erase()
        self._phase = Phase.DONE
        return UnmaskResponse(
            session_id=self._sid, sender=self.client_id, b_shares=b_shares, s_shares=s_shares
        )

    # -- after the session: verify its sum ------------------------------------------------------
    def verify_sum(self, evidence: SumEvidence) -> AggregateResult:
        """Recompute this session's sum from the server's evidence, checking every piece of it.

        Runs after this client's unmask response (only public session state is used). Each masked
        input must carry its sender's signature (over the commitment to its self-mask seed), the
        survivors must be exactly the U3 this client signed, each revealed seed must match its
        commitment and each dropped client's mask key its advertised public key. The result is the
        true cohort sum: a server can withhold it, never forge it.
        """
        phase = Phase.DONE
        if self._phase is not Phase.DONE:
            raise PhaseOrderError(self._phase, "a sum is verified only after this client's unmask response")
        self._check_session(evidence.session_id, phase)
        u3 = set(self._u3)
        dropped = self._u2 - u3
        if set(evidence.inputs) != u3 or set(evidence.b_seeds) != u3 or set(evidence.b_commitments) != u3:
            raise InconsistentViewError(phase, "the evidence's survivors are not the U3 this client signed")
        if set(evidence.mask_keys) != dropped:
            raise InconsistentViewError(phase, "the evidence's dropped set differs from U2 minus U3")
        spec = self._config.spec
        total = np.zeros(spec.total_length, dtype=spec.dtype)
        offsets = spec.offsets()
        for who in sorted(u3):
            msg = evidence.inputs[who]
            commitment = evidence.b_commitments[who]
            if msg.sender != who or msg.session_id != self._sid or msg.spec_hash != spec.spec_hash():
                raise InconsistentViewError(
                    phase, "a masked input is for another sender or session", client_id=who
                )
            try:
                verify_signature(self._certs[who], msg.signature, masked_input_payload(msg, commitment))
            except IdentityError as exc:
                raise SignatureError(phase, "masked input signature does not verify", client_id=who) from exc
            if derive.b_commitment(self._sid, who, evidence.b_seeds[who]) != commitment:
                raise SignatureError(
                    phase, "revealed self-mask seed does not match its commitment", client_id=who
                )
            for name, (a, b) in offsets.items():
                arr = np.asarray(msg.segments.get(name))
                if arr.dtype != np.dtype(spec.dtype) or arr.shape != (b - a,):
                    raise InconsistentViewError(phase, f"segment {name!r} is malformed", client_id=who)
                view = total[a:b]
                np.add(view, arr, out=view)
        for who, key in evidence.mask_keys.items():
            try:
                ok = public_of(private_from_bytes(key)) == self._adverts[who].pk_mask
            except (AgreementError, ValueError):
                ok = False
            if not ok:
                raise SignatureError(phase, "revealed mask key is not the advertised one", client_id=who)
        remove_masks(
            total,
            self._config,
            self._sid,
            survivors=self._u3,
            b_seeds=evidence.b_seeds,
            mask_keys=evidence.mask_keys,
            pk_mask={u: a.pk_mask for u, a in self._adverts.items()},
            graph=self._graph,
        )
        return AggregateResult(
            session_id=self._sid,
            contributors=self._u3,
            dropped=tuple(c for c in self._config.roster if c in dropped),
            ring_sum=total,
            values=decode(total, spec),
        )

    # -- helpers -------------------------------------------------------------------------------
    def _expect(self, phase: Phase) -> None:
        if self._phase is not phase:
            raise PhaseOrderError(
                self._phase, f"expected a message for phase {phase.value!r}", client_id=self.client_id
            )

    def _check_session(self, sid: bytes, phase: Phase) -> None:
        if sid != self._sid:
            raise ReplayError(phase, "message belongs to another session")

    def _erase(self) -> None:
        self._cipher_keys = None
        self._mask_keys = None
        self._b_seed = None
        self._own_b_share = None
        self._peer_s_shares.clear()
        self._peer_b_shares.clear()
        self._cipher_secrets.clear()
        self._inputs = None

    def abandon(self) -> None:
        """End the session from outside (the server aborted, a deadline passed): erase every secret."""
        if self._phase is not Phase.DONE:
            self._abort()

    def _abort(self) -> None:
        self._erase()
        self._phase = Phase.ABORTED
