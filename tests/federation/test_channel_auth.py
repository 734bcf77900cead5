"""The coordinator's certificate is checked on the connection that carries the instructions, every time.

The client once checked the coordinator's certificate (chain, serverAuth, host name, the kit's CRL) on a
one-off TLS handshake of its own, then let gRPC open the real channel, which accepts any certificate
the consortium CA issued -- revoked or not -- and reconnects by itself whenever a connection drops.
Now ``client.channel.CoordinatorLink`` opens every connection itself and checks the certificate on it.

The coordinators here are small fakes (a real gRPC server with real mutual TLS, a servicer that records
every call) so that a test can tell exactly which server the client talked to: the genuine coordinator
answers Join and hands out Wait, the impostor -- a second coordinator certificate issued by the same CA
and revoked in the institution's CRL, say the old certificate of a coordinator whose key leaked -- hands
out ``Finished``. A client that acts on an impostor's instruction ends its run normally with the
impostor's reason; a client that refuses it stops with ``ServerRefused``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.channel import CoordinatorLink
from client.config import RetryPolicy
from client.runtime import ClientRuntime, ClientStopped
from client.tls import ServerRefused
from secfed.pki.files import load_ca, load_crl
from secfed.pki.issue import issue_client, issue_server, revoke
from secfed.pki.kit import load_kit, write_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.config import PROTOCOL_VERSION
from secfed.wire import chunks
from tests.federation.rawclient import publish_crl
from tests.federation.support import provision_kits
from tests.reliability.support import Running, run_client

pytestmark = pytest.mark.timeout(120)

CLIENT = "inst00"
IMPOSTOR_REASON = "completed by the impostor"


class FakeCoordinator(pb_grpc.FederationServicer):
    """Answers Join for ``CLIENT`` and every Poll with ``instruction``; records every call."""

    def __init__(self, instruction: pb.Instruction, model: bytes = b"") -> None:
        self.instruction = instruction
        self.model = model
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _record(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)

    def count(self, name: str) -> int:
        with self._lock:
            return self.calls.count(name)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        self._record("Join")
        return pb.JoinReply(
            federation_name="fake", protocol_version=PROTOCOL_VERSION, chunk_bytes=1 << 20, client_id=CLIENT
        )

    def Poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.Instruction:
        self._record("Poll")
        return self.instruction

    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadChunk]:
        self._record("Download")
        yield from chunks.split_download(self.model, 1 << 20, request.offset)


def genuine() -> FakeCoordinator:
    return FakeCoordinator(pb.Instruction(instruction_id=1, wait=pb.Wait(retry_after_ms=50)))


def impostor() -> FakeCoordinator:
    return FakeCoordinator(pb.Instruction(instruction_id=7, finished=pb.Finished(reason=IMPOSTOR_REASON)))


def serve(kit_dir: Path, servicer: FakeCoordinator, port: int = 0) -> tuple[grpc.Server, int]:
    """A gRPC server with the TLS set-up of ``server.runtime`` (mutual TLS against the consortium CA)."""
    kit = load_kit(kit_dir)
    limit = 64 * 1024 * 1024
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    pb_grpc.add_FederationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials(
        [(kit.key_path.read_bytes(), kit.cert_path.read_bytes())],
        root_certificates=kit.ca_path.read_bytes(),
        require_client_auth=True,
    )
    bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    assert bound, f"cannot listen on 127.0.0.1:{port}"
    server.start()
    return server, bound


class Pki:
    """A consortium with one institution, its coordinator, and an impostor coordinator certificate
    (same CA, 127.0.0.1 in its SAN like the real one) that the institution's CRL can revoke."""

    def __init__(self, tmp: Path) -> None:
        self.root = provision_kits(tmp, 1)
        self.ca = load_ca(self.root / "ca")
        self.server_kit = self.root / "server"
        self.client_kit = self.root / "clients" / CLIENT
        self.impostor_kit = write_kit(
            tmp / "impostor", issue_server(self.ca), self.ca.certificate, revoke(self.ca, []), role="server"
        )

    def revoke_in_client_crl(self, kit_dir: Path) -> None:
        serial = load_kit(kit_dir).identity.certificate.serial_number
        crl_path = self.client_kit / "crl.pem"
        publish_crl(crl_path, revoke(self.ca, [serial], previous=load_crl(crl_path)))


