"""Arguments shared by subcommands: VARIANT (a catalog name or FILE.py[:ATTR]) and output folders."""

VARIANT_HELP = "a catalog name (see 'tttla list'), path/to/file.py, or path/to/file.py:ATTR"


def add_variant_argument(parser):
    parser.add_argument("variant", metavar="VARIANT", help=VARIANT_HELP)


def check_folder(path, flag: str = "--out") -> None:
    """A one-line TTTLAError when an output folder given as ``flag`` is an existing file."""
    from pathlib import Path

    from derivations.errors import TTTLAError

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise TTTLAError(f"{flag} {path} is a file; give a folder (it is created if missing)")
