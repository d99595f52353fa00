"""The ``tttla`` command line.

Subcommands live in :mod:`tttla.commands` (one module each). Mistakes a user can make —
an unknown variant, a missing file, a malformed declaration — end in one clear sentence
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from derivations.errors import TTTLAError
from tttla import __version__
from tttla.commands import COMMANDS

DESCRIPTION = """\
tttla: derive, generate and verify test-time-training layers as linear attention.

A variant is referred to by catalog name (see 'tttla list') or by a Python file that
declares one: path/to/my_variant.py, or path/to/file.py:ATTR when it declares several.
"""

EPILOG = """\
examples:
  tttla list                          the built-in catalog
  tttla run lact_v2 --seq-len 100     run the literal inner loop (the oracle) once
  tttla run my_rule.py:fast --dim 8   the same for a variant in your own file
"""


def _module(name):
    return importlib.import_module(f"tttla.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tttla", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tttla {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except TTTLAError as e:
        print(f"tttla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
