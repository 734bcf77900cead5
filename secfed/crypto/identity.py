"""Certificate-bound identities: who a peer is, and proof that it said something.

Every institution in a secfed consortium holds a leaf certificate issued by the
consortium CA.  The same certificate is used twice:

* as the TLS client certificate on the gRPC channel (mutual TLS), and
* as the key that signs secure-aggregation messages, so that the (untrusted)
  coordinator cannot forge or substitute another client's key-agreement keys.

Both uses must agree on *one* notion of "client id", otherwise a peer could
authenticate on the channel as one institution and sign protocol messages as
another.  The id therefore lives in exactly one place, a SAN URI
``urn:secfed:client:<id>`` in the leaf, and :func:`client_id_of` is the only
code that reads it.

Chain building and path validation are delegated to
``cryptography.x509.verification`` (a WebPKI-profile verifier written in Rust)
instead of being hand-rolled here; this module adds what that verifier does not
do: pinning to a single consortium CA, CRL revocation checks, extracting the
client id, and turning the verifier's free-text errors into short reason codes
that callers can log, count and test against.

Limitation inherited from that verifier: a CA (or intermediate) key must be
ECDSA or RSA, Ed25519 CA keys are refused.  Ed25519 is fine for *leaf* keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "CLIENT_ID_PATTERN",
    "CLIENT_URI_PREFIX",
    "OPERATOR_URI_PREFIX",
    "Identity",
    "IdentityError",
    "PrivateKey",
    "TrustAnchor",
    "VerifiedPeer",
    "client_id_of",
    "describe",
    "is_valid_client_id",
    "operator_name_of",
    "verify_signature",
]

CLIENT_URI_PREFIX = "urn:secfed:client:"
OPERATOR_URI_PREFIX = "urn:secfed:operator:"

# Ids end up in file names (kit directories), log lines and TOML files, so the
# alphabet is kept to characters that need no quoting anywhere.
CLIENT_ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class IdentityError(Exception):
    """Why a peer, certificate or signature was refused.

    ``reason`` is a short stable code (``"foreign-ca"``, ``"expired"``,
    ``"not-yet-valid"``, ``"revoked"``, ``"no-client-uri"``, ``"no-operator-uri"``,
    ``"role-mismatch"``, ``"bad-eku"``,
    ``"bad-signature"``, ``"malformed"``, ``"id-mismatch"``, ``"stale-crl"``,
    ``"bad-crl"``, ``"hostname-mismatch"``, ``"key-mismatch"``,
    ``"unsupported-key"``, ``"invalid-certificate"``) so that callers can
    branch, count and test on it without parsing English; the message names the
    subject and keeps any underlying library text for the operator.
    """

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {super().__str__()}"


def describe(cert: x509.Certificate) -> str:
    """Human-readable name for a certificate in error messages.

    Uses the subject DN and the serial (hex, as operators see it in
    ``openssl x509 -serial`` output and in ``secfed certs revoke --serial``).
    """
    try:
        subject = cert.subject.rfc4514_string() or "<empty subject>"
    except ValueError:  # pragma: no cover - undecodable subject
        subject = "<undecodable subject>"
    return f"'{subject}' (serial {cert.serial_number:x})"


def is_valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` is in the restricted id alphabet (see CLIENT_ID_PATTERN)."""
    return _CLIENT_ID_RE.fullmatch(client_id) is not None


def client_id_of(cert: x509.Certificate) -> str:
    """Return the consortium client id carried in ``cert``'s SAN URI.

    Exactly one ``urn:secfed:client:`` URI is accepted: with two, different
    components could legitimately pick different ones and disagree on who the
    peer is.  Raises ``IdentityError("no-client-uri")`` otherwise, and
    ``IdentityError("role-mismatch")`` for a certificate that also names an
    operator (one certificate, one role: see :func:`operator_name_of`).
    """
    return _role_id(cert, CLIENT_URI_PREFIX, "client", OPERATOR_URI_PREFIX)


