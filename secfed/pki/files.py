"""On-disk PKI material: atomic writes, private-key permissions, PEM loading.

Private keys are the only secrets in a kit, and the window in which they are
most often leaked is the moment of writing (a file created with the default
umask, then chmod-ed).  :func:`write_secret` therefore creates the temporary
file with mode 0600 from the start (``os.open(..., 0o600)``) and renames it
into place, so the key is never world-readable, not even briefly, and a
crash never leaves a half-written key behind.

Loaders raise :class:`PkiError` whose message starts with the file path, so
that an operator reading a log line knows which file to look at.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfed.crypto.identity import PrivateKey
from secfed.pki.issue import CertificateAuthority

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "PkiError",
    "cert_pem",
    "crl_pem",
    "key_pem",
    "load_ca",
    "load_certificates",
    "load_crl",
    "load_private_key",
    "loose_permissions",
    "save_ca",
    "write_public",
    "write_secret",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CRL_FILE = "crl.pem"


class PkiError(Exception):
    """A PKI file is missing, malformed or inconsistent; the message names the file."""


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # O_EXCL + O_NOFOLLOW: never write through a planted file or symlink.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Make the rename itself durable; best effort (not every filesystem allows it).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_secret(path: Path, data: bytes) -> None:
    """Atomically write secret material with mode 0600 from creation on."""
    _atomic_write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write public material (certificates, CRLs, kit.toml)."""
    _atomic_write(path, data, 0o644)


def loose_permissions(path: Path) -> int | None:
    """The file's mode if group/others have any access to it, else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8: gRPC's credential APIs cannot take encrypted keys; 0600 protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: missing ({what})") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc


def load_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """All certificates in a PEM file (at least one)."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate file ({what}): {exc}") from exc
    if not certs:  # pragma: no cover - cryptography raises on empty input
        raise PkiError(f"{path}: holds no certificate ({what})")
    return certs


def load_private_key(path: Path, what: str = "private key") -> PrivateKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise PkiError(f"{path}: {what} is encrypted; secfed needs an unencrypted key (mode 0600)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"{path}: not a PEM private key ({what}): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise PkiError(f"{path}: {what} is a {type(key).__name__}; only EC and Ed25519 keys are supported")
    return key


def load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read(path, "certificate revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate revocation list: {exc}") from exc


def save_ca(ca: CertificateAuthority, directory: Path, crl: x509.CertificateRevocationList) -> None:
    """Write ``ca.pem``, ``ca.key`` (0600) and ``crl.pem``; the directory itself is made 0700."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(directory / CA_KEY_FILE, key_pem(ca.private_key))
    write_public(directory / CA_CERT_FILE, cert_pem(ca.certificate))
    write_public(directory / CRL_FILE, crl_pem(crl))


def load_ca(directory: Path) -> CertificateAuthority:
    """Load a CA directory written by :func:`save_ca`, checking the key matches the certificate."""
    certs = load_certificates(directory / CA_CERT_FILE, "CA certificate")
    if len(certs) != 1:
        raise PkiError(
            f"{directory / CA_CERT_FILE}: must hold exactly the CA certificate, found {len(certs)}"
        )
    key = load_private_key(directory / CA_KEY_FILE, "CA private key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certs[0].public_key().public_bytes(der, spki):
        raise PkiError(f"{directory / CA_KEY_FILE}: does not belong to the certificate in {CA_CERT_FILE}")
    return CertificateAuthority(certificate=certs[0], private_key=key)
