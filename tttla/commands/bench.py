"""``tttla bench``: time the oracle and the generated forms of a variant on the CPU."""

from __future__ import annotations

import argparse
import json

from tttla.commands._variant_arg import add_variant_argument
from tttla.table import format_table

EPILOG = """\
examples:
  tttla bench lact_v2 --seq-len 8192 --dim 128 --chunk 512 --batch-heads 4
  tttla bench delta_rule --seq-len 4096 --dim 64
  tttla bench my_rule.py --json

Figures are medians of --repeats calls after one warm-up, all measured in one run; tokens/s
counts every (batch·head, token). FLOPs count matmuls only (see verify/flops.py), and
'% matmul' sets a form's FLOP/s against torch.matmul [BH, T, D] x [BH, D, D] timed alongside.
"""

#: printed, never asserted: (variant, what, how it is read off the result, bound)
TARGETS = {
    "lact_v2": "the faster generated form reaches >= 60% of the same-run matmul FLOP/s "
    "(at B*H = 4, T = 8192, d = h = 128, chunk 512, float32)",
    "delta_rule": "the generated forms are >= 20x the token-by-token oracle (at T = 4096, d = 64)",
}


def add_parser(sub):
    p = sub.add_parser(
        "bench",
        help="time the oracle and the generated forms on the CPU (tokens/s, FLOP/s, ratios)",
        description="Time, in one run, the direct oracle (forward), the recurrent and the chunk forms "
        "(forward and forward+backward) and a reference torch.matmul; print tokens/s, ratios and the "
        "achieved FLOP/s of each generated form.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_variant_argument(p)
    p.add_argument("--seq-len", "-T", type=int, default=2048, metavar="T", help="tokens per sequence (default 2048)")
    p.add_argument("--dim", "-D", type=int, default=64, metavar="D",
                   help="size of every named dimension (d, h, ...) (default 64)")
    p.add_argument("--chunk", "-C", type=int, default=None, metavar="C",
                   help="chunk size (default 64, or the variant's fixed one)")
    p.add_argument("--dtype", default="float32", metavar="DTYPE", help="float32 or float64 (default float32)")
    p.add_argument("--batch-heads", "--bh", type=int, default=4, metavar="BH",
                   help="independent sequences, B*H (default 4)")
    p.add_argument("--repeats", "-r", type=int, default=3, metavar="R", help="timed calls per figure (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(handler=run)


def config_from_args(variant, args):
    """A :class:`verify.bench.BenchConfig`, or a one-line TTTLAError for a bad value."""
    from derivations.errors import TTTLAError
    from tttla.commands.verify import parse_dtype
    from verify.bench import BenchConfig

    parse_dtype(args.dtype)
    for flag, value in (("--seq-len", args.seq_len), ("--dim", args.dim), ("--batch-heads", args.batch_heads),
                        ("--repeats", args.repeats)):
        if value < 1:
            raise TTTLAError(f"{flag} must be >= 1, got {value}")
    if args.chunk is not None and args.chunk < 1:
        raise TTTLAError(f"--chunk must be >= 1, got {args.chunk}")
    if variant.schedule.fixed and args.chunk not in (None, variant.schedule.chunk_size):
        raise TTTLAError(f"{variant.name} fixes its schedule ({variant.schedule.describe()}); drop --chunk")
    chunk = None if variant.schedule.fixed else (args.chunk or 64)
    return BenchConfig(seq_len=args.seq_len, dim=args.dim, chunk=chunk, dtype=args.dtype,
                       batch_heads=args.batch_heads, repeats=args.repeats)


def _num(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def print_result(result) -> None:
    c = result.config
    m = result.machine
    print(f"{result.variant}: B*H = {c.batch_heads}, T = {c.seq_len}, dims = {c.dim}, chunk = {c.chunk}, "
          f"{c.dtype}, median of {c.repeats}")
    print(f"torch {m['torch']}, {m['threads']} threads, {m['platform']}\n")
    rows = [
        [r.name, r.pass_, _num(r.seconds and r.seconds * 1e3, ".2f"), _num(r.tokens_per_s, ",.0f"),
         _num(r.flops and r.flops / 1e9, ".3f"), _num(r.flops_per_s and r.flops_per_s / 1e9, ".2f"),
         _num(r.fraction_of_matmul and 100 * r.fraction_of_matmul, ".1f"),
         _num(r.speedup_vs_oracle, ".1f")]
        for r in result.rows
    ]
    headers = ["form", "pass", "ms", "tokens/s", "GFLOP", "GFLOP/s", "% matmul", "x oracle"]
    print(format_table(headers, rows, align="llrrrrrr"))
    print("\nratios:")
    forms = [r.name for r in result.rows if r.name not in ("oracle", "matmul") and r.pass_ == "forward"]
    for name in forms:
        fwd, both = result.row(name, "forward"), result.row(name, "forward+backward")
        print(f"  {name}: {fwd.speedup_vs_oracle:.1f}x the oracle forward; forward+backward takes "
              f"{both.seconds / fwd.seconds:.2f}x its forward")
    if "recurrent" in forms and "chunk" in forms:
        for pass_ in ("forward", "forward+backward"):
            ratio = result.row("recurrent", pass_).seconds / result.row("chunk", pass_).seconds
            print(f"  chunk vs recurrent ({pass_}): {ratio:.2f}x")
    print("\ntargets (printed, not asserted):")
    print(f"  best generated form: {100 * result.best_fraction_of_matmul():.1f}% of matmul FLOP/s "
          f"({result.matmul_flops_per_s / 1e9:.1f} GFLOP/s)  [{TARGETS['lact_v2']}]")
    speedup = result.min_speedup_vs_oracle()
    print(f"  slowest generated form vs oracle: {_num(speedup, '.1f')}x  [{TARGETS['delta_rule']}]")


def run(args) -> int:
    from tttla.commands.verify import select_forms
    from verify.bench import run_bench
    from verify.forms import generated_forms

    with generated_forms(args.variant) as (variant, forms):
        config = config_from_args(variant, args)
        forms, _ = select_forms(forms)
        result = run_bench(variant, forms, config, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)
    return 0
