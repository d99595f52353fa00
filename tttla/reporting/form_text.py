"""The derived form as plain data, Unicode text and LaTeX (what ``tttla derive`` prints)."""

from __future__ import annotations

from derivations.form import LinearAttentionForm
from derivations.printing import to_latex, to_text, with_parts
from derivations.reasons import sentences
from tttla.reporting import formulas

__all__ = ["effective", "verdict", "verdict_line", "read", "PARALLELISM", "summary", "render_text",
           "render_latex"]


def effective(form: LinearAttentionForm, printer) -> dict:
    """The effective query, key, value, initial state and feature map, each printed by ``printer``."""
    return {"query": printer(form.query), "key": printer(form.key), "value": printer(form.value),
            "state0": printer(form.state0), "feature": printer(form.feature)}


#: how a layer runs in parallel (the verdict's ``parallelism``), and how the text output says it
PARALLELISM = {
    "prefix_scan": "prefix scan",
    "one_step": "one step on all tokens",
    "chunk_parallel": "chunk-parallel (delta_chunk: WY/UT within blocks, block states in sequence; not a prefix scan)",
    "sequential": "no (a scan over the inner steps)",
}


def _parallelism(form: LinearAttentionForm) -> str:
    c = form.classification
    if c.parallel:
        return "one_step" if c.reason("parallel.one_step") else "prefix_scan"
    return "chunk_parallel" if c.parallel_form == "delta_chunk" else "sequential"


def read(form: LinearAttentionForm, printer=to_text) -> str:
    """What a query reads: ``o = q̂ S`` for φ(x)·W, else the head at each layer's read state."""
    if form.is_linear:
        return "o = q̂ S"
    reads = ", ".join(f"{printer(lay.z)} = q̂ S_{lay.state}" + (f" + {lay.bias}" if lay.bias else "")
                      for lay in form.layers)
    return f"o = {printer(form.head)} with {reads}" + (", x = q" if form.x in form.head.free_symbols else "")


def verdict(form: LinearAttentionForm) -> dict:
    """The classification's verdict, fields that agree with each other (``--json``, text and report):
    ``structure`` (``linear``: o = q̂ S; ``headed``/``gated``: the read passes through ``head``),
    ``read``, ``reducible``, ``kernel``, ``values``, ``parallelism`` (``prefix_scan``, ``one_step``,
    ``chunk_parallel`` or ``sequential``), ``parallel`` (any parallel form: not ``sequential``),
    ``prefix_scan`` and ``parallel_form`` (the chunk template: prefix_scan, delta_chunk, sequential)."""
    c = form.classification
    parallelism = _parallelism(form)
    return {"structure": c.structure, "head": None if form.is_linear else to_text(form.head),
            "read": read(form), "reducible": c.reducible, "kernel": c.kernel, "values": c.values,
            "parallelism": parallelism, "parallel": parallelism != "sequential", "prefix_scan": c.parallel,
            "parallel_form": c.parallel_form}


def verdict_line(form: LinearAttentionForm) -> str:
    """The verdict in one line of text (``tttla derive``)."""
    v = verdict(form)
    return (f"structure: {v['structure']} ({v['read']}) · reducible: {'yes' if v['reducible'] else 'no'} · "
            f"kernel: {v['kernel']} · values: {v['values']} · parallel: {PARALLELISM[v['parallelism']]}")


def summary(form: LinearAttentionForm) -> dict:
    """The derivation as plain data (the ``--json`` output)."""
    c, cert = form.classification, form.certificate
    return {
        "variant": form.variant.name,
        **verdict(form),
        "reasons": list(sentences(c.reasons)),
        "reason_codes": list(c.codes),
        "certified": bool(cert and cert.certified),
        "certificate": None if cert is None else {
            "checked": cert.checked, "abstract": list(cert.abstract), "sizes": cert.sizes,
            "seconds": round(cert.seconds, 4), "failure": cert.failure},
        "state": form.state,
        "feature_weights": list(form.feature_weights),
        "effective": effective(form, to_latex),
        "effective_text": effective(form, to_text),
        "dloss": to_latex(form.dloss),
        "gradients": {u: to_latex(g) for u, g in form.gradients.items()},
        "mask": form.mask,
        "lr_placement": formulas.lr_placement(form),
        "chunk_transform": formulas.chunk_transform(form),
        "unrolled": [f.latex for f in formulas.unrolled(form)],
        "momentum": _latex(formulas.momentum_coefficients(form)),
        "kernel_recurrence": _latex(formulas.kernel_recurrence(form)),
        "seconds": round(form.seconds, 4),
    }


