"""``secfed certs ...``: the consortium CA operator's and site admins' tool.

Sub-commands:

* ``init-ca``   create a CA directory (ca.pem, ca.key 0600, empty crl.pem)
* ``issue``     issue one client or server kit from an existing CA
* ``revoke``    add serials to the CA's CRL (or just re-sign it: ``--refresh``)
* ``provision`` consortium TOML -> CA + server kit + one kit per client
* ``check``     preflight a kit and explain, in plain words, what is wrong

Each handler returns an exit code instead of calling ``sys.exit`` so that
``secfed.cli`` stays the only place that exits, and so tests can call handlers
directly.  Expected failures (bad input files, refusing to overwrite) print one
``error:`` line to stderr and return 1; they are not tracebacks, because the
people running this are operators, not developers.
"""

from __future__ import annotations

import argparse
import functools
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from secfed.cli.groups import Handler, command_group
from secfed.crypto.identity import describe
from secfed.pki.consortium import load_consortium, provision
from secfed.pki.files import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CRL_FILE,
    PkiError,
    crl_pem,
    load_ca,
    load_certificates,
    load_crl,
    save_ca,
    write_public,
)
from secfed.pki.issue import create_ca, issue_client, issue_operator, issue_server, revoke
from secfed.pki.kit import CA_FILE, KIT_FILE, Role, check_kit, write_kit

__all__ = ["register"]


_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}


