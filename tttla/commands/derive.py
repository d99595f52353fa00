"""``tttla derive``: the linear-attention form of a variant, derived symbolically, with reasons."""

from __future__ import annotations

import argparse
import json

from tttla.commands._variant_arg import add_variant_argument

EPILOG = """\
examples:
  tttla derive lact_v2                 effective q, k, v, state, mask, classification, certificate
  tttla derive delta_rule --latex      the same as LaTeX
  tttla derive lact --json             one JSON object ("generated": each form's kind, and why not parallel)
  tttla derive my_rule.py --report out writes out/report.md and out/report.html (offline MathML)
"""


def add_parser(sub):
    p = sub.add_parser(
        "derive",
        help="derive a variant's linear-attention form and classify it",
        description="Derive (not look up) the gradients of the inner loss, the effective query, key, value "
        "and initial state (Liu et al., Theorems 5.1-5.3), and whether the layer runs as a parallel prefix "
        "scan, with reasons and an exact symbolic certificate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_variant_argument(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--format", choices=["text", "latex", "json"], default=None, help="output format (default text)")
    fmt.add_argument("--latex", dest="format", action="store_const", const="latex", help="shorthand for --format latex")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="shorthand for --format json")
    p.add_argument("--report", metavar="DIR", default=None, help="also write DIR/report.md and DIR/report.html")
    p.add_argument("--no-certificate", action="store_true", help="skip the exact symbolic certificate")
    p.set_defaults(handler=run)


def run(args) -> int:
    from codegen.plan import plan
    from derivations.derive import derive
    from derivations.loading import load_variant
    from derivations.printing import prose_subscripts
    from derivations.shard import NotShardable, shard_summary
    from tttla.reporting.derivation_report import write_report
    from tttla.reporting.form_text import render_latex, render_text, summary

    form = derive(load_variant(args.variant), certify=not args.no_certificate)
    forms = plan(form)
    fmt = args.format or "text"
    if fmt == "json":
        print(json.dumps({**summary(form), "generated": forms.generated(), "not_generated": forms.not_generated()},
                         ensure_ascii=False))
    elif fmt == "latex":
        print(render_latex(form))
    else:
        print(render_text(form))
        print("\ngenerated forms (tttla generate)")
        print("\n".join(f"  {prose_subscripts(line)}" for line in forms.describe()))
        print("\ncontext parallelism (process_group)")
        try:
            print("\n".join(f"  {prose_subscripts(line)}" for line in shard_summary(form).describe()))
        except NotShardable as why:
            print(f"  none: {prose_subscripts(str(why))}")
    if args.report:
        md, page = write_report(form, args.report)
        if fmt != "json":
            print(f"\nwrote {md} and {page}")
    return 0
