"""``tttla verify``: fuzz every generated form of a variant against the literal inner loop."""

from __future__ import annotations

import argparse
import json

from tttla.commands._variant_arg import add_variant_argument
from tttla.table import format_table

EPILOG = """\
examples:
  tttla verify lact_v2                          50 random fp64 cases, both forms
  tttla verify delta_rule --dtype float32 --cases 200
  tttla verify lact --seed 17 --cases 1         reproduce case seed 17 alone
  tttla verify my_rule.py --form chunk --json

Case i of a run uses the case seed SEED + i, so a failure printed as 'case seed S'
reproduces with --seed S --cases 1. The oracle always runs in float64 (the truth);
the forms run in --dtype. Exit status 1 when any form fails.
"""

KINDS = [("o", "o"), ("state", "final state"), ("grad", "gradients")]


def add_parser(sub):
    p = sub.add_parser(
        "verify",
        help="fuzz the generated forms against the literal inner loop, forward and backward",
        description="Compare every generated form of a variant with the oracle (the inner loop run "
        "literally with torch.autograd, in float64) on random cases: outputs, final fast weights and "
        "the gradients of a random outer loss with respect to every input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_variant_argument(p)
    p.add_argument("--cases", "-n", type=int, default=50, metavar="N", help="random cases (default 50)")
    p.add_argument("--dtype", default="float64", metavar="DTYPE",
                   help="dtype the forms run in: float64 (exactness check) or float32 (default float64)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the first case (default 0)")
    p.add_argument("--form", default="all", metavar="FORM",
                   help="recurrent, chunk, triton (where generated) or all (default all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(handler=run)


def parse_dtype(name: str, allowed=("float64", "float32")):
    """``--dtype`` as a torch dtype, or a one-line TTTLAError."""
    import torch

    from derivations.errors import TTTLAError

    if name not in allowed:
        raise TTTLAError(f"--dtype must be one of {', '.join(allowed)}, got {name!r}")
    return getattr(torch, name)


def select_forms(forms: dict, choice: str = "all") -> tuple[dict, list[str]]:
    """The forms to run for ``--form``, and notes on any left out; a one-line TTTLAError
    for an unknown form or one that cannot run here."""
    from derivations.errors import TTTLAError
    from verify.forms import usable_forms

    if choice != "all" and choice not in forms:
        raise TTTLAError(f"--form must be one of {', '.join([*forms, 'all'])}, got {choice!r}")
    usable, notes = usable_forms(forms)
    if choice == "all":
        return usable, notes
    if choice not in usable:
        raise TTTLAError(notes[0])
    return {choice: usable[choice]}, []


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _report(campaign, args) -> None:
    from verify.tolerances import DEFAULTS

    tol = DEFAULTS[campaign.dtype]
    metric = "max|Δ|/max|ref|" if tol.metric == "max_rel" else "RMS(Δ)/RMS(ref)"
    v = campaign.variant
    print(f"{v.name}: {len(campaign.cases)} cases, forms in {args.dtype} against the float64 oracle")
    print(f"error = {metric} per tensor, bound {tol.bound:.0e} unless verify/tolerances.py says otherwise\n")
    rows = []
    for form in campaign.forms:
        s = campaign.form_summary(form)
        kinds = s["max_error_by_kind"]
        rows.append([form, s["cases"], s["passed"], *(_fmt(kinds.get(k)) for k, _ in KINDS),
                     "ok" if s["passed"] == s["cases"] else "FAIL"])
    headers = ["form", "cases", "passed", *(f"max err {label}" for _, label in KINDS), "result"]
    print(format_table(headers, rows, align="lrrrrrl"))
    failures = campaign.failures()
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for spec, r in failures[:20]:
            print(f"  case seed {spec.seed} [{spec.describe(v)}], form {r.form}: {'; '.join(r.failures()[:4])}")
            print(f"    reproduce: tttla verify {args.variant} --seed {spec.seed} --cases 1 --dtype {args.dtype}"
                  f" --form {r.form}")
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more")


def run(args) -> int:
    from derivations.errors import TTTLAError
    from verify.forms import generated_forms
    from verify.fuzz import run_campaign

    if args.cases < 1:
        raise TTTLAError(f"--cases must be >= 1, got {args.cases}")
    dtype = parse_dtype(args.dtype)
    with generated_forms(args.variant) as (variant, forms):
        forms, notes = select_forms(forms, args.form)
        campaign = run_campaign(variant, forms, cases=args.cases, dtype=dtype, seed=args.seed, progress=True)
    if args.json:
        print(json.dumps({**campaign.to_json(), "notes": notes}, indent=2))
    else:
        for note in notes:
            print(f"note: {note}")
        _report(campaign, args)
    return 0 if campaign.passed else 1
