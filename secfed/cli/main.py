"""The ``secfed`` entry point: global options (logging), one sub-command group per module of this
package, and the one place a user's mistake becomes a one-line error instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from secfed import logs
from secfed.cli import audit, bench, certs, run
from secfed.pki.files import PkiError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secfed", description="Secure federated LLM instruction tuning.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=logs.LOG_FORMATS,
        help="text: key=value lines (default); json: one JSON object per line",
    )
    parser.add_argument(
        "--log-file", type=Path, help="also write the log to this file, rotated at --log-max-mb"
    )
    parser.add_argument(
        "--log-max-mb", type=float, default=50.0, help="rotate the log file at this size (default 50)"
    )
    parser.add_argument("--log-backups", type=int, default=5, help="rotated log files to keep (default 5)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run.register(sub)
    bench.register(sub)
    certs.register(sub)
    audit.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.configure(
            args.log_level,
            line_format=args.log_format,
            file=args.log_file,
            max_bytes=int(args.log_max_mb * 2**20),
            backups=args.log_backups,
        )
    except (ValueError, OSError) as exc:
        print(f"secfed: error: cannot set up logging: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM for the long-running commands: one line, no traceback
        print(f"secfed {args.command}: stopped by a signal", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, PkiError) as exc:
        print(f"secfed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code
