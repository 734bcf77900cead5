"""TrustAnchor / Identity: each refusal comes with the right reason code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secfed.crypto.identity import (
    CLIENT_URI_PREFIX,
    Identity,
    IdentityError,
    TrustAnchor,
    client_id_of,
    describe,
    verify_signature,
)
from secfed.pki import CertificateAuthority, create_ca, generate_key, issue_client, issue_server, revoke


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("test consortium CA")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    # Same subject name on purpose: a foreign CA must be refused on signature, not just on name.
    return create_ca("test consortium CA")


@pytest.fixture(scope="module")
def alice(ca: CertificateAuthority) -> Identity:
    return issue_client(ca, "alice")


def _anchor(ca: CertificateAuthority, *crls: x509.CertificateRevocationList) -> TrustAnchor:
    return TrustAnchor(ca.certificate, crls)


def _reason(excinfo: pytest.ExceptionInfo[IdentityError]) -> str:
    return excinfo.value.reason


def _leaf_with_san(ca: CertificateAuthority, san: list[x509.GeneralName] | None) -> Identity:
    """A clientAuth leaf with arbitrary SANs, for the client-URI edge cases."""
    key = generate_key()
    now = datetime.now(UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return Identity(client_id="", private_key=key, cert_chain=(cert,))


def test_valid_client_verifies_and_yields_id(ca: CertificateAuthority, alice: Identity) -> None:
    peer = _anchor(ca).verify_client(alice.chain_der())
    assert peer.client_id == "alice"
    assert peer.certificate == alice.certificate
    assert client_id_of(alice.certificate) == "alice"
    assert alice.client_id == "alice"


def test_from_pem_round_trip(ca: CertificateAuthority, alice: Identity) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    crl = revoke(ca, [])
    anchor = TrustAnchor.from_pem(ca.certificate.public_bytes(Encoding.PEM), [crl.public_bytes(Encoding.PEM)])
    assert anchor.verify_client(alice.chain_der()).client_id == "alice"
    with pytest.raises(IdentityError) as ei:
        TrustAnchor.from_pem(anchor.ca_pem() * 2)
    assert _reason(ei) == "malformed"


def test_foreign_ca_rejected(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    mallory = issue_client(other_ca, "alice")
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(mallory.chain_der())
    assert _reason(ei) == "foreign-ca"
    assert "alice" in str(ei.value)


def test_foreign_ca_with_different_name_rejected(ca: CertificateAuthority) -> None:
    mallory = issue_client(create_ca("somebody else"), "alice")
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(mallory.chain_der())
    assert _reason(ei) == "foreign-ca"


def test_expired_rejected(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    old = issue_client(ca, "old", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(old.chain_der())
    assert _reason(ei) == "expired"


def test_not_yet_valid_rejected(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    future = issue_client(ca, "future", not_before=now + timedelta(days=1), valid_days=30)
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(future.chain_der())
    assert _reason(ei) == "not-yet-valid"
    # ... and is accepted once its time comes (naive datetimes count as UTC).
    later = (now + timedelta(days=2)).replace(tzinfo=None)
    assert _anchor(ca).verify_client(future.chain_der(), at=later).client_id == "future"


def test_revoked_rejected(ca: CertificateAuthority, alice: Identity) -> None:
    bob = issue_client(ca, "bob")
    crl = revoke(ca, [bob.certificate.serial_number])
    anchor = _anchor(ca, crl)
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client(bob.chain_der())
    assert _reason(ei) == "revoked"
    day = crl.get_revoked_certificate_by_serial_number(bob.certificate.serial_number).revocation_date_utc  # type: ignore[union-attr]
    assert str(ei.value) == f"[revoked] certificate {describe(bob.certificate)} was revoked on {day:%Y-%m-%d}"
    assert anchor.verify_client(alice.chain_der()).client_id == "alice"
    # A later CRL keeps earlier entries.
    carol = issue_client(ca, "carol")
    crl2 = revoke(ca, [carol.certificate.serial_number], previous=crl)
    anchor2 = _anchor(ca, crl2)
    for who in (bob, carol):
        with pytest.raises(IdentityError) as ei:
            anchor2.verify_client(who.chain_der())
        assert _reason(ei) == "revoked"


def test_crl_signed_by_other_ca_rejected(
    ca: CertificateAuthority, other_ca: CertificateAuthority, alice: Identity
) -> None:
    foreign_crl = revoke(other_ca, [])
    with pytest.raises(IdentityError) as ei:
        _anchor(ca, foreign_crl).verify_client(alice.chain_der())
    assert _reason(ei) == "bad-crl"
    with pytest.raises(ValueError, match="not issued by this CA"):
        revoke(ca, [1], previous=foreign_crl)


def test_stale_crl_rejected(ca: CertificateAuthority, alice: Identity) -> None:
    crl = revoke(ca, [], next_update_days=1)
    anchor = _anchor(ca, crl)
    assert anchor.verify_client(alice.chain_der()).client_id == "alice"
    with pytest.raises(IdentityError) as ei:
        anchor.verify_client(alice.chain_der(), at=datetime.now(UTC) + timedelta(days=2))
    assert _reason(ei) == "stale-crl"
    with pytest.raises(IdentityError):
        anchor.check_crls(at=datetime.now(UTC) + timedelta(days=2))


def test_no_client_uri_rejected(ca: CertificateAuthority) -> None:
    dns_only = _leaf_with_san(ca, [x509.DNSName("alice.example")])
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(dns_only.chain_der())
    assert _reason(ei) == "no-client-uri"


def test_missing_san_rejected(ca: CertificateAuthority) -> None:
    no_san = _leaf_with_san(ca, None)
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(no_san.chain_der())
    assert _reason(ei) == "no-client-uri"
    with pytest.raises(IdentityError) as ei:
        client_id_of(no_san.certificate)
    assert _reason(ei) == "no-client-uri"


def test_two_client_uris_rejected(ca: CertificateAuthority) -> None:
    two = _leaf_with_san(
        ca,
        [
            x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + "alice"),
            x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + "bob"),
        ],
    )
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(two.chain_der())
    assert _reason(ei) == "no-client-uri"


@pytest.mark.parametrize("bad_id", ["", "a b", "x" * 65, "a/b", "a:b"])
def test_invalid_client_id_in_uri_rejected(ca: CertificateAuthority, bad_id: str) -> None:
    odd = _leaf_with_san(ca, [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + bad_id)])
    with pytest.raises(IdentityError) as ei:
        client_id_of(odd.certificate)
    assert _reason(ei) == "no-client-uri"


def test_server_cert_presented_as_client_rejected(ca: CertificateAuthority) -> None:
    server = issue_server(ca)
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_client(server.chain_der())
    assert _reason(ei) == "bad-eku"


def test_client_cert_presented_as_server_rejected(ca: CertificateAuthority, alice: Identity) -> None:
    with pytest.raises(IdentityError) as ei:
        _anchor(ca).verify_server(alice.chain_der(), hostname="localhost")
    assert _reason(ei) in {"bad-eku", "hostname-mismatch"}


def test_verify_server_hostname_and_ip(ca: CertificateAuthority) -> None:
    server = issue_server(ca, dns_names=["fl.example.org", "localhost"], ip_addresses=["127.0.0.1", "::1"])
    anchor = _anchor(ca, revoke(ca, []))
    assert server.client_id == ""
    for host in ("fl.example.org", "localhost", "127.0.0.1", "::1", "[::1]"):
        assert anchor.verify_server(server.chain_der(), hostname=host) == server.certificate
    for host in ("evil.example.org", "10.0.0.1"):
        with pytest.raises(IdentityError) as ei:
            anchor.verify_server(server.chain_der(), hostname=host)
        assert _reason(ei) == "hostname-mismatch"


def test_verify_server_revoked_and_foreign(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    server = issue_server(ca)
    with pytest.raises(IdentityError) as ei:
        _anchor(ca, revoke(ca, [server.certificate.serial_number])).verify_server(
            server.chain_der(), hostname="localhost"
        )
    assert _reason(ei) == "revoked"
    with pytest.raises(IdentityError) as ei:
        _anchor(other_ca).verify_server(server.chain_der(), hostname="localhost")
    assert _reason(ei) == "foreign-ca"


def test_malformed_chain_rejected(ca: CertificateAuthority) -> None:
    for chain in ([], [b"not a certificate"]):
        with pytest.raises(IdentityError) as ei:
            _anchor(ca).verify_client(chain)
        assert _reason(ei) == "malformed"


@pytest.mark.parametrize("key_type", ["ec", "ed25519"])
def test_signature_round_trip(ca: CertificateAuthority, key_type: str) -> None:
    ident = issue_client(ca, f"signer-{key_type}", key_type=key_type)  # type: ignore[arg-type]
    # Ed25519 leaves are also accepted by the chain verifier.
    assert _anchor(ca).verify_client(ident.chain_der()).client_id == f"signer-{key_type}"
    sig = ident.sign(b"round 7 masked-input keys")
    verify_signature(ident.certificate, sig, b"round 7 masked-input keys")
    with pytest.raises(IdentityError) as ei:
        verify_signature(ident.certificate, sig, b"round 7 masked-input keyz")
    assert _reason(ei) == "bad-signature"


def test_other_keys_signature_rejected(ca: CertificateAuthority, alice: Identity) -> None:
    mallory = issue_client(ca, "mallory")
    sig = mallory.sign(b"payload")
    with pytest.raises(IdentityError) as ei:
        verify_signature(alice.certificate, sig, b"payload")
    assert _reason(ei) == "bad-signature"
    with pytest.raises(IdentityError) as ei:
        verify_signature(alice.certificate, b"\x00" * 64, b"payload")
    assert _reason(ei) == "bad-signature"


def test_identity_rejects_mismatched_key_and_id(ca: CertificateAuthority, alice: Identity) -> None:
    with pytest.raises(IdentityError) as ei:
        Identity(client_id="alice", private_key=generate_key(), cert_chain=alice.cert_chain)
    assert _reason(ei) == "key-mismatch"
    with pytest.raises(IdentityError) as ei:
        Identity(client_id="bob", private_key=alice.private_key, cert_chain=alice.cert_chain)
    assert _reason(ei) == "id-mismatch"
    assert "BEGIN" not in repr(alice)


def test_ed25519_ca_refused_up_front() -> None:
    ed_ca = create_ca("ed CA", key_type="ed25519")
    with pytest.raises(IdentityError) as ei:
        TrustAnchor(ed_ca.certificate)
    assert _reason(ei) == "unsupported-key"
