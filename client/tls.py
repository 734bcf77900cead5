"""TLS to the coordinator, opened by the client itself, and the coordinator's certificate checked on it.

gRPC's Python channel verifies the server's chain and host name, but it has no hook for our CRL (nor
for the rest of the consortium policy: serverAuth, the SAN rules of :mod:`secfed.crypto.identity`), and
it does not expose the certificate of the connection it uses. A check made on a connection of our own
and a channel that gRPC opens afterwards would be two different connections: a relay can send the check
to the genuine coordinator and the channel to any other holder of a CA-issued certificate, revoked or
not, and gRPC reconnects on its own whenever a connection drops. The only way to know that the
instructions come from the peer that was checked is that our code owns the TLS connection that carries
them. So :func:`open_connection` makes the connection (TCP, mutual TLS with the kit's CA, certificate
and key, ALPN ``h2``) and runs the full policy (chain, serverAuth, host name, CRL) on the certificate
presented on *that* connection; :mod:`client.channel` opens one for every connection gRPC asks for and
relays gRPC's bytes through it only once the check has passed.

The TLS runs over memory BIOs (:class:`ssl.SSLObject`) on a non-blocking socket, so that one thread can
drive both directions of a connection without sharing an OpenSSL object between threads.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import time
from dataclasses import dataclass

from secfed.crypto.identity import IdentityError, TrustAnchor
from secfed.pki.kit import Kit, parse_address

#: Bytes read from a socket at once: large, so that a model download needs few system calls.
RECV_BYTES = 256 * 1024


class ServerRefused(Exception):  # noqa: N818 - a refusal with a reason, shown to the operator
    """The coordinator's certificate failed the consortium policy: final, never retried."""


class Cancelled(Exception):  # noqa: N818 - not an error: the caller asked to stop waiting
    """The ``cancel`` socket of a wait became readable (the channel is closing)."""


@dataclass(eq=False)
class TlsConnection:
    """A connection to the coordinator whose certificate passed the policy.

    ``sock`` is non-blocking; the TLS state lives in ``tls`` with its two memory BIOs: bytes received
    from ``sock`` go into ``incoming``, bytes to send on ``sock`` come out of ``outgoing``. What
    ``outgoing`` holds after the handshake (the client's last handshake message) is not sent yet.
    """

    sock: socket.socket
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO

    def close(self) -> None:
        self.sock.close()


def client_context(kit: Kit) -> ssl.SSLContext:
    """Mutual TLS with the kit: the consortium CA as the only root, the kit's certificate and key."""
    context = ssl.create_default_context(cafile=str(kit.ca_path))
    context.load_cert_chain(str(kit.cert_path), str(kit.key_path))
    context.set_alpn_protocols(["h2"])
    return context


def wait_for(sock: socket.socket, *, write: bool, deadline: float, cancel: socket.socket | None) -> None:
    """Block until ``sock`` is readable (writable); :class:`TimeoutError` once ``deadline`` (monotonic)
    passes, :class:`Cancelled` as soon as ``cancel`` is readable."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
        if cancel is not None:
            selector.register(cancel, selectors.EVENT_READ)
        ready = selector.select(remaining)
    if cancel is not None and any(key.fileobj is cancel for key, _ in ready):
        raise Cancelled
    if not ready:
        raise TimeoutError("timed out")


def send_all(sock: socket.socket, data: bytes, *, deadline: float, cancel: socket.socket | None) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            wait_for(sock, write=True, deadline=deadline, cancel=cancel)
            continue
        view = view[sent:]


def _dial(host: str, port: int, *, deadline: float, cancel: socket.socket | None) -> socket.socket:
    """A non-blocking TCP connection to ``host:port`` (each resolved address in turn)."""
    last: OSError = OSError(f"{host}: no address to connect to")
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(addr)
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                wait_for(sock, write=True, deadline=deadline, cancel=cancel)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gRPC sets it: small RPCs
            return sock
        except Cancelled:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def _handshake(conn: TlsConnection, *, deadline: float, cancel: socket.socket | None) -> None:
    while True:
        try:
            conn.tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            pass
        send_all(conn.sock, conn.outgoing.read(), deadline=deadline, cancel=cancel)
        wait_for(conn.sock, write=False, deadline=deadline, cancel=cancel)
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            continue
        if data:
            conn.incoming.write(data)
        else:
            conn.incoming.write_eof()  # the next do_handshake raises SSLEOFError


def check_certificate(trust: TrustAnchor, der: bytes | None, *, host: str, address: str) -> None:
    """The consortium policy on the certificate a connection presented; :class:`ServerRefused` if not."""
    if der is None:
        raise ServerRefused(f"{address} presented no certificate")
    try:
        trust.verify_server([der], hostname=host)
    except IdentityError as exc:
        raise ServerRefused(f"server certificate of {address} refused ({exc.reason}): {exc}") from exc


def open_connection(
    kit: Kit,
    address: str,
    *,
    trust: TrustAnchor | None = None,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    cancel: socket.socket | None = None,
) -> TlsConnection:
    """Connect to the coordinator at ``address`` and check the certificate of this very connection.

    ``trust`` is the policy to apply (default: the kit's, as loaded). Raises :class:`ServerRefused`
    when the certificate fails it -- the TLS verification against the CA and the host name, or the
    consortium policy (CRL included) -- which is final; any other :class:`OSError` (refused, reset,
    timed out, closed during the handshake, a TLS alert from the server) is transient;
    :class:`Cancelled` when ``cancel`` becomes readable.
    """
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    context = context if context is not None else client_context(kit)
    sock = _dial(host, port, deadline=deadline, cancel=cancel)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = TlsConnection(sock, context.wrap_bio(incoming, outgoing, server_hostname=host), incoming, outgoing)
    try:
        try:
            _handshake(conn, deadline=deadline, cancel=cancel)
        except ssl.SSLCertVerificationError as exc:
            raise ServerRefused(
                f"server certificate of {address} refused at the TLS handshake ({exc.verify_message}): {exc}"
            ) from exc
        der = conn.tls.getpeercert(binary_form=True)
        check_certificate(trust if trust is not None else kit.trust, der, host=host, address=address)
    except BaseException:
        conn.close()
        raise
    return conn


def verify_server(kit: Kit, address: str, timeout_s: float = 10.0) -> None:
    """A one-off check: would this kit accept the coordinator at ``address`` now?

    It says nothing about any later connection, and the client's channel does not rely on it: each of
    the channel's own connections is checked the same way (:mod:`client.channel`). For diagnostics
    and tests. Raises :class:`ServerRefused`, or :class:`OSError` when the server cannot be reached.
    """
    conn = open_connection(kit, address, timeout_s=timeout_s)
    try:  # complete the handshake on the server's side too, so that it sees a clean close
        send_all(conn.sock, conn.outgoing.read(), deadline=time.monotonic() + timeout_s, cancel=None)
    finally:
        conn.close()
