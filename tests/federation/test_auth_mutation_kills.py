"""Tests that each pin one check of the server's channel authentication (found by scripts/mutation --scored-only).

``PeerAuthenticator`` and ``RateLimiter`` are driven directly (no gRPC server): a stand-in context
hands over the TLS peer certificate, and the kit is the part of a server kit the authenticator reads.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import pytest

from secfed.crypto.identity import TrustAnchor
from secfed.pki import CertificateAuthority, create_ca, revoke
from secfed.pki.files import cert_pem, crl_pem
from secfed.pki.kit import Kit
from server.auth import PeerAuthenticator, PeerRefused, RateLimiter


def _kit(tmp_path: Path, crl: bytes | None = None, ca: CertificateAuthority | None = None) -> Kit:
    """The parts of a server kit the authenticator reads: CA, CRL file (an empty CRL by default)."""
    ca = ca if ca is not None else create_ca("auth CA")
    ca_path, crl_path = tmp_path / "ca.pem", tmp_path / "crl.pem"
    ca_path.write_bytes(cert_pem(ca.certificate))
    crl_path.write_bytes(crl if crl is not None else crl_pem(revoke(ca, [])))
    return cast(Kit, SimpleNamespace(trust=TrustAnchor(ca.certificate), ca_path=ca_path, crl_path=crl_path))


def test_a_server_whose_crl_is_unusable_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    """A server started with a garbled crl.pem would have to let revoked clients in or refuse everyone:
    it refuses to start, and the error names the CRL file."""
    kit = _kit(tmp_path, b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    with pytest.raises(ValueError, match=r"^cannot start: the server's CRL \(.*crl\.pem\) is unusable: "):
        PeerAuthenticator(kit, frozenset({"inst00"}))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_lets_a_client_in_again_exactly_when_a_whole_token_has_refilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client flooding the server is slowed to its rate, but not below it: once exactly one token has
    refilled it gets in again (a limiter refusing at exactly one token would starve paced clients),
    and another client's bucket is untouched."""
    clock = _Clock()
    monkeypatch.setattr("server.auth.time.monotonic", clock)
    limiter = RateLimiter(rate_per_s=2.0, burst=2)
    assert [limiter.allow("flood") for _ in range(3)] == [True, True, False]
    assert limiter.allow("calm")
    clock.now += 0.25  # half a token
    assert not limiter.allow("flood")
    clock.now += 0.25  # exactly one token
    assert limiter.allow("flood")
    assert not limiter.allow("flood")
    clock.now += 100.0  # a long pause refills to the burst, no further
    assert [limiter.allow("flood") for _ in range(3)] == [True, True, False]


class _Context:
    """What ``identify`` reads of a gRPC call: the TLS layer's view of the peer certificate."""

    def __init__(self, pems: list[bytes]) -> None:
        self._pems = pems

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": self._pems} if self._pems else {}


def test_a_caller_without_a_certificate_is_unauthenticated(tmp_path: Path) -> None:
    """A call that reached the servicer without a client certificate (a misconfigured TLS layer) is
    refused as UNAUTHENTICATED, saying a certificate is required."""
    auth = PeerAuthenticator(_kit(tmp_path), frozenset())
    with pytest.raises(PeerRefused) as ei:
        auth.identify(cast(grpc.ServicerContext, _Context([])))
    assert ei.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert ei.value.message == "a client certificate is required"


def test_an_unreadable_certificate_is_unauthenticated(tmp_path: Path) -> None:
    """Garbage in the certificate slot is refused as UNAUTHENTICATED with the parser's reason."""
    auth = PeerAuthenticator(_kit(tmp_path), frozenset())
    with pytest.raises(PeerRefused) as ei:
        auth.identify(cast(grpc.ServicerContext, _Context([b"-----BEGIN CERTIFICATE-----\nAA==\n"])))
    assert ei.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert ei.value.message.startswith("unreadable client certificate: ")


def test_the_operator_check_reads_the_same_peer_certificate_and_names_the_role(tmp_path: Path) -> None:
    """The status RPC's check: an operator certificate of the CA gives its name; an institution's
    certificate, a missing or unreadable one are refused with their codes and reasons."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from secfed.pki import issue_client, issue_operator

    ca = create_ca("auth CA")
    auth = PeerAuthenticator(_kit(tmp_path, ca=ca), frozenset({"inst00"}))

    def pem(identity: object) -> bytes:
        return identity.certificate.public_bytes(Encoding.PEM)  # type: ignore[attr-defined, no-any-return]

    assert (
        auth.identify_operator(cast(grpc.ServicerContext, _Context([pem(issue_operator(ca, "ops"))])))
        == "ops"
    )
    with pytest.raises(PeerRefused) as ei:
        auth.identify_operator(cast(grpc.ServicerContext, _Context([pem(issue_client(ca, "inst00"))])))
    assert ei.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert ei.value.message.startswith("operator certificate refused (no-operator-uri): ")
    with pytest.raises(PeerRefused) as ei:
        auth.identify_operator(cast(grpc.ServicerContext, _Context([])))
    assert (ei.value.code, ei.value.message) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "a client certificate is required",
    )
