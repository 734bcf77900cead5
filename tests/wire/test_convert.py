"""Dataclass <-> protobuf conversion: every field survives, and malformed input is a WireError."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import Phase
from secfed.secagg.messages import (
    AdvertBroadcast,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    DealingFaultProof,
    MaskedInputUpload,
    RevealedShare,
    ShareCommitment,
    ShareKeysRelay,
    ShareKeysUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from secfed.secagg.spec import Segment, VectorSpec
from secfed.wire import WireError
from secfed.wire import convert as cv
from tests.secagg.support import Consortium, make_config, make_session, small_spec

IDS = ("c00", "c01", "c02", "c03", "c04")


def rnd(n: int = 32) -> bytes:
    return os.urandom(n)


def spec_of(ring_bits: int = 32) -> VectorSpec:
    return VectorSpec(
        (
            Segment("delta", 7, clip=0.1, frac_bits=16),  # 0.1: not exactly representable in binary
            Segment("weight", 1, clip=8, frac_bits=8),  # an int clip, as a caller may pass
            Segment("hist/counts", 3, clip=1000.0, frac_bits=0),
        ),
        ring_bits=32 if ring_bits == 32 else 64,
    )


def config_of(ring_bits: int = 32, label: str = "fedavg") -> SessionConfig:
    return make_config(IDS, spec_of(ring_bits), round_=7, model_hash=rnd(), label=label)


def advert(cid: str = "c01") -> AdvertiseKeys:
    return AdvertiseKeys(
        client_id=cid,
        round=2**40 + 3,
        config_digest=rnd(),
        model_hash=rnd(),
        pk_cipher=rnd(),
        pk_mask=rnd(),
        signature=rnd(71),
        cert_chain=(rnd(500), rnd(400)),
    )


def masked(ring_bits: int = 32, spec: VectorSpec | None = None) -> MaskedInputUpload:
    spec = spec or spec_of(ring_bits)
    dtype = np.uint32 if ring_bits == 32 else np.uint64
    info = np.iinfo(dtype)
    rng = np.random.default_rng(ring_bits)
    segments: dict[str, NDArray[np.unsignedinteger]] = {}
    for s in spec.segments:
        a = cast(NDArray[np.unsignedinteger], rng.integers(0, info.max, s.length, dtype=dtype, endpoint=True))
        a[0], a[-1] = info.max, 0  # extremes survive
        segments[s.name] = a
    return MaskedInputUpload(session_id=rnd(), sender="c02", spec_hash=spec.spec_hash(), segments=segments)


SAMPLES: dict[str, Any] = {
    "advert": advert(),
    "advert_empty_chain": AdvertiseKeys("c03", 0, b"", b"", b"", b"", b"", ()),
    "advert_broadcast": AdvertBroadcast(round=5, config_digest=rnd(), adverts=(advert("c00"), advert("c04"))),
    "share_keys_upload": ShareKeysUpload(
        session_id=rnd(),
        sender="c00",
        ciphertexts={c: rnd(90) for c in IDS[1:]},
        b_commitment=rnd(),
        commitments={c: ShareCommitment(rnd(), rnd(), rnd(), rnd(71)) for c in IDS},
    ),
    "fault_proof": DealingFaultProof(
        session_id=rnd(),
        dealer="c04",
        kind=b"s",
        cert_chain=(rnd(500), rnd(400)),
        pk_mask=rnd(),
        seed_commitment=rnd(),
        shares={
            c: RevealedShare(rnd(70), rnd(), ShareCommitment(rnd(), rnd(), rnd(), rnd(71))) for c in IDS[:3]
        },
    ),
    "share_keys_relay": ShareKeysRelay(
        session_id=rnd(), recipient="c01", u2=IDS, ciphertexts={c: rnd(90) for c in IDS if c != "c01"}
    ),
    "consistency_request": ConsistencyRequest(session_id=rnd(), u3=IDS[:4]),
    "consistency_signature": ConsistencySignature(session_id=rnd(), sender="c03", signature=rnd(64)),
    "unmask_request": UnmaskRequest(
        session_id=rnd(), u3=IDS[:4], dropped=("c04",), signatures={c: rnd(64) for c in IDS[:4]}
    ),
    "unmask_response": UnmaskResponse(
        session_id=rnd(), sender="c00", b_shares={c: rnd(70) for c in IDS[:4]}, s_shares={"c04": rnd(70)}
    ),
    "refusal": cv.Refusal(round=12, reason="privacy budget spent (epsilon 8.0 of 8.0)"),
    "spec32": spec_of(32),
    "spec64": spec_of(64),
    "config32": config_of(32),
    "config64": config_of(64, label="coreset"),
}

# name -> (to_proto, from_proto, protobuf class)
CODECS: dict[str, tuple[Callable[[Any], Message], Callable[[Any], Any], type[Message]]] = {
    "advert": (cv.advert_to_proto, cv.advert_from_proto, pb.AdvertiseKeys),
    "advert_empty_chain": (cv.advert_to_proto, cv.advert_from_proto, pb.AdvertiseKeys),
    "advert_broadcast": (cv.advert_broadcast_to_proto, cv.advert_broadcast_from_proto, pb.AdvertBroadcast),
    "share_keys_upload": (cv.share_keys_upload_to_proto, cv.share_keys_upload_from_proto, pb.ShareKeysUpload),
    "fault_proof": (cv.fault_proof_to_proto, cv.fault_proof_from_proto, pb.DealingFaultProof),
    "share_keys_relay": (cv.share_keys_relay_to_proto, cv.share_keys_relay_from_proto, pb.ShareKeysRelay),
    "consistency_request": (
        cv.consistency_request_to_proto,
        cv.consistency_request_from_proto,
        pb.ConsistencyRequest,
    ),
    "consistency_signature": (
        cv.consistency_signature_to_proto,
        cv.consistency_signature_from_proto,
        pb.ConsistencySignature,
    ),
    "unmask_request": (cv.unmask_request_to_proto, cv.unmask_request_from_proto, pb.UnmaskRequest),
    "unmask_response": (cv.unmask_response_to_proto, cv.unmask_response_from_proto, pb.UnmaskResponse),
    "refusal": (cv.refusal_to_proto, cv.refusal_from_proto, pb.Refusal),
    "spec32": (cv.spec_to_proto, cv.spec_from_proto, pb.VectorSpecMsg),
    "spec64": (cv.spec_to_proto, cv.spec_from_proto, pb.VectorSpecMsg),
    "config32": (cv.session_config_to_proto, cv.session_config_from_proto, pb.SessionConfigMsg),
    "config64": (cv.session_config_to_proto, cv.session_config_from_proto, pb.SessionConfigMsg),
}


def assert_masked_equal(a: MaskedInputUpload, b: MaskedInputUpload) -> None:
    assert (a.session_id, a.sender, a.spec_hash) == (b.session_id, b.sender, b.spec_hash)
    assert list(a.segments) == list(b.segments)
    for name, arr in a.segments.items():
        got = b.segments[name]
        assert got.dtype == arr.dtype and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
def test_round_trip_in_memory_and_through_bytes(name: str) -> None:
    to_proto, from_proto, cls = CODECS[name]
    original = SAMPLES[name]
    msg = to_proto(original)
    assert isinstance(msg, cls)
    assert from_proto(msg) == original
    wire = msg.SerializeToString()
    assert from_proto(cls.FromString(wire)) == original


@pytest.mark.parametrize("name", ["config32", "config64"])
def test_session_config_digest_survives(name: str) -> None:
    config: SessionConfig = SAMPLES[name]
    back = cv.session_config_from_proto(
        pb.SessionConfigMsg.FromString(cv.session_config_to_proto(config).SerializeToString())
    )
    assert back.digest() == config.digest()
    assert back.spec.spec_hash() == config.spec.spec_hash()
    assert back.roster == config.roster  # order matters: it fixes share indices
    back.validate()


def test_spec_clip_is_bit_exact() -> None:
    clip = float.fromhex("0x1.999999999999ap-4")  # 0.1, all 52 mantissa bits used
    spec = VectorSpec((Segment("x", 1, clip=clip, frac_bits=52),), ring_bits=64)
    back = cv.spec_from_proto(pb.VectorSpecMsg.FromString(cv.spec_to_proto(spec).SerializeToString()))
    assert back.segments[0].clip.hex() == clip.hex()
    assert back.spec_hash() == spec.spec_hash()


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_masked_input_round_trip(ring_bits: int) -> None:
    m = masked(ring_bits)
    msg = cv.masked_input_to_proto(m)
    assert all(
        s.dtype == (pb.RING_DTYPE_UINT32 if ring_bits == 32 else pb.RING_DTYPE_UINT64) for s in msg.segments
    )
    back = cv.masked_input_from_proto(pb.MaskedInputUpload.FromString(msg.SerializeToString()))
    assert_masked_equal(m, back)
    with_spec = cv.masked_input_from_proto(msg, spec_of(ring_bits))
    assert_masked_equal(m, with_spec)
    assert all(a.flags.writeable for a in with_spec.segments.values())


def test_masked_input_bytes_are_little_endian_whatever_the_input_order() -> None:
    native = np.array([1, 0x01020304, 2**32 - 1], dtype=np.uint32)
    big = native.astype(">u4")
    m = MaskedInputUpload(b"s", "c00", b"h", {"delta": big})
    msg = cv.masked_input_to_proto(m)
    assert msg.segments[0].data == native.astype("<u4").tobytes()
    back = cv.masked_input_from_proto(msg)
    assert back.segments["delta"].dtype == np.dtype(np.uint32)
    np.testing.assert_array_equal(back.segments["delta"], native)


def test_masked_input_views_of_a_larger_vector() -> None:
    """The client uploads slices of one ring vector; views with offsets must encode their own elements."""
    ring = np.arange(20, dtype=np.uint64)
    m = MaskedInputUpload(b"s", "c00", b"h", {"a": ring[2:5], "b": ring[5:20:3]})
    back = cv.masked_input_from_proto(cv.masked_input_to_proto(m))
    np.testing.assert_array_equal(back.segments["a"], [2, 3, 4])
    np.testing.assert_array_equal(back.segments["b"], ring[5:20:3])


@pytest.mark.parametrize(
    "name",
    [
        "advert",
        "advert_empty_chain",
        "share_keys_upload",
        "consistency_signature",
        "unmask_response",
        "refusal",
    ],
)
def test_envelope_round_trip(name: str) -> None:
    message = SAMPLES[name]
    kind, data = cv.envelope_to_bytes(message)
    assert kind == cv.upload_kind(message)
    assert cv.envelope_from_bytes(kind, data) == message
    assert cv.envelope_from_bytes(kind, memoryview(bytearray(data))) == message


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_envelope_round_trip_masked_input(ring_bits: int) -> None:
    m = masked(ring_bits)
    kind, data = cv.envelope_to_bytes(m)
    assert kind == pb.UPLOAD_KIND_MASKED_INPUT
    back = cv.envelope_from_bytes(kind, data, spec=spec_of(ring_bits))
    assert isinstance(back, MaskedInputUpload)
    assert_masked_equal(m, back)


@pytest.mark.parametrize(
    "name", ["advert_broadcast", "share_keys_relay", "consistency_request", "unmask_request"]
)
def test_relay_inside_an_instruction(name: str) -> None:
    relay = SAMPLES[name]
    instr = pb.Instruction(instruction_id=9, session_id=b"sid", deadline_unix_ms=1_700_000_000_000)
    cv.relay_into_instruction(instr, relay)
    back = pb.Instruction.FromString(instr.SerializeToString())
    assert back.instruction_id == 9 and back.session_id == b"sid"
    assert cv.relay_from_instruction(back) == relay
    assert cv.relay_from_instruction(pb.Instruction(wait=pb.Wait(retry_after_ms=5))) is None


def test_phase_mapping_is_total_and_reversible() -> None:
    tags = {cv.phase_to_proto(p) for p in Phase}
    assert len(tags) == len(Phase) and pb.PHASE_UNSPECIFIED not in tags
    for p in Phase:
        assert cv.phase_from_proto(cv.phase_to_proto(p)) is p
    assert cv.phase_to_proto(None) == pb.PHASE_UNSPECIFIED
    assert cv.phase_from_proto(pb.PHASE_UNSPECIFIED) is None
    with pytest.raises(WireError) as err:
        cv.phase_from_proto(99, field="error_phase")
    assert err.value.field == "error_phase"


# ---------------------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------------------


def raw_masked(*segments: pb.Segment, spec_hash: bytes = b"h") -> pb.MaskedInputUpload:
    return pb.MaskedInputUpload(session_id=b"s", sender="c00", spec_hash=spec_hash, segments=segments)


@pytest.mark.parametrize("tag", [pb.RING_DTYPE_UNSPECIFIED, 3, 1000])
def test_unknown_dtype_tag(tag: int) -> None:
    seg = pb.Segment(name="delta", data=b"\0" * 8)
    seg.dtype = cast(pb.RingDtype, tag)  # proto3 enums are open: unknown values arrive as plain ints
    msg = pb.MaskedInputUpload.FromString(raw_masked(seg).SerializeToString())
    with pytest.raises(WireError) as err:
        cv.masked_input_from_proto(msg)
    assert err.value.field == "segments[delta].dtype"


@pytest.mark.parametrize(
    ("tag", "size"), [(pb.RING_DTYPE_UINT32, 7), (pb.RING_DTYPE_UINT64, 12), (pb.RING_DTYPE_UINT64, 1)]
)
def test_data_not_a_whole_number_of_elements(tag: pb.RingDtype, size: int) -> None:
    msg = raw_masked(pb.Segment(name="delta", dtype=tag, data=b"\1" * size))
    with pytest.raises(WireError, match="whole number") as err:
        cv.masked_input_from_proto(msg)
    assert err.value.field == "segments[delta].data"


def test_duplicate_segment_names() -> None:
    seg = pb.Segment(name="delta", dtype=pb.RING_DTYPE_UINT32, data=b"\0" * 4)
    with pytest.raises(WireError, match="duplicate") as err:
        cv.masked_input_from_proto(raw_masked(seg, seg))
    assert err.value.field == "segments[delta]"


def test_masked_input_checked_against_spec() -> None:
    spec = spec_of(32)
    good = cv.masked_input_to_proto(masked(32))

    def broken(edit: Callable[[pb.MaskedInputUpload], None]) -> WireError:
        msg = pb.MaskedInputUpload()
        msg.CopyFrom(good)
        edit(msg)
        with pytest.raises(WireError) as err:
            cv.masked_input_from_proto(msg, spec)
        return err.value

    def shorten(m: pb.MaskedInputUpload) -> None:
        m.segments[0].data = m.segments[0].data[:-4]

    def rename(m: pb.MaskedInputUpload) -> None:
        m.segments[1].name = "intruder"

    def drop(m: pb.MaskedInputUpload) -> None:
        del m.segments[2]

    def widen(m: pb.MaskedInputUpload) -> None:
        m.segments[0].dtype = pb.RING_DTYPE_UINT64
        m.segments[0].data = m.segments[0].data + m.segments[0].data

    def rehash(m: pb.MaskedInputUpload) -> None:
        m.spec_hash = spec_of(64).spec_hash()

    assert broken(shorten).field == "segments[delta].data"
    assert broken(rename).field == "segments[intruder]"
    assert broken(drop).field == "segments"
    assert broken(widen).field == "segments[delta].dtype"
    assert broken(rehash).field == "spec_hash"


@pytest.mark.parametrize(
    ("array", "field"),
    [
        (np.zeros(3, dtype=np.float32), "segments[x].dtype"),
        (np.zeros(3, dtype=np.int32), "segments[x].dtype"),
        (np.zeros(3, dtype=np.uint16), "segments[x].dtype"),
        (np.zeros((2, 2), dtype=np.uint32), "segments[x]"),
    ],
)
def test_masked_input_to_proto_refuses_what_would_not_decode_back(array: Any, field: str) -> None:
    with pytest.raises(WireError) as err:
        cv.masked_input_to_proto(MaskedInputUpload(b"s", "c00", b"h", {"x": array}))
    assert err.value.field == field


def test_invalid_specs() -> None:
    seg = pb.SegmentSpec(name="x", length=4, clip=1.0, frac_bits=16)
    with pytest.raises(WireError) as err:
        cv.spec_from_proto(pb.VectorSpecMsg(ring_bits=16, segments=[seg]))
    assert err.value.field == "spec.ring_bits"
    bad_segments = [
        pb.SegmentSpec(name="bad name!", length=4, clip=1.0),
        pb.SegmentSpec(name="x", length=0, clip=1.0),
        pb.SegmentSpec(name="x", length=4, clip=float("nan")),
        pb.SegmentSpec(name="x", length=4, clip=1.0, frac_bits=53),
    ]
    for bad in bad_segments:
        with pytest.raises(WireError) as err:
            cv.spec_from_proto(pb.VectorSpecMsg(ring_bits=32, segments=[seg, bad]))
        assert err.value.field == "spec.segments[1]"
    for msg in (
        pb.VectorSpecMsg(ring_bits=32),  # no segments
        pb.VectorSpecMsg(ring_bits=32, segments=[seg, seg]),  # duplicate names
        pb.VectorSpecMsg(  # clip * 2^f overflows the 32-bit ring
            ring_bits=32, segments=[pb.SegmentSpec(name="x", length=1, clip=2.0**20, frac_bits=16)]
        ),
    ):
        with pytest.raises(WireError) as err:
            cv.spec_from_proto(msg)
        assert err.value.field == "spec"


def test_spec_size_bound_and_missing_spec() -> None:
    huge = pb.VectorSpecMsg(ring_bits=32, segments=[pb.SegmentSpec(name="x", length=2**60, clip=1.0)])
    with pytest.raises(WireError) as err:
        cv.session_config_from_proto(pb.SessionConfigMsg(spec=huge), max_total_length=10**9)
    assert err.value.field == "spec.segments[0].length"
    with pytest.raises(WireError) as err:
        cv.session_config_from_proto(pb.SessionConfigMsg(round=1, roster=["a"]))
    assert err.value.field == "spec"


def test_garbage_envelope() -> None:
    with pytest.raises(WireError) as err:
        cv.envelope_from_bytes(pb.UPLOAD_KIND_ADVERTISE_KEYS, b"\xff\xff\xff\xff\x0f garbage")
    assert err.value.field == "envelope"


def test_unknown_kind_and_kind_mismatch() -> None:
    kind, data = cv.envelope_to_bytes(SAMPLES["advert"])
    with pytest.raises(WireError) as err:
        cv.envelope_from_bytes(99, data)
    assert err.value.field == "kind"
    with pytest.raises(WireError, match="declares share_keys but the envelope holds advertise_keys") as err:
        cv.envelope_from_bytes(pb.UPLOAD_KIND_SHARE_KEYS, data)
    assert err.value.field == "kind"
    with pytest.raises(WireError, match="holds nothing"):
        cv.envelope_from_bytes(kind, b"")


@pytest.mark.parametrize("name", ["advert", "unmask_response", "share_keys_upload"])
def test_every_truncation_is_a_wire_error(name: str) -> None:
    kind, data = cv.envelope_to_bytes(SAMPLES[name])
    for cut in range(len(data)):
        with pytest.raises(WireError):
            cv.envelope_from_bytes(kind, data[:cut])


def test_truncated_masked_vector_names_the_field() -> None:
    kind, data = cv.envelope_to_bytes(masked(64))
    env = pb.UploadEnvelope.FromString(data)
    env.masked_input.segments[1].data = env.masked_input.segments[1].data[:-3]
    with pytest.raises(WireError) as err:
        cv.envelope_from_bytes(kind, env.SerializeToString())
    assert err.value.field == "masked_input.segments[weight].data"


def test_invalid_utf8_in_a_string_field_is_a_wire_error() -> None:
    # field 1 (advertise_keys), length 4, containing field 1 (client_id), length 2, bytes ff fe
    data = bytes([0x0A, 0x04, 0x0A, 0x02, 0xFF, 0xFE])
    with pytest.raises(WireError) as err:
        cv.envelope_from_bytes(pb.UPLOAD_KIND_ADVERTISE_KEYS, data)
    assert err.value.field == "envelope"


ALL_KINDS = [int(v) for v in pb.UploadKind.values()] + [77]
VALID_ENVELOPES = [cv.envelope_to_bytes(SAMPLES[n])[1] for n in ("advert", "unmask_response", "refusal")] + [
    cv.envelope_to_bytes(masked(32))[1]
]


def decode_or_wire_error(kind: int, data: bytes) -> None:
    with contextlib.suppress(WireError):
        cv.envelope_from_bytes(kind, data, spec=spec_of(32) if kind == pb.UPLOAD_KIND_MASKED_INPUT else None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(ALL_KINDS), data=st.binary(max_size=300))
def test_fuzz_random_bytes_only_ever_wire_error(kind: int, data: bytes) -> None:
    decode_or_wire_error(kind, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(VALID_ENVELOPES),
    kind=st.sampled_from(ALL_KINDS),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**6),
)
def test_fuzz_mutated_envelopes_only_ever_wire_error(
    base: bytes, kind: int, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    decode_or_wire_error(kind, bytes(data[: len(data) - cut % 40]))


# ---------------------------------------------------------------------------------------------------
# A real session, every message through the wire
# ---------------------------------------------------------------------------------------------------


def through_upload(message: cv.UploadMessage, spec: VectorSpec) -> Any:
    kind, data = cv.envelope_to_bytes(message)
    return cv.envelope_from_bytes(kind, data, spec=spec)


def through_instruction(relay: cv.RelayMessage) -> Any:
    instr = pb.Instruction(instruction_id=1)
    cv.relay_into_instruction(instr, relay)
    return cv.relay_from_instruction(pb.Instruction.FromString(instr.SerializeToString()))


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_full_session_over_the_wire_sums_exactly(consortium: Consortium, ring_bits: int) -> None:
    s = make_session(consortium, 4, small_spec(9, ring_bits=ring_bits), seed=ring_bits)
    start = cv.session_config_from_proto(
        pb.SessionConfigMsg.FromString(cv.session_config_to_proto(s.config).SerializeToString())
    )
    assert start.digest() == s.config.digest()
    spec = start.spec
    for c in s.clients.values():
        s.server.receive_advert(through_upload(c.advertise(), spec))
    broadcast = through_instruction(s.server.close_advertise())
    for c in s.clients.values():
        s.server.receive_shares(through_upload(c.on_advert_broadcast(broadcast), spec))
    for cid, relay in s.server.close_share_keys().items():
        s.clients[cid].on_share_relay(through_instruction(relay))
        s.server.receive_ready(through_upload(s.clients[cid].ready(), spec))
    go = through_instruction(s.server.close_compute())
    for cid in go.ready:
        s.server.receive_masked_input(through_upload(s.clients[cid].on_masked_input_request(go), spec))
    request = through_instruction(s.server.close_masked_input())
    for c in s.clients.values():
        s.server.receive_consistency(through_upload(c.on_consistency_request(request), spec))
    unmask = through_instruction(s.server.close_consistency())
    for c in s.clients.values():
        s.server.receive_unmask(through_upload(c.on_unmask_request(unmask), spec))
    result = s.server.finalize()
    assert result.contributors == s.config.roster
    for name, values in s.expected_sum(result.contributors).items():
        np.testing.assert_array_equal(result.values[name], values)
