"""The client's gRPC channel: every connection it uses is opened and checked by the client itself.

gRPC never does TLS here. Its Python channel has no hook for our CRL and does not expose the peer
certificate, so it could only check a certificate we have not seen, on connections it opens and re-opens
by itself: a check we made on a connection of our own would prove nothing about them (a relay can send
our check to the genuine coordinator and gRPC's connection to a revoked one). Instead:

* a forwarder in this process listens on a Unix socket in a private directory (mode 0700: no other user
  can reach it), and the gRPC channel dials that socket without TLS;
* for each connection gRPC opens -- the first, and every reconnection after a coordinator restart or a
  network failure -- the forwarder opens a new connection to the coordinator
  (:func:`client.tls.open_connection`: TCP, mutual TLS with the kit, the full certificate policy, CRL
  included, on the certificate presented on that connection) and only then relays bytes both ways;
* a connection whose certificate fails the policy is closed before a single byte reaches gRPC, and the
  refusal is kept (:attr:`CoordinatorLink.refusal`): the link opens no further connection, and the
  runtime stops with :class:`client.tls.ServerRefused` instead of retrying. A server that cannot be
  reached is not a refusal: it is recorded in :attr:`CoordinatorLink.failure` and retried.

The kit's ``crl.pem`` is re-read when it changes on disk, so a revocation published to the institution
while it runs applies from its next connection on (a CRL that cannot be read lets no connection through
until it can).

Each forwarded connection is one thread that drives both directions with a selector over non-blocking
sockets and the connection's in-memory TLS (no OpenSSL object is shared between threads), reading 256 KiB
at a time and buffering at most a few MiB per direction (back-pressure: it stops reading a side whose
data the other side does not take).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import selectors
import shutil
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc
from cryptography import x509

from client.tls import RECV_BYTES, Cancelled, ServerRefused, TlsConnection, client_context, open_connection
from secfed import logs
from secfed.crypto.identity import IdentityError, TrustAnchor
from secfed.pki.kit import Kit, parse_address

log = logging.getLogger("secfed.client")

#: Most bytes buffered for one direction before the forwarder stops reading the side that sends them.
_BUFFER_BYTES = 4 * 1024 * 1024
#: How long a closing connection may take to hand over what it still holds for the other side.
_FLUSH_S = 5.0

FailureKind = Literal["unreachable", "tls", "crl"]
# TLS 1.3 lets the client finish its handshake before the server has checked the client's certificate:
# a coordinator that refuses it (expired, another CA) just closes the connection, without an alert.
_CLOSED_AT_ONCE = (
    "the coordinator closed the TLS connection before sending anything: "
    "it probably refused this kit's certificate at the handshake"
)


@dataclass(frozen=True)
class LinkFailure:
    """Why the last connection to the coordinator failed (transient: the runtime retries).

    ``unreachable``: it could not be reached or closed the connection during the handshake (down,
    restarting, a network problem); ``tls``: its TLS stack ended the connection with an alert, or
    closed it right after the handshake (it refused this kit's certificate?); ``crl``: the kit's own
    CRL file could not be read.
    """

    kind: FailureKind
    detail: str


#: Links not closed yet: a process that exits without closing one (its client thread hung, say) still
#: removes the socket and its directory. Only SIGKILL leaves them behind (an empty directory in TMPDIR).
_open_links: weakref.WeakSet[CoordinatorLink] = weakref.WeakSet()


@atexit.register
def _remove_sockets() -> None:
    for link in list(_open_links):
        link._remove_socket()


class CoordinatorLink:
    """A gRPC channel to the coordinator at ``address`` (:attr:`channel`), every connection of which is
    checked by the client (see the module docstring). Close it (or use it as a context manager) to stop
    the forwarder: its threads end and its socket and directory are removed."""

    def __init__(
        self,
        kit: Kit,
        address: str,
        *,
        options: Sequence[tuple[str, Any]] = (),
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.kit = kit
        self.address = address
        parse_address(address)  # a ValueError now, not on every connection
        self.connect_timeout_s = connect_timeout_s
        self._context = client_context(kit)  # the kit's files are read (and their errors raised) here
        self._lock = threading.Lock()
        self._refusal: ServerRefused | None = None
        self._failure: LinkFailure | None = None
        self._verified = 0
        self._trust = kit.trust
        self._crl_stamp = _stamp(kit.crl_path)
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._closing = threading.Event()
        # Written once by close() and never read: readable from then on, it wakes every selector.
        self._wake_r, self._wake_w = socket.socketpair()
        self._dir = Path(tempfile.mkdtemp(prefix="secfed-link-"))  # mode 0700
        if len(str(self._dir)) > 90:  # AF_UNIX paths are limited to ~104 bytes: a long TMPDIR
            self._dir.rmdir()
            self._dir = Path(tempfile.mkdtemp(prefix="secfed-link-", dir="/tmp"))
        self.socket_path = self._dir / "grpc.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(str(self.socket_path))
            self._listener.listen(16)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        # Threads are named after the link's directory, so that each link's threads can be told apart.
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"{self._dir.name}-accept", daemon=True
        )
        self._acceptor.start()
        _open_links.add(self)
        # The authority gRPC would have sent had it dialed the address itself.
        self.channel = grpc.insecure_channel(
            f"unix:{self.socket_path}", options=[*options, ("grpc.default_authority", address)]
        )

    # -- what the runtime asks -------------------------------------------------------------------
    @property
    def refusal(self) -> ServerRefused | None:
        """The first certificate refusal (final), or None."""
        with self._lock:
            return self._refusal

    @property
    def failure(self) -> LinkFailure | None:
        """Why the last connection attempt failed; None once a connection got through."""
        with self._lock:
            return self._failure

    @property
    def verified_connections(self) -> int:
        """How many connections passed the certificate check so far."""
        with self._lock:
            return self._verified

    def raise_if_refused(self) -> None:
        refusal = self.refusal
        if refusal is not None:
            raise ServerRefused(str(refusal)) from refusal

    def close(self) -> None:
        """Close the gRPC channel, then every forwarded connection; remove the socket and its directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        self.channel.close()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._acceptor.join(timeout=5.0)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5.0)
        self._listener.close()
        if not any(thread.is_alive() for thread in threads):  # else a late thread may still select on it
            self._wake_r.close()
            self._wake_w.close()
        self._remove_socket()
        _open_links.discard(self)

    def _remove_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with contextlib.suppress(OSError):
            self._dir.rmdir()

    def __enter__(self) -> CoordinatorLink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the forwarder ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                try:
                    local, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # out of file descriptors, say: gRPC's connection waits in the backlog
                    logs.event(
                        log, "link-accept-failed", logging.WARNING, server=self.address, error=str(exc)
                    )
                    if self._closing.wait(0.5):
                        return
                    continue
                thread = threading.Thread(
                    target=self._serve, args=(local,), name=f"{self._dir.name}-connection", daemon=True
                )
                with self._lock:
                    if self._closed:
                        local.close()
                        return
                    self._threads.add(thread)
                thread.start()

    def _serve(self, local: socket.socket) -> None:
        try:
            with local:
                local.setblocking(False)
                conn = self._connect()
                if conn is None:
                    return  # closes gRPC's connection without a byte sent on it
                with contextlib.closing(conn):
                    self._pump(local, conn)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _connect(self) -> TlsConnection | None:
        """A new, checked connection to the coordinator, or None (the reason recorded)."""
        if self.refusal is not None:
            return None  # refused once: never again through this link
        try:
            trust = self._current_trust()
        except (OSError, ValueError, IdentityError) as exc:
            self._fail("crl", f"the kit's CRL {self.kit.crl_path} cannot be used: {exc}")
            return None
        try:
            conn = open_connection(
                self.kit,
                self.address,
                trust=trust,
                context=self._context,
                timeout_s=self.connect_timeout_s,
                cancel=self._wake_r,
            )
        except Cancelled:
            return None
        except ServerRefused as exc:
            with self._lock:
                first = self._refusal is None
                if first:
                    self._refusal = exc
            if first:
                logs.event(log, "server-refused", logging.ERROR, server=self.address, reason=str(exc))
            return None
        except (ssl.SSLEOFError, ssl.SSLSyscallError) as exc:
            self._fail("unreachable", f"the connection closed during the TLS handshake: {exc}")
            return None
        except ssl.SSLError as exc:
            self._fail("tls", str(exc))
            return None
        except OSError as exc:  # refused, reset, timed out, no such host
            self._fail("unreachable", str(exc) or type(exc).__name__)
            return None
        with self._lock:
            self._verified += 1
            self._failure = None
        logs.event(log, "server-verified", logging.DEBUG, server=self.address)
        return conn

    def _current_trust(self) -> TrustAnchor:
        """The kit's policy with its CRL as the file holds it now (re-read when it changed)."""
        path = self.kit.crl_path
        stamp = _stamp(path)
        with self._lock:
            if stamp == self._crl_stamp:
                return self._trust
        crl = x509.load_pem_x509_crl(path.read_bytes())
        trust = self.kit.trust.with_crls([crl])
        with self._lock:
            self._trust, self._crl_stamp = trust, stamp
        logs.event(log, "crl-reloaded", server=self.address, crl=str(path))
        return trust

    def _fail(self, kind: FailureKind, detail: str) -> None:
        with self._lock:
            self._failure = LinkFailure(kind, detail)

    def _pump(self, local: socket.socket, conn: TlsConnection) -> None:
        """Relay gRPC's bytes (``local``) and the coordinator's (``conn``) until either side closes."""
        remote, tls = conn.sock, conn.tls
        to_remote = bytearray(conn.outgoing.read())  # the client's last handshake message
        to_local = bytearray()
        try:  # records that arrived with the end of the handshake
            if _decrypt(tls, to_local):
                self._fail("tls", _CLOSED_AT_ONCE)
                return
        except ssl.SSLError as exc:
            self._fail("tls", str(exc))
            return
        reading = True  # False once a side closed: what is buffered for the other side is flushed
        heard = bool(to_local)  # whether the coordinator sent any data after the handshake
        flush_until = 0.0
        interest: dict[socket.socket, int] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)

            def want(sock: socket.socket, events: int) -> None:
                if interest.get(sock, 0) == events:
                    return
                if not events:
                    selector.unregister(sock)
                    del interest[sock]
                elif sock in interest:
                    selector.modify(sock, events)
                    interest[sock] = events
                else:
                    selector.register(sock, events)
                    interest[sock] = events

            while True:
                if not reading:
                    if not to_local and not to_remote:
                        return
                    if time.monotonic() > flush_until:
                        return
                read_local = reading and len(to_remote) < _BUFFER_BYTES
                read_remote = reading and len(to_local) < _BUFFER_BYTES
                want(
                    local,
                    (selectors.EVENT_READ if read_local else 0) | (selectors.EVENT_WRITE if to_local else 0),
                )
                want(
                    remote,
                    (selectors.EVENT_READ if read_remote else 0)
                    | (selectors.EVENT_WRITE if to_remote else 0),
                )
                timeout = None if reading else max(0.0, flush_until - time.monotonic())
                events = {key.fileobj: mask for key, mask in selector.select(timeout)}
                if self._wake_r in events:
                    return
                try:
                    if events.get(local, 0) & selectors.EVENT_WRITE and to_local:
                        del to_local[: _send(local, to_local)]
                    if events.get(remote, 0) & selectors.EVENT_WRITE and to_remote:
                        del to_remote[: _send(remote, to_remote)]
                    if reading and events.get(local, 0) & selectors.EVENT_READ:
                        data = _recv(local)
                        if data is None:
                            pass
                        elif data:
                            tls.write(data)
                            to_remote += conn.outgoing.read()
                        else:  # gRPC closed its end: say goodbye to the coordinator, then close
                            reading, flush_until = False, time.monotonic() + _FLUSH_S
                            to_local.clear()
                            with contextlib.suppress(ssl.SSLError):
                                tls.unwrap()
                            to_remote += conn.outgoing.read()
                    if reading and events.get(remote, 0) & selectors.EVENT_READ:
                        data = _recv(remote)
                        if data is not None:
                            if data:
                                conn.incoming.write(data)
                            else:
                                conn.incoming.write_eof()
                            before = len(to_local)
                            ended = _decrypt(tls, to_local)
                            heard = heard or len(to_local) > before
                            to_remote += conn.outgoing.read()  # e.g. an answer to a key update
                            if ended:  # the coordinator closed its end: hand gRPC the rest, then close
                                if not heard:
                                    self._fail("tls", _CLOSED_AT_ONCE)
                                    return
                                reading, flush_until = False, time.monotonic() + _FLUSH_S
                                to_remote.clear()
                except ssl.SSLError as exc:  # an alert from the coordinator, or corrupt records
                    self._fail(
                        "tls", _CLOSED_AT_ONCE if isinstance(exc, ssl.SSLEOFError) and not heard else str(exc)
                    )
                    return
                except OSError:  # reset or broken pipe on either side: close both
                    if not heard:
                        self._fail("tls", _CLOSED_AT_ONCE)
                    return


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _send(sock: socket.socket, data: bytearray) -> int:
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0


def _recv(sock: socket.socket) -> bytes | None:
    """Up to :data:`RECV_BYTES`; ``b""`` at end of stream, None when nothing is there after all."""
    try:
        return sock.recv(RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None


def _decrypt(tls: ssl.SSLObject, out: bytearray) -> bool:
    """Append every whole record's plaintext to ``out``; True once the peer closed the TLS stream."""
    while True:
        try:
            data = tls.read(RECV_BYTES)
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return True
        if not data:
            return True
        out += data