def _handles_errors(fn: Handler) -> Handler:
    """Turn expected failures into one stderr line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (PkiError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1

    return wrapper


def _nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date/time (e.g. 2026-01-31 or 2026-01-31T12:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_serial(text: str) -> int:
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        serial = int(cleaned, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hexadecimal serial number") from None
    if serial <= 0:
        raise argparse.ArgumentTypeError("serial numbers are positive")
    return serial


# -- handlers -------------------------------------------------------------------------------------


@_handles_errors
def _cmd_init_ca(args: argparse.Namespace) -> int:
    out: Path = args.out
    if (out / CA_KEY_FILE).exists() and not args.force:
        raise PkiError(
            f"{out / CA_KEY_FILE}: a CA already exists here; re-creating it would orphan every kit "
            "it issued. Pass --force if that is really intended"
        )
    ca = create_ca(args.name, valid_days=args.days)
    save_ca(ca, out, revoke(ca, [], next_update_days=args.crl_days))
    print(f"created CA {describe(ca.certificate)} in {out}")
    print(f"  {out / CA_KEY_FILE} is the consortium's most sensitive secret: keep it offline and backed up.")
    return 0


@_handles_errors
def _cmd_issue(args: argparse.Namespace) -> int:
    out: Path = args.out
    if _nonempty(out) and not args.force:
        raise PkiError(f"{out}: exists and is not empty; pass --force to overwrite the kit there")
    ca = load_ca(args.ca)
    crl = load_crl(args.ca / CRL_FILE)
    days = args.days if args.days is not None else 90 if args.operator else 365
    if args.server:
        dns = args.dns if args.dns or args.ip else ["localhost"]
        ips = args.ip if args.dns or args.ip else ["127.0.0.1"]
        ident = issue_server(
            ca,
            dns_names=dns or [],
            ip_addresses=ips or [],
            valid_days=days,
        )
        write_kit(out, ident, ca.certificate, crl, role="server", server_address=args.server_address)
        print(f"issued server kit {describe(ident.certificate)} in {out}")
    else:
        if args.dns or args.ip:
            raise PkiError("--dns/--ip only apply to --server kits")
        role: Role = "operator" if args.operator else "client"
        name = args.operator or args.client
        issue = issue_operator if args.operator else issue_client
        ident = issue(ca, name, valid_days=days)
        write_kit(
            out,
            ident,
            ca.certificate,
            crl,
            role=role,
            server_address=args.server_address,
            display_name=args.name,
        )
        print(f"issued {role} kit for {name!r} {describe(ident.certificate)} in {out}")
        if args.operator:
            print(f"  it reads the coordinator's status: secfed status --operator {out}")
    print(f"  hand {out} to its operator; {out / 'key.pem'} must stay private (mode 0600).")
    return 0


@_handles_errors
def _cmd_revoke(args: argparse.Namespace) -> int:
    ca = load_ca(args.ca)
    crl_path = args.ca / CRL_FILE
    previous = load_crl(crl_path) if crl_path.exists() else None
    serials: list[int] = list(args.serial or [])
    for pem in args.cert or []:
        for cert in load_certificates(pem):
            try:
                cert.verify_directly_issued_by(ca.certificate)
            except (ValueError, TypeError, InvalidSignature):
                raise PkiError(f"{pem}: {describe(cert)} was not issued by the CA in {args.ca}") from None
            serials.append(cert.serial_number)
    if not serials and not args.refresh:
        raise PkiError("nothing to revoke: give --serial or --cert (or --refresh to re-sign the CRL)")
    already = {e.serial_number for e in previous} if previous is not None else set()
    crl = revoke(
        ca,
        serials,
        previous=previous,
        next_update_days=args.crl_days,
        reason=_REASONS[args.reason] if args.reason else None,
    )
    write_public(crl_path, crl_pem(crl))
    for serial in serials:
        note = " (already revoked)" if serial in already else ""
        print(f"revoked serial {serial:x}{note}")
    assert crl.next_update_utc is not None
    print(f"wrote {crl_path} ({len(list(crl))} revoked, valid until {crl.next_update_utc:%Y-%m-%d})")
    for kit in args.update_kit or []:
        kit_path = Path(kit)
        if not (kit_path / KIT_FILE).is_file():
            raise PkiError(f"{kit_path}: not a kit directory (no {KIT_FILE})")
        kit_ca = load_certificates(kit_path / CA_FILE, "CA certificate")
        if kit_ca[0] != ca.certificate:
            raise PkiError(f"{kit_path / CA_FILE}: this kit belongs to another CA; not updating its CRL")
        write_public(kit_path / CRL_FILE, crl_pem(crl))
        print(f"updated {kit_path / CRL_FILE}")
    print("distribute the new crl.pem to the coordinator and every kit before the old one expires.")
    return 0


@_handles_errors
def _cmd_provision(args: argparse.Namespace) -> int:
    consortium = load_consortium(args.consortium)
    result = provision(consortium, args.out, force=args.force)
    print(f"provisioned consortium {consortium.name!r} in {result.out}")
    print(f"  CA:     {result.ca_dir}  (keep {CA_KEY_FILE} offline; {CA_CERT_FILE} is public)")
    print(f"  server: {result.server_kit}  ({consortium.server.address})")
    for cid, path in result.client_kits.items():
        print(f"  client: {path}  ({cid})")
    return 0


@_handles_errors
def _cmd_check(args: argparse.Namespace) -> int:
    report = check_kit(args.kit, at=args.at)
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.ok:
        print(f"OK: {report.summary}")
        return 0
    print(f"kit {report.root} has {len(report.problems)} problem(s):")
    for i, problem in enumerate(report.problems, 1):
        print(f"  {i}. {problem}")
    return 1


# -- registration ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certs`` and its sub-commands to the top-level ``secfed`` parser."""
    sub = command_group(
        subparsers,
        "certs",
        help="consortium CA, certificates and startup kits",
        description="Create the consortium CA, issue and revoke certificates, provision and check kits.",
    )

    p = sub.add_parser("init-ca", help="create a consortium CA directory")
    p.add_argument("--out", type=Path, required=True, help="CA directory to create")
    p.add_argument("--name", default="secfed consortium CA", help="CA common name")
    p.add_argument("--days", type=int, default=3650, help="CA validity in days (default 3650)")
    p.add_argument("--crl-days", type=int, default=30, help="initial CRL validity in days (default 30)")
    p.add_argument("--force", action="store_true", help="replace an existing CA (orphans its kits)")
    p.set_defaults(func=_cmd_init_ca)

    p = sub.add_parser("issue", help="issue one client or server kit")
    p.add_argument("--ca", type=Path, required=True, help="CA directory (from init-ca or provision)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", metavar="ID", help="issue a client kit for this client id")
    who.add_argument("--server", action="store_true", help="issue the coordinator's kit")
    who.add_argument(
        "--operator",
        metavar="NAME",
        help="issue an operator kit (reads a running coordinator's status; never an institution)",
    )
    p.add_argument("--name", help="client or operator display name (recorded in kit.toml)")
    p.add_argument("--dns", action="append", help="server DNS name (repeatable; default localhost)")
    p.add_argument("--ip", action="append", help="server IP address (repeatable; default 127.0.0.1)")
    p.add_argument("--server-address", metavar="HOST:PORT", help="coordinator address to record in kit.toml")
    p.add_argument("--days", type=int, help="certificate validity in days (default 365; 90 for an operator)")
    p.add_argument("--out", type=Path, required=True, help="kit directory to write")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty kit directory")
    p.set_defaults(func=_cmd_issue)

    p = sub.add_parser("revoke", help="revoke certificates (updates the CA's crl.pem)")
    p.add_argument("--ca", type=Path, required=True, help="CA directory")
    p.add_argument("--serial", type=_parse_serial, action="append", metavar="HEX", help="serial to revoke")
    p.add_argument("--cert", type=Path, action="append", metavar="PEM", help="certificate file to revoke")
    p.add_argument("--reason", choices=sorted(_REASONS), help="revocation reason recorded in the CRL")
    p.add_argument("--crl-days", type=int, default=30, help="validity of the new CRL in days (default 30)")
    p.add_argument("--refresh", action="store_true", help="re-sign the CRL even with nothing new to revoke")
    p.add_argument("--update-kit", action="append", metavar="KITDIR", help="also copy the new CRL into a kit")
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("provision", help="create CA + all kits from a consortium TOML file")
    p.add_argument("consortium", type=Path, help="consortium file (see certs/consortium.example.toml)")
    p.add_argument("--out", type=Path, required=True, help="output directory (ca/, server/, clients/<id>/)")
    p.add_argument(
        "--force", action="store_true", help="replace ca/, server/ and clients/ in a non-empty --out"
    )
    p.set_defaults(func=_cmd_provision)

    p = sub.add_parser("check", help="preflight a kit and explain any problem")
    p.add_argument("kit", type=Path, help="kit directory")
    p.add_argument("--at", type=_parse_time, metavar="ISO-DATE", help="check as of this time (default now)")
    p.set_defaults(func=_cmd_check)
