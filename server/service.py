"""The gRPC face of the coordinator: authenticate, rate-limit, convert, and hand over to the coordinator.

Every handler identifies the caller from its TLS certificate (never from a field in the request),
holds the coordinator lock only while it touches coordinator state, and turns every failure into a
clear gRPC status or a structured ``UploadAck`` naming the phase: a malformed or hostile request can
fail, never crash the server or corrupt a session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from secfed import logs
from secfed.fl.instruction import canonical_json
from secfed.fl.vectors import model_bytes, model_hash
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.config import PROTOCOL_VERSION
from secfed.secagg.errors import SecAggError
from secfed.wire import WireError, chunks, convert
from server.auth import Peer, PeerAuthenticator, PeerRefused, RateLimiter
from server.config import Limits
from server.coordinator import Coordinator, Finished, Pending, Relay, RoundStart, Wait

log = logging.getLogger("secfed.server.service")


class _IdleWatchdog:
    """Cancels an upload stream that goes quiet, or that is still running after ``max_s``: a stalled
    or trickling (slow-loris) client must not hold a worker for ever."""

    def __init__(self, timeout_s: float, on_idle: Callable[[], None], max_s: float | None = None) -> None:
        self._timeout = timeout_s
        self._on_idle = on_idle
        self._last = time.monotonic()
        self._end = None if max_s is None else self._last + max_s
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="secfed-upload-watchdog", daemon=True).start()

    def kick(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self._timeout / 4)):
            now = time.monotonic()
            if now - self._last > self._timeout or (self._end is not None and now > self._end):
                self._on_idle()
                return


class FederationService(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        lock: threading.Lock,
        auth: PeerAuthenticator,
        limits: Limits,
        federation_name: str,
    ) -> None:
        self._coord = coordinator
        self._lock = lock
        self._auth = auth
        self._limits = limits
        self._name = federation_name
        self._rate = RateLimiter(limits.max_requests_per_s, limits.burst)
        self._changed = threading.Condition(lock)
        self._long_polls = 0
        self._max_long_polls = limits.max_workers // 2
        self._uploads_lock = threading.Lock()
        self._uploads: dict[str, int] = {}
        self._max_uploads = max(1, min(limits.max_uploads_per_client, limits.max_workers // 4))
        # (model object, hash, little-endian bytes): the coordinator replaces its model array each round,
        # so identity tells whether the cached serialisation is still current without rehashing.
        self._model_cache: tuple[object, bytes, bytes] = (None, b"", b"")
        self.finished_clients: set[str] = set()
        # Payload bytes moved, for benchmarks: uploads received, model bytes and instructions sent.
        self.wire_bytes = {"upload": 0, "download": 0, "instructions": 0}

    def notify(self) -> None:
        """Wake held polls: coordinator state may have changed. Call with the lock held."""
        self._changed.notify_all()

    # -- helpers -------------------------------------------------------------------------------
    def _peer(self, context: grpc.ServicerContext, rpc: str) -> Peer:
        try:
            peer = self._auth.identify(context)
        except PeerRefused as exc:
            logs.event(log, "peer-refused", logging.WARNING, rpc=rpc, reason=exc.message)
            context.abort(exc.code, exc.message)
        if not self._rate.allow(peer.client_id):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"client {peer.client_id!r}: rate limit exceeded"
            )
        return peer

    def _current_model(self) -> tuple[bytes, bytes]:
        """The global model's hash and bytes, serialised once per model rather than per request."""
        model = self._coord.model
        if self._model_cache[0] is not model:
            self._model_cache = (model, model_hash(model), model_bytes(model))
        return self._model_cache[1], self._model_cache[2]

    def _instruction(self, pending: Pending) -> pb.Instruction:
        ins = pb.Instruction(
            instruction_id=pending.instruction_id,
            session_id=pending.session_id,
            deadline_unix_ms=int((time.time() + max(0.0, pending.deadline - self._coord.clock())) * 1000),
        )
        step = pending.instruction
        if isinstance(step, Wait):
            ins.wait.retry_after_ms = int(step.retry_after_s * 1000)
        elif isinstance(step, Finished):
            ins.finished.reason = step.reason
            if self._coord.round > 0:  # the model after the last completed round: everyone keeps a copy
                digest, data = self._current_model()
                ins.finished.final_model.hash = digest
                ins.finished.final_model.size_bytes = len(data)
                ins.finished.final_model.dtype = pb.TENSOR_DTYPE_FLOAT32
                ins.finished.rounds_completed = self._coord.round
        elif isinstance(step, RoundStart):
            digest, data = self._current_model()
            rs = ins.round_start
            rs.round = step.config.round
            rs.task = step.task
            rs.task_config = canonical_json(step.task_config)
            rs.session.CopyFrom(convert.session_config_to_proto(step.config))
            rs.global_model.hash = digest
            rs.global_model.size_bytes = len(data)
            rs.global_model.dtype = pb.TENSOR_DTYPE_FLOAT32
            rs.insecure_plaintext = not step.secure
            if step.evidence is not None:
                rs.previous_stage.CopyFrom(convert.sum_evidence_to_proto(step.evidence))
            rs.fault_proofs.extend(convert.fault_proof_to_proto(p) for p in step.fault_proofs)
        else:
            assert isinstance(step, Relay)
            convert.relay_into_instruction(ins, step.message)
        return ins

    def _upload_limit(self, kind: int) -> int:
        """The most bytes an upload of ``kind`` can need in the open session, capped by the configured limit.

        The assembler allocates the declared size at the first data byte, so without this bound one
        byte after a header declaring ``max_upload_bytes`` would make the server commit that much
        memory per stream. A masked (or plaintext) vector is the session's vector size plus framing;
        every other upload (keys, shares, signatures, a refusal) is small and grows with the roster.
        """
        with self._lock:
            spec = self._coord.current_spec()
            peers = len(self._coord.roster)
        limit = self._limits.max_upload_bytes
        if spec is None:
            return limit
        framing = 64 * 1024 + sum(len(seg.name) + 64 for seg in spec.segments)
        if kind == pb.UPLOAD_KIND_MASKED_INPUT:
            need = spec.total_length * spec.ring_bits // 8 + framing
        elif kind == pb.UPLOAD_KIND_PLAINTEXT_INPUT:
            need = spec.total_length * 4 + framing
        else:
            need = 64 * 1024 + 4 * 1024 * peers
        return min(limit, need)

    # -- RPCs ----------------------------------------------------------------------------------
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        peer = self._peer(context, "Join")
        if request.protocol_version and request.protocol_version != PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {request.protocol_version} is not supported (server speaks {PROTOCOL_VERSION})",
            )
        logs.event(log, "join", client=peer.client_id, version=request.software_version)
        return pb.JoinReply(
            federation_name=self._name,
            protocol_version=PROTOCOL_VERSION,
            max_message_bytes=self._limits.max_upload_bytes,
            chunk_bytes=self._limits.chunk_bytes,
            poll_interval_ms=200,
            client_id=peer.client_id,
        )

    def Poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.Instruction:
        peer = self._peer(context, "Poll")
        with self._lock:
            pending = self._coord.poll(peer.client_id)
            if (
                isinstance(pending.instruction, Finished)
                and request.last_instruction_id == pending.instruction_id
            ):
                # The client acknowledges the end, after fetching the result it keeps: it is done.
                self.finished_clients.add(peer.client_id)
            give_up = time.monotonic() + self._limits.long_poll_s
            while isinstance(pending.instruction, Wait) and self._long_polls < self._max_long_polls:
                remaining = give_up - time.monotonic()
                if remaining <= 0 or not context.is_active():
                    break
                self._long_polls += 1
                try:
                    self._changed.wait(timeout=min(remaining, 0.5))
                finally:
                    self._long_polls -= 1
                pending = self._coord.poll(peer.client_id)
            instruction = self._instruction(pending)
            self.wire_bytes["instructions"] += instruction.ByteSize()
            return instruction

    def Upload(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadAck:
        peer = self._peer(context, "Upload")
        with self._uploads_lock:
            if self._uploads.get(peer.client_id, 0) >= self._max_uploads:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"client {peer.client_id!r}: at most {self._max_uploads} concurrent uploads",
                )
            self._uploads[peer.client_id] = self._uploads.get(peer.client_id, 0) + 1
        # An upload that outlives a phase can never be accepted (the phase it answers has closed):
        # a stream still running after the longest phase plus the idle grace is cut off.
        idle = self._limits.upload_idle_timeout_s
        watchdog = _IdleWatchdog(idle, context.cancel, max_s=self._coord.plan.phase_timeout_s + idle)
        assembler: chunks.UploadAssembler | None = None
        try:
            for chunk in request_iterator:
                watchdog.kick()
                if assembler is None:
                    # Sized by the first header, before a byte of payload is buffered (see _upload_limit).
                    kind = int(chunk.header.kind) if chunk.HasField("header") else 0
                    assembler = chunks.UploadAssembler(self._upload_limit(kind))
                assembler.feed(chunk)
            if assembler is None:
                assembler = chunks.UploadAssembler(0)  # an empty stream: finish() says so
            header, payload = assembler.finish()
            self.wire_bytes["upload"] += len(payload)
            with self._lock:
                spec = self._coord.current_spec()
            message = convert.envelope_from_bytes(header.kind, payload, spec=spec)
        except WireError as exc:
            logs.event(log, "upload-malformed", logging.WARNING, client=peer.client_id, error=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed upload: {exc}")
        finally:
            watchdog.stop()
            with self._uploads_lock:
                self._uploads[peer.client_id] -= 1
        try:
            with self._lock:
                if isinstance(message, convert.Refusal):
                    self._coord.refuse(peer.client_id, message.round, message.reason)
                else:
                    self._coord.upload(peer.client_id, message, peer_chain=[peer.certificate_der])
                self.notify()
        except SecAggError as exc:
            logs.event(log, "upload-refused", logging.WARNING, client=peer.client_id, error=str(exc))
            return pb.UploadAck(
                ok=False,
                error_phase=convert.phase_to_proto(exc.phase),
                error_message=str(exc),
                error_type=type(exc).__name__,
            )
        return pb.UploadAck(ok=True)

    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadChunk]:
        peer = self._peer(context, "Download")
        with self._lock:
            digest, data = self._current_model()
        if request.model_hash != digest:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"client {peer.client_id!r}: that model is not the current one"
            )
        self.wire_bytes["download"] += len(data) - min(request.offset, len(data))
        try:
            yield from chunks.split_download(data, self._limits.chunk_bytes, request.offset, sha256=digest)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        peer = self._peer(context, "Heartbeat")
        with self._lock:
            waiting = not isinstance(self._coord.poll(peer.client_id).instruction, Wait)
            session_open = self._coord.session_open(bytes(request.session_id))
        return pb.HeartbeatReply(
            server_time_unix_ms=int(time.time() * 1000), poll_now=waiting, session_open=session_open
        )
