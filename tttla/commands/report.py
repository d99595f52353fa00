"""``tttla report``: the full report of a variant, as Markdown and as one offline HTML page."""

from __future__ import annotations

import argparse

from tttla.commands._variant_arg import add_variant_argument, check_folder

EPILOG = """\
examples:
  tttla report lact_v2 --out reports/lact_v2             derivation, code, 20 fuzz cases, CPU sweep
  tttla report my_rule.py --out r --cases 50             a variant in your own file, more cases
  tttla report my_rule.py:fast --out r --no-bench        skip the benchmark
  tttla report delta_rule --out r --seq-lens 64,256,1024 --dim 32

Writes DIR/report.md (with its PNG figures beside it), DIR/report.html (self-contained:
MathML maths, inline styles, figures embedded; opens offline) and the generated code in
DIR/kernels/<variant>/ (or --kernels). Without a GPU, Triton forms are verified in Triton's
interpreter (TRITON_INTERPRET=1 is set for you) and are not timed.
"""


def positive_ints(text: str) -> tuple[int, ...]:
    """``"64,128,256"`` → ``(64, 128, 256)``, or a one-line TTTLAError."""
    from derivations.errors import TTTLAError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TTTLAError(f"--seq-lens must be comma-separated integers such as 64,128,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise TTTLAError(f"--seq-lens must be integers >= 1 such as 64,128,256, got {text!r}")
    return values


def add_report_arguments(p, cases: int, seq_lens: str, repeats: int = 3) -> None:
    """The options shared by ``tttla report`` and ``tttla catalog``."""
    p.add_argument("--cases", "-n", type=int, default=cases, metavar="N",
                   help=f"random fuzz cases per dtype (fp64 and fp32) (default {cases})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first fuzz case (default 0)")
    p.add_argument("--seq-lens", default=seq_lens, metavar="T1,T2,...",
                   help=f"sequence lengths of the CPU benchmark (default {seq_lens})")
    p.add_argument("--dim", "-D", type=int, default=16, metavar="D",
                   help="size of every named dimension in the benchmark (default 16)")
    p.add_argument("--chunk", "-C", type=int, default=64, metavar="C",
                   help="benchmark chunk size, for variants whose schedule does not fix it (default 64)")
    p.add_argument("--batch-heads", "--bh", type=int, default=2, metavar="BH",
                   help="independent sequences in the benchmark, B*H (default 2)")
    p.add_argument("--repeats", "-r", type=int, default=repeats, metavar="R",
                   help=f"least timed calls per benchmark figure (default {repeats}; more until they take 0.2 s)")
    p.add_argument("--no-bench", action="store_true", help="skip the CPU benchmark")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="where GPU results (<device>.json) are read (default benchmarks/results)")


def options_from_args(args, kernels=None):
    """A :class:`tttla.reporting.ReportOptions`, or a one-line TTTLAError for a bad value."""
    from derivations.errors import TTTLAError
    from tttla.reporting import ReportOptions
    from tttla.reporting.benchmark import SweepConfig

    for flag, value in (("--cases", args.cases), ("--dim", args.dim), ("--chunk", args.chunk),
                        ("--batch-heads", args.batch_heads), ("--repeats", args.repeats)):
        if value < 1:
            raise TTTLAError(f"{flag} must be >= 1, got {value}")
    bench = None if args.no_bench else SweepConfig(
        seq_lens=positive_ints(args.seq_lens), dim=args.dim, chunk=args.chunk, batch_heads=args.batch_heads,
        repeats=args.repeats)
    return ReportOptions(cases=args.cases, seed=args.seed, bench=bench, kernels=kernels, results_dir=args.results)


def add_parser(sub):
    p = sub.add_parser(
        "report",
        help="write the full report of a variant (derivation, code, verification, benchmarks)",
        description="Derive a variant, generate its code, verify every generated form against the literal "
        "inner loop in float64 and float32, time it on the CPU, and write it all up: the declaration, the "
        "inner loss and its gradients, the effective query/key/value/state, the unrolled state, the "
        "classification with the theorem behind each reason, the certificate, the generated functions, "
        "the verification tables and error plot, the throughput plot and any GPU results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_variant_argument(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write the report into")
    p.add_argument("--kernels", default=None, metavar="DIR",
                   help="folder to generate the code into (default DIR/kernels)")
    add_report_arguments(p, cases=20, seq_lens="64,128,256,512")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tttla.reporting import build_report
    from tttla.reporting.build import prepare_triton

    check_folder(args.out)
    check_folder(args.kernels, "--kernels")
    options = options_from_args(args, kernels=args.kernels)
    prepare_triton()
    result = build_report(args.variant, args.out, options, progress=True)
    verdict = {dt: ("pass" if ok else "FAIL") for dt, ok in ((dt, result.verified(dt)) for dt in result.campaigns)}
    print(f"{result.variant.name}: verify " + ", ".join(f"{dt} {v}" for dt, v in verdict.items())
          + f"; {result.seconds:.1f} s")
    print(f"wrote {result.markdown}\n      {result.html}\ncode  {result.folder}/")
    return 0 if all(v == "pass" for v in verdict.values()) else 1
