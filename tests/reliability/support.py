"""Helpers of the reliability tests: client runtimes that crash, call back or record at chosen uploads.

``client.faults.Fault`` is the runtime's hook just before every upload (``maybe_trigger(round, phase)``,
after the message is made and before it is sent). The process-level harness uses it to SIGKILL or hang
a client process; these tests subclass it to do the same things cheaply inside one process: end a
client "thread process" as abruptly as a crash (an exception no handler catches), or run test code at
an exact protocol point (a replay, a second incarnation's attempt to get in).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.config import RetryPolicy
from client.faults import Fault
from client.runtime import ClientReport, ClientRuntime
from secfed.fl.registry import client_task
from secfed.pki.kit import load_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.errors import Phase
from secfed.wire import convert
from tests.federation.support import TOY, Federation

FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, give_up_after_s=60)


class SimulatedCrash(BaseException):
    """Raised from a hook: escapes every handler of the runtime, like SIGKILL ends a process."""


class Hook(Fault):
    """A ``Fault`` that calls ``callback(round, phase)`` before every upload instead of killing the process."""

    def __init__(self, callback: Callable[[int, Phase], None]) -> None:
        super().__init__("kill", -1, Phase.ADVERTISE)  # fields unused: maybe_trigger is replaced
        object.__setattr__(self, "_callback", callback)

    def maybe_trigger(self, round_: int, phase: Phase) -> None:
        self._callback(round_, phase)  # type: ignore[attr-defined]


def crash_at(round_: int, phase: Phase) -> Hook:
    """Die just before the upload of ``phase`` in ``round_`` (the in-process ``kill@ROUND:PHASE``)."""

    def callback(r: int, p: Phase) -> None:
        if (r, p) == (round_, phase):
            raise SimulatedCrash(f"crashed before uploading {p.value} in round {r}")

    return Hook(callback)


@dataclass
class Upload:
    """One upload as it went over the wire: its kind, envelope bytes and session id."""

    round: int
    phase: Phase
    kind: int
    payload: bytes
    session_id: bytes


class RecordingRuntime(ClientRuntime):
    """A client runtime that keeps a copy of every upload it sends (what a wire-tapper would have),
    the phases the server acknowledged, and the RoundStart instructions it received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uploads: list[Upload] = []
        self.acked: list[tuple[int, Phase]] = []
        self.round_starts: list[pb.Instruction] = []
        self.acked_event = threading.Event()

    def _handle(self, stub: pb_grpc.FederationStub, ins: pb.Instruction) -> None:
        if ins.WhichOneof("step") == "round_start":
            self.round_starts.append(ins)
        super()._handle(stub, ins)

    def _upload(
        self, stub: pb_grpc.FederationStub, ins: pb.Instruction, phase: Phase, message: convert.UploadMessage
    ) -> None:
        kind, payload = convert.envelope_to_bytes(message)
        sid = getattr(message, "session_id", b"")
        self.uploads.append(Upload(self._session_round, phase, int(kind), payload, sid))
        super()._upload(stub, ins, phase, message)
        if self.participant.session is not None:  # the runtime drops its session when an upload is refused
            self.acked.append((self._session_round, phase))
            self.acked_event.set()


@dataclass
class Running:
    """A client runtime running in a thread, and what became of it."""

    client_id: str
    runtime: ClientRuntime
    thread: threading.Thread
    report: ClientReport | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def run_client(
    pki: Path,
    client_id: str,
    address: str,
    *,
    fault: Fault | None = None,
    runtime_class: type[ClientRuntime] = ClientRuntime,
    sleep: Callable[[float], None] = time.sleep,
    retry: RetryPolicy = FAST_RETRY,
) -> Running:
    """Start ``client_id``'s runtime (its real kit, the toy task) in a daemon thread."""
    runtime = runtime_class(
        load_kit(pki / "clients" / client_id),
        client_task("toy-mean", client_id, TOY),
        address=address,
        retry=retry,
        fault=fault,
        sleep=sleep,
    )
    running = Running(client_id, runtime, threading.Thread(target=lambda: None))

    def body() -> None:
        try:
            running.report = runtime.run()
        except BaseException as exc:  # a simulated crash included: the test inspects it
            running.error = exc
        finally:
            running.done.set()

    running.thread = threading.Thread(target=body, name=f"client-{client_id}", daemon=True)
    running.thread.start()
    return running


def start(fed: Federation, client_id: str, **kw: Any) -> Running:
    return run_client(fed.pki, client_id, fed.address, **kw)


def wait_finished(fed: Federation, clients: Sequence[Running] = (), timeout_s: float = 60.0) -> str:
    """Wait for the coordinator to finish and for ``clients`` (the live ones) to hear so; stop the server.

    Never waits for clients that are dead or hung: only those given, and only until the deadline.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while fed.server.coordinator.finished_reason is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the federation did not finish within {timeout_s} s")
            time.sleep(0.05)
        for c in clients:
            c.done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        fed.server.stop()
    return fed.server.coordinator.finished_reason or "stopped"


def join_all(clients: list[Running], timeout_s: float = 30.0) -> None:
    """Every client thread has ended without an error (none crashed unexpectedly, none hangs)."""
    for c in clients:
        c.thread.join(timeout_s)
        assert not c.thread.is_alive(), f"client {c.client_id} did not stop"
        assert c.error is None, f"client {c.client_id} failed: {c.error!r}"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it), for a server started later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
