"""``tttla bench``: time the oracle and the generated forms of a variant on the CPU; with ``--model``,
count what they would move and launch on a GPU instead (:mod:`verify.cost`)."""

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
  tttla bench linear_attention --model -T 8192 -D 128 --bh 64

With --model nothing is timed: every parallel form runs once on fake tensors (no memory, no
kernel, no GPU) and the table gives its bytes read and written per head-token (B*H*T), launches,
matmul FLOPs and the time an H100 roofline predicts (verify/cost.py), forward and forward+backward.

Figures are medians, with their min-max, of calls timed after one warm-up until there are at
least --repeats of them and they took 0.2 s together (up to 10,000 calls), all measured in one
run; the last column flags a noisy row: a spread (max-min)/median over 20% (a busy machine) or a
median below the timer's resolution. head-tok/s counts every (batch·head, token): B*H*T per call, as the LaCT paper's
Table 2 does; tok/s counts the tokens of the caller's sequences, B*T, and here B = 1 (the B*H
sequences are the heads of one), so tok/s = T per call / s. Forward+backward takes the gradients of
the output and the final states with random output gradients drawn once, untimed
(verify.bench.forward_backward). FLOPs count matmuls only (see verify/flops.py), and
'% matmul' sets a form's FLOP/s against torch.matmul [BH, T, k] x [BH, k, D] timed alongside,
k the inner dimension of the forms' largest matrix product (verify/bench.py).
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
                   help="chunk size (default 64, or the variant's fixed one); with --model, for a variant whose "
                   "schedule is fixed, the block size of the parallel forms (default 64)")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help="float32 or float64 (default float32); with --model also bfloat16, float16 "
                   "(default bfloat16)")
    p.add_argument("--batch-heads", "--bh", type=int, default=4, metavar="BH",
                   help="independent sequences, B*H (default 4)")
    p.add_argument("--repeats", "-r", type=int, default=3, metavar="R",
                   help="least timed calls per figure (default 3; more until they take 0.2 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--model", action="store_true",
                   help="print the cost model (bytes, launches, FLOPs, H100 roofline time) instead of timing")
    p.set_defaults(handler=run)


def config_from_args(variant, args):
    """A :class:`verify.bench.BenchConfig`, or a one-line TTTLAError for a bad value."""
    from tttla.commands.verify import parse_dtype
    from verify.bench import BenchConfig

    dtype = args.dtype or "float32"
    parse_dtype(dtype)
    check_sizes(variant, args)
    chunk = None if variant.schedule.fixed else (args.chunk or 64)
    return BenchConfig(seq_len=args.seq_len, dim=args.dim, chunk=chunk, dtype=dtype,
                       batch_heads=args.batch_heads, repeats=args.repeats)


def check_sizes(variant, args, block_chunk: bool = False) -> None:
    """A one-line TTTLAError for a size below 1, or a --chunk the variant's schedule fixes (unless
    ``block_chunk``: then --chunk is a block size of the computation, free for any schedule)."""
    from derivations.errors import TTTLAError

    for flag, value in (("--seq-len", args.seq_len), ("--dim", args.dim), ("--batch-heads", args.batch_heads),
                        ("--repeats", args.repeats)):
        if value < 1:
            raise TTTLAError(f"{flag} must be >= 1, got {value}")
    if args.chunk is not None and args.chunk < 1:
        raise TTTLAError(f"--chunk must be >= 1, got {args.chunk}")
    if variant.schedule.fixed and not block_chunk and args.chunk not in (None, variant.schedule.chunk_size):
        raise TTTLAError(f"{variant.name} fixes its schedule ({variant.schedule.describe()}); drop --chunk")


def _num(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def print_result(result) -> None:
    from verify.bench import spread_ms

    c = result.config
    m = result.machine
    print(f"{result.variant}: B*H = {c.batch_heads}, T = {c.seq_len}, dims = {c.dim}, chunk = {c.chunk}, "
          f"{c.dtype}; median and min-max of >= {c.repeats} calls and >= {c.min_seconds:g} s each; "
          f"head-tok/s counts B*H*T, tok/s B*T (B = {c.batch})")
    inner = result.matmul_inner_dim
    print(f"% matmul: against [B*H, T, k] x [B*H, k, D] with k = {inner}, the forms' largest product's inner dim")
    print(f"torch {m['torch']}, {m['threads']} threads, {m['platform']}\n")
    rows = [
        [r.name, r.pass_, _num(r.seconds and r.seconds * 1e3, ".2f"),
         spread_ms(r.seconds_min, r.seconds_max, missing="n/a"), _num(r.tokens_per_s, ",.0f"),
         _num(r.sequence_tokens_per_s, ",.0f"),
         _num(r.flops and r.flops / 1e9, ".3f"), _num(r.flops_per_s and r.flops_per_s / 1e9, ".2f"),
         _num(r.fraction_of_matmul and 100 * r.fraction_of_matmul, ".1f"),
         _num(r.speedup_vs_oracle, ".1f"), _num(r.repeats, "d"), f"NOISY: {r.noise}" if r.noisy else ""]
        for r in result.rows
    ]
    headers = ["form", "pass", "ms", "min-max ms", "head-tok/s", "tok/s", "GFLOP", "GFLOP/s", "% matmul", "x oracle",
               "calls", "note"]
    print(format_table(headers, rows, align="llrrrrrrrrrl"))
    noisy = sum(r.noisy for r in result.rows)
    if noisy:
        print(f"\n{noisy} noisy row(s): rerun on a quieter machine, or with more --repeats, before quoting them")
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


def run_model(variant, forms: dict, args) -> None:
    """``--model``: the cost-model rows of every parallel form (the recurrent one steps token by
    token: its launches grow with T and it is not what the model is for)."""
    from tttla.commands.verify import parse_dtype
    from verify.cost import H100_SXM, form_rows

    dtype = parse_dtype(args.dtype or "bfloat16", allowed=("bfloat16", "float16", "float32", "float64"))
    check_sizes(variant, args, block_chunk=True)
    shape = {"batch": 1, "heads": args.batch_heads, "seq_len": args.seq_len, "dim": args.dim, "chunk": args.chunk or 64}
    rows = form_rows(variant, {n: f for n, f in forms.items() if n != "recurrent"}, shape, dtype)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{variant.name}: B*H = {args.batch_heads}, T = {args.seq_len}, dims = {args.dim}, chunk = {shape['chunk']}, "
          f"{str(dtype).removeprefix('torch.')}; counted on fake tensors, times from the {H100_SXM.name}\n")
    table = [[r["form"], r["pass"], f"{r['bytes_per_head_token']:,.0f}", r["launches"], f"{r['flops'] / 1e9:.3f}",
              f"{r['predicted_seconds'] * 1e3:.3f}",
              ", ".join(f"{name} {b:,.0f}" for name, (b, _) in list(r["largest_ops"].items())[:3])] for r in rows]
    headers = ["form", "pass", "B/head-token", "launches", "GFLOP", "predicted ms", "most bytes (B/head-token)"]
    print(format_table(headers, table, align="llrrrrl"))


def run(args) -> int:
    from tttla.commands.verify import select_forms
    from verify.bench import run_bench
    from verify.forms import generated_forms

    with generated_forms(args.variant) as (variant, forms):
        if args.model:
            run_model(variant, forms, args)
            return 0
        config = config_from_args(variant, args)
        forms, _ = select_forms(forms)
        result = run_bench(variant, forms, config, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)
    return 0
