"""The VARIANT argument shared by subcommands: a catalog name or FILE.py[:ATTR]."""

VARIANT_HELP = "a catalog name (see 'tttla list'), path/to/file.py, or path/to/file.py:ATTR"


def add_variant_argument(parser):
    parser.add_argument("variant", metavar="VARIANT", help=VARIANT_HELP)
