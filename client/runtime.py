"""An institution's client process: join, poll for instructions, take part in rounds, until told to stop.

The client only ever dials out, through :class:`client.channel.CoordinatorLink`: every connection that
carries instructions is opened by the client itself and the coordinator's certificate (CRL included) is
checked on it, the first and every reconnection; a refused certificate ends the run
(:class:`client.tls.ServerRefused`). Each instruction is handed to the institution's
:class:`~secfed.fl.participant.Participant`, which checks it against the institution's own policy and
drives the SecAgg client state machine; the local task computes the contribution only after every
peer's advert has been verified (the compute phase, between ShareKeys and MaskedInput). Transport
failures are retried with exponential back-off and jitter (a restarting server is normal, and an
institution started before its coordinator waits for it); a protocol
violation by the server ends that session (its secrets are erased) and the client goes on polling.

Under torchrun (``WORLD_SIZE`` > 1, :mod:`secfed.model.distributed`) only rank 0 does all this; it
trains with every rank of the group, and the other ranks serve its training jobs until it stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from client.channel import CoordinatorLink
from client.config import RetryPolicy
from client.faults import Fault
from secfed import logs
from secfed.audit.entries import session_entry
from secfed.cancel import ComputeCancelled, cancellable
from secfed.chain import HashChain
from secfed.fl.participant import Participant, StageStart
from secfed.fl.policy import InstitutionPolicy, Refusal
from secfed.fl.releases import ReleaseLog
from secfed.fl.tasks import ClientTask
from secfed.pki.kit import Kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.client import ClientSession
from secfed.secagg.config import PROTOCOL_VERSION, SessionConfig
from secfed.secagg.errors import Phase, SecAggError
from secfed.secagg.messages import (
    AdvertiseKeys,
    ComputeReady,
    ConsistencySignature,
    MaskedInputUpload,
    ShareKeysRelay,
    ShareKeysUpload,
    UnmaskResponse,
)
from secfed.wire import WireError, chunks, convert

if TYPE_CHECKING:
    import torch

    from secfed.model.distributed import BaseLoader, Launch
    from secfed.model.loading import LoadedModel
    from secfed.model.quantization import Quantization

_MAX_FAULT_PROOFS = 32
log = logging.getLogger("secfed.client")
T = TypeVar("T")

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
}
_RPC_TIMEOUT_S = 60.0
# The phase each upload answers (for fault injection and logs).
_PHASE_OF: dict[type, Phase] = {
    AdvertiseKeys: Phase.ADVERTISE,
    ShareKeysUpload: Phase.SHARE_KEYS,
    ComputeReady: Phase.COMPUTE,
    MaskedInputUpload: Phase.MASKED_INPUT,
    ConsistencySignature: Phase.CONSISTENCY,
    UnmaskResponse: Phase.UNMASK,
}
_MAX_MODEL_BYTES = 8 * 1024**3


def _looks_like_tls_refusal(details: str) -> bool:
    """An UNAVAILABLE whose details speak of the handshake or certificates (the link's own record of a
    connection the coordinator broke off is :class:`client.channel.LinkFailure`)."""
    lowered = details.lower()
    return any(word in lowered for word in ("handshake", "certificate", "ssl", "tls"))


class ClientStopped(Exception):  # noqa: N818 - the run ended (refused, gave up): carries the reason
    pass


@dataclass
class ClientReport:
    client_id: str
    finished_reason: str = ""
    rounds_joined: list[int] = field(default_factory=list)
    rounds_completed: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    model_saved: Path | None = None  # this institution's copy of the federation's result


def _note_round(rounds: list[int], round_: int) -> None:
    """A round of several stages (several sessions) counts once."""
    if not rounds or rounds[-1] != round_:
        rounds.append(round_)


class ClientRuntime:
    def __init__(
        self,
        kit: Kit,
        task: ClientTask,
        *,
        address: str,
        retry: RetryPolicy | None = None,
        fault: Fault | None = None,
        policy: InstitutionPolicy | None = None,
        releases: ReleaseLog | None = None,
        audit_ledger: Path | None = None,
        model_dir: Path | None = None,
        checkpoint_every: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if kit.role != "client":
            raise ValueError(f"{kit.root}: this kit is for a {kit.role}, not a client")
        self.kit = kit
        self.task = task
        self.address = address
        self.retry = retry or RetryPolicy()
        self.fault = fault
        self._sleep = sleep
        self.report = ClientReport(kit.client_id)
        self.participant = Participant(
            kit.identity, kit.trust, task, policy=policy, releases=releases, on_refusal=self._refused_locally
        )
        self._session_round = -1
        self._handled: set[int] = set()
        self._model: tuple[bytes, np.ndarray] | None = None
        self._chunk_bytes = 1024 * 1024
        # The institution's own record of every session it took part in, refused or saw violated:
        # what it revealed (cohort sums under which parameters), independent of the server's word.
        self._audit = HashChain(audit_ledger) if audit_ledger is not None else None
        self._session_config: SessionConfig | None = None
        # Where this institution keeps the global model: model_dir/final at the end (or
        # model_dir/after-round-N when the run stopped early), model_dir/after-round-N every
        # ``checkpoint_every`` rounds.
        self.model_dir = model_dir
        self.checkpoint_every = checkpoint_every
        # How often the compute phase asks whether its session is still open.
        self.heartbeat_s = 2.0
        self._link: CoordinatorLink | None = None  # while run() runs

    # -- transport -----------------------------------------------------------------------------
    def _open_link(self) -> CoordinatorLink:
        """The channel to the coordinator; each of its connections is checked (:mod:`client.channel`)."""
        limit = 64 * 1024 * 1024
        return CoordinatorLink(
            self.kit,
            self.address,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # gRPC's own reconnection back-off follows the retry policy (its default grows to two
                # minutes): a restarted coordinator is found again as soon as the runtime retries.
                ("grpc.initial_reconnect_backoff_ms", max(1, int(self.retry.initial_backoff_s * 1000))),
                ("grpc.max_reconnect_backoff_ms", max(1, int(self.retry.max_backoff_s * 1000))),
            ],
        )

    def _check_link(self) -> None:
        """Stop for good once the link refused the coordinator's certificate on any connection."""
        if self._link is not None:
            self._link.raise_if_refused()  # the link logged the refusal ("server-refused")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one RPC, retrying transient failures with exponential back-off and full jitter.

        A coordinator whose certificate the link refused is final (:class:`client.tls.ServerRefused`);
        one that cannot be reached (down, restarting) is waited for, up to ``give_up_after_s``.
        """
        delay = self.retry.initial_backoff_s
        give_up = time.monotonic() + self.retry.give_up_after_s
        while True:
            self._check_link()
            try:
                return fn()
            except grpc.RpcError as exc:
                self._check_link()
                code = exc.code()
                details = str(exc.details() or "")
                failure = self._link.failure if self._link is not None else None
                if code != grpc.StatusCode.UNAVAILABLE:
                    failure = None
                if code not in _RETRYABLE or time.monotonic() > give_up:
                    if failure is not None and failure.kind == "unreachable":
                        raise ClientStopped(f"server {self.address} unreachable: {failure.detail}") from exc
                    cause = f" ({failure.detail})" if failure is not None else ""
                    raise ClientStopped(f"{what} failed: {code.name}: {details}{cause}") from exc
                if failure is not None and failure.kind == "unreachable":
                    logs.event(
                        log, "waiting-for-coordinator", server=self.address, rpc=what, cause=failure.detail
                    )
                elif failure is not None and failure.kind == "crl":
                    logs.event(
                        log, "kit-crl-unusable", logging.WARNING, server=self.address, cause=failure.detail
                    )
                elif (failure is not None and failure.kind == "tls") or _looks_like_tls_refusal(details):
                    logs.event(
                        log,
                        "certificate-rejected",
                        logging.WARNING,
                        rpc=what,
                        server=self.address,
                        cause=failure.detail if failure is not None else details,
                        hint="the coordinator refused this kit's certificate (another CA, revoked, expired?): "
                        "run `secfed certs check` on the kit",
                    )
                else:
                    logs.event(log, "retry", rpc=what, code=code.name, cause=details, delay=f"{delay:.2f}")
                self._sleep(delay * (0.5 + secrets.randbelow(1000) / 2000))
                delay = min(delay * 2, self.retry.max_backoff_s)

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> ClientReport:
        """Take part until the federation finishes; :class:`ClientStopped` or
        :class:`client.tls.ServerRefused` when the run cannot go on.

        Started by torchrun with several ranks, see :meth:`_run_ranks`; otherwise (no ``WORLD_SIZE``,
        and torch is not even imported) one process does everything."""
        if "WORLD_SIZE" in os.environ:
            from secfed.model.distributed import Launch

            launch = Launch.from_environ(os.environ)
            if launch is not None:
                return self._run_ranks(launch)
        return self._run_linked()

    def _run_ranks(self, launch: Launch) -> ClientReport:
        """Rank 0 runs the client with the group behind its training; the other ranks serve it until it
        stops. A failed or silent rank stops the client (:class:`ClientStopped`, naming it)."""
        from secfed.model import distributed

        device = distributed.rank_device(str(getattr(self.task, "device", "auto")), launch)
        try:
            with distributed.joined(launch, device, key=self._job_key()) as group:
                if launch.rank > 0:
                    jobs = distributed.serve(group, self._base_loader(device))
                    self.report.finished_reason = f"rank {launch.rank}: rank 0 stopped; trained {jobs} jobs"
                    return self.report
                with distributed.leading(group):
                    return self._run_linked()
        except distributed.RankError as exc:
            raise ClientStopped(f"rank {launch.rank}: {exc}") from exc

    def _job_key(self) -> bytes:
        """The key rank 0 seals training jobs with, from this institution's private key (every rank
        reads the same kit; see secfed.model.distributed)."""
        from cryptography.hazmat.primitives import serialization

        from secfed.model.distributed import job_key

        der = self.kit.identity.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            return job_key(der, self.kit.client_id)
        finally:
            del der

    def _base_loader(self, device: torch.device) -> BaseLoader | None:
        """How a rank > 0 loads the base model the task trains (the same config as rank 0's, the job's
        quantization scheme), on its own device; None for a task without a model (the LoRA tasks name
        theirs ``model_source``)."""
        source = getattr(self.task, "model_source", None)
        if source is None:
            return None
        from secfed.model.loading import load_base_model

        def load(quantization: Quantization | None) -> LoadedModel:
            return load_base_model(str(source), device=str(device), quantization=quantization)

        return load

    def _run_linked(self) -> ClientReport:
        with self._open_link() as link:
            self._link = link
            try:
                return self._run(pb_grpc.FederationStub(link.channel))  # type: ignore[no-untyped-call]
            finally:
                self._link = None

    def _run(self, stub: pb_grpc.FederationStub) -> ClientReport:
        reply = self._call(
            "Join",
            lambda: stub.Join(
                pb.JoinRequest(software_version="secfed", protocol_version=PROTOCOL_VERSION),
                timeout=_RPC_TIMEOUT_S,
            ),
        )
        if reply.client_id != self.kit.client_id:
            raise ClientStopped(f"server identified us as {reply.client_id!r}, not {self.kit.client_id!r}")
        self._chunk_bytes = reply.chunk_bytes or self._chunk_bytes
        logs.event(log, "joined", client=self.kit.client_id, federation=reply.federation_name)
        last = 0
        while True:
            request = pb.PollRequest(last_instruction_id=last)
            ins = self._call("Poll", partial(stub.Poll, request, timeout=_RPC_TIMEOUT_S))
            step = ins.WhichOneof("step")
            if step == "finished":
                self.report.finished_reason = ins.finished.reason
                self._drop_session()
                logs.event(log, "finished", client=self.kit.client_id, reason=ins.finished.reason)
                self._save_final(stub, ins.finished)
                with contextlib.suppress(grpc.RpcError):  # tell the server this client is done
                    stub.Poll(pb.PollRequest(last_instruction_id=ins.instruction_id), timeout=5.0)
                return self.report
            if step == "wait" or ins.instruction_id in self._handled:
                self._sleep(max(ins.wait.retry_after_ms, 50) / 1000 if step == "wait" else 0.05)
                continue
            self._handled.add(ins.instruction_id)
            last = ins.instruction_id
            try:
                self._handle(stub, ins)
            # Whatever the server sent (a protocol break, malformed bytes, a value the task
            # cannot use): this session is over, the client goes on polling.
            except (SecAggError, WireError, ValueError) as exc:
                self.report.violations.append(str(exc))
                self._ledger("session-refused", round=self._session_round, error=str(exc))
                logs.event(log, "session-refused", logging.WARNING, client=self.kit.client_id, error=str(exc))
                self._drop_session()

    def _handle(self, stub: pb_grpc.FederationStub, ins: pb.Instruction) -> None:
        step = ins.WhichOneof("step")
        if step == "session_aborted":
            self._drop_session()
            return
        if step == "round_start":
            self._start_round(stub, ins)
            return
        relay = convert.relay_from_instruction(ins)
        if relay is None:
            return
        session = self.participant.session
        if isinstance(relay, ShareKeysRelay) and session is not None:
            # The compute phase: local training or features, possibly minutes. Watch the session
            # meanwhile and stop the work as soon as the coordinator abandons its attempt.
            try:
                with self._watching(stub, session.session_id):
                    upload = self.participant.relay(relay)
            except ComputeCancelled:
                self.participant.abandon()
                logs.event(
                    log,
                    "compute-cancelled",
                    logging.WARNING,
                    client=self.kit.client_id,
                    round=self._session_round,
                    session=self._session_label(),
                    reason="the coordinator abandoned this attempt (a phase expired or too many dropped out); "
                    "local work stopped, the round continues with the next attempt",
                )
                return
        else:
            upload = self.participant.relay(relay)
        if upload is None:
            return  # a relay for a session this process does not hold (e.g. after a restart): ignore
        phase = _PHASE_OF[type(upload)] if not isinstance(upload, Refusal) else Phase.COMPUTE
        self._upload(stub, ins, phase, upload)
        if isinstance(upload, UnmaskResponse) and session is not None:
            _note_round(self.report.rounds_completed, self._session_round)
            self._record_session(session)

    @contextlib.contextmanager
    def _watching(self, stub: pb_grpc.FederationStub, session_id: bytes) -> Iterator[None]:
        """A cancellable scope (:mod:`secfed.cancel`) that a heartbeat thread closes when the coordinator
        says ``session_id`` is no longer its open session. An unreachable coordinator cancels nothing."""
        abandoned, done = threading.Event(), threading.Event()
        request = pb.HeartbeatRequest(
            round=max(self._session_round, 0), session_id=session_id, phase=pb.PHASE_COMPUTE
        )

        def watch() -> None:
            while not done.wait(self.heartbeat_s):
                try:
                    reply = stub.Heartbeat(request, timeout=_RPC_TIMEOUT_S)
                except grpc.RpcError:
                    continue
                if not reply.session_open:
                    abandoned.set()
                    return

        watcher = threading.Thread(target=watch, name="secfed-heartbeat", daemon=True)
        watcher.start()
        try:
            with cancellable(abandoned):
                yield
        finally:
            done.set()
            watcher.join(timeout=1.0)

    def _session_label(self) -> str:
        config = self._session_config
        return config.label if config is not None else ""

    def _start_round(self, stub: pb_grpc.FederationStub, ins: pb.Instruction) -> None:
        rs = ins.round_start
        config = convert.session_config_from_proto(rs.session, max_total_length=_MAX_MODEL_BYTES // 4)
        model = self._download(stub, rs.global_model)
        try:
            task_config = json.loads(rs.task_config or b"{}")
        except ValueError:
            task_config = None
        previous = self._session_config
        if previous is not None and self.participant.session is not None and previous.label != config.label:
            logs.event(
                log,
                "attempt-abandoned",
                logging.WARNING,
                client=self.kit.client_id,
                round=previous.round,
                abandoned=previous.label,
                now=f"round {config.round}, {config.label}",
            )
        self._session_round = config.round
        self._session_config = config
        if not isinstance(task_config, dict):
            task_config = {"invalid": "not a JSON object"}  # the participant refuses it by its hash and type
        evidence = None
        previous = self.participant.finished_config()
        if rs.HasField("previous_stage") and previous is not None:
            evidence = convert.sum_evidence_from_proto(rs.previous_stage, previous.spec)
        # One proof per dealer proven in the round, each a member the cohort no longer holds: a
        # bound on the work a server can make a client do checking them.
        if len(rs.fault_proofs) > max(len(config.roster), _MAX_FAULT_PROOFS):
            raise WireError(
                "round_start.fault_proofs",
                f"{len(rs.fault_proofs)} proofs for a roster of {len(config.roster)}",
            )
        start = StageStart(
            config,
            rs.task,
            task_config,
            model,
            secure=not rs.insecure_plaintext,
            evidence=evidence,
            fault_proofs=tuple(convert.fault_proof_from_proto(p) for p in rs.fault_proofs),
        )
        upload = self.participant.start(start)
        if isinstance(upload, Refusal):
            self._upload(stub, ins, Phase.ADVERTISE, upload)
            return
        self._checkpoint(config.round, model)  # only a global model this institution admitted
        _note_round(self.report.rounds_joined, config.round)
        self._upload(
            stub, ins, Phase.ADVERTISE if isinstance(upload, AdvertiseKeys) else Phase.MASKED_INPUT, upload
        )
        if not isinstance(upload, AdvertiseKeys):
            _note_round(self.report.rounds_completed, config.round)

    def _save_final(self, stub: pb_grpc.FederationStub, finished: pb.Finished) -> None:
        """Fetch the federation's result and keep this institution's copy of it."""
        if self.model_dir is None or not finished.HasField("final_model"):
            return
        done = int(finished.rounds_completed)
        name = "final" if finished.reason.startswith("completed") else f"after-round-{done - 1}"
        try:
            model = self._download(stub, finished.final_model)
        except (ClientStopped, WireError, ValueError) as exc:
            logs.event(log, "model-not-saved", logging.WARNING, client=self.kit.client_id, error=str(exc))
            return
        self._save_model(model, done, self.model_dir / name)

    def _checkpoint(self, round_: int, model: np.ndarray) -> None:
        """Every ``checkpoint_every`` rounds, keep the global model a round starts from."""
        every = self.checkpoint_every
        if self.model_dir is None or not every or round_ == 0 or round_ % every:
            return
        directory = self.model_dir / f"after-round-{round_ - 1}"
        if not directory.exists():
            self._save_model(model, round_, directory)

    def _save_model(self, model: np.ndarray, rounds_completed: int, directory: Path) -> None:
        try:
            self.task.save_model(model, rounds_completed, directory)
        except ValueError as exc:  # refused (a crafted model) or nothing to save it with
            logs.event(
                log,
                "model-not-saved",
                logging.WARNING,
                client=self.kit.client_id,
                directory=str(directory),
                error=str(exc),
            )
            return
        self.report.model_saved = directory
        logs.event(
            log, "model-saved", client=self.kit.client_id, directory=str(directory), rounds=rounds_completed
        )

    def _refused_locally(self, round_: int, category: str, exc: ValueError) -> None:
        """The full reason of a refusal stays here, in the institution's log and audit ledger."""
        reason = str(exc)
        self.report.refusals.append((round_, reason))
        self._ledger("round-refused", round=round_, category=category, reason=reason)
        logs.event(
            log,
            "round-refused",
            logging.WARNING,
            client=self.kit.client_id,
            round=round_,
            category=category,
            reason=reason,
        )

    def _ledger(self, kind: str, **body: Any) -> None:
        if self._audit is not None:
            self._audit.append(kind, body)

    def _record_session(self, session: ClientSession) -> None:
        """After our unmask response: the session's public parameters and what encoding clipped."""
        config = self._session_config
        if config is not None:
            self._ledger("session", **session_entry(config, session))

    def _download(self, stub: pb_grpc.FederationStub, ref: pb.ModelRef) -> np.ndarray:
        if self._model is not None and self._model[0] == ref.hash:
            return self._model[1]
        if ref.size_bytes > _MAX_MODEL_BYTES or ref.dtype != pb.TENSOR_DTYPE_FLOAT32 or ref.size_bytes % 4:
            raise WireError("global_model", f"unsupported model ({ref.size_bytes} bytes, dtype {ref.dtype})")
        assembler = chunks.DownloadAssembler(_MAX_MODEL_BYTES, expected_sha256=ref.hash)

        def fetch() -> memoryview:
            offset = assembler.start_stream()
            for chunk in stub.Download(
                pb.DownloadRequest(model_hash=ref.hash, offset=offset), timeout=_RPC_TIMEOUT_S
            ):
                assembler.feed(chunk)
            return assembler.finish()

        data = self._call("Download", fetch)
        if len(data) != ref.size_bytes:
            raise WireError(
                "global_model", f"{len(data)} bytes arrived, the reference names {ref.size_bytes}"
            )
        model = np.frombuffer(data, dtype="<f4").astype(np.float32)
        self._model = (bytes(ref.hash), model)
        return model

    def _upload(
        self, stub: pb_grpc.FederationStub, ins: pb.Instruction, phase: Phase, message: convert.UploadMessage
    ) -> None:
        if self.fault is not None:
            self.fault.maybe_trigger(self._session_round, phase)
        kind, payload = convert.envelope_to_bytes(message)
        sid = getattr(message, "session_id", b"")

        def send() -> pb.UploadAck:
            parts = chunks.split_upload(
                kind, sid, self._session_round, payload, self._chunk_bytes, instruction_id=ins.instruction_id
            )
            ack: pb.UploadAck = stub.Upload(parts, timeout=_RPC_TIMEOUT_S)
            return ack

        ack = self._call(f"Upload[{phase.value}]", send)
        if not ack.ok:
            logs.event(
                log,
                "upload-refused",
                logging.WARNING,
                client=self.kit.client_id,
                phase=phase.value,
                error=ack.error_message,
            )
            self._drop_session()

    def _drop_session(self) -> None:
        self.participant.abandon()
