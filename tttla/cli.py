"""The ``tttla`` command line.

Subcommands live in :mod:`tttla.commands` (one module each). Mistakes a user can make —
an unknown variant, a missing file, a malformed declaration — end in one clear sentence
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
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
  tttla list                              the built-in catalog
  tttla catalog                           the main job: every variant derived, generated, verified, reported
  tttla run lact_v2 --seq-len 100         run the literal inner loop (the oracle) once
  tttla run my_rule.py:fast --dim 8       the same for a variant in your own file
  tttla derive my_rule.py                 its linear-attention form, classification and certificate
  tttla generate my_rule.py --out k/      PyTorch (and, when parallel, Triton) code
  tttla verify my_rule.py --cases 100     fuzz the generated code against the inner loop
  tttla bench lact_v2                     time it on the CPU
  tttla report my_rule.py --out r/        all of the above in one Markdown + offline HTML report

'tttla COMMAND --help' explains each command's arguments, with examples.
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, with a hint, and exit 2; long
    options are never abbreviated (``--seq-len`` must not silently mean ``--seq-lens``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(self.prog, message)


class UsageError(Exception):
    """A command line argparse refused; ``main`` reports it (as JSON too when --json was given)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog, self.hint = prog, f"see '{prog} --help'"


def hint(error: Exception, command: str) -> str:
    """What the user can do about ``error`` (empty when the message already says it)."""
    from derivations.errors import DeclarationError, ReductionError, VariantNotFound

    text = str(error)
    if isinstance(error, VariantNotFound):
        if "tttla list" in text or "FILE.py" in text:
            return ""
        if text.startswith("no such file"):
            return "check the path, or give a catalog name from 'tttla list'"
        return "a variant is a catalog name from 'tttla list', FILE.py or FILE.py:NAME"
    if isinstance(error, ReductionError):
        return ("the derived forms need every updated weight in a linear layer φ(x)·W (+ b) under a head free of "
                "updated weights, docs/maths.md section 2; 'tttla run' still runs the inner loop literally")
    if isinstance(error, DeclarationError):
        return "fix the @variant declaration; the README's 'Declare a variant' lists every option"
    if isinstance(error, OSError):
        return f"check the path given to 'tttla {command}'"
    return f"see 'tttla {command} --help'"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _module(name):
    return importlib.import_module(f"tttla.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tttla", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tttla {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def refuse(prog: str, message: str, advice: str, as_json: bool) -> int:
    """Report a refusal: one line on stderr, and with ``--json`` one JSON object on stdout; exit 2."""
    message = one_line(message)
    if as_json:
        print(json.dumps({"error": message, "hint": advice or None, "command": prog, "exit_code": 2},
                         ensure_ascii=False))
    print(f"{prog}: error: {message}" + (f" (hint: {advice})" if advice else ""), file=sys.stderr)
    return 2


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON output (``--json`` or ``--format json``)."""
    return "--json" in argv or "--format=json" in argv or any(
        a == "--format" and b == "json" for a, b in zip(argv, argv[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return refuse(e.prog, str(e), e.hint, wants_json(argv))
    except SystemExit as e:  # --help or --version (already printed)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (TTTLAError, OSError) as e:
        message = e if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        return refuse(f"tttla {args.command}", str(message), hint(e, args.command), wants_json(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
