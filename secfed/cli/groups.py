"""What every command group of ``secfed`` shares: a group name alone prints the group's help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["Handler", "command_group"]

Handler = Callable[[argparse.Namespace], int]


def command_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``secfed NAME`` with sub-commands; ``secfed NAME`` alone prints its help and exits with 2 (a
    usage error, as argparse's own)."""
    parser = subparsers.add_parser(name, help=help, description=description)

    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show)
    return parser.add_subparsers(title="commands", metavar="COMMAND")
