"""Startup kits: one directory per participant with everything it needs to connect.

Layout (fixed names, so that documentation, support and scripts can refer to
them without reading configuration)::

    kit.toml   role, id, display name, consortium, server address
    cert.pem   leaf certificate (then intermediates, if any)
    key.pem    private key, mode 0600 -- the only secret in the kit
    ca.pem     the consortium CA, pinned as the only trust anchor
    crl.pem    the CA's current revocation list

:func:`load_kit` is what servers and clients call at start-up; it checks that
the pieces belong together (key matches certificate, id in ``kit.toml`` matches
the certificate) but deliberately not expiry or revocation, which depend on the
time and are re-checked on every connection anyway.  :func:`check_kit` is the
operator-facing preflight that checks everything and explains problems in
plain words.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from secfed.crypto.identity import (
    CLIENT_ID_PATTERN,
    Identity,
    IdentityError,
    PrivateKey,
    TrustAnchor,
    client_id_of,
    describe,
    is_valid_client_id,
    operator_name_of,
)
from secfed.pki.files import (
    PkiError,
    cert_pem,
    crl_pem,
    key_pem,
    load_certificates,
    load_crl,
    load_private_key,
    loose_permissions,
    write_public,
    write_secret,
)

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "CRL_FILE",
    "EXPIRY_WARNING",
    "KEY_FILE",
    "KIT_FILE",
    "Kit",
    "KitError",
    "KitReport",
    "Role",
    "check_kit",
    "format_address",
    "load_kit",
    "parse_address",
    "write_kit",
]

KIT_FILE = "kit.toml"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
CRL_FILE = "crl.pem"

EXPIRY_WARNING = timedelta(days=30)

_T = TypeVar("_T")

# An operator kit reads a running coordinator's status (``secfed status --operator``); it is no
# institution: its certificate names an operator, never a client (see secfed.crypto.identity).
Role = Literal["client", "server", "operator"]
_ROLES: tuple[Role, ...] = ("client", "server", "operator")
_KIT_KEYS = frozenset({"role", "id", "name", "consortium", "server_address", "created"})

# RFC 1123 host names (LDH labels).  Kept strict: these names are matched
# against certificate SANs, where anything looser would never match anyway.
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class KitError(PkiError):
    """A kit cannot be loaded; the message names the file and the problem."""


def is_hostname(name: str) -> bool:
    return _HOSTNAME_RE.fullmatch(name) is not None


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; ValueError explains what is wrong."""
    host, sep, port_s = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{address!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{address!r}: write IPv6 addresses in brackets, e.g. [::1]:8443")
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not is_hostname(host):
                raise ValueError(f"{address!r}: {host!r} is not a valid host name or IP address") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{address!r}: port must be a number from 1 to 65535")
    return host, int(port_s)


def format_address(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals as gRPC target strings require."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _toml_string(value: str) -> str:
    """A TOML basic string.  Hand-written because tomllib only reads TOML."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True, eq=False)
class Kit:
    """A loaded startup kit.

    ``client_id`` is ``""`` for the server kit.  ``server_address`` is where
    clients dial the coordinator (``host:port``); in the server kit it is the
    address the coordinator is published under (it may listen on another).
    The ``*_path`` fields are for gRPC credential constructors, which want PEM
    bytes read from exactly these files.
    """

    root: Path
    role: Role
    client_id: str
    identity: Identity
    trust: TrustAnchor
    server_address: str | None
    display_name: str | None
    consortium: str | None
    cert_path: Path
    key_path: Path
    ca_path: Path
    crl_path: Path
    operator_name: str = ""  # the operator kit's name (its certificate's urn:secfed:operator: URI)

    def __repr__(self) -> str:
        return f"Kit(root={str(self.root)!r}, role={self.role!r}, client_id={self.client_id!r})"


def _read_kit_toml(root: Path) -> dict[str, str]:
    path = root / KIT_FILE
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise KitError(f"{path}: missing; is {root} a secfed kit directory?") from None
    except tomllib.TOMLDecodeError as exc:
        raise KitError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise KitError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return _validate_kit_toml(path, raw)


def _validate_kit_toml(path: Path, raw: Mapping[str, object]) -> dict[str, str]:
    unknown = sorted(set(raw) - _KIT_KEYS)
    if unknown:
        raise KitError(f"{path}: unknown field(s) {', '.join(unknown)}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise KitError(f"{path}: {key}: must be a string, got {type(value).__name__}")
        out[key] = value
    role = out.get("role")
    if role not in _ROLES:
        raise KitError(f"{path}: role: must be 'client', 'server' or 'operator', got {role!r}")
    if role in ("client", "operator"):
        cid = out.get("id", "")
        if not is_valid_client_id(cid):
            raise KitError(f"{path}: id: {cid!r} is not a valid {role} id ({CLIENT_ID_PATTERN})")
    if "server_address" in out:
        try:
            parse_address(out["server_address"])
        except ValueError as exc:
            raise KitError(f"{path}: server_address: {exc}") from None
    return out


def write_kit(
    out: Path,
    identity: Identity,
    ca_certificate: x509.Certificate,
    crl: x509.CertificateRevocationList,
    *,
    role: Role,
    server_address: str | None = None,
    display_name: str | None = None,
    consortium: str | None = None,
) -> Path:
    """Write a kit directory (created 0700 if absent).  Existing kit files are replaced atomically."""
    if role == "client" and not identity.client_id:
        raise ValueError("a client kit needs an identity with a client id")
    if role in ("server", "operator") and identity.client_id:
        raise ValueError(f"a {role} kit needs an identity without a client id")
    operator = operator_name_of(identity.certificate) if role == "operator" else ""
    if server_address is not None:
        parse_address(server_address)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(out / KEY_FILE, key_pem(identity.private_key))
    write_public(out / CERT_FILE, cert_pem(*identity.cert_chain))
    write_public(out / CA_FILE, cert_pem(ca_certificate))
    write_public(out / CRL_FILE, crl_pem(crl))
    lines = [
        "# secfed startup kit (generated by `secfed certs`; check it with `secfed certs check <dir>`).",
        "# key.pem is this participant's secret: keep it mode 0600 and never commit or e-mail it.",
        f"role = {_toml_string(role)}",
    ]
    if role == "client":
        lines.append(f"id = {_toml_string(identity.client_id)}")
    if role == "operator":
        lines.append(f"id = {_toml_string(operator)}")
    if display_name:
        lines.append(f"name = {_toml_string(display_name)}")
    if consortium:
        lines.append(f"consortium = {_toml_string(consortium)}")
    if server_address:
        comment = "published address" if role == "server" else f"where this {role} dials the coordinator"
        lines.append(f"server_address = {_toml_string(server_address)}  # {comment}")
    lines.append(f"created = {_toml_string(datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))}")
    write_public(out / KIT_FILE, ("\n".join(lines) + "\n").encode())
    return out


def _loose_key(path: Path) -> str | None:
    """What is wrong with the private key's permissions, with the fix; None if only its owner can read it."""
    mode = loose_permissions(path)
    if mode is None:
        return None
    return (
        f"{path} is accessible by other users (mode {mode:04o}); "
        f"the private key must be private: run `chmod 600 {path}`"
    )


def load_kit(path: Path | str) -> Kit:
    """Load and cross-check a kit; raise :class:`KitError` naming the file and the problem.

    A private key that group or others can read is refused, not just warned about: whoever else on the
    machine can read it can impersonate the party (and a key copied around loosely was likely copied
    elsewhere too)."""
    root = Path(path)
    meta = _read_kit_toml(root)
    role: Role = (
        "client" if meta["role"] == "client" else "operator" if meta["role"] == "operator" else "server"
    )
    chain = load_certificates(root / CERT_FILE, "certificate chain")
    if (root / KEY_FILE).is_file() and (loose := _loose_key(root / KEY_FILE)) is not None:
        raise KitError(loose)
    key = load_private_key(root / KEY_FILE)
    cas = load_certificates(root / CA_FILE, "CA certificate")
    if len(cas) != 1:
        raise KitError(
            f"{root / CA_FILE}: must hold exactly the consortium CA, found {len(cas)} certificates"
        )
    crl = load_crl(root / CRL_FILE)
    client_id = meta.get("id", "") if role == "client" else ""
    try:
        identity = Identity(client_id=client_id, private_key=key, cert_chain=tuple(chain))
    except IdentityError as exc:
        if exc.reason == "key-mismatch":
            raise KitError(f"{root / KEY_FILE}: does not belong to the certificate in {CERT_FILE}") from exc
        if exc.reason == "id-mismatch":
            raise KitError(f"{root / KIT_FILE}: id: {exc}") from exc
        raise KitError(f"{root / CERT_FILE}: {exc}") from exc
    try:
        trust = TrustAnchor(cas[0], [crl])
    except IdentityError as exc:
        raise KitError(f"{root / CA_FILE}: {exc}") from exc
    operator = ""
    if role == "operator":
        try:
            operator = operator_name_of(identity.certificate)
        except IdentityError as exc:
            raise KitError(f"{root / CERT_FILE}: {exc}") from exc
        if operator != meta.get("id"):
            raise KitError(
                f"{root / KIT_FILE}: id: {meta.get('id')!r}, but the certificate is for operator {operator!r}"
            )
    return Kit(
        root=root,
        role=role,
        client_id=client_id,
        identity=identity,
        trust=trust,
        server_address=meta.get("server_address"),
        display_name=meta.get("name"),
        consortium=meta.get("consortium"),
        cert_path=root / CERT_FILE,
        key_path=root / KEY_FILE,
        ca_path=root / CA_FILE,
        crl_path=root / CRL_FILE,
        operator_name=operator,
    )


# -- preflight ------------------------------------------------------------------------------------


@dataclass
class KitReport:
    """Outcome of :func:`check_kit`: problems make the kit unusable, warnings do not (yet)."""

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _eku_of(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _same_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    except (ValueError, UnsupportedAlgorithm):
        return False


_EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
}


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check_kit(path: Path | str, *, at: datetime | None = None) -> KitReport:
    """Check a kit thoroughly and explain every problem found (not just the first).

    Each check is independent where possible, so that an operator fixing a
    kit sees the whole list at once instead of one problem per run.  The full
    ``TrustAnchor`` verification runs last as a safety net: if it rejects a kit
    that passed the individual checks, its reason is reported too.
    """
    root = Path(path)
    report = KitReport(root=root)
    problems, warnings = report.problems, report.warnings
    when = at if at is not None else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if not root.is_dir():
        problems.append(f"{root} does not exist or is not a directory")
        return report

    meta: dict[str, str] | None = None
    try:
        meta = _read_kit_toml(root)
    except PkiError as exc:
        problems.append(str(exc))
    missing = [n for n in (CERT_FILE, KEY_FILE, CA_FILE, CRL_FILE) if not (root / n).is_file()]
    what = {
        CERT_FILE: "the participant's certificate",
        KEY_FILE: "the private key",
        CA_FILE: "the consortium CA certificate",
        CRL_FILE: "the revocation list",
    }
    for name in missing:
        problems.append(f"missing file {root / name} ({what[name]})")

    if KEY_FILE not in missing:
        loose = _loose_key(root / KEY_FILE)
        if loose is not None:
            problems.append(loose)

    def collect(load: Callable[[], _T]) -> _T | None:
        try:
            return load()
        except PkiError as exc:
            problems.append(str(exc))
            return None

    chain = None if CERT_FILE in missing else collect(lambda: load_certificates(root / CERT_FILE, "chain"))
    key = None if KEY_FILE in missing else collect(lambda: load_private_key(root / KEY_FILE))
    cas = None if CA_FILE in missing else collect(lambda: load_certificates(root / CA_FILE, "CA certificate"))
    crl = None if CRL_FILE in missing else collect(lambda: load_crl(root / CRL_FILE))
    ca: x509.Certificate | None = None
    if cas is not None:
        if len(cas) == 1:
            ca = cas[0]
        else:
            problems.append(f"{root / CA_FILE} must hold exactly one certificate, found {len(cas)}")
    leaf: x509.Certificate | None = chain[0] if chain else None
    role = meta["role"] if meta else None

    if leaf is not None and key is not None and not _same_key(key, leaf):
        problems.append(
            f"{root / KEY_FILE} does not belong to the certificate in {root / CERT_FILE} "
            "(the key and certificate come from different issuances; re-issue the kit)"
        )

    if leaf is not None and chain is not None:
        # Validity of every certificate in the chain, leaf first.
        for cert in chain:
            label = "certificate" if cert is leaf else f"intermediate {describe(cert)}"
            if cert.not_valid_after_utc < when:
                problems.append(f"{label} expired on {_day(cert.not_valid_after_utc)}; re-issue it")
            elif cert.not_valid_before_utc > when:
                problems.append(f"{label} is not valid until {_day(cert.not_valid_before_utc)}")
            elif cert.not_valid_after_utc - when < EXPIRY_WARNING:
                days = (cert.not_valid_after_utc - when).days
                warnings.append(f"{label} expires in {days} day(s), on {_day(cert.not_valid_after_utc)}")

    if ca is not None:
        if ca.not_valid_after_utc < when:
            problems.append(f"the consortium CA certificate expired on {_day(ca.not_valid_after_utc)}")
        elif ca.not_valid_after_utc - when < EXPIRY_WARNING:
            warnings.append(f"the consortium CA certificate expires on {_day(ca.not_valid_after_utc)}")
        if chain is not None:
            top = chain[-1]
            links_ok = all(_issued_by(chain[i], chain[i + 1]) for i in range(len(chain) - 1))
            if not (links_ok and _issued_by(top, ca)):
                problems.append(
                    f"the certificate was not issued by the kit's CA: it names issuer "
                    f"'{top.issuer.rfc4514_string()}' but {root / CA_FILE} is {describe(ca)}; "
                    "the kit mixes files from different consortiums (or the CA was re-created)"
                )

    if crl is not None and ca is not None:
        try:
            TrustAnchor(ca, [crl]).check_crls(at=when)
        except IdentityError as exc:
            if exc.reason == "stale-crl":
                due = _day(crl.next_update_utc) if crl.next_update_utc else "never set"
                problems.append(
                    f"the revocation list {root / CRL_FILE} is stale (next update was due {due}); peers "
                    "will refuse connections until the CA publishes a new one (`secfed certs revoke --refresh`)"
                )
            elif exc.reason == "bad-crl":
                problems.append(f"the revocation list {root / CRL_FILE} is not signed by the kit's CA")
            else:
                problems.append(f"{root / CRL_FILE}: {exc}")
        if chain is not None:
            for cert in chain:
                entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None and cert.issuer == crl.issuer:
                    problems.append(
                        f"certificate {describe(cert)} is REVOKED (since {_day(entry.revocation_date_utc)}) "
                        f"according to {root / CRL_FILE}; this participant must get a new kit"
                    )

    if leaf is not None and role is not None:
        ekus = _eku_of(leaf)
        wanted = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        if wanted not in ekus:
            usage = "serverAuth" if role == "server" else "clientAuth"
            has = ", ".join(_EKU_NAMES.get(o, o.dotted_string) for o in ekus) or "none"
            problems.append(
                f"kit.toml says role '{role}' but the certificate is not usable for {usage} "
                f"(its extendedKeyUsage: {has}); was a {'client' if role == 'server' else 'server'} "
                "certificate copied into this kit?"
            )

    if leaf is not None and meta is not None and role in ("client", "operator"):
        read_id = client_id_of if role == "client" else operator_name_of
        try:
            cert_id = read_id(leaf)
        except IdentityError as exc:
            problems.append(f"the certificate carries no usable {role} id: {exc}")
        else:
            if cert_id != meta.get("id"):
                problems.append(
                    f"kit.toml says id {meta.get('id')!r} but the certificate is for {role} {cert_id!r}"
                )
        if "server_address" not in meta:
            warnings.append(f"kit.toml has no server_address; the {role} must be told where to connect")

    if (
        leaf is not None
        and meta is not None
        and role == "server"
        and "server_address" in meta
        and ca is not None
    ):
        host, _ = parse_address(meta["server_address"])
        # Check the name at a moment inside the validity window, so that an
        # expired certificate (reported above) does not hide a name mismatch.
        inside = max(min(when, leaf.not_valid_after_utc), leaf.not_valid_before_utc)
        try:
            TrustAnchor(ca).verify_server(
                [leaf.public_bytes(serialization.Encoding.DER)], hostname=host, at=inside
            )
        except IdentityError as exc:
            if exc.reason == "hostname-mismatch":
                problems.append(
                    f"the server certificate does not cover {host!r} (server_address in kit.toml), "
                    "so clients dialing it will fail TLS; re-issue with that --dns/--ip name"
                )

    # Safety net: the exact verification peers will perform.
    if (
        not problems
        and chain
        and leaf is not None
        and ca is not None
        and crl is not None
        and meta is not None
    ):
        ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        try:
            anchor = TrustAnchor(ca, [crl])
            if role == "client":
                anchor.verify_client(ders, at=when)
            elif role == "operator":
                anchor.verify_operator(ders, at=when)
            else:
                if "server_address" in meta:
                    target = parse_address(meta["server_address"])[0]
                else:
                    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    dns = names.get_values_for_type(x509.DNSName)
                    ips = names.get_values_for_type(x509.IPAddress)
                    target = dns[0] if dns else str(ips[0]) if ips else "localhost"
                anchor.verify_server(ders, hostname=target, at=when)
        except (IdentityError, x509.ExtensionNotFound) as exc:
            problems.append(f"peers would reject this kit: {exc}")

    if not problems and leaf is not None:
        who = f" {meta.get('id')!r}" if meta and role != "server" else ""
        where = f", server {meta['server_address']}" if meta and "server_address" in meta else ""
        report.summary = (
            f"{role} kit{who} (serial {leaf.serial_number:x}, valid until "
            f"{_day(leaf.not_valid_after_utc)}{where})"
        )
    return report