def _latex(equations) -> list[str] | None:
    return [f.latex for f in equations] if equations else None


def _sections(form: LinearAttentionForm, printer, formula):
    """(title, [lines]) pairs shared by the text and LaTeX renderings."""
    v, c = form.variant, form.classification
    eff = effective(form, printer)
    grads = [line for u, g in form.gradients.items() for line in _lines(f"∇_{u} ℓ", g, printer)]
    value = _lines("v̂", form.value, printer)
    transform, momentum, recurrence = (formulas.chunk_transform(form), formulas.momentum_coefficients(form),
                                       formulas.kernel_recurrence(form))
    out = [
        ("variant", [f"{v.name}: {v.description}", *_split(form, printer), f"φ(x) = {eff['feature']}"]),
        ("gradients of ℓ = L(f(k), v) (our reverse-mode rules)", [f"∂L/∂f = {printer(form.dloss)}", *grads]),
        ("effective linear attention (Theorems 5.1–5.3)", [
            f"q̂ = {eff['query']}", f"k̂ = {eff['key']}", *value, f"S_0 = {eff['state0']}",
            f"learning rate: {formulas.lr_placement(form)}"]),
        ("unrolled state", [formula(f) for f in formulas.unrolled(form)]),
        ("mask", [f"{form.mask}: {formula(formulas.mask_formula(form))}"]
         + ([f"chunk transform: {transform}"] if transform else [])),
    ]
    if momentum:
        out.append(("momentum coefficients (Theorem 5.3)", [formula(f) for f in momentum]))
    if recurrence:
        out.append(("dynamic kernel recurrence", [formula(f) for f in recurrence]))
    out.append(("classification", [verdict_line(form), *[f"- {r}" for r in sentences(c.reasons)]]))
    cert = form.certificate
    if cert is not None:
        status = "CERTIFIED" if cert.certified else f"NOT certified: {cert.failure}"
        out.append(("certificate", [f"{status} ({cert.seconds:.2f} s)", cert.checked,
                                    "kept abstract: " + "; ".join(cert.abstract)]))
    return out


def _split(form: LinearAttentionForm, printer) -> list[str]:
    """The model as linear layers under a head: f(x) = φ(x)·W, or f = head(z_1, …) and each z_j."""
    if form.is_linear:
        return [f"f(x) = φ(x)·{form.state}"]
    return [f"f = {printer(form.head)}", *(f"{printer(lay.z)} = {printer(lay.layer)}" for lay in form.layers)]


def _lines(lhs: str, expr, printer) -> list[str]:
    """``lhs = expr``; a long expression with its shared parts named on ``where`` lines."""
    main, parts = with_parts(expr, printer)
    return [f"{lhs} = {main}", *(f"    {'where' if i == 0 else '     '} {p}" for i, p in enumerate(parts))]


def render_text(form: LinearAttentionForm) -> str:
    """The form as readable Unicode text (``tttla derive``)."""
    lines = []
    for title, body in _sections(form, to_text, lambda f: f.text):
        lines.append(title.upper() if title == "variant" else title)
        lines += [f"  {b}" for b in body]
        lines.append("")
    lines.append(f"derived in {form.seconds:.2f} s")
    return "\n".join(lines)


def render_latex(form: LinearAttentionForm) -> str:
    """The effective form as LaTeX equations (``tttla derive --latex``)."""
    eff = effective(form, to_latex)
    rows = [
        rf"\hat{{q}} &= {eff['query']}", rf"\hat{{k}} &= {eff['key']}", rf"\hat{{v}} &= {eff['value']}",
        rf"S_0 &= {eff['state0']}", rf"\frac{{\partial L}}{{\partial f}} &= {to_latex(form.dloss)}",
        *[rf"\nabla_{{{u}}} \ell &= {to_latex(g)}" for u, g in form.gradients.items()],
        *[f"& {f.latex}" for f in formulas.unrolled(form)],
        *[f"& {f.latex}" for f in (formulas.momentum_coefficients(form) or ())],
        f"& {formulas.mask_formula(form).latex}",
    ]
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"
