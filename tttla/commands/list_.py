"""``tttla list``: the built-in catalog."""

from __future__ import annotations

import argparse

from tttla.table import format_table


def add_parser(sub):
    p = sub.add_parser(
        "list",
        help="list the built-in catalog of variants",
        description="List the built-in catalog: each variant's name and what it is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  tttla list",
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    from derivations.catalog import CATALOG

    rows = [[v.name, v.schedule.order, ",".join(v.update), v.description] for v in CATALOG.values()]
    print(format_table(["variant", "order", "updates", "description"], rows))
    return 0
