"""Presenting a :class:`LinearAttentionForm`: text, LaTeX, JSON, and a Markdown/HTML report.

The HTML report is self-contained: maths is converted to MathML at build time
(``latex2mathml``), styles are inline, and it names no external URL, so it renders offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import jinja2

from derivations.form import LinearAttentionForm
from derivations.printing import to_latex, to_text

__all__ = ["summary", "render_text", "render_latex", "render_json", "render_markdown", "render_html", "write_report"]


def _effective(form: LinearAttentionForm, printer) -> dict:
    return {"query": printer(form.query), "key": printer(form.key), "value": printer(form.value),
            "state0": printer(form.state0), "feature": printer(form.feature)}


def summary(form: LinearAttentionForm) -> dict:
    """The derivation as plain data (the ``--json`` output)."""
    c, cert = form.classification, form.certificate
    return {
        "variant": form.variant.name,
        "reducible": c.reducible,
        "kernel": c.kernel,
        "values": c.values,
        "parallel": c.parallel,
        "reasons": list(c.reasons),
        "certified": bool(cert and cert.certified),
        "certificate": None if cert is None else {
            "checked": cert.checked, "abstract": list(cert.abstract), "sizes": cert.sizes,
            "seconds": round(cert.seconds, 4), "failure": cert.failure},
        "state": form.state,
        "feature_weights": list(form.feature_weights),
        "effective": _effective(form, to_latex),
        "effective_text": _effective(form, to_text),
        "dloss": to_latex(form.dloss),
        "gradients": {u: to_latex(g) for u, g in form.gradients.items()},
        "mask": form.mask,
        "lr_placement": form.lr_placement,
        "chunk_transform": form.chunk_transform,
        "unrolled": [f.latex for f in form.unrolled],
        "momentum": [f.latex for f in form.momentum] if form.momentum else None,
        "kernel_recurrence": [f.latex for f in form.kernel_recurrence] if form.kernel_recurrence else None,
        "seconds": round(form.seconds, 4),
    }


def render_json(form: LinearAttentionForm) -> str:
    return json.dumps(summary(form), ensure_ascii=False)


def _sections(form: LinearAttentionForm, printer, formula):
    """(title, [lines]) pairs shared by the text and LaTeX renderings."""
    v, c = form.variant, form.classification
    eff = _effective(form, printer)
    grads = [f"∇_{u} ℓ = {printer(g)}" for u, g in form.gradients.items()]
    out = [
        ("variant", [f"{v.name}: {v.description}", f"f(x) = φ(x)·{form.state}, φ(x) = {eff['feature']}"]),
        ("gradients of ℓ = L(f(k), v) (our reverse-mode rules)", [f"∂L/∂f = {printer(form.dloss)}", *grads]),
        ("effective linear attention (Theorems 5.1–5.3)", [
            f"q̂ = {eff['query']}", f"k̂ = {eff['key']}", f"v̂ = {eff['value']}", f"S_0 = {eff['state0']}",
            f"learning rate: {form.lr_placement}"]),
        ("unrolled state", [formula(f) for f in form.unrolled]),
        ("mask", [f"{form.mask}: {formula(form.mask_formula)}"]
         + ([f"chunk transform: {form.chunk_transform}"] if form.chunk_transform else [])),
    ]
    if form.momentum:
        out.append(("momentum coefficients (Theorem 5.3)", [formula(f) for f in form.momentum]))
    if form.kernel_recurrence:
        out.append(("dynamic kernel recurrence", [formula(f) for f in form.kernel_recurrence]))
    out.append(("classification", [
        f"reducible: {'yes' if c.reducible else 'no'} · kernel: {c.kernel} · values: {c.values} · "
        f"parallel: {'yes' if c.parallel else 'no'}", *[f"- {r}" for r in c.reasons]]))
    cert = form.certificate
    if cert is not None:
        status = "CERTIFIED" if cert.certified else f"NOT certified: {cert.failure}"
        out.append(("certificate", [f"{status} ({cert.seconds:.2f} s)", cert.checked,
                                    "kept abstract: " + "; ".join(cert.abstract)]))
    return out


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
    eff = _effective(form, to_latex)
    rows = [
        rf"\hat{{q}} &= {eff['query']}", rf"\hat{{k}} &= {eff['key']}", rf"\hat{{v}} &= {eff['value']}",
        rf"S_0 &= {eff['state0']}", rf"\frac{{\partial L}}{{\partial f}} &= {to_latex(form.dloss)}",
        *[rf"\nabla_{{{u}}} \ell &= {to_latex(g)}" for u, g in form.gradients.items()],
        *[f"& {f.latex}" for f in form.unrolled],
        *[f"& {f.latex}" for f in (form.momentum or ())],
        f"& {form.mask_formula.latex}",
    ]
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"


_MD = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string("""\
# Derivation report: `{{ v.name }}`

