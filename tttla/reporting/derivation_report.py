"""The derivation report: its Markdown sections (which ``tttla report`` reuses) and, for
``tttla derive --report``, the page written as Markdown and as self-contained HTML."""

from __future__ import annotations

from pathlib import Path

from derivations.form import LinearAttentionForm
from derivations.printing import prose_subscripts, to_latex, to_text
from derivations.reasons import decision, explanation
from derivations.shard import NotShardable, shard_summary
from tttla.reporting import formulas
from tttla.reporting.form_text import PARALLELISM, References, effective, named_parts, read, verdict
from tttla.reporting.pages import html_page, markdown_to_html, write_pages
from tttla.reporting.theorems import THEOREMS, cited

__all__ = ["SECTIONS", "md_title", "render_markdown", "render_html", "write_report"]


def _where(defs) -> str:
    """The definitions of named parts, one displayed equation each, after "where" (Markdown)."""
    return "where\n\n" + "".join(f"$${to_latex(s)} = {to_latex(d)}$$\n\n" for s, d in defs) if defs else ""


# ---- the sections; each takes the form and returns Markdown ----

def md_declaration(form: LinearAttentionForm) -> str:
    """The declaration as written, and its settings."""
    v = form.variant
    settings = "".join(f"- **{key}**: {value}\n" for key, value in v.summary().items())
    return f"## Declaration\n\n```python\n{v.source.rstrip()}\n```\n\n{settings}"


def md_gradients(form: LinearAttentionForm) -> str:
    """The inner loss, the split f(x) = φ(x)·W and the gradient of every updated fast weight."""
    eff = effective(form, to_latex)
    loss = to_latex(form.variant.trace().loss)
    split, model = ("a feature map and a last linear layer", [f"f(x) = \\phi(x)\\,{form.state}"]) if form.is_linear \
        else ("linear layers under a head (docs/maths.md section 2)",
              [f"f = {to_latex(form.head)}", *(f"{to_latex(lay.z)} = {to_latex(lay.layer)}" for lay in form.layers)])
    model = "".join(f"$${line}$$\n\n" for line in [*model, f"\\phi(x) = {eff['feature']}"])
    parts = named_parts(form)
    grads = "".join(f"$$\\nabla_{{{u}}} \\ell = {to_latex(g)}$$\n\n" for u, g in parts.gradients.items())
    grads += _where(parts.new_defs(parts.gradients.values()))
    return (
        "## Inner loss and gradients (derived by our reverse-mode rules)\n\n"
        f"Inner loss of the prediction $y = f(k)$ and the value $v$:\n\n$$L(y, v) = {loss}$$\n\n"
        f"The model splits as {split}:\n\n"
        f"{model}"
        f"$$\\frac{{\\partial L}}{{\\partial f}} = {to_latex(form.dloss)}$$\n\n"
        f"Gradient of $\\ell = L(f(k), v)$ for each updated fast weight:\n\n{grads}"
    )


def md_effective(form: LinearAttentionForm) -> str:
    """The effective query, key, value and initial state."""
    eff, parts = effective(form, to_latex), named_parts(form)
    shown = {s for s, _ in parts.new_defs(parts.gradients.values())}
    value = f"$$\\hat v = {to_latex(parts.value)}$$\n\n" + _where(parts.new_defs([parts.value], shown))
    return (
        "## Effective linear attention (Theorems 5.1–5.3)\n\n"
        f"$$\\hat q = {eff['query']}$$\n\n$$\\hat k = {eff['key']}$$\n\n{value}"
        f"$$S_0 = {eff['state0']}$$\n\nLearning rate: {formulas.lr_placement(form)}\n"
    )


def md_unrolled(form: LinearAttentionForm) -> str:
    """The unrolled state, the mask and, with momentum, its coefficients."""
    out = ["## Unrolled state\n"]
    out += [f"$${f.latex}$$\n" for f in formulas.unrolled(form)]
    out.append(f"Mask ({form.mask}): ${formulas.mask_formula(form).latex}$\n")
    transform, momentum, recurrence = (formulas.chunk_transform(form), formulas.momentum_coefficients(form),
                                       formulas.kernel_recurrence(form))
    if transform:
        out.append(f"Chunk transform: {transform}\n")
    if momentum:
        out.append("## Momentum coefficients (Theorem 5.3)\n")
        out += [f"$${f.latex}$$\n" for f in momentum]
    if recurrence:
        out.append("## Dynamic kernel\n")
        out += [f"$${f.latex}$$\n" for f in recurrence]
    return "\n".join(out)


