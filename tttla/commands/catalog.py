"""``tttla catalog``: the main job over the built-in catalog."""

from __future__ import annotations

import argparse
import time

from tttla.table import format_table

EPILOG = """\
example:
  tttla catalog              every variant, default sizes
  tttla catalog --seq-len 64 quicker
"""


def add_parser(sub):
    p = sub.add_parser(
        "catalog",
        help="run the pipeline over every built-in variant",
        description="Run the pipeline over the built-in catalog: for each variant, the literal "
        "inner loop (oracle) on random inputs, forward and backward, with a summary table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seq-len", "-T", type=int, default=256, metavar="T", help="tokens per sequence (default 256)")
    p.add_argument("--dim", "-D", type=int, default=16, metavar="D", help="size of every named dimension (default 16)")
    p.add_argument(
        "--chunk", "-C", type=int, default=64, metavar="C", help="chunk size for chunked variants (default 64)"
    )
    p.set_defaults(handler=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from derivations.catalog import CATALOG
    from verify.inputs import default_sizes, make_case
    from verify.oracle import run_direct

    rows = []
    for variant in tqdm(CATALOG.values(), desc="oracle", unit="variant", leave=False):
        case = make_case(
            variant,
            seq_len=args.seq_len,
            heads=2,
            sizes=default_sizes(variant, args.dim),
            chunk_size=None if variant.schedule.fixed else args.chunk,
            requires_grad=True,
        )
        start = time.perf_counter()
        o, _ = run_direct(variant, **case.kwargs())
        o.square().sum().backward()
        elapsed = time.perf_counter() - start
        finite = bool(torch.isfinite(o).all()) and all(
            t.grad is None or bool(torch.isfinite(t.grad).all()) for t in case.leaves().values()
        )
        rows.append(
            [variant.name, variant.schedule.order, f"{o.std().item():.3e}", "yes" if finite else "NO", f"{elapsed:.2f}"]
        )
    print(format_table(["variant", "order", "std(o)", "finite fwd+bwd", "seconds"], rows, align="llrlr"))
    return 0 if all(r[3] == "yes" for r in rows) else 1
