"""Garbage on the wire never crashes the server or corrupts a round, over real loopback mutual TLS.

One server runs for most of the module with small limits (64 KiB uploads, 4 KiB chunks, so a gRPC
message may be at most 4 KiB + 64 KiB), and a generous rate limit so that the attacker's many calls
are judged on their content, not throttled. The attacker is inst04: a roster member with its real
kit, i.e. an authenticated insider -- the strongest position for sending garbage, since everything
it sends reaches the parsing code. Every malformed stream must come back as a precise gRPC status
(INVALID_ARGUMENT from the upload assembler or decoder, RESOURCE_EXHAUSTED from gRPC's message limit,
NOT_FOUND for an unknown model), and the server must still answer afterwards. The last test in the
module runs a real round on the same server with inst00..inst03 and checks the secure sum against
the plaintext sum: nothing the attacker sent may have reached the aggregate.

inst04 never takes part in that round, so the advertise phase waits for its deadline (unless a fuzzed
payload happened to be a well-formed Refusal, which counts inst04 out of the attempt at once);
``phase_timeout_s`` is short for that reason, and ``max_attempts`` large so that idle attempts timing
out while the garbage tests run cannot end the federation early.

Rate limiting needs low limits, so it gets a server of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.messages import ShareKeysUpload
from secfed.wire import WireError, convert
from server.config import Limits
from tests.federation import rawclient as rc
from tests.federation.support import Federation, check_plaintext_sums, rounds_log

pytestmark = pytest.mark.timeout(120)

ATTACKER = "inst04"
LEGIT = ("inst00", "inst01", "inst02", "inst03")
MAX_UPLOAD = 64 * 1024
CHUNK = 4096
#: The server's per-message gRPC limit (server/runtime.py: chunk_bytes + 64 KiB of overhead).
MESSAGE_LIMIT = CHUNK + 64 * 1024

#: Every upload kind the contract defines, and the UploadEnvelope member each must carry (by name:
#: UPLOAD_KIND_SHARE_KEYS <-> share_keys), taken from the generated code so new kinds are covered.
_MEMBERS = {f.name: f.number for f in pb.UploadEnvelope.DESCRIPTOR.oneofs_by_name["message"].fields}
KINDS: dict[int, int] = {
    int(value): _MEMBERS[name.removeprefix("UPLOAD_KIND_").lower()]
    for name, value in pb.UploadKind.items()
    if value != pb.UPLOAD_KIND_UNSPECIFIED
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    limits = Limits(max_upload_bytes=MAX_UPLOAD, chunk_bytes=CHUNK, max_requests_per_s=10_000, burst=10_000)
    federation = rc.federation(
        tmp_path_factory.mktemp("malformed"),
        5,
        limits=limits,
        rounds=1,
        phase_timeout_s=3.0,
        max_attempts=1000,
    )
    yield federation
    federation.server.stop()  # idempotent: the closing round may already have stopped it


@pytest.fixture(scope="module")
def attacker(fed: Federation) -> Iterator[pb_grpc.FederationStub]:
    with rc.kit_channel(fed, ATTACKER) as chan:
        yield rc.stub(chan)


def assert_alive(s: pb_grpc.FederationStub) -> None:
    """The server still serves: the attacker's own next call is answered normally."""
    assert rc.heartbeat(s).server_time_unix_ms > 0


def refused(
    s: pb_grpc.FederationStub, parts: list[pb.UploadChunk], code: grpc.StatusCode, detail: str
) -> None:
    error = rc.rpc_error(lambda: rc.upload(s, parts))
    assert error.code() == code, (error.code(), error.details())
    assert detail in error.details(), error.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:  # the servicer's refusal, not gRPC's
        assert error.details().startswith("malformed upload: "), error.details()
    assert_alive(s)


def _refusal_envelope() -> bytes:
    return convert.envelope_to_bytes(convert.Refusal(round=0, reason="budget spent " * 8))[1]


def _share_keys_envelope() -> bytes:
    msg = ShareKeysUpload(
        session_id=bytes(32), sender=ATTACKER, ciphertexts={"inst00": bytes(80)}, b_commitment=bytes(32)
    )
    return convert.envelope_to_bytes(msg)[1]


# -- broken streams: each case is (chunks, expected fragment of the status details) ---------------

_PAYLOAD = bytes(range(256)) * 8  # 2 KiB, arbitrary
_ADVERT = int(pb.UPLOAD_KIND_ADVERTISE_KEYS)


def _h(total: int | None = None, sha256: bytes | None = None) -> pb.UploadHeader:
    return rc.header(_ADVERT, _PAYLOAD, total=total, sha256=sha256)


