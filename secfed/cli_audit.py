"""``secfed audit ...``: privacy audits.

Sub-commands:

* ``empirical``  one-run canary audit of the DP-SGD mechanism (Steinke, Nasr & Jagielski 2023): an
  empirical 95 % lower bound on epsilon, compared with the epsilon the accountant claims.
* ``report``, ``verify``  signed privacy-budget reports (registered from :mod:`secfed.audit.cli`).

Exit codes of ``empirical``: 0 when the audit passes (lower bound <= claimed epsilon), 1 when it fails (the run
leaked more than claimed: a mis-noised implementation), 2 for bad arguments.  A failing audit is an
expected outcome to report, not an error, so it prints its figures like a passing one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from secfed.dp.empirical import AuditConfig, AuditResult, run_audit

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def _cmd_help(parser: argparse.ArgumentParser) -> Handler:
    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


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
    audit = subparsers.add_parser(
        "audit",
        help="privacy audits: empirical lower bound on epsilon, signed privacy-budget reports",
        description="Audit the DP-SGD implementation and the privacy budgets it claims.",
    )
    audit.set_defaults(func=_cmd_help(audit))
    sub = audit.add_subparsers(title="commands", metavar="COMMAND")
    from secfed.audit.cli import add_commands

    add_commands(sub)  # report, verify

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