class Relay:
    """What an attacker on the path runs: a plain TCP relay (it cannot read or forge TLS) that sends the
    first connection to ``first_port`` and every later one to ``later_port``; :meth:`cut` drops the
    connections it relays, as a network failure (or the attacker) would."""

    def __init__(self, first_port: int, later_port: int) -> None:
        self.targets = (first_port, later_port)
        self.routed: list[int] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                port = self.targets[0] if not self.routed else self.targets[1]
                self.routed.append(port)
            try:
                outbound = socket.create_connection(("127.0.0.1", port))
            except OSError:
                inbound.close()
                continue
            with self._lock:
                self._sockets += [inbound, outbound]
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.cut()


class LinkSpy(ClientRuntime):
    """The runtime, keeping a reference to the link it opened."""

    links: list[CoordinatorLink]

    def _open_link(self) -> CoordinatorLink:
        link = super()._open_link()
        self.links = [*getattr(self, "links", []), link]
        return link


def spied_link(running: Running) -> CoordinatorLink:
    """The one link a ``LinkSpy`` runtime opened."""
    assert isinstance(running.runtime, LinkSpy)
    [link] = running.runtime.links
    return link


def wait_until(condition: Callable[[], Any], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def finished(running: Running, timeout_s: float = 30.0) -> Running:
    assert running.done.wait(timeout_s), f"client {running.client_id} did not stop"
    return running


def link_threads(link: CoordinatorLink) -> list[str]:
    tag = link.socket_path.parent.name
    return [t.name for t in threading.enumerate() if tag in t.name]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_a_relay_cannot_hand_the_client_to_a_revoked_coordinator(pki: Pki) -> None:
    """The attack: a relay on the path sends the client's first connection to the genuine coordinator
    and every later one to an impostor whose certificate the consortium CA issued and then revoked (its
    key leaked). With a one-off check before the channel, the check runs on the first connection (the
    genuine coordinator passes) and gRPC's channel -- which knows the CA but not the CRL -- lands on the
    impostor, joins it and carries out its instructions. Here every connection is checked: the client
    works with the genuine coordinator, and when the relay drops the connection the reconnection reaches
    the impostor, whose certificate is refused before gRPC reads a byte; the client stops for good."""
    pki.revoke_in_client_crl(pki.impostor_kit)
    real, fake = genuine(), impostor()
    real_server, real_port = serve(pki.server_kit, real)
    fake_server, fake_port = serve(pki.impostor_kit, fake)
    relay = Relay(real_port, fake_port)
    try:
        client = run_client(pki.root, CLIENT, f"127.0.0.1:{relay.port}", runtime_class=LinkSpy)
        # The client gets to work: with the genuine coordinator, or (the one-off check) with the impostor.
        wait_until(lambda: real.count("Poll") >= 2 or fake.calls or client.done.is_set())
        assert fake.calls == [], f"the client took instructions from the revoked coordinator: {fake.calls}"
        assert client.error is None, client.error
        assert real.calls[0] == "Join"

        relay.cut()  # every later connection goes to the impostor
        outcome = finished(client)
        assert fake.calls == [], f"the client took instructions from the revoked coordinator: {fake.calls}"
        assert outcome.report is None or outcome.report.finished_reason != IMPOSTOR_REASON
        assert isinstance(outcome.error, ServerRefused), outcome.error
        assert "revoked" in str(outcome.error), outcome.error
        assert relay.routed[0] == real_port and fake_port in relay.routed
        link = spied_link(outcome)
        assert link.verified_connections == 1  # the genuine one; the impostor's never got through
    finally:
        relay.close()
        real_server.stop(0)
        fake_server.stop(0)


def test_a_revoked_coordinator_certificate_is_refused_at_once_and_for_good(pki: Pki) -> None:
    """The direct case: the coordinator's own certificate is revoked in the institution's CRL. The
    first connection is refused with the reason, the client never retries (no back-off sleep), never
    sends an RPC, and leaves no forwarder thread or socket behind."""
    pki.revoke_in_client_crl(pki.server_kit)
    real = genuine()
    server, port = serve(pki.server_kit, real)
    slept: list[float] = []
    try:
        client = finished(
            run_client(pki.root, CLIENT, f"127.0.0.1:{port}", runtime_class=LinkSpy, sleep=slept.append)
        )
    finally:
        server.stop(0)
    assert isinstance(client.error, ServerRefused), client.error
    message = str(client.error)
    assert f"127.0.0.1:{port}" in message and "refused (revoked)" in message and "was revoked on" in message
    assert real.calls == [] and slept == []
    link = spied_link(client)
    assert link.verified_connections == 0 and link.refusal is not None
    assert not link.socket_path.parent.exists()
    assert link_threads(link) == []


def test_a_coordinator_restarted_with_a_revoked_certificate_is_refused_on_reconnection(pki: Pki) -> None:
    """No relay needed: the coordinator restarts on the same address with a revoked certificate (an old
    kit put back, or someone else now holding the address). gRPC reconnects by itself; the new
    connection is checked like the first and refused, and the client stops instead of obeying it."""
    pki.revoke_in_client_crl(pki.impostor_kit)
    real, fake = genuine(), impostor()
    server, port = serve(pki.server_kit, real)
    client = run_client(pki.root, CLIENT, f"127.0.0.1:{port}")
    fake_server = None
    try:
        wait_until(lambda: real.count("Poll") >= 2)
        server.stop(0).wait()
        fake_server, _ = serve(pki.impostor_kit, fake, port)
        finished(client)
    finally:
        server.stop(0)
        if fake_server is not None:
            fake_server.stop(0)
    assert fake.calls == [], f"the client took instructions from the revoked coordinator: {fake.calls}"
    assert isinstance(client.error, ServerRefused) and "revoked" in str(client.error), client.error


def test_a_revocation_published_while_the_client_runs_applies_to_its_next_connection(pki: Pki) -> None:
    """The CA revokes the coordinator's certificate and the institution installs the new CRL in its kit
    while its client runs: the kit's crl.pem is re-read, so the next connection (here after the
    coordinator restarts) is refused without restarting the client."""
    real = genuine()
    server, port = serve(pki.server_kit, real)
    client = run_client(pki.root, CLIENT, f"127.0.0.1:{port}")
    restarted = None
    try:
        wait_until(lambda: real.count("Poll") >= 2)
        pki.revoke_in_client_crl(pki.server_kit)
        server.stop(0).wait()
        again = genuine()
        restarted, _ = serve(pki.server_kit, again, port)
        finished(client)
        assert again.calls == [], again.calls
    finally:
        server.stop(0)
        if restarted is not None:
            restarted.stop(0)
    assert isinstance(client.error, ServerRefused) and "revoked" in str(client.error), client.error


def test_after_a_coordinator_restart_the_client_reconnects_through_a_newly_checked_connection(
    pki: Pki,
) -> None:
    """The normal case of a restart: the client waits for the coordinator, reconnects (a new connection,
    checked again) and goes on taking instructions from it."""
    real = genuine()
    server, port = serve(pki.server_kit, real)
    client = run_client(pki.root, CLIENT, f"127.0.0.1:{port}", runtime_class=LinkSpy)
    restarted = None
    try:
        wait_until(lambda: real.count("Poll") >= 2)
        assert link_threads(spied_link(client))  # the forwarder runs (and its threads are found by name)
        server.stop(0).wait()
        time.sleep(0.5)  # nobody listens for a moment: the client waits
        assert not client.done.is_set(), client.error
        done = FakeCoordinator(
            pb.Instruction(instruction_id=2, finished=pb.Finished(reason="completed 1 rounds"))
        )
        restarted, _ = serve(pki.server_kit, done, port)
        finished(client)
    finally:
        server.stop(0)
        if restarted is not None:
            restarted.stop(0)
    assert client.error is None, client.error
    assert client.report is not None and client.report.finished_reason == "completed 1 rounds"
    link = spied_link(client)
    assert link.verified_connections >= 2 and link.refusal is None
    assert link_threads(link) == [] and not link.socket_path.parent.exists()


def test_a_coordinator_that_refuses_the_kits_certificate_is_reported_as_such(
    pki: Pki, tmp_path: Path
) -> None:
    """The other direction: the coordinator refuses the institution's certificate (expired here). Under
    TLS 1.3 the client's handshake completes first and the coordinator then just closes the connection;
    the link says so, and the run ends -- after the retry policy, as a transient failure would -- naming
    the likely cause rather than a bare "Socket closed"."""
    now = datetime.now(UTC)
    expired = issue_client(
        pki.ca, CLIENT, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    kit = pki.root / "clients" / CLIENT
    write_kit(kit, expired, pki.ca.certificate, load_crl(kit / "crl.pem"), role="client")
    server, port = serve(pki.server_kit, genuine())
    try:
        retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, give_up_after_s=1.0)
        client = finished(
            run_client(pki.root, CLIENT, f"127.0.0.1:{port}", runtime_class=LinkSpy, retry=retry)
        )
    finally:
        server.stop(0)
    assert isinstance(client.error, ClientStopped), client.error
    assert "refused this kit's certificate" in str(client.error), client.error
    failure = spied_link(client).failure
    assert failure is not None and failure.kind == "tls"


def test_an_unreadable_kit_crl_lets_no_connection_through_until_it_is_fixed(pki: Pki) -> None:
    """Fail closed, but not final: a CRL file caught half-written could hide a revocation, so no
    connection is made while it cannot be read; once it can, the link connects again."""
    server, port = serve(pki.server_kit, genuine())
    crl_path = pki.client_kit / "crl.pem"
    good = crl_path.read_bytes()
    try:
        with CoordinatorLink(load_kit(pki.client_kit), f"127.0.0.1:{port}") as link:
            stub = pb_grpc.FederationStub(link.channel)  # type: ignore[no-untyped-call]
            publish_crl(crl_path, b"-----BEGIN X509 CRL-----\nnot a CRL\n")
            with pytest.raises(grpc.RpcError) as refused:
                stub.Join(pb.JoinRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            failure = link.failure
            assert failure is not None and failure.kind == "crl" and str(crl_path) in failure.detail
            assert link.refusal is None and link.verified_connections == 0
            publish_crl(crl_path, good)
            deadline = time.monotonic() + 20
            while True:  # gRPC retries the connection after its back-off
                try:
                    assert stub.Join(pb.JoinRequest(), timeout=5).client_id == CLIENT
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "the link never connected again"
                    time.sleep(0.1)
            assert link.verified_connections == 1 and link.failure is None
    finally:
        server.stop(0)


def test_a_large_download_arrives_intact_through_the_link(pki: Pki) -> None:
    """Model downloads are tens of MB: the forwarder relays them whole and in order."""
    model = os.urandom(48 * 1024 * 1024)
    server, port = serve(pki.server_kit, FakeCoordinator(pb.Instruction(), model))
    try:
        with CoordinatorLink(
            load_kit(pki.client_kit),
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", 1 << 26)],
        ) as link:
            stub = pb_grpc.FederationStub(link.channel)  # type: ignore[no-untyped-call]
            digest = hashlib.sha256(model).digest()
            assembler = chunks.DownloadAssembler(len(model), expected_sha256=digest)
            started = time.perf_counter()
            for chunk in stub.Download(pb.DownloadRequest(model_hash=digest), timeout=60):
                assembler.feed(chunk)
            elapsed = time.perf_counter() - started
            assert bytes(assembler.finish()) == model
            print(f"48 MiB through the link in {elapsed:.2f} s ({48 / elapsed:.0f} MiB/s)")
    finally:
        server.stop(0)
