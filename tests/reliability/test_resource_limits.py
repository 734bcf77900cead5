"""Resource limits over real loopback mutual TLS: floods, oversized vectors, slow-loris streams, join storms.

Each attack runs *while honest clients run a real round*, and each test checks three things: every
answer the attacker gets is a clear status (never UNKNOWN, never a hang), what the attack can make the
server hold stays bounded, and the honest round completes with the secure sum equal to the plaintext
sum. The attacker is an authenticated roster member (inst04, with its real kit) that does not take
part in the round, so the round runs on inst00..inst03 once inst04's advertise deadline passes.

Memory is measured where it is spent, deterministically: a spy subclass of the upload assembler
records the receive buffer each upload stream allocates (``UploadAssembler.allocated``), so a bound
is checked without sampling a process's RSS. test_malformed.py already covers single malformed
streams (each refusal's status and message), the per-client upload cap against stalled streams and
the idle timeout; these tests add concurrency with a live round, the allocation bound and the total
lifetime of a trickling stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from secfed.pki.files import load_ca
from secfed.pki.issue import create_ca, issue_client
from secfed.proto.v1 import federation_pb2 as pb
from secfed.secagg.messages import MaskedInputUpload
from secfed.wire import chunks, convert
from server.config import Limits
from tests.federation import rawclient as rc
from tests.federation.support import Federation, check_plaintext_sums, rounds_log
from tests.reliability.support import join_all, start, wait_finished

pytestmark = pytest.mark.timeout(120)

ATTACKER = "inst04"
HONEST = ("inst00", "inst01", "inst02", "inst03")
MASKED = int(pb.UPLOAD_KIND_MASKED_INPUT)


class SpyAssembler(chunks.UploadAssembler):
    """Records the largest receive buffer any upload stream allocated while the spy was installed."""

    peak = 0
    lock = threading.Lock()

    def feed(self, chunk: pb.UploadChunk) -> None:
        try:
            super().feed(chunk)
        finally:
            with SpyAssembler.lock:
                SpyAssembler.peak = max(SpyAssembler.peak, self.allocated)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[SpyAssembler]:
    SpyAssembler.peak = 0
    monkeypatch.setattr(chunks, "UploadAssembler", SpyAssembler)
    return SpyAssembler


def run_honest_round(fed: Federation) -> dict[str, Any]:
    """Start the honest clients, wait for the federation to finish, return its one round's record."""
    honest = [start(fed, cid) for cid in HONEST]
    assert wait_finished(fed, honest) == "completed 1 rounds"
    join_all(honest)
    [record] = rounds_log(fed)
    assert record["contributors"] == list(HONEST)
    check_plaintext_sums([record])
    return record


