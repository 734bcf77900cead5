"""Signed audit documents: who issued a report, and proof that nobody edited it since.

A report is a JSON object. Before signing, every leaf value gets a SHA-256 digest under its path
(``privacy.over_rounds[2].epsilon``), stored in ``field_digests``; then the issuing party's
certificate key (the institution's client key, or the coordinator's server key: the same keys that
authenticate it on the wire) signs the canonical encoding of the whole object. Verification checks
the signature and the certificate chain against the consortium CA, and uses the digests to say
*which* field was edited, added, deleted or moved, not just that the signature fails.

The digests only locate an edit; the signature is what proves there was none. An editor who also
rewrites a digest is still caught by the signature (reported as such).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfed.chain import canonical_json
from secfed.crypto.identity import Identity, IdentityError, TrustAnchor, describe, verify_signature

SIGNATURE = "signature"
DIGESTS = "field_digests"
CONSORTIUM = "consortium"


class AuditVerifyError(ValueError):
    """A document or ledger does not verify; ``problems`` lists every finding, each naming where."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        if not value:
            yield path or "$", {}
        for key in sorted(value):
            yield from _leaves(value[key], f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        if not value:
            yield path or "$", []
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path or "$", value


def field_digests(body: Mapping[str, Any]) -> dict[str, str]:
    """``path -> sha256(canonical value)`` for every leaf of ``body`` (signature and digests excluded)."""
    content = {k: v for k, v in body.items() if k not in (SIGNATURE, DIGESTS)}
    return {
        path: hashlib.sha256(canonical_json(leaf).encode()).hexdigest() for path, leaf in _leaves(content, "")
    }


def sign_document(
    body: Mapping[str, Any], identity: Identity, *, role: str, consortium: bytes
) -> dict[str, Any]:
    """``body`` plus the consortium it is issued in, its field digests and a signature by ``identity``
    (role "client" or "server").

    ``consortium`` (the CA certificate's hash, :attr:`TrustAnchor.consortium_id`) is signed with the
    rest: an institution that uses one key in two consortia cannot have its report of one presented,
    re-chained, as a report of the other."""
    if SIGNATURE in body or DIGESTS in body or CONSORTIUM in body:
        raise ValueError("the document is already signed")
    signed = {**body, CONSORTIUM: consortium.hex()}
    doc: dict[str, Any] = {**signed, DIGESTS: field_digests(signed)}
    value = identity.sign(canonical_json(doc).encode())
    doc[SIGNATURE] = {
        "role": role,
        "signer": identity.client_id or describe(identity.certificate),
        "algorithm": "ECDSA-P256-SHA256" if len(value) != 64 else "Ed25519",
        "certificate_chain": identity.chain_pem().decode(),
        "value": base64.b64encode(value).decode(),
    }
    return doc


def _edits(doc: Mapping[str, Any]) -> list[str]:
    """Which fields differ from the digests made at signing time (empty when none do)."""
    signed = doc.get(DIGESTS)
    if not isinstance(signed, Mapping):
        return [f"{DIGESTS} is missing or malformed"]
    now = field_digests(doc)
    problems = [f"field {p} was edited" for p in sorted(set(now) & set(signed)) if now[p] != signed[p]]
    problems += [f"field {p} was deleted (or moved)" for p in sorted(set(signed) - set(now))]
    problems += [f"field {p} was added (or moved) after signing" for p in sorted(set(now) - set(signed))]
    return problems


def _server_name(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    for ip in san.get_values_for_type(x509.IPAddress):
        return str(ip)
    for name in san.get_values_for_type(x509.DNSName):
        return name
    return ""


def verify_document(doc: Mapping[str, Any], trust: TrustAnchor, *, where: str) -> str:
    """Check a signed document; return the signer (client id, or the server's name).

    Raises :class:`AuditVerifyError` listing the edited fields and/or the signature failure.
    """
    sig = doc.get(SIGNATURE)
    if not isinstance(sig, Mapping):
        raise AuditVerifyError(where, ["the document is not signed"])
    problems = _edits(doc)
    try:
        pem = str(sig["certificate_chain"]).encode()
        chain = x509.load_pem_x509_certificates(pem)
        der = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        if sig.get("role") == "server":
            trust.verify_server(der, hostname=_server_name(chain[0]))
            signer = describe(chain[0])
        else:
            signer = trust.verify_client(der).client_id
        body = {k: v for k, v in doc.items() if k != SIGNATURE}
        verify_signature(
            chain[0], base64.b64decode(str(sig["value"]), validate=True), canonical_json(body).encode()
        )
    except IdentityError as exc:
        problems.append(f"signature: {exc}")
        raise AuditVerifyError(where, problems) from None
    except (KeyError, ValueError, TypeError) as exc:
        problems.append(f"signature block is malformed: {exc}")
        raise AuditVerifyError(where, problems) from None
    if doc.get(CONSORTIUM) != trust.consortium_id.hex():
        problems.append(
            f"issued in consortium {str(doc.get(CONSORTIUM))[:16]}, not this CA's "
            f"({trust.consortium_id.hex()[:16]}): a report of another federation"
        )
    if problems:
        raise AuditVerifyError(where, problems)
    if sig.get("signer") != signer:
        raise AuditVerifyError(
            where, [f"signature block names {sig.get('signer')!r} but the certificate is {signer!r}"]
        )
    return signer
