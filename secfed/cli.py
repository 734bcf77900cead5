"""The ``secfed`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from secfed import cli_certs, logs
from secfed.bench import secagg as bench_secagg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secfed", description="Secure federated LLM instruction tuning.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    simulate = sub.add_parser("simulate", help="run a complete local federation (the main job)")
    simulate.set_defaults(func=_simulate)

    bench = sub.add_parser("bench", help="benchmarks that print or write JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    bench_secagg.register(bench_sub)

    cli_certs.register(sub)
    return parser


def _simulate(args: argparse.Namespace) -> int:
    from secfed.demo import run_secagg_demo

    return 0 if run_secagg_demo() else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        code: int = args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"secfed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
