"""Issuing profile, CRLs, on-disk storage and kit loading."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from secfed.crypto.identity import CLIENT_URI_PREFIX, TrustAnchor
from secfed.pki import (
    CertificateAuthority,
    KitError,
    PkiError,
    create_ca,
    issue_client,
    issue_server,
    load_ca,
    load_kit,
    revoke,
    save_ca,
    write_kit,
    write_secret,
)
from secfed.pki.kit import format_address, parse_address


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("issue-test CA")


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_ca_profile(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and isinstance(bc.value, x509.BasicConstraints) and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    _ext(cert, x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_client_profile(ca: CertificateAuthority) -> None:
    a, b = issue_client(ca, "site-a"), issue_client(ca, "site-a")
    cert = a.certificate
    assert a.certificate.serial_number != b.certificate.serial_number
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage) and list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [CLIENT_URI_PREFIX + "site-a"]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    ski = _ext(ca.certificate, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier) and isinstance(ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.digest
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and isinstance(ku.value, x509.KeyUsage) and ku.value.digital_signature
    bc = _ext(cert, x509.BasicConstraints).value
    assert isinstance(bc, x509.BasicConstraints) and not bc.ca
    cert.verify_directly_issued_by(ca.certificate)


def test_server_profile(ca: CertificateAuthority) -> None:
    srv = issue_server(ca, dns_names=["fl.example.org"], ip_addresses=["10.1.2.3"])
    assert srv.client_id == ""
    eku = _ext(srv.certificate, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage) and list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = _ext(srv.certificate, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_issue_rejects_bad_input(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="not a valid client id"):
        issue_client(ca, "a b")
    with pytest.raises(ValueError, match="not a valid IP"):
        issue_server(ca, ip_addresses=["300.1.1.1"])
    with pytest.raises(ValueError, match="at least one"):
        issue_server(ca, dns_names=[], ip_addresses=[])
    with pytest.raises(ValueError, match="before it starts"):
        issue_client(ca, "x", valid_days=-1)


def test_crl_numbers_and_entries(ca: CertificateAuthority) -> None:
    first = revoke(ca, [11, 12], reason=x509.ReasonFlags.key_compromise)
    second = revoke(ca, [12, 13], previous=first)
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in (first, second)]
    assert numbers == [1, 2]
    assert sorted(e.serial_number for e in second) == [11, 12, 13]
    assert second.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]


def test_write_secret_is_0600_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "k.pem", b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temp file left behind


def test_ca_round_trip_and_mismatch(tmp_path: Path, ca: CertificateAuthority) -> None:
    save_ca(ca, tmp_path / "ca", revoke(ca, []))
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    loaded = load_ca(tmp_path / "ca")
    assert loaded.certificate == ca.certificate
    other = create_ca("other")
    save_ca(other, tmp_path / "other", revoke(other, []))
    (tmp_path / "ca" / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())
    with pytest.raises(PkiError, match=r"ca\.key: does not belong"):
        load_ca(tmp_path / "ca")
    with pytest.raises(PkiError, match="missing"):
        load_ca(tmp_path / "nowhere")


def test_kit_round_trip(tmp_path: Path, ca: CertificateAuthority) -> None:
    ident = issue_client(ca, "site-b")
    crl = revoke(ca, [])
    kit_dir = write_kit(
        tmp_path / "kit",
        ident,
        ca.certificate,
        crl,
        role="client",
        server_address="fl.example.org:8443",
        display_name='Site "B"\tclinic',
        consortium="c",
    )
    kit = load_kit(kit_dir)
    assert kit.role == "client" and kit.client_id == "site-b"
    assert kit.display_name == 'Site "B"\tclinic'
    assert kit.server_address == "fl.example.org:8443"
    assert kit.identity.certificate == ident.certificate
    assert kit.key_path.read_bytes() == ident.private_key_pem()
    assert isinstance(kit.trust, TrustAnchor)
    assert kit.trust.verify_client(kit.identity.chain_der()).client_id == "site-b"
    assert "PRIVATE" not in repr(kit)


def test_load_kit_errors_name_file(tmp_path: Path, ca: CertificateAuthority) -> None:
    ident = issue_client(ca, "site-c")
    kit_dir = write_kit(tmp_path / "kit", ident, ca.certificate, revoke(ca, []), role="client")
    toml = kit_dir / "kit.toml"
    text = toml.read_text()

    toml.write_text(text.replace('id = "site-c"', 'id = "site-d"'))
    with pytest.raises(KitError, match=r"kit\.toml: id:"):
        load_kit(kit_dir)
    toml.write_text(text.replace('role = "client"', 'role = "observer"'))
    with pytest.raises(KitError, match=r"kit\.toml: role:"):
        load_kit(kit_dir)
    toml.write_text(text)
    (kit_dir / "key.pem").write_bytes(issue_client(ca, "site-c").private_key_pem())
    with pytest.raises(KitError, match=r"key\.pem: does not belong"):
        load_kit(kit_dir)
    (kit_dir / "ca.pem").unlink()
    with pytest.raises(PkiError, match=r"ca\.pem: missing"):
        load_kit(kit_dir)
    toml.unlink()
    with pytest.raises(KitError, match=r"kit\.toml: missing"):
        load_kit(kit_dir)


def test_address_helpers() -> None:
    assert parse_address("fl.example.org:8443") == ("fl.example.org", 8443)
    assert parse_address("[::1]:50051") == ("::1", 50051)
    assert format_address("::1", 50051) == "[::1]:50051"
    for bad in ("nohost", "::1:80", "host:0", "host:http", "bad host:1"):
        with pytest.raises(ValueError):
            parse_address(bad)