def in_background(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def outcome(call: Any) -> str:
    """The status name of a call: "OK", or the gRPC code it failed with (UNKNOWN is never acceptable)."""
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() != grpc.StatusCode.UNKNOWN, exc.details()
        return str(exc.code().name)
    return "OK"


# -- oversized vectors ------------------------------------------------------------------------------


def test_a_declared_size_commits_no_memory_beyond_what_the_session_needs(
    tmp_path: Path, spy: type[SpyAssembler]
) -> None:
    """An upload header may declare up to ``max_upload_bytes``: one byte of data after it must not make
    the server allocate all of that (it did: the buffer for the declared size was allocated, and
    zero-filled, at the first data byte). A masked input of the toy session is a few hundred bytes;
    declaring 32 MiB is refused before anything is buffered."""
    declared = 32 * 1024 * 1024
    fed = rc.federation(
        tmp_path, 5, limits=Limits(max_upload_bytes=64 * 1024 * 1024), rounds=1, phase_timeout_s=2.0
    )
    try:
        with rc.kit_channel(fed, ATTACKER) as chan:
            s = rc.stub(chan)
            for kind in (MASKED, int(pb.UPLOAD_KIND_SHARE_KEYS), int(pb.UPLOAD_KIND_REFUSAL)):
                header = rc.header(kind, b"x", total=declared, sha256=hashlib.sha256(b"x").digest())
                parts = [pb.UploadChunk(header=header, data=b"x")]
                error = rc.rpc_error(partial(rc.upload, s, parts))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
                assert f"declares {declared} bytes, more than the limit of" in error.details()
        # Nothing near the declared size was ever allocated (the spy saw every stream).
        assert spy.peak < 256 * 1024, spy.peak
        run_honest_round(fed)
    finally:
        fed.server.stop()


def test_chunk_floods_and_oversized_vectors_during_a_round(tmp_path: Path, spy: type[SpyAssembler]) -> None:
    """Several attacker connections flood the server while the round runs: every stream is refused
    with INVALID_ARGUMENT (or RESOURCE_EXHAUSTED past the per-client cap), the buffers stay within
    the upload limit, and the round's sum is exact."""
    limit = 64 * 1024
    fed = rc.federation(
        tmp_path,
        5,
        limits=Limits(max_upload_bytes=limit, chunk_bytes=4096, max_requests_per_s=10_000, burst=10_000),
        rounds=1,
        phase_timeout_s=2.0,
    )
    spec = fed.server.coordinator.current_spec()
    assert spec is not None
    # A masked input ten times the spec's length, correctly framed, signed with the attacker's own id.
    too_long = MaskedInputUpload(
        session_id=bytes(32),
        sender=ATTACKER,
        spec_hash=spec.spec_hash(),
        segments={seg.name: np.zeros(10 * seg.length, dtype=np.dtype(spec.dtype)) for seg in spec.segments},
    )
    _, oversized = convert.envelope_to_bytes(too_long)
    payload = bytes(range(256)) * 8

    def flood_streams() -> Iterator[list[pb.UploadChunk]]:
        advert = int(pb.UPLOAD_KIND_ADVERTISE_KEYS)
        yield [pb.UploadChunk(header=rc.header(advert, payload))] + [pb.UploadChunk() for _ in range(500)]
        yield [pb.UploadChunk(header=rc.header(advert, payload))] + [
            pb.UploadChunk(data=payload[i : i + 1]) for i in range(len(payload))
        ]
        yield [pb.UploadChunk(header=rc.header(advert, payload, total=limit + 1), data=payload)]
        yield list(chunks.split_upload(pb.UPLOAD_KIND_MASKED_INPUT, bytes(32), 0, oversized, 4096))

    codes: Counter[str] = Counter()
    codes_lock = threading.Lock()

    def attack() -> None:
        with rc.kit_channel(fed, ATTACKER) as chan:
            s = rc.stub(chan)
            for _ in range(5):
                for parts in flood_streams():
                    code = outcome(lambda p=parts: rc.upload(s, p))
                    with codes_lock:
                        codes[code] += 1

    attackers = [in_background(attack) for _ in range(3)]
    try:
        run_honest_round(fed)
    finally:
        for thread, _ in attackers:
            thread.join(60)
        fed.server.stop()
    for thread, errors in attackers:
        assert not thread.is_alive() and errors == [], errors
    assert set(codes) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, codes
    assert codes["INVALID_ARGUMENT"] >= 20, codes  # the per-client cap may refuse a few, not most
    assert sum(codes.values()) == 3 * 5 * 4
    assert spy.peak <= limit, spy.peak


# -- slow loris ------------------------------------------------------------------------------------


def test_a_trickling_upload_is_ended_by_the_server(tmp_path: Path) -> None:
    """A stream that sends a byte now and then is never idle, so the idle timeout never fires; it used
    to hold its worker for as long as it kept trickling (up to one chunk per declared KiB). An upload
    that outlives a phase can never be accepted (the phase it answers has closed), so the server ends
    it after ``phase_timeout_s`` plus the idle timeout. Meanwhile the per-client cap refuses a third
    stream, and the honest round completes."""
    fed = rc.federation(
        tmp_path,
        5,
        limits=Limits(max_workers=8, upload_idle_timeout_s=1.0),
        rounds=1,
        phase_timeout_s=2.0,
    )
    stop = threading.Event()
    declared = 60 * 1024  # within what a masked input may take; one-byte chunks: 61 allowed

    def trickle() -> Iterator[pb.UploadChunk]:
        data = b"x" * declared
        yield pb.UploadChunk(header=rc.header(MASKED, data, total=declared), data=data[:1])
        for i in range(1, declared):
            if stop.wait(0.3):  # well inside the 1 s idle timeout
                return
            yield pb.UploadChunk(data=data[i : i + 1])

    uploads = fed.server.service._uploads  # the servicer's per-client count of open upload streams
    honest = [start(fed, cid) for cid in HONEST]
    try:
        with rc.kit_channel(fed, ATTACKER) as chan:
            s = rc.stub(chan)
            # The client's own deadline is far away: a stream that ends before it was ended by the server.
            futures = [s.Upload.future(trickle(), timeout=120) for _ in range(2)]
            deadline = time.monotonic() + 20
            while uploads.get(ATTACKER, 0) < 2:  # both streams are in the server's hands
                assert time.monotonic() < deadline and not any(f.done() for f in futures), futures
                time.sleep(0.02)
            third = rc.rpc_error(lambda: s.Upload(trickle(), timeout=10))
            assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (third.code(), third.details())
            assert "concurrent uploads" in third.details()
            # The server, still running its round, ends both streams (the test does not stop it first).
            errors = []
            for future in futures:
                with contextlib.suppress(grpc.FutureTimeoutError, grpc.RpcError):
                    future.result(timeout=30)
                assert future.done(), "the server let a trickling upload run on"
                errors.append(future.exception())
            codes = [e.code() if isinstance(e, grpc.RpcError) else e for e in errors]
            assert codes == [grpc.StatusCode.CANCELLED] * 2, codes
        assert wait_finished(fed, honest) == "completed 1 rounds"
        join_all(honest)
    finally:
        stop.set()
        fed.server.stop()
    [record] = rounds_log(fed)
    assert record["contributors"] == list(HONEST)
    check_plaintext_sums([record])


# -- join storms -------------------------------------------------------------------------------------


def test_a_storm_of_joins_on_fresh_connections(tmp_path: Path) -> None:
    """Hundreds of Join calls at once, each burst on new TLS connections, from roster members, a valid
    certificate outside the roster and a foreign CA: each is answered or refused with a clear status,
    and the honest round completes. A small pool (8 workers, so 64 concurrent RPCs) makes the server's
    concurrency bound actually bite."""
    fed = rc.federation(tmp_path, 5, limits=Limits(max_workers=8), rounds=1, phase_timeout_s=2.0)
    ca_pem = (fed.pki / "ca" / "ca.pem").read_bytes()
    outsider = issue_client(load_ca(fed.pki / "ca"), "outsider")
    foreign = issue_client(create_ca("foreign CA"), ATTACKER)
    codes: Counter[tuple[str, str]] = Counter()
    codes_lock = threading.Lock()

    def storm(who: str) -> None:
        for _ in range(4):  # four bursts, each on 10 fresh connections with 8 concurrent Joins each
            channels = []
            for _ in range(10):
                if who == "outsider":
                    channels.append(rc.identity_channel(fed.address, ca_pem, outsider))
                elif who == "foreign":
                    channels.append(rc.identity_channel(fed.address, ca_pem, foreign))
                else:
                    channels.append(rc.kit_channel(fed, who))
            try:
                request = pb.JoinRequest(software_version="storm")
                futures = [rc.stub(c).Join.future(request, timeout=30) for c in channels for _ in range(8)]
                for future in futures:
                    error = future.exception()
                    code = "OK" if error is None else error.code().name
                    with codes_lock:
                        codes[(who, code)] += 1
            finally:
                for c in channels:
                    c.close()

    storms = [in_background(lambda w=who: storm(w)) for who in (ATTACKER, "outsider", "foreign")]
    try:
        run_honest_round(fed)
    finally:
        for thread, _ in storms:
            thread.join(90)
        fed.server.stop()
    for thread, errors in storms:
        assert not thread.is_alive() and errors == [], errors
    allowed = {
        ATTACKER: {"OK", "RESOURCE_EXHAUSTED"},
        "outsider": {"PERMISSION_DENIED", "RESOURCE_EXHAUSTED"},
        "foreign": {"UNAVAILABLE"},  # the TLS handshake fails: no call reaches the server
    }
    for (who, code), _ in codes.items():
        assert code in allowed[who], (who, code, codes)
    assert sum(codes.values()) == 3 * 4 * 10 * 8
    assert codes[(ATTACKER, "OK")] > 0 and codes[("outsider", "PERMISSION_DENIED")] > 0, codes
