"""The ``secfed audit report`` and ``secfed audit verify`` sub-commands (see :mod:`secfed.audit.commands`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secfed.audit.commands import make_reports, verify_reports


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="signed privacy-budget reports for each institution and the federation",
        description=(
            "Build, sign and render the audit reports of a run directory (what `secfed simulate` writes): "
            "one per institution, signed with its own key from its ledgers, and one for the federation, "
            "signed with the server key. Reports go to RUN_DIR/audit/ (JSON always, plus the chosen format)."
        ),
    )
    report.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR_OR_CONFIG",
        help="a run directory, an institution's client.toml (its own report) or the coordinator's "
        "server.toml (the federation report); reports go to audit/ beside it",
    )
    report.add_argument("--institution", metavar="ID", help="only this institution's report")
    report.add_argument("--format", choices=["html", "json", "pdf"], default="html", help="default html")
    report.add_argument("--out", type=Path, help="write the rendered report here (one report only)")
    report.set_defaults(func=_report)

    verify = sub.add_parser(
        "verify",
        help="check report signatures against the CA, the ledgers' hash chains, and recompute epsilon",
        description=(
            "Verify a report (or every report under RUN_DIR/audit): the signature and certificate chain "
            "against the consortium CA, each field against its signed digest, each ledger's hash chain "
            "and head, and epsilon recomputed from the privacy ledger. Exit code 1 if anything fails."
        ),
    )
    verify.add_argument("target", type=Path, metavar="REPORT_OR_RUN_DIR")
    verify.add_argument(
        "--ca",
        type=Path,
        help="consortium CA certificate (default: pki/ca/ca.pem, kit/ca.pem, ... found there)",
    )
    verify.add_argument("--json", action="store_true", help="print the findings as JSON")
    verify.set_defaults(func=_verify)


def _report(args: argparse.Namespace) -> int:
    if args.out is not None and args.institution is None:
        print("secfed audit report: --out needs --institution (several reports are written)", file=sys.stderr)
        return 2
    for path in make_reports(args.run_dir, institution=args.institution, fmt=args.format, out=args.out):
        print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    results = verify_reports(args.target, ca=args.ca)
    ok = all(not problems for _, _, problems in results)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "reports": [
                        {"report": str(path), "signer": signer, "ok": not problems, "problems": problems}
                        for path, signer, problems in results
                    ],
                },
                indent=2,
            )
        )
    else:
        for path, signer, problems in results:
            if problems:
                print(f"FAILED {path}:")
                for problem in problems:
                    print(f"  - {problem}")
            else:
                print(f"OK {path}: signed by {signer}; ledgers verified; epsilon recomputed from the ledger")
    return 0 if ok else 1