{{ v.description }}

## Declaration

```python
{{ v.source }}```

{% for key, value in v.summary().items() %}- **{{ key }}**: {{ value }}
{% endfor %}
## Split of the model

$$f(x) = \\phi(x)\\,{{ form.state }},\\qquad \\phi(x) = {{ eff.feature }}$$

## Gradients of the inner loss (derived by our reverse-mode rules)

$$\\frac{\\partial L}{\\partial f} = {{ dloss }}$$
{% for u, g in grads.items() %}
$$\\nabla_{ {{- u -}} } \\ell = {{ g }}$$
{% endfor %}
## Effective linear attention (Theorems 5.1–5.3)

$$\\hat q = {{ eff.query }}$$

$$\\hat k = {{ eff.key }}$$

$$\\hat v = {{ eff.value }}$$

$$S_0 = {{ eff.state0 }}$$

Learning rate: {{ form.lr_placement }}

## Unrolled state
{% for f in form.unrolled %}
$${{ f.latex }}$$
{% endfor %}
Mask ({{ form.mask }}): ${{ form.mask_formula.latex }}${% if form.chunk_transform %}

Chunk transform: {{ form.chunk_transform }}{% endif %}
{% if form.momentum %}
## Momentum coefficients (Theorem 5.3)
{% for f in form.momentum %}
$${{ f.latex }}$$
{% endfor %}{% endif %}{% if form.kernel_recurrence %}
## Dynamic kernel
{% for f in form.kernel_recurrence %}
$${{ f.latex }}$$
{% endfor %}{% endif %}
## Classification

| reducible | kernel | values | parallel |
|---|---|---|---|
| {{ c.reducible }} | {{ c.kernel }} | {{ c.values }} | {{ c.parallel }} |

{% for r in c.reasons %}- {{ r }}
{% endfor %}
## Certificate
{% if cert %}
**{{ "certified" if cert.certified else "not certified" }}** in {{ "%.2f"|format(cert.seconds) }} s
(sizes {{ cert.sizes }}). {{ cert.checked }}.
{% if cert.failure %}
Failure: {{ cert.failure }}
{% endif %}
Kept abstract: {{ cert.abstract|join("; ") }}.
{% else %}
Not run.
{% endif %}""")


def render_markdown(form: LinearAttentionForm) -> str:
    """The report as Markdown with LaTeX maths (``$…$`` and ``$$…$$``)."""
    return _MD.render(
        v=form.variant, form=form, c=form.classification, cert=form.certificate,
        eff=_effective(form, to_latex), dloss=to_latex(form.dloss),
        grads={u: to_latex(g) for u, g in form.gradients.items()},
    )


def _mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        out = convert(latex, display="block" if display else "inline")
    except Exception:  # keep the report whole; show the source instead
        return f"<code>{html.escape(latex)}</code>"
    return out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
          "pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}table{border-collapse:collapse}"
          "td,th{border:1px solid #bbb;padding:.2rem .6rem}math[display=block]{margin:.6rem 0;overflow-x:auto}")


def _markdown_to_html(md: str) -> str:
    """A small Markdown subset (headings, lists, tables, code, paragraphs, $ maths) to HTML."""
    import re

    out, in_code, in_list, table = [], False, False, []

    def inline(text):
        parts = re.split(r"(\$[^$]+\$|`[^`]+`|\*\*[^*]+\*\*)", text)
        res = []
        for p in parts:
            if p.startswith("$") and p.endswith("$") and len(p) > 1:
                res.append(_mathml(p[1:-1], False))
            elif p.startswith("`") and p.endswith("`") and len(p) > 1:
                res.append(f"<code>{html.escape(p[1:-1])}</code>")
            elif p.startswith("**") and p.endswith("**"):
                res.append(f"<strong>{html.escape(p[2:-2])}</strong>")
            else:
                res.append(html.escape(p))
        return "".join(res)

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells)
            out.append(f"<table>{body}</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if line.startswith("$$") and line.endswith("$$") and len(line) > 4:
            out.append(_mathml(line[2:-2], True))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def render_html(form: LinearAttentionForm) -> str:
    """A self-contained HTML page (MathML maths, inline styles, no external URL)."""
    body = _markdown_to_html(render_markdown(form))
    title = html.escape(f"tttla derive {form.variant.name}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(form: LinearAttentionForm, directory) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md, page = d / "report.md", d / "report.html"
    md.write_text(render_markdown(form), encoding="utf-8")
    page.write_text(render_html(form), encoding="utf-8")
    return md, page
