"""Conversion between the SecAgg message dataclasses and their protobuf mirrors (``secfed.v1``).

The state machines in :mod:`secfed.secagg` know nothing of protobuf, and the generated classes know
nothing of the protocol; this module is the only place the two meet, so every field is mapped (and
tested) once. Each message type has a ``*_to_proto`` / ``*_from_proto`` pair; uploads are wrapped in an
``UploadEnvelope`` by :func:`envelope_to_bytes` / :func:`envelope_from_bytes`.

Decoding treats its input as hostile: a peer (or a lying server) controls every byte. Anything
malformed -- a truncated or garbled protobuf, an unknown enum tag, a vector whose byte length is not a
whole number of elements, a spec that does not validate -- raises :class:`~secfed.wire.WireError`
naming the field, never a bare ``ValueError``/``KeyError``/``DecodeError``. What the wire layer does
*not* judge is protocol meaning (is this sender in the roster, is this signature valid): the state
machines own those checks and report them with their own typed errors.

No gRPC import here: the conversions are pure functions over the generated message classes, so they
are tested without a network and usable from any transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

import numpy as np
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from secfed.fl.plaintext import PlaintextInput
from secfed.fl.policy import Refusal
from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import Phase
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    ComputeReady,
    ConsistencyRequest,
    ConsistencySignature,
    DealingFaultProof,
    MaskedInputRequest,
    MaskedInputUpload,
    RevealedShare,
    ShareCommitment,
    ShareKeysRelay,
    ShareKeysUpload,
    SumEvidence,
    UnmaskRequest,
    UnmaskResponse,
)
from secfed.secagg.spec import RingBits, Segment, VectorSpec
from secfed.wire import WireError

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "Refusal",
    "RelayMessage",
    "UploadMessage",
    "advert_broadcast_from_proto",
    "advert_broadcast_to_proto",
    "advert_from_proto",
    "advert_to_proto",
    "compute_ready_from_proto",
    "compute_ready_to_proto",
    "consistency_request_from_proto",
    "consistency_request_to_proto",
    "consistency_signature_from_proto",
    "consistency_signature_to_proto",
    "envelope_from_bytes",
    "envelope_to_bytes",
    "fault_proof_from_proto",
    "fault_proof_to_proto",
    "masked_input_from_proto",
    "masked_input_request_from_proto",
    "masked_input_request_to_proto",
    "masked_input_to_proto",
    "phase_from_proto",
    "phase_to_proto",
    "refusal_from_proto",
    "refusal_to_proto",
    "relay_from_instruction",
    "relay_into_instruction",
    "session_config_from_proto",
    "session_config_to_proto",
    "share_keys_relay_from_proto",
    "share_keys_relay_to_proto",
    "share_keys_upload_from_proto",
    "share_keys_upload_to_proto",
    "spec_from_proto",
    "spec_to_proto",
    "sum_evidence_from_proto",
    "sum_evidence_to_proto",
    "unmask_request_from_proto",
    "unmask_request_to_proto",
    "unmask_response_from_proto",
    "unmask_response_to_proto",
    "upload_kind",
]

#: Protobuf cannot parse a message of 2 GiB or more; an envelope that large is refused up front.
MAX_ENVELOPE_BYTES: Final = 2**31 - 1

Bytes = bytes | bytearray | memoryview


UploadMessage = (
    AdvertiseKeys
    | ShareKeysUpload
    | MaskedInputUpload
    | ConsistencySignature
    | UnmaskResponse
    | Refusal
    | PlaintextInput
    | ComputeReady
)
RelayMessage = AdvertBroadcast | ShareKeysRelay | MaskedInputRequest | ConsistencyRequest | UnmaskRequest

# ---------------------------------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------------------------------

_PHASE_TO_PB: Final[dict[Phase, pb.Phase]] = {
    Phase.CONFIGURE: pb.PHASE_CONFIGURE,
    Phase.ADVERTISE: pb.PHASE_ADVERTISE,
    Phase.SHARE_KEYS: pb.PHASE_SHARE_KEYS,
    Phase.COMPUTE: pb.PHASE_COMPUTE,
    Phase.MASKED_INPUT: pb.PHASE_MASKED_INPUT,
    Phase.CONSISTENCY: pb.PHASE_CONSISTENCY,
    Phase.UNMASK: pb.PHASE_UNMASK,
    Phase.DONE: pb.PHASE_DONE,
    Phase.ABORTED: pb.PHASE_ABORTED,
}
_PHASE_FROM_PB: Final[dict[int, Phase]] = {int(v): k for k, v in _PHASE_TO_PB.items()}

# Wire element type (always little-endian) per ring dtype tag. Decoding converts to the native order.
_RING_WIRE: Final[dict[int, np.dtype[np.unsignedinteger]]] = {
    int(pb.RING_DTYPE_UINT32): np.dtype("<u4"),
    int(pb.RING_DTYPE_UINT64): np.dtype("<u8"),
}
_RING_TAG_BY_SIZE: Final[dict[int, pb.RingDtype]] = {4: pb.RING_DTYPE_UINT32, 8: pb.RING_DTYPE_UINT64}


def phase_to_proto(phase: Phase | None) -> pb.Phase:
    """``None`` (no phase: not in a session, or an error outside any phase) maps to PHASE_UNSPECIFIED."""
    return pb.PHASE_UNSPECIFIED if phase is None else _PHASE_TO_PB[phase]


def phase_from_proto(value: int, *, field: str = "phase") -> Phase | None:
    """PHASE_UNSPECIFIED gives ``None``; a tag this version does not know is a :class:`WireError`."""
    if value == pb.PHASE_UNSPECIFIED:
        return None
    phase = _PHASE_FROM_PB.get(int(value))
    if phase is None:
        raise WireError(field, f"unknown phase tag {int(value)}")
    return phase


# ---------------------------------------------------------------------------------------------------
# Vector spec and session configuration
# ---------------------------------------------------------------------------------------------------


def spec_to_proto(spec: VectorSpec) -> pb.VectorSpecMsg:
    return pb.VectorSpecMsg(
        ring_bits=spec.ring_bits,
        segments=[
            pb.SegmentSpec(name=s.name, length=s.length, clip=float(s.clip), frac_bits=s.frac_bits)
            for s in spec.segments
        ],
    )


def spec_from_proto(
    msg: pb.VectorSpecMsg, *, field: str = "spec", max_total_length: int | None = None
) -> VectorSpec:
    """Rebuild a :class:`VectorSpec`, running its own validation (names, clip, ring overflow).

    ``max_total_length`` lets a client refuse a spec far larger than its model before anything sizes
    an array from it: the spec comes from the server, and a length of 2**60 must not reach ``np.empty``.
    """
    bits = int(msg.ring_bits)
    if bits not in (32, 64):
        raise WireError(f"{field}.ring_bits", f"must be 32 or 64, got {bits}")
    ring: RingBits = 32 if bits == 32 else 64
    segments: list[Segment] = []
    total = 0
    for i, s in enumerate(msg.segments):
        try:
            segments.append(Segment(s.name, int(s.length), clip=float(s.clip), frac_bits=int(s.frac_bits)))
        except ValueError as exc:
            raise WireError(f"{field}.segments[{i}]", str(exc)) from exc
        total += int(s.length)
        if max_total_length is not None and total > max_total_length:
            raise WireError(f"{field}.segments[{i}].length", f"total length exceeds {max_total_length}")
    try:
        return VectorSpec(tuple(segments), ring_bits=ring)
    except ValueError as exc:
        raise WireError(field, str(exc)) from exc


def session_config_to_proto(config: SessionConfig) -> pb.SessionConfigMsg:
    return pb.SessionConfigMsg(
        round=config.round,
        roster=list(config.roster),
        threshold=config.threshold,
        n_colluding=config.n_colluding,
        min_cohort=config.min_cohort,
        spec=spec_to_proto(config.spec),
        model_hash=config.model_hash,
        label=config.label,
        instruction_hash=config.instruction_hash,
        consortium=config.consortium,
    )


def session_config_from_proto(
    msg: pb.SessionConfigMsg, *, max_total_length: int | None = None
) -> SessionConfig:
    """Rebuild the configuration field for field, so its :meth:`~SessionConfig.digest` is unchanged.

    Deliberately does not call :meth:`SessionConfig.validate`: whether a configuration is *acceptable*
    is each client's policy decision (:class:`~secfed.secagg.config.ClientPolicy`), not the wire's.
    """
    if not msg.HasField("spec"):
        raise WireError("spec", "missing")
    return SessionConfig(
        round=int(msg.round),
        roster=tuple(msg.roster),
        threshold=int(msg.threshold),
        n_colluding=int(msg.n_colluding),
        min_cohort=int(msg.min_cohort),
        spec=spec_from_proto(msg.spec, max_total_length=max_total_length),
        model_hash=bytes(msg.model_hash),
        label=msg.label,
        instruction_hash=bytes(msg.instruction_hash),
        consortium=bytes(msg.consortium),
    )


# ---------------------------------------------------------------------------------------------------
# Phase 1: advertise keys
# ---------------------------------------------------------------------------------------------------


def advert_to_proto(m: AdvertiseKeys) -> pb.AdvertiseKeys:
    return pb.AdvertiseKeys(
        client_id=m.client_id,
        round=m.round,
        config_digest=m.config_digest,
        model_hash=m.model_hash,
        pk_cipher=m.pk_cipher,
        pk_mask=m.pk_mask,
        signature=m.signature,
        cert_chain=list(m.cert_chain),
        abandoned=list(m.abandoned),
    )


def advert_from_proto(msg: pb.AdvertiseKeys) -> AdvertiseKeys:
    return AdvertiseKeys(
        client_id=msg.client_id,
        round=int(msg.round),
        config_digest=bytes(msg.config_digest),
        model_hash=bytes(msg.model_hash),
        pk_cipher=bytes(msg.pk_cipher),
        pk_mask=bytes(msg.pk_mask),
        signature=bytes(msg.signature),
        cert_chain=tuple(bytes(c) for c in msg.cert_chain),
        abandoned=tuple(bytes(s) for s in msg.abandoned),
    )


def advert_broadcast_to_proto(m: AdvertBroadcast) -> pb.AdvertBroadcast:
    return pb.AdvertBroadcast(
        round=m.round,
        config_digest=m.config_digest,
        adverts=[advert_to_proto(a) for a in m.adverts],
    )


def advert_broadcast_from_proto(msg: pb.AdvertBroadcast) -> AdvertBroadcast:
    return AdvertBroadcast(
        round=int(msg.round),
        config_digest=bytes(msg.config_digest),
        adverts=tuple(advert_from_proto(a) for a in msg.adverts),
    )


# ---------------------------------------------------------------------------------------------------
# Phase 2: share keys
# ---------------------------------------------------------------------------------------------------


def _commitment_to_proto(c: ShareCommitment) -> pb.ShareCommitment:
    return pb.ShareCommitment(s=c.s, b=c.b, seed_commitment=c.seed_commitment, signature=c.signature)


def _commitment_from_proto(c: pb.ShareCommitment) -> ShareCommitment:
    return ShareCommitment(
        s=bytes(c.s), b=bytes(c.b), seed_commitment=bytes(c.seed_commitment), signature=bytes(c.signature)
    )


def _commitments_to_proto(commitments: Mapping[str, ShareCommitment]) -> dict[str, pb.ShareCommitment]:
    return {k: _commitment_to_proto(c) for k, c in commitments.items()}


def _commitments_from_proto(commitments: Mapping[str, pb.ShareCommitment]) -> dict[str, ShareCommitment]:
    return {k: _commitment_from_proto(c) for k, c in commitments.items()}


def fault_proof_to_proto(m: DealingFaultProof) -> pb.DealingFaultProof:
    return pb.DealingFaultProof(
        session_id=m.session_id,
        dealer=m.dealer,
        kind=m.kind,
        cert_chain=list(m.cert_chain),
        pk_mask=m.pk_mask,
        seed_commitment=m.seed_commitment,
        shares={
            holder: pb.RevealedShare(
                share=r.share,
                ciphertext_digest=r.ciphertext_digest,
                commitment=_commitment_to_proto(r.commitment),
            )
            for holder, r in m.shares.items()
        },
    )


def fault_proof_from_proto(msg: pb.DealingFaultProof) -> DealingFaultProof:
    """Decode a dealer-fault proof (its checks are :func:`secfed.secagg.faultproof.check_fault_proof`)."""
    return DealingFaultProof(
        session_id=bytes(msg.session_id),
        dealer=msg.dealer,
        kind=bytes(msg.kind),
        cert_chain=tuple(bytes(c) for c in msg.cert_chain),
        pk_mask=bytes(msg.pk_mask),
        seed_commitment=bytes(msg.seed_commitment),
        shares={
            holder: RevealedShare(
                share=bytes(r.share),
                ciphertext_digest=bytes(r.ciphertext_digest),
                commitment=_commitment_from_proto(r.commitment),
            )
            for holder, r in msg.shares.items()
        },
    )


def share_keys_upload_to_proto(m: ShareKeysUpload) -> pb.ShareKeysUpload:
    return pb.ShareKeysUpload(
        session_id=m.session_id,
        sender=m.sender,
        ciphertexts=dict(m.ciphertexts),
        b_commitment=m.b_commitment,
        commitments=_commitments_to_proto(m.commitments),
    )


def share_keys_upload_from_proto(msg: pb.ShareKeysUpload) -> ShareKeysUpload:
    return ShareKeysUpload(
        session_id=bytes(msg.session_id),
        sender=msg.sender,
        ciphertexts=dict(msg.ciphertexts),
        b_commitment=bytes(msg.b_commitment),
        commitments=_commitments_from_proto(msg.commitments),
    )


def share_keys_relay_to_proto(m: ShareKeysRelay) -> pb.ShareKeysRelay:
    return pb.ShareKeysRelay(
        session_id=m.session_id,
        recipient=m.recipient,
        u2=list(m.u2),
        ciphertexts=dict(m.ciphertexts),
        commitments=_commitments_to_proto(m.commitments),
    )


def share_keys_relay_from_proto(msg: pb.ShareKeysRelay) -> ShareKeysRelay:
    return ShareKeysRelay(
        session_id=bytes(msg.session_id),
        recipient=msg.recipient,
        u2=tuple(msg.u2),
        ciphertexts=dict(msg.ciphertexts),
        commitments=_commitments_from_proto(msg.commitments),
    )


# ---------------------------------------------------------------------------------------------------
# Local computation
# ---------------------------------------------------------------------------------------------------


def compute_ready_to_proto(m: ComputeReady) -> pb.ComputeReady:
    return pb.ComputeReady(
        session_id=m.session_id, sender=m.sender, complaints=list(m.complaints), cipher_key=m.cipher_key
    )


def compute_ready_from_proto(msg: pb.ComputeReady) -> ComputeReady:
    return ComputeReady(
        session_id=bytes(msg.session_id),
        sender=msg.sender,
        complaints=tuple(msg.complaints),
        cipher_key=bytes(msg.cipher_key),
    )


def masked_input_request_to_proto(m: MaskedInputRequest) -> pb.MaskedInputRequest:
    return pb.MaskedInputRequest(session_id=m.session_id, ready=list(m.ready))


def masked_input_request_from_proto(msg: pb.MaskedInputRequest) -> MaskedInputRequest:
    return MaskedInputRequest(session_id=bytes(msg.session_id), ready=tuple(msg.ready))


# ---------------------------------------------------------------------------------------------------
# Phase 3: masked input
# ---------------------------------------------------------------------------------------------------


def masked_input_to_proto(m: MaskedInputUpload) -> pb.MaskedInputUpload:
    """Each segment becomes little-endian bytes tagged with its ring dtype.

    Refuses (with :class:`WireError`) arrays that could not be decoded back to the same values:
    anything but a 1-D uint32/uint64 array. Byte order of the input does not matter.
    """
    segments: list[pb.Segment] = []
    for name, arr in m.segments.items():
        where = f"segments[{name}]"
        a = np.asarray(arr)
        if a.ndim != 1:
            raise WireError(where, f"must be a 1-D array, got shape {a.shape}")
        tag = _RING_TAG_BY_SIZE.get(a.dtype.itemsize) if a.dtype.kind == "u" else None
        if tag is None:
            raise WireError(f"{where}.dtype", f"must be uint32 or uint64, got {a.dtype}")
        little = a.astype(a.dtype.newbyteorder("<"), copy=False)
        segments.append(pb.Segment(name=name, dtype=tag, data=little.tobytes()))
    return pb.MaskedInputUpload(
        session_id=m.session_id,
        sender=m.sender,
        spec_hash=m.spec_hash,
        segments=segments,
        signature=m.signature,
    )


def masked_input_from_proto(msg: pb.MaskedInputUpload, spec: VectorSpec | None = None) -> MaskedInputUpload:
    """Decode the segments into native-order numpy arrays, checking every size before using it.

    Without ``spec`` the checks are structural: known dtype tag, byte length a whole number of
    elements, no duplicate names (a dict would silently keep only the last). With ``spec`` (the server
    knows the session's) the upload must also match it exactly -- spec hash, segment names, ring dtype
    and lengths -- so a wrong-sized vector is refused before any array is built from it.

    The arrays are copies (``frombuffer(...).astype(native)``): writable, native byte order, and not
    tied to the lifetime of the protobuf message.
    """
    wanted: dict[str, Segment] | None = None
    if spec is not None:
        if bytes(msg.spec_hash) != spec.spec_hash():
            raise WireError("spec_hash", "does not match the session's vector spec")
        wanted = {s.name: s for s in spec.segments}
    segments: dict[str, NDArray[np.unsignedinteger]] = {}
    for i, seg in enumerate(msg.segments):
        name = seg.name
        where = f"segments[{name}]" if name else f"segments[#{i}]"
        if name in segments:
            raise WireError(where, "duplicate segment name")
        wire = _RING_WIRE.get(int(seg.dtype))
        if wire is None:
            raise WireError(f"{where}.dtype", f"unknown ring dtype tag {int(seg.dtype)}")
        expected: Segment | None = None
        if wanted is not None and spec is not None:
            expected = wanted.get(name)
            if expected is None:
                raise WireError(where, "not a segment of the session's vector spec")
            if wire.itemsize * 8 != spec.ring_bits:
                raise WireError(
                    f"{where}.dtype", f"{wire.itemsize * 8}-bit elements in a {spec.ring_bits}-bit ring"
                )
        data = seg.data
        if len(data) % wire.itemsize:
            raise WireError(
                f"{where}.data", f"{len(data)} bytes is not a whole number of {wire.itemsize}-byte elements"
            )
        if expected is not None and len(data) // wire.itemsize != expected.length:
            raise WireError(
                f"{where}.data",
                f"holds {len(data) // wire.itemsize} elements, the spec says {expected.length}",
            )
        segments[name] = np.frombuffer(data, dtype=wire).astype(wire.newbyteorder("="))
    if spec is not None:
        missing = [s.name for s in spec.segments if s.name not in segments]
        if missing:
            raise WireError("segments", f"missing segments {missing}")
    return MaskedInputUpload(
        session_id=bytes(msg.session_id),
        sender=msg.sender,
        spec_hash=bytes(msg.spec_hash),
        segments=segments,
        signature=bytes(msg.signature),
    )


def sum_evidence_to_proto(m: SumEvidence) -> pb.SumEvidence:
    return pb.SumEvidence(
        session_id=m.session_id,
        inputs=[masked_input_to_proto(m.inputs[k]) for k in sorted(m.inputs)],
        b_commitments=dict(m.b_commitments),
        b_seeds=dict(m.b_seeds),
        mask_keys=dict(m.mask_keys),
    )


def sum_evidence_from_proto(msg: pb.SumEvidence, spec: VectorSpec) -> SumEvidence:
    """Decode evidence for a session of ``spec`` (every masked input is checked against it)."""
    inputs: dict[str, MaskedInputUpload] = {}
    for i, raw in enumerate(msg.inputs):
        try:
            upload = masked_input_from_proto(raw, spec)
        except WireError as exc:
            raise WireError(f"inputs[{i}].{exc.field}", exc.detail) from exc
        if upload.sender in inputs:
            raise WireError(f"inputs[{i}].sender", "duplicate sender")
        inputs[upload.sender] = upload
    return SumEvidence(
        session_id=bytes(msg.session_id),
        inputs=inputs,
        b_commitments=dict(msg.b_commitments),
        b_seeds=dict(msg.b_seeds),
        mask_keys=dict(msg.mask_keys),
    )


# ---------------------------------------------------------------------------------------------------
# Phase 4: consistency check
# ---------------------------------------------------------------------------------------------------


def consistency_request_to_proto(m: ConsistencyRequest) -> pb.ConsistencyRequest:
    return pb.ConsistencyRequest(session_id=m.session_id, u3=list(m.u3))


def consistency_request_from_proto(msg: pb.ConsistencyRequest) -> ConsistencyRequest:
    return ConsistencyRequest(session_id=bytes(msg.session_id), u3=tuple(msg.u3))


def consistency_signature_to_proto(m: ConsistencySignature) -> pb.ConsistencySignature:
    return pb.ConsistencySignature(session_id=m.session_id, sender=m.sender, signature=m.signature)


def consistency_signature_from_proto(msg: pb.ConsistencySignature) -> ConsistencySignature:
    return ConsistencySignature(
        session_id=bytes(msg.session_id), sender=msg.sender, signature=bytes(msg.signature)
    )


# ---------------------------------------------------------------------------------------------------
# Phase 5: unmask
# ---------------------------------------------------------------------------------------------------


def unmask_request_to_proto(m: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(
        session_id=m.session_id,
        u3=list(m.u3),
        dropped=list(m.dropped),
        signatures=dict(m.signatures),
    )


def unmask_request_from_proto(msg: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(
        session_id=bytes(msg.session_id),
        u3=tuple(msg.u3),
        dropped=tuple(msg.dropped),
        signatures=dict(msg.signatures),
    )


def unmask_response_to_proto(m: UnmaskResponse) -> pb.UnmaskResponse:
    return pb.UnmaskResponse(
        session_id=m.session_id,
        sender=m.sender,
        b_shares=dict(m.b_shares),
        s_shares=dict(m.s_shares),
    )


def unmask_response_from_proto(msg: pb.UnmaskResponse) -> UnmaskResponse:
    return UnmaskResponse(
        session_id=bytes(msg.session_id),
        sender=msg.sender,
        b_shares=dict(msg.b_shares),
        s_shares=dict(msg.s_shares),
    )


# ---------------------------------------------------------------------------------------------------
# Refusal
# ---------------------------------------------------------------------------------------------------


def refusal_to_proto(m: Refusal) -> pb.Refusal:
    return pb.Refusal(round=m.round, reason=m.reason)


def refusal_from_proto(msg: pb.Refusal) -> Refusal:
    return Refusal(round=int(msg.round), reason=msg.reason)


def plaintext_input_to_proto(m: PlaintextInput) -> pb.PlaintextInput:
    return pb.PlaintextInput(
        round=m.round,
        sender=m.sender,
        segments=[
            pb.PlaintextSegment(name=name, data=np.asarray(v, dtype="<f4").tobytes())
            for name, v in m.segments.items()
        ],
    )


def plaintext_input_from_proto(msg: pb.PlaintextInput) -> PlaintextInput:
    segments: dict[str, np.ndarray] = {}
    for i, seg in enumerate(msg.segments):
        if seg.name in segments:
            raise WireError(f"segments[{i}].name", f"duplicate segment {seg.name!r}")
        if len(seg.data) % 4:
            raise WireError(f"segments[{seg.name}].data", "length is not a multiple of 4 (float32)")
        segments[seg.name] = np.frombuffer(seg.data, dtype="<f4").astype(np.float32)
    return PlaintextInput(round=int(msg.round), sender=msg.sender, segments=segments)


# ---------------------------------------------------------------------------------------------------
# Upload envelope
# ---------------------------------------------------------------------------------------------------

# UploadKind tag -> the UploadEnvelope oneof member that kind must carry.
_KIND_MEMBER: Final[dict[int, str]] = {
    int(pb.UPLOAD_KIND_ADVERTISE_KEYS): "advertise_keys",
    int(pb.UPLOAD_KIND_SHARE_KEYS): "share_keys",
    int(pb.UPLOAD_KIND_MASKED_INPUT): "masked_input",
    int(pb.UPLOAD_KIND_CONSISTENCY_SIGNATURE): "consistency_signature",
    int(pb.UPLOAD_KIND_UNMASK_RESPONSE): "unmask_response",
    int(pb.UPLOAD_KIND_REFUSAL): "refusal",
    int(pb.UPLOAD_KIND_PLAINTEXT_INPUT): "plaintext_input",
    int(pb.UPLOAD_KIND_COMPUTE_READY): "compute_ready",
}


def upload_kind(message: UploadMessage) -> pb.UploadKind:
    """The header tag for an upload, so a stream's header can be written before its payload."""
    if isinstance(message, AdvertiseKeys):
        return pb.UPLOAD_KIND_ADVERTISE_KEYS
    if isinstance(message, ShareKeysUpload):
        return pb.UPLOAD_KIND_SHARE_KEYS
    if isinstance(message, MaskedInputUpload):
        return pb.UPLOAD_KIND_MASKED_INPUT
    if isinstance(message, ConsistencySignature):
        return pb.UPLOAD_KIND_CONSISTENCY_SIGNATURE
    if isinstance(message, UnmaskResponse):
        return pb.UPLOAD_KIND_UNMASK_RESPONSE
    if isinstance(message, PlaintextInput):
        return pb.UPLOAD_KIND_PLAINTEXT_INPUT
    if isinstance(message, ComputeReady):
        return pb.UPLOAD_KIND_COMPUTE_READY
    return pb.UPLOAD_KIND_REFUSAL


def envelope_to_bytes(message: UploadMessage) -> tuple[pb.UploadKind, bytes]:
    """Serialize an upload as an ``UploadEnvelope``; the kind goes in the stream header."""
    if isinstance(message, AdvertiseKeys):
        env = pb.UploadEnvelope(advertise_keys=advert_to_proto(message))
    elif isinstance(message, ShareKeysUpload):
        env = pb.UploadEnvelope(share_keys=share_keys_upload_to_proto(message))
    elif isinstance(message, MaskedInputUpload):
        env = pb.UploadEnvelope(masked_input=masked_input_to_proto(message))
    elif isinstance(message, ConsistencySignature):
        env = pb.UploadEnvelope(consistency_signature=consistency_signature_to_proto(message))
    elif isinstance(message, UnmaskResponse):
        env = pb.UploadEnvelope(unmask_response=unmask_response_to_proto(message))
    elif isinstance(message, PlaintextInput):
        env = pb.UploadEnvelope(plaintext_input=plaintext_input_to_proto(message))
    elif isinstance(message, ComputeReady):
        env = pb.UploadEnvelope(compute_ready=compute_ready_to_proto(message))
    else:
        env = pb.UploadEnvelope(refusal=refusal_to_proto(message))
    return upload_kind(message), env.SerializeToString()


def envelope_from_bytes(kind: int, data: Bytes, *, spec: VectorSpec | None = None) -> UploadMessage:
    """Parse an upload payload whose header declared ``kind``; the envelope must hold exactly that.

    ``spec`` is passed to :func:`masked_input_from_proto`, so a server that knows the session's spec
    refuses a wrong-sized vector while decoding. Field names in errors are prefixed with the envelope
    member (``"masked_input.segments[delta].data"``).
    """
    member = _KIND_MEMBER.get(int(kind))
    if member is None:
        raise WireError("kind", f"unknown upload kind {int(kind)}")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise WireError("envelope", f"{len(data)} bytes is more than protobuf can parse")
    env = pb.UploadEnvelope()
    try:
        # The runtime parses any buffer (bytearray, memoryview) without a copy; the stub says bytes.
        env.ParseFromString(cast(bytes, data))
    except DecodeError as exc:
        raise WireError("envelope", f"not a valid UploadEnvelope ({exc})") from exc
    held = env.WhichOneof("message")
    if held != member:
        raise WireError("kind", f"the header declares {member} but the envelope holds {held or 'nothing'}")
    try:
        if held == "advertise_keys":
            return advert_from_proto(env.advertise_keys)
        if held == "share_keys":
            return share_keys_upload_from_proto(env.share_keys)
        if held == "masked_input":
            return masked_input_from_proto(env.masked_input, spec)
        if held == "consistency_signature":
            return consistency_signature_from_proto(env.consistency_signature)
        if held == "unmask_response":
            return unmask_response_from_proto(env.unmask_response)
        if held == "plaintext_input":
            return plaintext_input_from_proto(env.plaintext_input)
        if held == "compute_ready":
            return compute_ready_from_proto(env.compute_ready)
        return refusal_from_proto(env.refusal)
    except WireError as exc:
        raise WireError(f"{held}.{exc.field}", exc.detail) from exc


# ---------------------------------------------------------------------------------------------------
# Relays inside an Instruction
# ---------------------------------------------------------------------------------------------------


def relay_into_instruction(instruction: pb.Instruction, relay: RelayMessage) -> None:
    """Set the ``step`` oneof of ``instruction`` to ``relay`` (the common fields are the caller's)."""
    if isinstance(relay, AdvertBroadcast):
        instruction.advert_broadcast.CopyFrom(advert_broadcast_to_proto(relay))
    elif isinstance(relay, ShareKeysRelay):
        instruction.share_keys_relay.CopyFrom(share_keys_relay_to_proto(relay))
    elif isinstance(relay, MaskedInputRequest):
        instruction.masked_input_request.CopyFrom(masked_input_request_to_proto(relay))
    elif isinstance(relay, ConsistencyRequest):
        instruction.consistency_request.CopyFrom(consistency_request_to_proto(relay))
    else:
        instruction.unmask_request.CopyFrom(unmask_request_to_proto(relay))


def relay_from_instruction(instruction: pb.Instruction) -> RelayMessage | None:
    """The SecAgg relay an instruction carries, or ``None`` if its step is not a relay."""
    step = instruction.WhichOneof("step")
    if step == "advert_broadcast":
        return advert_broadcast_from_proto(instruction.advert_broadcast)
    if step == "share_keys_relay":
        return share_keys_relay_from_proto(instruction.share_keys_relay)
    if step == "masked_input_request":
        return masked_input_request_from_proto(instruction.masked_input_request)
    if step == "consistency_request":
        return consistency_request_from_proto(instruction.consistency_request)
    if step == "unmask_request":
        return unmask_request_from_proto(instruction.unmask_request)
    return None
