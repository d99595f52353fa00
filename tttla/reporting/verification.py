"""The verification part of a report: a small fuzz campaign per dtype, its tables and the
error distribution over the cases (the data the error plot draws)."""

from __future__ import annotations

import torch

from verify.fuzz import Campaign, run_campaign
from verify.tolerances import DEFAULTS

__all__ = ["run_verification", "case_errors", "md_verification", "KINDS"]

KINDS = [("o", "o"), ("state", "final state"), ("grad", "gradients")]


def run_verification(variant, forms: dict, *, cases: int, dtypes=("float64", "float32"), seed: int = 0,
                     progress: bool = False) -> dict[str, Campaign]:
    """One campaign per dtype over the same case seeds (the oracle always runs in fp64)."""
    return {dt: run_campaign(variant, forms, cases=cases, dtype=getattr(torch, dt), seed=seed, progress=progress)
            for dt in dtypes}


def case_errors(campaign: Campaign) -> dict[str, list[tuple[float, bool]]]:
    """Per form, one ``(max error over every compared tensor, passed)`` per case; a form that
    raised counts as ``(inf, False)``."""
    out = {f: [] for f in campaign.forms}
    for _, results in campaign.cases:
        for r in results:
            worst = max(r.errors.values(), default=0.0) if r.exception is None else float("inf")
            out[r.form].append((worst, r.passed))
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def md_verification(campaigns: dict[str, Campaign], image: str | None) -> str:
    """Tables per dtype (a row per form), failures with their reproduction, and the plot."""
    any_c = next(iter(campaigns.values()))
    lines = ["## Verification", "",
             f"Every generated form against the literal inner loop (the oracle, `torch.autograd`, float64) on "
             f"{len(any_c.cases)} random cases (case seeds {any_c.seed}–{any_c.seed + len(any_c.cases) - 1}: "
             "shapes, ragged lengths, chunk sizes, learning-rate and momentum ranges), comparing the output, the "
             "final fast weights and the gradient of a random outer loss with respect to every input.", ""]
    for dt, c in campaigns.items():
        tol = DEFAULTS[c.dtype]
        metric = "max abs error / max abs reference" if tol.metric == "max_rel" else "RMS error / RMS reference"
        lines += [f"### Forms in {dt}", "", f"Error = {metric} per tensor; bound {tol.bound:.0e} "
                  "(widened only where `verify/tolerances.py` says so).", "",
                  "| form | dtype | cases | passed | " + " | ".join(f"max err {lbl}" for _, lbl in KINDS)
                  + " | result |", "|---|---|---|---|" + "---|" * len(KINDS) + "---|"]
        for form in c.forms:
            s = c.form_summary(form)
            kinds = s["max_error_by_kind"]
            ok = "pass" if s["passed"] == s["cases"] else "**FAIL**"
            lines.append(f"| {form} | {dt} | {s['cases']} | {s['passed']} | "
                         + " | ".join(_fmt(kinds.get(k)) for k, _ in KINDS) + f" | {ok} |")
        lines.append("")
        for spec, r in c.failures()[:10]:
            lines.append(f"- case seed {spec.seed} ({spec.describe(c.variant)}), form {r.form}: "
                         f"{'; '.join(r.failures()[:3])}; reproduce with `tttla verify VARIANT --seed {spec.seed} "
                         f"--cases 1 --dtype {dt} --form {r.form}`")
        if c.failures():
            lines.append("")
    if image:
        lines += ["Distribution of the worst error per case (log scale; each dot a case, the box its quartiles, "
                  "the dashed line the dtype's bound, red a failed case; an error of exactly 0 sits at the "
                  "bottom, 1e-18):",
                  "", f"![error per case]({image})", ""]
    return "\n".join(lines)