STREAMS: dict[str, tuple[Callable[[], list[pb.UploadChunk]], str]] = {
    "empty stream": (lambda: [], "the stream ended before any chunk arrived"),
    "no header": (lambda: [pb.UploadChunk(data=_PAYLOAD)], "the first chunk must carry the upload header"),
    "header twice": (
        lambda: [
            pb.UploadChunk(header=_h(), data=_PAYLOAD[:1024]),
            pb.UploadChunk(header=_h(), data=_PAYLOAD[1024:]),
        ],
        "a second header",
    ),
    "declared size over the limit": (
        lambda: [pb.UploadChunk(header=_h(total=MAX_UPLOAD + 1), data=_PAYLOAD)],
        f"declares {MAX_UPLOAD + 1} bytes, more than the limit of {MAX_UPLOAD}",
    ),
    "more data than declared": (
        lambda: [pb.UploadChunk(header=_h(total=1000), data=_PAYLOAD)],
        "more data than the declared 1000 bytes",
    ),
    "less data than declared": (
        lambda: [pb.UploadChunk(header=_h(total=4000), data=_PAYLOAD)],
        f"truncated: received {len(_PAYLOAD)} of 4000 bytes",
    ),
    "sha256 mismatch": (
        lambda: [pb.UploadChunk(header=_h(sha256=hashlib.sha256(b"other").digest()), data=_PAYLOAD)],
        "does not match the header's SHA-256",
    ),
    "sha256 of the wrong length": (
        lambda: [pb.UploadChunk(header=_h(sha256=b"short"), data=_PAYLOAD)],
        "must be 32 bytes, got 5",
    ),
    "unknown kind": (lambda: list(rc.one_shot(99, _PAYLOAD)), "unknown upload kind 99"),
    "unspecified kind": (lambda: list(rc.one_shot(0, _PAYLOAD)), "unknown upload kind 0"),
    "kind does not match the envelope": (
        lambda: list(rc.one_shot(_ADVERT, _refusal_envelope())),
        "the header declares advertise_keys but the envelope holds refusal",
    ),
    "truncated refusal envelope (consistent header)": (
        lambda: list(rc.one_shot(int(pb.UPLOAD_KIND_REFUSAL), _refusal_envelope()[:-7])),
        "not a valid UploadEnvelope",
    ),
    "truncated share-keys envelope (consistent header)": (
        lambda: list(rc.one_shot(int(pb.UPLOAD_KIND_SHARE_KEYS), _share_keys_envelope()[:-40])),
        "not a valid UploadEnvelope",
    ),
    "chunk flood (empty chunks)": (
        lambda: [pb.UploadChunk(header=_h(total=2048))] + [pb.UploadChunk() for _ in range(1000)],
        "more than 3 chunks for 2048 bytes",
    ),
    "chunk flood (one-byte chunks)": (
        lambda: (
            [pb.UploadChunk(header=_h())]
            + [pb.UploadChunk(data=_PAYLOAD[i : i + 1]) for i in range(len(_PAYLOAD))]
        ),
        f"more than 3 chunks for {len(_PAYLOAD)} bytes",
    ),
}


@pytest.mark.parametrize("case", list(STREAMS))
def test_broken_upload_stream_is_invalid_argument(attacker: pb_grpc.FederationStub, case: str) -> None:
    make, detail = STREAMS[case]
    refused(attacker, make(), grpc.StatusCode.INVALID_ARGUMENT, detail)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_random_bytes_of_every_kind_are_invalid_argument(attacker: pb_grpc.FederationStub, kind: int) -> None:
    payload = random.Random(kind).randbytes(600)  # seeded: random, but the same bytes on every run
    refused(
        attacker, list(rc.one_shot(kind, payload)), grpc.StatusCode.INVALID_ARGUMENT, "malformed upload: "
    )


