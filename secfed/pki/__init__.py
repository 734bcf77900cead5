"""Consortium PKI: issuing certificates and provisioning startup kits.

The consortium has one CA.  Each participant (the coordinator and every
institution) gets a *kit*, a directory with its certificate chain, private key,
the CA certificate and the current CRL, plus ``kit.toml`` saying what the kit
is for.  The model follows NVIDIA FLARE's provisioning: one project file lists
every participant, one command produces all kits (``secfed certs provision``).

Verification lives in :mod:`secfed.crypto.identity` (``TrustAnchor``); this
package creates, stores, loads and checks material.

Typical use at start-up::

    kit = load_kit("certs/kits/clients/hospital-a")
    kit.identity.sign(...)          # secure-aggregation signatures
    kit.trust.verify_server(...)    # or verify_client(...) on the coordinator
    kit.cert_path, kit.key_path, kit.ca_path  # gRPC channel credentials
"""

from __future__ import annotations

from secfed.pki.consortium import (
    ClientSpec,
    Consortium,
    ConsortiumError,
    ProvisionResult,
    ServerSpec,
    load_consortium,
    parse_consortium,
    provision,
)
from secfed.pki.files import PkiError, load_ca, save_ca, write_public, write_secret
from secfed.pki.issue import (
    CertificateAuthority,
    KeyType,
    create_ca,
    generate_key,
    issue_client,
    issue_operator,
    issue_server,
    revoke,
)
from secfed.pki.kit import Kit, KitError, KitReport, Role, check_kit, load_kit, write_kit

__all__ = [
    "CertificateAuthority",
    "ClientSpec",
    "Consortium",
    "ConsortiumError",
    "KeyType",
    "Kit",
    "KitError",
    "KitReport",
    "PkiError",
    "ProvisionResult",
    "Role",
    "ServerSpec",
    "check_kit",
    "create_ca",
    "generate_key",
    "issue_client",
    "issue_operator",
    "issue_server",
    "load_ca",
    "load_consortium",
    "load_kit",
    "parse_consortium",
    "provision",
    "revoke",
    "save_ca",
    "write_kit",
    "write_public",
    "write_secret",
]
