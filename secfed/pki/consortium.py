"""Provisioning: one consortium file -> a CA and every participant's startup kit.

Modelled on NVIDIA FLARE's ``provision`` (project.yml -> startup kits): the
consortium's membership is written down once, reviewed like code, and the kits
are a pure function of it plus fresh keys.  That avoids the usual failure of
hand-issued certificates, where the server's SANs, the address written into
client configs and the set of issued ids slowly drift apart.

Validation reports *all* problems at once, each as
``<file>: <field>: <problem>`` (``clients[2].id``, 0-based like the TOML
array), because the file is typically edited by someone who is not going to
run the tool ten times to find ten typos.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from secfed.crypto.identity import CLIENT_ID_PATTERN, is_valid_client_id
from secfed.pki.files import PkiError, save_ca
from secfed.pki.issue import create_ca, issue_client, issue_server, revoke
from secfed.pki.kit import format_address, is_hostname, write_kit

__all__ = [
    "ClientSpec",
    "Consortium",
    "ConsortiumError",
    "ProvisionResult",
    "ServerSpec",
    "load_consortium",
    "parse_consortium",
    "provision",
]

_TOP_KEYS = frozenset({"name", "ca_valid_days", "cert_valid_days", "crl_valid_days", "server", "clients"})
_SERVER_KEYS = frozenset({"host", "port", "dns_names", "ip_addresses"})
_CLIENT_KEYS = frozenset({"id", "name"})


class ConsortiumError(PkiError):
    """The consortium file is invalid.  ``errors`` holds one ``file: field: problem`` line each."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class ServerSpec:
    host: str
    port: int
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class ClientSpec:
    id: str
    name: str | None = None


@dataclass(frozen=True)
class Consortium:
    name: str
    server: ServerSpec
    clients: tuple[ClientSpec, ...]
    ca_valid_days: int = 3650
    cert_valid_days: int = 365
    crl_valid_days: int = 30