def _referenced(refs: References) -> str:
    """The expressions the table refers to as (1), (2), …, displayed below it (Markdown)."""
    equations, defs = refs.displayed()
    if not equations:
        return ""
    shown = "".join(f"$$({n})\\qquad {to_latex(e)}$$\n\n" for n, e in equations)
    return f"Expressions referred to in the tables:\n\n{shown}{_where(defs)}"


def md_classification(form: LinearAttentionForm) -> str:
    """The classification, each reason with the theorem or section it rests on; an expression
    longer than a table cell holds is a reference (n) to its equation below the tables."""
    c, refs = form.classification, References(to_text)
    v = {**verdict(form), "read": read(form, refs.printer)}
    rows = []
    for reason in c.reasons:
        basis = ", ".join(reason.basis) or "-"
        rows.append(f"| {decision(reason)} | {explanation(refs.reason(reason)).replace('|', '/')} | {basis} |")
    statements = "".join(f"- **{r}**: {THEOREMS[r]}\n" for r in cited(c.reasons) if r in THEOREMS)
    return (
        "## Classification\n\n"
        "| structure | read | reducible | kernel | values | parallel |\n|---|---|---|---|---|---|\n"
        f"| {v['structure']} | {v['read'].replace('|', '/')} | {v['reducible']} | {v['kernel']} | {v['values']} | "
        f"{PARALLELISM[v['parallelism']]} |\n\n"
        "| decision | reason | rests on |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + _referenced(refs)
        + (f"What the cited results say:\n\n{statements}" if statements else "")
    )


def md_certificate(form: LinearAttentionForm) -> str:
    """The exact symbolic certificate (or that it was not run)."""
    cert = form.certificate
    if cert is None:
        return "## Certificate\n\nNot run.\n"
    status = "certified" if cert.certified else "not certified"
    sizes = ", ".join(f"{name} = {size}" for name, size in cert.sizes.items())
    out = f"## Certificate\n\n**{status}** in {cert.seconds:.2f} s (sizes {sizes}). {cert.checked}.\n\n"
    if cert.failure:
        out += f"Failure: {cert.failure}\n\n"
    return out + f"Kept abstract: {'; '.join(cert.abstract)}.\n"


def md_context_parallel(form: LinearAttentionForm) -> str:
    """What a slice of the sequence hands to the next under context parallelism (derivations.shard)."""
    try:
        lines = shard_summary(form).describe()
    except NotShardable as why:
        return f"## Context parallelism\n\nNone: {prose_subscripts(str(why))}.\n"
    body = "".join(f"- {prose_subscripts(line)}\n" for line in lines)
    return ("## Context parallelism\n\nEach rank of a `process_group` holds a slice of the sequence and hands on, "
            f"for each quantity carried across chunks, its slice's affine map (A, h):\n\n{body}")


#: the derivation report's sections, in order (the full ``tttla report`` appends its own)
SECTIONS = (md_declaration, md_gradients, md_effective, md_unrolled, md_classification, md_certificate,
            md_context_parallel)


def md_title(form: LinearAttentionForm, kind: str = "Derivation report") -> str:
    return f"# {kind}: `{form.variant.name}`\n\n{form.variant.description}\n"


def render_markdown(form: LinearAttentionForm) -> str:
    """The report as Markdown with LaTeX maths (``$…$`` and ``$$…$$``)."""
    return "\n".join([md_title(form), *(section(form) for section in SECTIONS)])


def render_html(form: LinearAttentionForm) -> str:
    """A self-contained HTML page (MathML maths, inline styles, no external URL)."""
    return html_page(f"tttla derive {form.variant.name}", markdown_to_html(render_markdown(form)))


def write_report(form: LinearAttentionForm, directory) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``directory`` (created if needed)."""
    return write_pages(directory, render_markdown(form), render_html(form))
