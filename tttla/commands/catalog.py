"""``tttla catalog``: the main job. For every built-in variant: derive, generate, verify, benchmark
and write its report, then print one summary table."""

from __future__ import annotations

import argparse
from pathlib import Path

from tttla.commands._variant_arg import check_folder
from tttla.commands.report import add_report_arguments, options_from_args
from tttla.table import format_table

EPILOG = """\
examples:
  tttla catalog                          every variant: out/kernels/<v>/, out/reports/<v>/report.html
  tttla catalog --quick                  3 fuzz cases per dtype and no benchmark (about a minute)
  tttla catalog --only lact_v2,lact_v6   some variants
  tttla catalog --out /tmp/run --cases 50 --seq-lens 128,512,2048

The summary has one row per variant: its classification, whether the exact symbolic certificate
holds, whether every generated form passed every fuzz case in float64 and in float32, and the
report. Exit status 1 when any variant fails any of these.
"""


def add_parser(sub):
    p = sub.add_parser(
        "catalog",
        help="derive, generate, verify and report every built-in variant (the main job)",
        description="Run the whole pipeline over the built-in catalog: for each variant, derive its "
        "linear-attention form with a certificate, generate its code into OUT/kernels/, verify every "
        "generated form against the literal inner loop in float64 and float32, time it on the CPU, and "
        "write OUT/reports/<variant>/report.{md,html}; then print a summary table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", "-o", default="out", metavar="DIR", help="output folder (default ./out)")
    p.add_argument("--only", default=None, metavar="NAMES", help="comma-separated catalog variants (default all)")
    p.add_argument("--quick", action="store_true", help="3 fuzz cases per dtype and no benchmark")
    add_report_arguments(p, cases=10, seq_lens="64,128,256", repeats=2)
    p.set_defaults(handler=run)


def _names(only: str | None) -> list[str]:
    from derivations.catalog import CATALOG, get

    if not only:
        return list(CATALOG)
    names = [n.strip() for n in only.split(",") if n.strip()]
    for n in names:
        get(n)  # an unknown name: a one-line error with a did-you-mean
    return names


def _classification(form) -> str:
    c = form.classification
    values = "state-indep." if c.values == "state_independent" else "state-dep."
    return f"{c.parallel_form}, {c.kernel}, {values}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def run(args) -> int:
    from derivations.errors import TTTLAError
    from tttla.reporting import build_report
    from tttla.reporting.build import prepare_triton
    from verify import bench
    from verify.progress import progress

    if args.quick:
        args.cases, args.no_bench = min(args.cases, 3), True
    check_folder(args.out)
    out = Path(args.out)
    options = options_from_args(args, kernels=out / "kernels")
    names = _names(args.only)
    prepare_triton()
    rows, problems, timings = [], [], []
    for name in progress(names, "catalog", unit="variant"):
        try:
            r = build_report(name, out / "reports" / name, options, progress=True)
        except (TTTLAError, RuntimeError) as e:
            rows.append([name, "error", "-", "-", "-", "-"])
            problems.append(f"{name}: {e}")
            continue
        timings += [row for res in r.bench for row in res.rows if row.seconds is not None]
        cert = r.form.certificate
        certified = cert is not None and cert.certified
        rows.append([name, _classification(r.form), "yes" if certified else "NO", _verdict(r.verified("float64")),
                     _verdict(r.verified("float32")), str(r.html)])
        if not certified:
            problems.append(f"{name}: not certified: {cert.failure if cert else 'not run'}")
        for dt, c in r.campaigns.items():
            if not c.passed:
                problems.append(f"{name}: {len(c.failures())} failed form-case(s) in {dt}; see {r.markdown}")
    print(format_table(["variant", "classification", "certified", "fp64", "fp32", "report"], rows))
    print(f"\n{len(names)} variants, {options.cases} fuzz cases per dtype; code in {out / 'kernels'}/")
    noisy = sum(row.noisy for row in timings)
    if noisy:
        print(f"{noisy} of {len(timings)} CPU timings noisy, flagged in the reports: the middle half of their "
              f"calls spread over {100 * bench.NOISY_SPREAD:.0f}% of the median (a busy machine), or their median "
              "is below the timer's resolution")
    for p in problems:
        print(f"FAILED {p}")
    return 1 if problems else 0
