"""``secfed audit ...``: privacy audits.

Sub-commands:

* ``empirical``  one-run canary audit of the DP-SGD mechanism (Steinke, Nasr & Jagielski 2023): an
  empirical 95 % lower bound on epsilon, compared with the epsilon the accountant claims.
* ``report``, ``verify``  signed privacy-budget reports (built by :mod:`secfed.audit.commands`).

Exit codes of ``empirical``: 0 when the audit passes (lower bound <= claimed epsilon), 1 when it fails (the run
leaked more than claimed: a mis-noised implementation), 2 for bad arguments.  A failing audit is an
expected outcome to report, not an error, so it prints its figures like a passing one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secfed.audit.commands import make_reports, verify_reports
from secfed.cli.groups import command_group
from secfed.dp.empirical import AuditConfig, AuditResult, run_audit

__all__ = ["register"]


def _human(result: AuditResult) -> str:
    verdict = (
        "PASSED: the lower bound does not exceed the claimed epsilon"
        if result.passed
        else "FAILED: the run leaks more than the claimed epsilon (is the noise implemented correctly?)"
    )
    return "\n".join(
        [
            "secfed audit empirical: one-run canary audit (Steinke, Nasr & Jagielski 2023), DP-SGD on a tiny model",
            f"  mechanism: noise multiplier {result.noise_multiplier:.4f} x noise scale {result.noise_scale:g}, "
            f"sample rate {result.sample_rate:g}, {result.steps} steps, delta {result.delta:g}",
            f"  canaries: {result.canaries}; guesses {result.guesses} ({result.guesses_in} in, "
            f"{result.guesses_out} out); correct {result.correct}",
            f"  claimed epsilon {result.claimed_epsilon:.3f} (PLD); {result.confidence:.0%} lower bound "
            f"{result.lower_bound:.3f}  [{result.seconds:.1f} s]",
            f"  {verdict}",
        ]
    )


def _cmd_empirical(args: argparse.Namespace) -> int:
    defaults = AuditConfig()
    try:
        config = AuditConfig(
            epsilon=args.epsilon if args.epsilon is not None else defaults.epsilon,
            delta=args.delta if args.delta is not None else defaults.delta,
            canaries=args.canaries if args.canaries is not None else defaults.canaries,
            steps=args.steps if args.steps is not None else defaults.steps,
            sample_rate=args.sample_rate if args.sample_rate is not None else defaults.sample_rate,
            noise_scale=args.noise_scale,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_audit(config)
    document = json.dumps(result.to_mapping(), indent=2) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(document)
    print(document if args.json else _human(result), end="" if args.json else "\n")
    return 0 if result.passed else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its sub-commands to the top-level ``secfed`` parser."""
    sub = command_group(
        subparsers,
        "audit",
        help="privacy audits: empirical lower bound on epsilon, signed privacy-budget reports",
        description="Audit the DP-SGD implementation and the privacy budgets it claims.",
    )
    _add_report_commands(sub)

    defaults = AuditConfig()
    p = sub.add_parser(
        "empirical",
        help="one-run canary audit: empirical lower bound on epsilon vs the claimed epsilon",
        description=(
            "Train a tiny model once with DP-SGD plus random canaries, guess which canaries were in, "
            "and turn the correct guesses into a 95 % lower bound on epsilon (Steinke, Nasr & Jagielski "
            "2023). Exit code 0 if the bound does not exceed the claimed epsilon, 1 if it does."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="multiply the noise actually added by S (S<1 simulates an under-noising bug; default 1)",
    )
    p.add_argument(
        "--canaries", type=int, metavar="M", help=f"number of canaries (default {defaults.canaries})"
    )
    p.add_argument(
        "--epsilon",
        type=float,
        metavar="E",
        help=f"target epsilon to calibrate for (default {defaults.epsilon})",
    )
    p.add_argument("--delta", type=float, metavar="D", help=f"delta (default {defaults.delta:g})")
    p.add_argument("--steps", type=int, help=f"DP-SGD steps (default {defaults.steps})")
    p.add_argument(
        "--sample-rate", type=float, help=f"Poisson sampling rate (default {defaults.sample_rate})"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of all audit randomness (default 0)"
    )
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON result to this file")
    p.set_defaults(func=_cmd_empirical)


def _add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``report`` and ``verify``: signed privacy-budget reports (:mod:`secfed.audit.commands`)."""
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
