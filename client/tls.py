"""Checking the coordinator's certificate against the kit's CRL before trusting the channel.

gRPC's TLS stack verifies the server certificate's chain and host name but knows nothing of our CRL,
and the Python channel does not expose the peer certificate. So before opening the gRPC channel the
client makes one mutual-TLS handshake of its own with the standard library, takes the certificate the
server presents, and runs the consortium policy on it (chain, serverAuth, host name, CRL). A revoked
coordinator is refused before any instruction is read from it.
"""

from __future__ import annotations

import socket
import ssl

from secfed.crypto.identity import IdentityError
from secfed.pki.kit import Kit, parse_address


class ServerRefused(Exception):  # noqa: N818 - a refusal with a reason, shown to the operator
    pass


def verify_server(kit: Kit, address: str, timeout_s: float = 10.0) -> None:
    host, port = parse_address(address)
    context = ssl.create_default_context(cafile=str(kit.ca_path))
    context.load_cert_chain(str(kit.cert_path), str(kit.key_path))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise ServerRefused(f"TLS handshake with {address} failed: {exc}") from exc
    if der is None:
        raise ServerRefused(f"{address} presented no certificate")
    try:
        kit.trust.verify_server([der], hostname=host)
    except IdentityError as exc:
        raise ServerRefused(f"server certificate of {address} refused ({exc.reason}): {exc}") from exc
