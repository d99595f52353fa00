"""One module per ``tttla`` subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

``COMMANDS`` maps each subcommand to its module, in the order ``tttla --help`` shows them.
"""

COMMANDS = {
    "list": "list_",
    "run": "run",
    "catalog": "catalog",
    "generate": "generate",
    "derive": "derive",
    "verify": "verify",
    "bench": "bench",
    "report": "report",
}
