"""``tttla run``: execute a variant's inner loop literally (the oracle) on random inputs."""

from __future__ import annotations

import argparse
import time

from tttla.commands._variant_arg import add_variant_argument
from tttla.table import format_table

EPILOG = """\
examples:
  tttla run lact_v2 --seq-len 100 --chunk 16
  tttla run delta_rule --dim 32 --seed 3
  tttla run my_rule.py:fast --dim 8 --dtype float32
"""


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="run the literal inner loop (the oracle) on random inputs",
        description="Run a variant's inner loop literally, with torch.autograd gradients, on random "
        "inputs, and print statistics of its output and final fast weights.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_variant_argument(p)
    add_case_arguments(p)
    p.set_defaults(handler=run)


def add_case_arguments(p, seq_len=256):
    p.add_argument(
        "--seq-len", "-T", type=int, default=seq_len, metavar="T", help=f"tokens per sequence (default {seq_len})"
    )
    p.add_argument(
        "--dim", "-D", type=int, default=16, metavar="D", help="size of every named dimension (d, h, ...) (default 16)"
    )
    p.add_argument(
        "--chunk",
        "-C",
        type=int,
        default=None,
        metavar="C",
        help="chunk size (default: 64, or the variant's fixed one)",
    )
    p.add_argument("--batch", "-B", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--heads", "-H", type=int, default=2, help="heads (default 2)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="dtype (default float64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def case_from_args(variant, args):
    import torch

    from derivations.errors import TTTLAError
    from verify.inputs import default_sizes, make_case

    for flag, value in (
        ("--seq-len", args.seq_len),
        ("--dim", args.dim),
        ("--batch", args.batch),
        ("--heads", args.heads),
    ):
        if value < 1:
            raise TTTLAError(f"{flag} must be >= 1, got {value}")
    if args.chunk is not None and args.chunk < 1:
        raise TTTLAError(f"--chunk must be >= 1, got {args.chunk}")
    chunk = None if variant.schedule.fixed else (args.chunk or 64)
    if variant.schedule.fixed and args.chunk not in (None, variant.schedule.chunk_size):
        raise TTTLAError(f"{variant.name} fixes its schedule ({variant.schedule.describe()}); drop --chunk")
    return make_case(
        variant,
        batch=args.batch,
        seq_len=args.seq_len,
        heads=args.heads,
        sizes=default_sizes(variant, args.dim),
        chunk_size=chunk,
        dtype=getattr(torch, args.dtype),
        generator=torch.Generator().manual_seed(args.seed),
    )


def _stats(name, t):
    t = t.double()
    return [
        name,
        "×".join(map(str, t.shape)),
        f"{t.mean():+.4e}",
        f"{t.std():.4e}",
        f"{t.min():+.4e}",
        f"{t.max():+.4e}",
    ]


def run(args) -> int:
    from derivations.loading import load_variant
    from verify.oracle import run_direct

    variant = load_variant(args.variant)
    case = case_from_args(variant, args)
    start = time.perf_counter()
    o, final = run_direct(variant, **case.kwargs())
    elapsed = time.perf_counter() - start
    print(f"{variant.name}: {variant.description}")
    for key, value in variant.summary().items():
        print(f"  {key:<18} {value}")
    print()
    rows = [_stats("output o", o)] + [_stats(f"final {n}", w) for n, w in final.items()]
    print(format_table(["tensor", "shape", "mean", "std", "min", "max"], rows, align="llrrrr"))
    tokens = o.shape[0] * o.shape[1] * o.shape[2]
    print(f"\n{tokens} token-heads in {elapsed * 1e3:.1f} ms ({tokens / elapsed:,.0f} token-heads/s, oracle)")
    return 0