def load_consortium(path: Path | str) -> Consortium:
    """Read and validate a consortium TOML file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConsortiumError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConsortiumError([f"{path}: not valid TOML: {exc}"]) from exc
    except OSError as exc:
        raise ConsortiumError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_consortium(raw, source=str(path))


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, field: str, problem: str) -> None:
        self.items.append(f"{self.source}: {field}: {problem}")


def _unknown(errors: _Errors, where: str, table: Mapping[str, object], allowed: frozenset[str]) -> None:
    for key in table:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            errors.add(f"{prefix}{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _positive_int(errors: _Errors, raw: Mapping[str, object], key: str, default: int) -> int:
    value = raw.get(key, default)
    # bool is an int subclass; `ca_valid_days = true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        errors.add(key, f"must be a positive integer (days), got {value!r}")
        return default
    return value


def _string_list(errors: _Errors, field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.add(field, f"must be a list of strings, got {value!r}")
        return []
    return [str(v) for v in value]


def _parse_server(errors: _Errors, raw: object) -> ServerSpec | None:
    if raw is None:
        errors.add("server", "missing required table [server] (host and port of the coordinator)")
        return None
    if not isinstance(raw, dict):
        errors.add("server", "must be a table ([server])")
        return None
    _unknown(errors, "server", raw, _SERVER_KEYS)
    host = raw.get("host")
    host_ip: str | None = None
    if not isinstance(host, str) or not host:
        errors.add("server.host", "missing required field (the name or IP clients dial)")
        host = None
    else:
        try:
            host_ip = str(ipaddress.ip_address(host))
        except ValueError:
            if not is_hostname(host):
                errors.add("server.host", f"{host!r} is not a valid host name or IP address")
                host = None
    port = raw.get("port")
    if port is None:
        errors.add("server.port", "missing required field")
    elif not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        errors.add("server.port", f"must be an integer from 1 to 65535, got {port!r}")
        port = None
    dns_names = _string_list(errors, "server.dns_names", raw.get("dns_names", []))
    for i, name in enumerate(dns_names):
        if not is_hostname(name):
            errors.add(f"server.dns_names[{i}]", f"{name!r} is not a valid DNS name")
    ips: list[str] = []
    for i, ip in enumerate(_string_list(errors, "server.ip_addresses", raw.get("ip_addresses", []))):
        try:
            ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            errors.add(f"server.ip_addresses[{i}]", f"{ip!r} is not a valid IP address")
    if host is None or not isinstance(port, int):
        return None
    # The address clients dial must be in the certificate, or every client
    # fails TLS; add it rather than make operators repeat it.
    if host_ip is not None:
        if host_ip not in ips:
            ips.insert(0, host_ip)
    elif host.lower() not in (n.lower() for n in dns_names):
        dns_names.insert(0, host)
    return ServerSpec(host=host, port=port, dns_names=tuple(dns_names), ip_addresses=tuple(ips))


def _parse_clients(errors: _Errors, raw: object) -> list[ClientSpec]:
    if raw is None:
        errors.add("clients", "missing; list each institution as a [[clients]] table with an id")
        return []
    if not isinstance(raw, list):
        errors.add("clients", "must be an array of tables ([[clients]])")
        return []
    if not raw:
        errors.add("clients", "no clients listed; a consortium needs at least one")
    clients: list[ClientSpec] = []
    # Case-insensitive: kit directories are named by id, and "Alice" and
    # "alice" would collide on case-insensitive file systems (macOS, Windows).
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"clients[{i}]"
        if not isinstance(entry, dict):
            errors.add(where, "must be a table with at least an id")
            continue
        _unknown(errors, where, entry, _CLIENT_KEYS)
        cid = entry.get("id")
        name = entry.get("name")
        if cid is None:
            errors.add(f"{where}.id", "missing required field")
            continue
        if not isinstance(cid, str) or not is_valid_client_id(cid):
            errors.add(f"{where}.id", f"{cid!r} is not a valid client id ({CLIENT_ID_PATTERN})")
            continue
        if cid.lower() in first_seen:
            errors.add(
                f"{where}.id", f"duplicate client id {cid!r} (also clients[{first_seen[cid.lower()]}])"
            )
            continue
        first_seen[cid.lower()] = i
        if name is not None and (not isinstance(name, str) or not name.strip()):
            errors.add(f"{where}.name", f"must be a non-empty string, got {name!r}")
            name = None
        clients.append(ClientSpec(id=cid, name=name))
    return clients


def parse_consortium(raw: Mapping[str, object], *, source: str = "<consortium>") -> Consortium:
    """Validate already-parsed TOML; ``source`` prefixes every error line."""
    errors = _Errors(source)
    _unknown(errors, "", raw, _TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.add("name", f"missing or empty (the consortium's name, used for the CA), got {name!r}")
        name = ""
    ca_days = _positive_int(errors, raw, "ca_valid_days", 3650)
    cert_days = _positive_int(errors, raw, "cert_valid_days", 365)
    crl_days = _positive_int(errors, raw, "crl_valid_days", 30)
    if cert_days > ca_days:
        errors.add(
            "cert_valid_days",
            f"{cert_days} exceeds ca_valid_days ({ca_days}); certificates would outlive the CA",
        )
    server = _parse_server(errors, raw.get("server"))
    clients = _parse_clients(errors, raw.get("clients"))
    if errors.items or server is None:
        raise ConsortiumError(errors.items or [f"{source}: server: invalid"])
    return Consortium(
        name=name,
        server=server,
        clients=tuple(clients),
        ca_valid_days=ca_days,
        cert_valid_days=cert_days,
        crl_valid_days=crl_days,
    )


@dataclass(frozen=True)
class ProvisionResult:
    out: Path
    ca_dir: Path
    server_kit: Path
    client_kits: dict[str, Path]


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def loopback_consortium(name: str, client_ids: Sequence[str]) -> Consortium:
    """A throwaway consortium whose coordinator is 127.0.0.1 (harness, tests, benchmarks).

    The port is a placeholder: local servers bind any free port and clients are told the real one.
    """
    return Consortium(
        name=name,
        server=ServerSpec(host="127.0.0.1", port=1, dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
        clients=tuple(ClientSpec(cid) for cid in client_ids),
    )


def provision(consortium: Consortium, out: Path | str, *, force: bool = False) -> ProvisionResult:
    """Create ``out/ca``, ``out/server`` and ``out/clients/<id>`` for ``consortium``.

    Everything is generated in a private staging directory next to ``out`` and
    moved into place at the end, so a failure half-way never leaves a mix of
    old and new kits.  An existing non-empty ``out`` is refused unless
    ``force``, in which case only the ``ca``, ``server`` and ``clients``
    subdirectories are replaced (other files there are left alone).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PkiError(f"{out}: exists and is not a directory")
    if _is_nonempty_dir(out) and not force:
        raise PkiError(
            f"{out}: exists and is not empty; refusing to overwrite kits (and the CA key) "
            "there. Choose another --out or pass --force"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.provision-", dir=out.parent))  # mode 0700
    try:
        ca = create_ca(f"{consortium.name} CA", valid_days=consortium.ca_valid_days)
        crl = revoke(ca, [], next_update_days=consortium.crl_valid_days)
        save_ca(ca, staging / "ca", crl)
        srv = consortium.server
        server = issue_server(
            ca, dns_names=srv.dns_names, ip_addresses=srv.ip_addresses, valid_days=consortium.cert_valid_days
        )
        write_kit(
            staging / "server",
            server,
            ca.certificate,
            crl,
            role="server",
            server_address=srv.address,
            consortium=consortium.name,
        )
        (staging / "clients").mkdir(mode=0o700)
        for spec in consortium.clients:
            ident = issue_client(ca, spec.id, valid_days=consortium.cert_valid_days)
            write_kit(
                staging / "clients" / spec.id,
                ident,
                ca.certificate,
                crl,
                role="client",
                server_address=srv.address,
                display_name=spec.name,
                consortium=consortium.name,
            )
        if out.exists():
            for sub in ("ca", "server", "clients"):
                target = out / sub
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.exists():
                    shutil.rmtree(target)
                os.replace(staging / sub, target)
            staging.rmdir()
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ProvisionResult(
        out=out,
        ca_dir=out / "ca",
        server_kit=out / "server",
        client_kits={c.id: out / "clients" / c.id for c in consortium.clients},
    )