def operator_name_of(cert: x509.Certificate) -> str:
    """Return the operator name carried in ``cert``'s SAN URI ``urn:secfed:operator:<name>``.

    Operators read a running coordinator's status (``secfed status --operator``); they are never
    institutions. Their certificates carry no client URI, so every institution-facing check
    (:func:`client_id_of`) refuses them, and a certificate carrying both URIs is refused by both.
    """
    return _role_id(cert, OPERATOR_URI_PREFIX, "operator", CLIENT_URI_PREFIX)


def _urn_case(uri: str) -> str:
    """``uri`` with the case-insensitive parts of a ``urn:secfed:<role>:`` URN (RFC 8141: the scheme,
    and here the namespace and role) in lower case: "URN:SECFED:CLIENT:x" names a role as surely as the
    lower-case form, for another tool if not for this one, so it counts. The id keeps its case."""
    parts = uri.split(":", 3)
    return ":".join([*(p.lower() for p in parts[:3]), *parts[3:]]) if len(parts) == 4 else uri


def _role_id(cert: x509.Certificate, prefix: str, role: str, other_prefix: str) -> str:
    """The one id after ``prefix`` among ``cert``'s SAN URIs; none of ``other_prefix`` may be there."""
    reason = f"no-{role}-uri"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(
            reason, f"certificate {describe(cert)} has no subjectAltName, so no {role} id"
        ) from None
    except ValueError as exc:
        raise IdentityError(
            "malformed", f"certificate {describe(cert)} has an unparsable extension: {exc}"
        ) from exc
    all_uris = [_urn_case(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    uris = [u for u in all_uris if u.startswith(prefix)]
    if not uris:
        raise IdentityError(reason, f"certificate {describe(cert)} has no SAN URI starting with {prefix!r}")
    if len(uris) > 1:
        raise IdentityError(
            reason,
            f"certificate {describe(cert)} has {len(uris)} {role} URIs {uris!r}; exactly one is required",
        )
    if any(u.startswith(other_prefix) for u in all_uris):
        raise IdentityError(
            "role-mismatch",
            f"certificate {describe(cert)} names the {role} role and another one; a certificate has one role",
        )
    name = uris[0][len(prefix) :]
    if not is_valid_client_id(name):
        raise IdentityError(
            reason,
            f"certificate {describe(cert)} carries {role} id {name!r}, "
            f"which is not a valid {role} id ({CLIENT_ID_PATTERN})",
        )
    return name


def _public_bytes(key: object) -> bytes | None:
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return None


def verify_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    """Check that ``signature`` over ``data`` was made with ``cert``'s key.

    Mirrors :meth:`Identity.sign`: ECDSA with SHA-256 for EC keys, pure Ed25519
    otherwise.  This does *not* validate the certificate itself; callers verify
    the chain once (``TrustAnchor.verify_client``) and then check many
    signatures against the verified leaf.
    """
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(
            "malformed", f"public key of certificate {describe(cert)} cannot be loaded: {exc}"
        ) from exc
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            raise IdentityError(
                "unsupported-key",
                f"certificate {describe(cert)} has a {type(key).__name__}; only EC and Ed25519 keys can sign",
            )
    except InvalidSignature:
        raise IdentityError(
            "bad-signature", f"signature does not verify under the key of certificate {describe(cert)}"
        ) from None


@dataclass(frozen=True, eq=False)
class Identity:
    """A participant's certificate-bound signing identity.

    ``client_id`` is read from the leaf's SAN URI for clients; for the
    coordinator (server certificates carry DNS/IP SANs, not a client URI) it is
    ``""``.  ``cert_chain`` is leaf first, then any intermediates, never the
    root: peers already pin the root, and sending it would only suggest that a
    self-supplied root is acceptable.

    Construction checks that the private key belongs to the leaf, because a
    mismatched pair otherwise only shows up later as an opaque TLS handshake
    failure or as every signature being rejected by every peer.
    ``eq=False``: identities hold private keys and are compared by object, not
    by value.
    """

    client_id: str
    private_key: PrivateKey
    cert_chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.cert_chain:
            raise IdentityError("malformed", "identity has an empty certificate chain")
        leaf = self.cert_chain[0]
        mine = _public_bytes(self.private_key.public_key())
        try:
            theirs = _public_bytes(leaf.public_key())
        except (ValueError, UnsupportedAlgorithm):
            theirs = None
        if mine is None or mine != theirs:
            raise IdentityError(
                "key-mismatch", f"private key does not belong to the leaf certificate {describe(leaf)}"
            )
        if self.client_id:
            cert_id = client_id_of(leaf)
            if cert_id != self.client_id:
                raise IdentityError(
                    "id-mismatch",
                    f"identity claims client id {self.client_id!r} but certificate {describe(leaf)} "
                    f"says {cert_id!r}",
                )

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate."""
        return self.cert_chain[0]

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (ECDSA/SHA-256 DER signature, or 64-byte Ed25519)."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.private_key.sign(data)

    def chain_der(self) -> tuple[bytes, ...]:
        """The chain as DER blobs, the form peers pass to ``TrustAnchor.verify_client``."""
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.cert_chain)

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM, the form gRPC's ``ssl_*_credentials`` want."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def private_key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM of the key (gRPC cannot take an encrypted key).

        Callers must treat the result as secret: write it only with 0600
        permissions, never log it.
        """
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        # Keep private key material out of reprs that end up in logs and tracebacks.
        return f"Identity(client_id={self.client_id!r}, leaf={describe(self.certificate)})"


@dataclass(frozen=True)
class VerifiedPeer:
    """A client whose chain, usage and revocation status have been checked."""

    client_id: str
    certificate: x509.Certificate


def _utc(at: datetime | None) -> datetime:
    """Normalise a validation time: default now; naive datetimes are taken as UTC."""
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def _parse_chain(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    if not chain_der:
        raise IdentityError("malformed", "peer presented no certificate")
    certs = []
    for i, der in enumerate(chain_der):
        try:
            certs.append(x509.load_der_x509_certificate(bytes(der)))
        except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is not a ValueError
            raise IdentityError(
                "malformed", f"certificate #{i} of the presented chain is not DER X.509: {exc}"
            ) from exc
    return certs


class TrustAnchor:
    """The pinned consortium CA plus optional CRLs.

    Only the one consortium CA is trusted, never the system trust store: a
    certificate for a public domain from a public CA says nothing about
    membership in the consortium.

    CRLs are checked on every verification (not once at construction) because
    freshness depends on the validation time: a CRL that was fine yesterday can
    be stale today, and a stale CRL must fail closed, otherwise withholding CRL
    updates would silently resurrect revoked institutions.  Only CRLs issued by
    the pinned CA itself are supported, so revocation covers certificates issued
    directly by it (which is all that ``secfed.pki`` issues).
    """

    def __init__(
        self, ca_certificate: x509.Certificate, crls: Sequence[x509.CertificateRevocationList] = ()
    ) -> None:
        try:
            ca_key = ca_certificate.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise IdentityError("malformed", f"CA certificate {describe(ca_certificate)}: {exc}") from exc
        if not isinstance(ca_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            # The WebPKI-profile verifier refuses Ed25519 issuers; say so once here
            # rather than as a confusing "foreign-ca" on every single peer.
            raise IdentityError(
                "unsupported-key",
                f"CA certificate {describe(ca_certificate)} has a {type(ca_key).__name__}; "
                "the consortium CA must use an ECDSA (or RSA) key",
            )
        self._ca = ca_certificate
        self._ca_key = ca_key
        self._crls = tuple(crls)
        self._store = Store([ca_certificate])

    @classmethod
    def from_pem(cls, ca_pem: bytes, crl_pems: Sequence[bytes] = ()) -> TrustAnchor:
        """Build from PEM text (exactly one CA certificate; each CRL blob one CRL)."""
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise IdentityError("malformed", f"CA PEM does not hold a certificate: {exc}") from exc
        if len(cas) != 1:
            # Several roots would turn "the consortium CA" into "any of these".
            raise IdentityError("malformed", f"CA PEM must hold exactly one certificate, found {len(cas)}")
        crls = []
        for i, pem in enumerate(crl_pems):
            try:
                crls.append(x509.load_pem_x509_crl(pem))
            except ValueError as exc:
                raise IdentityError("malformed", f"CRL #{i} is not a PEM X.509 CRL: {exc}") from exc
        return cls(cas[0], crls)

    @property
    def consortium_id(self) -> bytes:
        """SHA-256 of the CA certificate (DER): names the consortium inside signed SecAgg payloads, so a
        signature made under one consortium's CA never counts in another's."""
        return hashlib.sha256(self._ca.public_bytes(serialization.Encoding.DER)).digest()

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls

    def ca_pem(self) -> bytes:
        """The CA as PEM, e.g. for gRPC ``root_certificates``."""
        return self._ca.public_bytes(serialization.Encoding.PEM)

    def with_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> TrustAnchor:
        """A new anchor on the same CA with a refreshed CRL set (anchors are immutable)."""
        return TrustAnchor(self._ca, crls)

    # -- verification -----------------------------------------------------------------------------

    def verify_client(self, chain_der: Sequence[bytes], *, at: datetime | None = None) -> VerifiedPeer:
        """Verify a client's presented chain (leaf first) and return its id.

        Checks, in order: parseable DER, path to the pinned CA valid at ``at``
        with EKU clientAuth (cryptography's client verifier), not revoked by any
        CRL (each CRL must be signed by the CA and fresh), and exactly one valid
        client URI.  Raises :class:`IdentityError` with a precise ``reason``.
        """
        leaf = self._verify_tls_client(chain_der, at, role="client")
        return VerifiedPeer(client_id=client_id_of(leaf), certificate=leaf)

    def verify_operator(self, chain_der: Sequence[bytes], *, at: datetime | None = None) -> str:
        """Verify an operator's chain exactly as :meth:`verify_client` does a client's, and return the
        operator name of its ``urn:secfed:operator:`` URI (an institution's certificate is refused)."""
        return operator_name_of(self._verify_tls_client(chain_der, at, role="operator"))

    def _verify_tls_client(
        self, chain_der: Sequence[bytes], at: datetime | None, *, role: str
    ) -> x509.Certificate:
        """The leaf of a TLS client chain that passes path, usage, validity and revocation checks."""
        when = _utc(at)
        certs = _parse_chain(chain_der)
        leaf = certs[0]
        verifier = PolicyBuilder().store(self._store).time(when).build_client_verifier()
        try:
            verified = verifier.verify(leaf, certs[1:])
        except VerificationError as exc:
            raise self._classify(exc, certs, when, role=role) from exc
        except ValueError as exc:  # a field parsed lazily, only when the verifier reads it
            raise IdentityError("malformed", f"the presented chain is malformed: {exc}") from exc
        self._check_revocation(verified.chain, when)
        return leaf

    def verify_server(
        self, chain_der: Sequence[bytes], *, hostname: str, at: datetime | None = None
    ) -> x509.Certificate:
        """Verify the coordinator's chain for ``hostname`` (DNS name or IP literal).

        Same checks as :meth:`verify_client` but with EKU serverAuth and the
        SAN matched against ``hostname`` instead of extracting a client id.
        """
        when = _utc(at)
        certs = _parse_chain(chain_der)
        subject: x509.DNSName | x509.IPAddress
        try:
            subject = x509.IPAddress(ipaddress.ip_address(hostname.strip("[]")))
        except ValueError:
            subject = x509.DNSName(hostname)
        try:
            verifier = PolicyBuilder().store(self._store).time(when).build_server_verifier(subject)
        except ValueError as exc:
            raise IdentityError(
                "malformed", f"{hostname!r} is neither an IP address nor a valid DNS name: {exc}"
            ) from exc
        try:
            chain = verifier.verify(certs[0], certs[1:])
        except VerificationError as exc:
            raise self._classify(exc, certs, when, role="server", hostname=hostname) from exc
        except ValueError as exc:  # a field parsed lazily, only when the verifier reads it
            raise IdentityError("malformed", f"the presented chain is malformed: {exc}") from exc
        self._check_revocation(chain, when)
        return certs[0]

    def check_crls(self, *, at: datetime | None = None) -> None:
        """Raise ``bad-crl`` / ``stale-crl`` if any configured CRL is unusable at ``at``.

        Exposed so that servers can refuse to start (or alert) on a stale CRL
        instead of discovering it as the first peer is rejected.
        """
        when = _utc(at)
        for crl in self._crls:
            self._check_crl(crl, when)

    def _check_crl(self, crl: x509.CertificateRevocationList, when: datetime) -> None:
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca_key):
            raise IdentityError(
                "bad-crl",
                f"CRL issued by '{crl.issuer.rfc4514_string()}' is not signed by the consortium CA "
                f"{describe(self._ca)}; refusing to trust any revocation data from it",
            )
        next_update = crl.next_update_utc
        if next_update is None or next_update < when:
            when_s = (
                "it has no nextUpdate"
                if next_update is None
                else f"its nextUpdate was {next_update:%Y-%m-%d %H:%M}Z"
            )
            raise IdentityError(
                "stale-crl",
                f"CRL of {describe(self._ca)} is stale ({when_s}, validation time {when:%Y-%m-%d %H:%M}Z); "
                "publish a fresh CRL with `secfed certs revoke`",
            )

    def _check_revocation(self, chain: Sequence[x509.Certificate], when: datetime) -> None:
        for crl in self._crls:
            self._check_crl(crl, when)
        for cert in chain:
            if cert == self._ca:
                continue
            for crl in self._crls:
                if cert.issuer != crl.issuer:
                    continue
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None:
                    raise IdentityError(
                        "revoked",
                        f"certificate {describe(cert)} was revoked on {entry.revocation_date_utc:%Y-%m-%d}",
                    )

    def _classify(
        self,
        exc: VerificationError,
        certs: Sequence[x509.Certificate],
        when: datetime,
        *,
        role: str,
        hostname: str | None = None,
    ) -> IdentityError:
        """Map the verifier's free text to a reason code.

        The Rust verifier reports one undifferentiated "not valid at validation
        time" for both directions, so expiry vs not-yet-valid is decided here
        from the certificates' own dates.  Unknown messages map to
        ``invalid-certificate`` with the original text kept.
        """
        text = str(exc)
        leaf = certs[0]
        who = f"{role} certificate {describe(leaf)}"
        if "not valid at validation time" in text:
            for cert in (*certs, self._ca):
                if cert.not_valid_after_utc < when:
                    return IdentityError(
                        "expired",
                        f"{who}: certificate {describe(cert)} expired on "
                        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z ({text})",
                    )
                if cert.not_valid_before_utc > when:
                    return IdentityError(
                        "not-yet-valid",
                        f"{who}: certificate {describe(cert)} is not valid before "
                        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z ({text})",
                    )
            return IdentityError("expired", f"{who} is outside its validity period ({text})")
        if "EKU" in text:
            usage = "serverAuth" if role == "server" else "clientAuth"
            return IdentityError(
                "bad-eku", f"{who} is not valid for {usage} (wrong extendedKeyUsage) ({text})"
            )
        if "subjectAltName" in text and hostname is not None:
            return IdentityError("hostname-mismatch", f"{who} is not valid for host {hostname!r} ({text})")
        if role != "server" and "2.5.29.17" in text:
            return IdentityError(f"no-{role}-uri", f"{who} has no subjectAltName, so no {role} id ({text})")
        if "Forbidden public key algorithm" in text or "Forbidden signature algorithm" in text:
            return IdentityError("unsupported-key", f"{who} uses an algorithm the verifier refuses ({text})")
        if "candidates exhausted" in text or "issuer" in text.lower():
            return IdentityError(
                "foreign-ca", f"{who} does not chain to the consortium CA {describe(self._ca)} ({text})"
            )
        return IdentityError("invalid-certificate", f"{who} was rejected: {text}")
