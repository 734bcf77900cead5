"""Issuing consortium certificates and CRLs.

Used by the ``secfed certs`` provisioning commands and, directly, by tests that
need throw-away CAs and identities.  Everything produced here is shaped to pass
``cryptography.x509.verification`` (the WebPKI profile that
:class:`secfed.crypto.identity.TrustAnchor` enforces), so a certificate that
this module issues and the verifier rejects is a bug here, not a policy
question for the caller.

Profile:

* CA: self-signed, BasicConstraints CA=True pathLen=0 (critical; the consortium
  has no intermediates, so a leaked CA-signed key can never mint sub-CAs),
  KeyUsage keyCertSign+cRLSign (critical), SubjectKeyIdentifier.
* Leaves: BasicConstraints CA=False, KeyUsage digitalSignature (critical),
  EKU clientAuth *or* serverAuth (never both, so a client certificate cannot
  impersonate the coordinator and vice versa), AKI, SKI, and a SAN: the
  ``urn:secfed:client:<id>`` URI for clients, DNS/IP names for the server.
* Serial numbers come from ``x509.random_serial_number()`` (CSPRNG, 159 bits).
* ``notBefore`` is backdated a few minutes so that institutions whose clocks
  run slightly behind the CA's do not reject freshly issued certificates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secfed.crypto.identity import (
    CLIENT_ID_PATTERN,
    CLIENT_URI_PREFIX,
    OPERATOR_URI_PREFIX,
    Identity,
    PrivateKey,
    is_valid_client_id,
)

__all__ = [
    "CLOCK_SKEW",
    "CertificateAuthority",
    "KeyType",
    "create_ca",
    "generate_key",
    "issue_client",
    "issue_operator",
    "issue_server",
    "revoke",
]

KeyType = Literal["ec", "ed25519"]

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, eq=False)
class CertificateAuthority:
    """The consortium CA: its self-signed certificate and signing key."""

    certificate: x509.Certificate
    private_key: PrivateKey

    def __repr__(self) -> str:
        # Never let the key reach logs through a repr.
        return f"CertificateAuthority({self.certificate.subject.rfc4514_string()!r})"


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh key: ECDSA P-256 (default: fast, and accepted everywhere) or Ed25519."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; expected 'ec' or 'ed25519'")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself; cryptography requires algorithm=None for it.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _now() -> datetime:
    return datetime.now(UTC)


def _validity(
    valid_days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    start = not_before if not_before is not None else _now() - CLOCK_SKEW
    end = not_after if not_after is not None else start + timedelta(days=valid_days)
    if end <= start:
        raise ValueError(f"certificate would expire ({end:%Y-%m-%d}) before it starts ({start:%Y-%m-%d})")
    return start, end


def create_ca(
    name: str = "secfed consortium CA", *, valid_days: int = 3650, key_type: KeyType = "ec"
) -> CertificateAuthority:
    """Create a self-signed consortium root.

    ``key_type="ed25519"`` produces a valid certificate, but the WebPKI-profile
    verifier used by :class:`~secfed.crypto.identity.TrustAnchor` refuses
    Ed25519 issuers, so such a CA is only useful for signature-level tests.
    """
    if valid_days <= 0:
        raise ValueError("valid_days must be positive")
    key = generate_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(valid_days, None, None)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _hash_for(key))
    )
    return CertificateAuthority(certificate=cert, private_key=key)


def _leaf_builder(
    ca: CertificateAuthority,
    subject_cn: str,
    public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    start: datetime,
    end: datetime,
    eku: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
) -> x509.CertificateBuilder:
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )


def issue_client(
    ca: CertificateAuthority,
    client_id: str,
    *,
    valid_days: int = 365,
    key_type: KeyType = "ec",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | None = None,
) -> Identity:
    """Issue a client (institution) identity: EKU clientAuth, SAN ``urn:secfed:client:<id>``.

    ``not_before``/``not_after`` override the default window (now minus clock
    skew, plus ``valid_days``); tests use them to mint expired or future certs.
    ``key`` certifies an existing key instead of a fresh one (an institution in several consortia
    may hold one key certified by each CA; SecAgg signatures name the consortium for that reason).
    """
    if not is_valid_client_id(client_id):
        raise ValueError(f"{client_id!r} is not a valid client id ({CLIENT_ID_PATTERN})")
    start, end = _validity(valid_days, not_before, not_after)
    key = key if key is not None else generate_key(key_type)
    cert = _leaf_builder(
        ca,
        client_id,
        key.public_key(),
        start,
        end,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + client_id)],
    ).sign(ca.private_key, _hash_for(ca.private_key))
    return Identity(client_id=client_id, private_key=key, cert_chain=(cert,))


def issue_operator(
    ca: CertificateAuthority,
    name: str,
    *,
    valid_days: int = 90,
    key_type: KeyType = "ec",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Identity:
    """Issue an operator identity: EKU clientAuth, SAN ``urn:secfed:operator:<name>``, no client URI.

    An operator reads a running coordinator's status over mutual TLS; it can never act as an
    institution (it has no client id) and is refused by every federation RPC. Shorter-lived than an
    institution's certificate by default (90 days): a person's access, not an institution's.
    """
    if not is_valid_client_id(name):
        raise ValueError(f"{name!r} is not a valid operator name ({CLIENT_ID_PATTERN})")
    start, end = _validity(valid_days, not_before, not_after)
    key = generate_key(key_type)
    cert = _leaf_builder(
        ca,
        name,
        key.public_key(),
        start,
        end,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [x509.UniformResourceIdentifier(OPERATOR_URI_PREFIX + name)],
    ).sign(ca.private_key, _hash_for(ca.private_key))
    return Identity(client_id="", private_key=key, cert_chain=(cert,))


def issue_server(
    ca: CertificateAuthority,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    valid_days: int = 365,
    key_type: KeyType = "ec",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Identity:
    """Issue the coordinator's identity: EKU serverAuth, SAN = the DNS names / IPs clients dial.

    The returned :class:`Identity` has ``client_id == ""``: the coordinator is
    identified by the names it serves, not by a consortium client id.
    """
    san: list[x509.GeneralName] = []
    for name in dns_names:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} is not a valid DNS name")
        san.append(x509.DNSName(name))
    for ip in ip_addresses:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValueError(f"{ip!r} is not a valid IP address") from None
    if not san:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    start, end = _validity(valid_days, not_before, not_after)
    key = generate_key(key_type)
    cn = dns_names[0] if dns_names else str(ip_addresses[0])
    cert = _leaf_builder(ca, cn, key.public_key(), start, end, ExtendedKeyUsageOID.SERVER_AUTH, san).sign(
        ca.private_key, _hash_for(ca.private_key)
    )
    return Identity(client_id="", private_key=key, cert_chain=(cert,))


def revoke(
    ca: CertificateAuthority,
    serials: Sequence[int],
    *,
    previous: x509.CertificateRevocationList | None = None,
    next_update_days: int = 30,
    reason: x509.ReasonFlags | None = None,
) -> x509.CertificateRevocationList:
    """Return a new CRL revoking ``serials`` plus everything ``previous`` revoked.

    With no serials and no previous CRL this is the initial empty CRL.  The
    CRL number increases monotonically so that relying parties (and operators
    diffing files) can tell which CRL is newer.  ``next_update_days`` bounds
    how long the CRL is trusted: verifiers fail closed once it passes, so the
    CA operator must re-publish (``secfed certs revoke`` with no new serials
    simply re-signs) before then.
    """
    if next_update_days <= 0:
        raise ValueError("next_update_days must be positive")
    now = _now()
    ca_cert = ca.certificate
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + timedelta(days=next_update_days))
    )
    number = 1
    seen: set[int] = set()
    if previous is not None:
        ca_public = ca.private_key.public_key()
        if previous.issuer != ca_cert.subject or not previous.is_signature_valid(ca_public):
            raise ValueError("the previous CRL was not issued by this CA; refusing to merge its entries")
        try:
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
        for entry in previous:
            seen.add(entry.serial_number)
            builder = builder.add_revoked_certificate(entry)
    for serial in serials:
        if serial in seen:
            continue
        seen.add(serial)
        entry_builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        if reason is not None:
            entry_builder = entry_builder.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry_builder.build())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(x509.CRLNumber(number), critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
    )
    return builder.sign(ca.private_key, _hash_for(ca.private_key))