def test_oversized_grpc_message_is_resource_exhausted(attacker: pb_grpc.FederationStub) -> None:
    big = bytes(MESSAGE_LIMIT + 1)
    # The header is fine (the size is under the upload limit); the one chunk carrying it all is not.
    parts = [
        pb.UploadChunk(header=rc.header(_ADVERT, big[:MAX_UPLOAD], total=MAX_UPLOAD)),
        pb.UploadChunk(data=big),
    ]
    refused(attacker, parts, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
    # Unary calls have the same limit: a Join padded past it never reaches the servicer.
    error = rc.rpc_error(
        lambda: attacker.Join(pb.JoinRequest(software_version="v" * MESSAGE_LIMIT), timeout=10)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    assert_alive(attacker)


def test_download_of_an_unknown_model_or_past_the_end(attacker: pb_grpc.FederationStub) -> None:
    ref = rc.poll_round_start(attacker).round_start.global_model

    def download(model_hash: bytes, offset: int) -> list[pb.DownloadChunk]:
        return list(attacker.Download(pb.DownloadRequest(model_hash=model_hash, offset=offset), timeout=10))

    assert sum(len(c.data) for c in download(ref.hash, 0)) == ref.size_bytes  # the real one is served
    error = rc.rpc_error(lambda: download(hashlib.sha256(b"not the model").digest(), 0))
    assert error.code() == grpc.StatusCode.NOT_FOUND, (error.code(), error.details())
    assert "not the current one" in error.details()
    error = rc.rpc_error(lambda: download(ref.hash, ref.size_bytes + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"{ref.size_bytes + 1} is outside the {ref.size_bytes}-byte vector" in error.details()
    [header_only] = download(ref.hash, ref.size_bytes)  # exactly at the end: a header, no data
    assert header_only.header.total_bytes == ref.size_bytes and not header_only.data
    assert_alive(attacker)


# -- fuzzing the decoders through the servicer ------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _own_member(kind: int) -> bytes:
    """The kind's envelope member, empty but for the attacker's own id as sender / advertiser."""
    field = pb.UploadEnvelope.DESCRIPTOR.fields_by_number[KINDS[kind]]
    member = getattr(pb.UploadEnvelope(), field.name)
    for id_field in ("sender", "client_id"):
        if id_field in member.DESCRIPTOR.fields_by_name:
            setattr(member, id_field, ATTACKER)
    data: bytes = member.SerializeToString()
    return data


@st.composite
def payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """A kind and a payload: raw bytes, or the kind's envelope member wrapped around raw bytes.

    The wrapped forms get past the envelope parser and the kind check, so the member's converter and
    the coordinator see hostile content too, not only the protobuf parser. With the attacker's own id
    put first (protobuf merges concatenated fields, the random tail may still override it) the
    message also gets past the coordinator's "claims sender" check into the SecAgg session.
    """
    kind = draw(st.sampled_from(sorted(KINDS)))
    body = draw(st.binary(max_size=1024))
    form = draw(st.sampled_from(["raw", "member", "own member"]))
    if form != "raw":
        inner = (_own_member(kind) if form == "own member" else b"") + body
        body = bytes([KINDS[kind] << 3 | 2]) + _varint(len(inner)) + inner
    return kind, body


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=payloads())
def test_random_payload_is_refused_never_crashes(
    fed: Federation, attacker: pb_grpc.FederationStub, case: tuple[int, bytes]
) -> None:
    kind, payload = case
    try:  # what the payload is, as the wire layer alone sees it: the oracle for the server's answer
        local: convert.UploadMessage | None = convert.envelope_from_bytes(
            kind, payload, spec=fed.server.coordinator.current_spec()
        )
    except WireError:
        local = None
    try:
        ack = rc.upload(attacker, rc.one_shot(kind, payload))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert local is None, f"the server refused a well-formed {type(local).__name__}: {error.details()}"
    else:
        assert local is not None, f"the server accepted bytes the wire layer cannot decode: {ack}"
        # A random payload can happen to be a well-formed Refusal ("I sit this round out"), which the
        # server rightly accepts from a roster member; anything else must be refused by the protocol.
        assert not ack.ok or isinstance(local, convert.Refusal), ack
        assert ack.ok or ack.error_message, ack
    assert_alive(attacker)


def test_undecodable_request_messages_on_every_rpc(fed: Federation) -> None:
    """Bytes that are no protobuf at all, as the request of every method: secfed's parser refuses them
    with INVALID_ARGUMENT naming the method and message (server/handlers.py), not gRPC's INTERNAL."""
    garbage = random.Random(1).randbytes(100)  # seeded, and checked here to parse as no request type
    for request_type in (
        pb.JoinRequest,
        pb.PollRequest,
        pb.HeartbeatRequest,
        pb.UploadChunk,
        pb.DownloadRequest,
    ):
        with pytest.raises(DecodeError):
            request_type.FromString(garbage)
    raw = {"request_serializer": bytes, "response_deserializer": bytes}
    with rc.kit_channel(fed, ATTACKER) as chan:
        calls: dict[str, Callable[[], object]] = {
            name: partial(chan.unary_unary(f"/secfed.v1.Federation/{name}", **raw), garbage, timeout=10)
            for name in ("Join", "Poll", "Heartbeat")
        }
        calls["Upload"] = partial(
            chan.stream_unary("/secfed.v1.Federation/Upload", **raw), iter([garbage]), timeout=10
        )
        download = chan.unary_stream("/secfed.v1.Federation/Download", **raw)
        calls["Download"] = lambda: list(download(garbage, timeout=10))
        for name, call in calls.items():
            error = rc.rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.code(), error.details())
            assert name in error.details() and "not a valid" in error.details(), (name, error.details())
        unknown = chan.unary_unary("/secfed.v1.Federation/Shutdown", **raw)
        assert rc.rpc_error(lambda: unknown(b"", timeout=10)).code() == grpc.StatusCode.UNIMPLEMENTED
        assert_alive(rc.stub(chan))


def test_unsupported_protocol_version_is_failed_precondition(attacker: pb_grpc.FederationStub) -> None:
    error = rc.rpc_error(lambda: attacker.Join(pb.JoinRequest(protocol_version=999), timeout=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
    assert "protocol version 999 is not supported" in error.details()
    assert_alive(attacker)


# -- rate limiting, on a server of its own -----------------------------------------------------------


def test_rate_limit_slows_the_hammering_client_only(tmp_path: Path) -> None:
    burst = 5
    fed = rc.federation(tmp_path, 3, limits=Limits(max_requests_per_s=2.0, burst=burst), rounds=1)
    try:
        with rc.kit_channel(fed, "inst00") as noisy_chan, rc.kit_channel(fed, "inst01") as quiet_chan:
            noisy, quiet = rc.stub(noisy_chan), rc.stub(quiet_chan)
            codes: list[grpc.StatusCode] = []
            for i in range(40):
                try:
                    if i % 2:
                        rc.heartbeat(noisy)
                    else:
                        rc.poll(noisy)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    assert "rate limit exceeded" in error.details(), error.details()
                    codes.append(error.code())
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert codes[:burst] == [grpc.StatusCode.OK] * burst  # the burst allowance is honoured
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 25, codes

            # Meanwhile another institution, with its own bucket, is served normally -- even while
            # the noisy one keeps hammering from another thread.
            stop = threading.Event()

            def hammer() -> None:
                while not stop.is_set():
                    with contextlib.suppress(grpc.RpcError):  # refused calls are the point
                        rc.heartbeat(noisy)

            thread = threading.Thread(target=hammer, daemon=True)
            thread.start()
            try:
                for _ in range(burst - 1):  # burst - 1 heartbeats and a Join: within its own bucket
                    assert rc.heartbeat(quiet).server_time_unix_ms > 0
                assert rc.join(quiet).client_id == "inst01"
            finally:
                stop.set()
                thread.join(10)
    finally:
        fed.server.stop()


def test_stalled_uploads_from_one_client_do_not_starve_the_others(tmp_path: Path) -> None:
    """Per-client upload cap (a quarter of the workers, at least one) keeps workers free for others."""
    workers = 2  # a tiny pool makes starvation certain if one client could hold every worker
    fed = rc.federation(tmp_path, 3, limits=Limits(max_workers=workers), rounds=1)
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(header=rc.header(_ADVERT, _PAYLOAD), data=_PAYLOAD[:1])
        release.wait(30)  # ... and the rest never comes (until the test lets go)

    try:
        with rc.kit_channel(fed, "inst00") as noisy_chan, rc.kit_channel(fed, "inst01") as quiet_chan:
            noisy = rc.stub(noisy_chan)
            pending = [noisy.Upload.future(stalled(), timeout=30) for _ in range(workers)]
            try:
                time.sleep(1.0)  # let the stalled streams reach the server's workers
                reply = rc.stub(quiet_chan).Heartbeat(pb.HeartbeatRequest(), timeout=2.0)
                assert reply.server_time_unix_ms > 0
            finally:
                release.set()
                for future in pending:
                    future.cancel()
    finally:
        release.set()
        fed.server.stop()


# -- and the round is unharmed ---------------------------------------------------------------------


def test_legit_clients_complete_a_correct_round_after_the_garbage(fed: Federation) -> None:
    """Runs last among the tests on the shared server: a real round, and its sum is the plaintext sum."""
    assert rc.finish_round(fed, LEGIT) == "completed 1 rounds"
    [record] = rounds_log(fed)
    assert ATTACKER not in record["contributors"]
    assert set(record["contributors"]) == set(LEGIT)
    check_plaintext_sums([record])


def test_an_upload_that_goes_quiet_is_cancelled(tmp_path: Path) -> None:
    """Slow-loris guard: a stream that stops sending chunks is cancelled after the idle timeout."""
    fed = rc.federation(tmp_path, 3, limits=Limits(upload_idle_timeout_s=1.0), rounds=1)
    release = threading.Event()

    def stalled() -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(header=rc.header(_ADVERT, _PAYLOAD), data=_PAYLOAD[:1])
        release.wait(20)

    try:
        with rc.kit_channel(fed, "inst00") as chan:
            started = time.monotonic()
            error = rc.rpc_error(lambda: rc.stub(chan).Upload(stalled(), timeout=20))
            assert error.code() == grpc.StatusCode.CANCELLED, (error.code(), error.details())
            assert time.monotonic() - started < 10
    finally:
        release.set()
        fed.server.stop()
