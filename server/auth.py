"""Who is calling: the TLS peer certificate, checked against the consortium CA, CRL and roster.

gRPC's TLS layer already requires a client certificate chaining to the CA; this re-verifies it with
the full policy (client EKU, validity, revocation, the ``urn:secfed:client:<id>`` SAN) and maps it to
the client id. The CRL file of the server's kit is re-read when it changes on disk, so a revocation
takes effect without a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from secfed.crypto.identity import IdentityError, TrustAnchor
from secfed.pki.kit import Kit


@dataclass(frozen=True)
class Peer:
    client_id: str
    certificate_der: bytes


class PeerRefused(Exception):  # noqa: N818 - it is a refusal, carried to a gRPC status
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PeerAuthenticator:
    def __init__(self, kit: Kit, roster: frozenset[str]) -> None:
        self._kit = kit
        self._roster = roster
        self._lock = threading.Lock()
        self._crl_stamp: tuple[int, int, int] | None = None
        self._trust: TrustAnchor = kit.trust
        try:
            self._reload_crl()
        except PeerRefused as exc:
            raise ValueError(f"cannot start: {exc.message}") from exc

    def _reload_crl(self) -> None:
        """Pick up a changed ``crl.pem``. While it is unreadable (say, half copied) nobody is let in:
        without a trustworthy CRL a revoked client could slip through. UNAVAILABLE makes clients retry."""
        try:
            st = self._kit.crl_path.stat()
        except FileNotFoundError:
            return
        # Not the mtime alone: a new CRL copied in within the clock's resolution, or with its old
        # timestamp kept (cp -p, rsync -t), must still be read; a replacement by rename has a new inode.
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._crl_stamp:
            return
        with self._lock:
            try:
                trust = TrustAnchor.from_pem(
                    self._kit.ca_path.read_bytes(), [self._kit.crl_path.read_bytes()]
                )
                trust.check_crls()
            except (IdentityError, OSError, ValueError) as exc:
                raise PeerRefused(
                    grpc.StatusCode.UNAVAILABLE, f"the server's CRL ({self._kit.crl_path}) is unusable: {exc}"
                ) from exc
            self._trust = trust
            self._crl_stamp = stamp

    def identify(self, context: grpc.ServicerContext) -> Peer:
        """The verified client id of the caller, or :class:`PeerRefused` saying why not."""
        der = self._peer_certificate(context)
        try:
            peer = self._trust.verify_client([der])
        except IdentityError as exc:
            raise PeerRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"client certificate refused ({exc.reason}): {exc}"
            ) from exc
        if peer.client_id not in self._roster:
            raise PeerRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {peer.client_id!r} is not in this federation's roster",
            )
        return Peer(peer.client_id, der)

    def identify_operator(self, context: grpc.ServicerContext) -> str:
        """The verified operator name of the caller (an operator certificate of the consortium CA,
        not revoked), or :class:`PeerRefused`: an institution's certificate is refused here."""
        der = self._peer_certificate(context)
        try:
            return self._trust.verify_operator([der])
        except IdentityError as exc:
            raise PeerRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"operator certificate refused ({exc.reason}): {exc}"
            ) from exc

    def _peer_certificate(self, context: grpc.ServicerContext) -> bytes:
        """The TLS peer's leaf certificate (DER), with the CRL re-read if it changed on disk."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise PeerRefused(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
        except ValueError as exc:
            raise PeerRefused(
                grpc.StatusCode.UNAUTHENTICATED, f"unreadable client certificate: {exc}"
            ) from exc
        self._reload_crl()
        return cert.public_bytes(Encoding.DER)


class RateLimiter:
    """A token bucket per client: a misbehaving client is slowed down without affecting the others."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client_id, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[client_id] = (tokens, now)
                return False
            self._buckets[client_id] = (tokens - 1.0, now)
            return True
