"""Hand-driven gRPC access to a test federation: chosen credentials, hand-built upload streams.

The federation tests in ``support.py`` drive the real client runtime, which only ever sends what a
well-behaved institution sends. Security and robustness tests need the opposite: a channel with
whatever certificate (or none) the test picks, and upload streams put together chunk by chunk, so
that every refusal path of the server is reached over real loopback gRPC with real TLS.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from secfed.crypto.identity import Identity
from secfed.pki.files import crl_pem, write_public
from secfed.pki.kit import load_kit
from secfed.proto.v1 import federation_pb2 as pb
from secfed.proto.v1 import federation_pb2_grpc as pb_grpc
from secfed.secagg.config import PROTOCOL_VERSION
from server.config import Limits
from server.runtime import FederationServer
from tests.federation.support import Federation, provision_kits, server_config

#: Per-RPC deadline: a refused call must come back promptly; a hang is a failure, not a wait.
RPC_TIMEOUT_S = 10.0


def federation(
    tmp: Path,
    n_clients: int,
    *,
    roster: tuple[str, ...] | None = None,
    limits: Limits | None = None,
    **plan: Any,
) -> Federation:
    """Provision ``n_clients`` kits and start a server with the given roster (default: all) and limits.

    ``support.start_federation`` always uses default limits and the full roster; the tests here need
    small upload limits, low rate limits, or a provisioned institution left out of the roster.
    """
    pki = provision_kits(tmp, n_clients)
    ids = roster if roster is not None else tuple(f"inst{i:02d}" for i in range(n_clients))
    config = server_config(pki, tmp / "run", ids, **plan)
    if limits is not None:
        config = replace(config, limits=limits)
    return Federation(pki, FederationServer.start(config))


def channel(
    address: str, root_pem: bytes, *, key_pem: bytes | None = None, cert_pem: bytes | None = None
) -> grpc.Channel:
    """A TLS channel trusting ``root_pem``, presenting a client certificate only if one is given.

    The message limits are raised on the client side so that a test can send a message larger than
    the *server's* limit and see the server's own refusal rather than a local one.
    """
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    limit = 64 * 1024 * 1024
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )


def identity_channel(address: str, root_pem: bytes, identity: Identity) -> grpc.Channel:
    """A channel presenting ``identity`` (e.g. one minted by the test, not from a kit)."""
    return channel(address, root_pem, key_pem=identity.private_key_pem(), cert_pem=identity.chain_pem())


def kit_channel(fed: Federation, client_id: str) -> grpc.Channel:
    """A channel with the real kit of a provisioned institution."""
    kit = load_kit(fed.pki / "clients" / client_id)
    return channel(
        fed.address,
        kit.ca_path.read_bytes(),
        key_pem=kit.key_path.read_bytes(),
        cert_pem=kit.cert_path.read_bytes(),
    )


def stub(chan: grpc.Channel) -> pb_grpc.FederationStub:
    return pb_grpc.FederationStub(chan)  # type: ignore[no-untyped-call]


def join(s: pb_grpc.FederationStub) -> pb.JoinReply:
    reply: pb.JoinReply = s.Join(
        pb.JoinRequest(software_version="raw-test", protocol_version=PROTOCOL_VERSION), timeout=RPC_TIMEOUT_S
    )
    return reply


def heartbeat(s: pb_grpc.FederationStub) -> pb.HeartbeatReply:
    reply: pb.HeartbeatReply = s.Heartbeat(pb.HeartbeatRequest(), timeout=RPC_TIMEOUT_S)
    return reply


def poll(s: pb_grpc.FederationStub) -> pb.Instruction:
    ins: pb.Instruction = s.Poll(pb.PollRequest(), timeout=RPC_TIMEOUT_S)
    return ins


def poll_round_start(s: pb_grpc.FederationStub, timeout_s: float = 10.0) -> pb.Instruction:
    """Poll until the server hands out a RoundStart (it may briefly answer Wait between attempts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ins = poll(s)
        if ins.WhichOneof("step") == "round_start":
            return ins
        if time.monotonic() > deadline:
            raise AssertionError(f"no RoundStart within {timeout_s}s; last step {ins.WhichOneof('step')}")
        time.sleep(0.05)


def upload(s: pb_grpc.FederationStub, parts: Iterable[pb.UploadChunk]) -> pb.UploadAck:
    ack: pb.UploadAck = s.Upload(iter(list(parts)), timeout=RPC_TIMEOUT_S)
    return ack


def header(
    kind: int, payload: bytes, *, round_: int = 0, total: int | None = None, sha256: bytes | None = None
) -> pb.UploadHeader:
    """An upload header for ``payload``; ``total``/``sha256`` override the true values to lie about it.

    ``kind`` is a plain int so that tests can state kinds the enum does not know.
    """
    return pb.UploadHeader(
        kind=kind,  # type: ignore[arg-type]  # deliberately any int, unknown values included
        round=round_,
        total_bytes=len(payload) if total is None else total,
        sha256=hashlib.sha256(payload).digest() if sha256 is None else sha256,
    )


def one_shot(kind: int, payload: bytes, **kw: Any) -> Iterator[pb.UploadChunk]:
    """The whole payload in a single chunk with its header (fine for the small payloads of tests)."""
    yield pb.UploadChunk(header=header(kind, payload, **kw), data=payload)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run ``call``, which must fail with an RPC error, and return that error."""
    try:
        result = call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded but should have been refused: {result!r}")


def publish_crl(path: Path, crl: x509.CertificateRevocationList | bytes) -> None:
    """Write a CRL (or raw bytes posing as one) where a kit reads it, making sure its mtime changes.

    The server reloads its CRL when the file's mtime changes. Two writes within the file system's
    timestamp granularity could leave the mtime equal and the server on the old CRL; moving the
    mtime forward by whole seconds rules that out.
    """
    before = path.stat().st_mtime_ns if path.exists() else 0
    write_public(path, crl if isinstance(crl, bytes) else crl_pem(crl))
    bumped = max(before + 2_000_000_000, time.time_ns())
    os.utime(path, ns=(bumped, bumped))


def finish_round(fed: Federation, client_ids: Iterable[str], timeout_s: float = 60.0) -> str:
    """Run the given clients until the federation finishes; stop the server; return its reason.

    Unlike ``Federation.finish`` this does not linger for roster members that never run (a revoked
    or attacker institution): it waits for the coordinator to finish, then for the clients started
    here to hear so.
    """
    holders = [fed.start_client(cid) for cid in client_ids]
    deadline = time.monotonic() + timeout_s
    try:
        while fed.server.coordinator.finished_reason is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the federation did not finish within {timeout_s}s")
            time.sleep(0.05)
        for holder in holders:
            holder.thread.join(max(0.1, deadline - time.monotonic()))
            assert not holder.thread.is_alive(), f"client {holder.client_id} did not stop"
            assert holder.error is None, f"client {holder.client_id} failed: {holder.error!r}"
    finally:
        fed.server.stop()
    return fed.server.coordinator.finished_reason or "stopped"
