"""Presenting a :class:`LinearAttentionForm`: text, LaTeX, JSON, and a Markdown/HTML report.

The HTML report is self-contained: maths is converted to MathML at build time
(``latex2mathml``), styles are inline, and it names no external URL, so it renders offline.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from derivations.form import LinearAttentionForm
from derivations.printing import to_latex, to_text, with_parts

__all__ = ["summary", "render_text", "render_latex", "render_json", "render_markdown", "render_html", "write_report",
           "SECTIONS", "THEOREMS", "cited", "md_title", "markdown_to_html", "html_page", "write_pages"]


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
        "parallel_form": c.parallel_form,
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
    grads = [line for u, g in form.gradients.items() for line in _lines(f"∇_{u} ℓ", g, printer)]
    value = _lines("v̂", form.value, printer)
    out = [
        ("variant", [f"{v.name}: {v.description}", f"f(x) = φ(x)·{form.state}, φ(x) = {eff['feature']}"]),
        ("gradients of ℓ = L(f(k), v) (our reverse-mode rules)", [f"∂L/∂f = {printer(form.dloss)}", *grads]),
        ("effective linear attention (Theorems 5.1–5.3)", [
            f"q̂ = {eff['query']}", f"k̂ = {eff['key']}", *value, f"S_0 = {eff['state0']}",
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
        f"parallel: {'yes' if c.parallel else 'no'} · parallel form: {c.parallel_form}",
        *[f"- {r}" for r in c.reasons]]))
    cert = form.certificate
    if cert is not None:
        status = "CERTIFIED" if cert.certified else f"NOT certified: {cert.failure}"
        out.append(("certificate", [f"{status} ({cert.seconds:.2f} s)", cert.checked,
                                    "kept abstract: " + "; ".join(cert.abstract)]))
    return out


def _lines(lhs: str, expr, printer) -> list[str]:
    """``lhs = expr``; a long expression with its shared parts named on ``where`` lines."""
    main, parts = with_parts(expr, printer)
    return [f"{lhs} = {main}", *(f"    {'where' if i == 0 else '     '} {p}" for i, p in enumerate(parts))]


def _display_math(lhs: str, expr) -> str:
    """``$$lhs = expr$$`` (Markdown); a long expression with its shared parts named, one per line."""
    main, parts = with_parts(expr, to_latex)
    out = f"$${lhs} = {main}$$\n\n"
    if parts:
        out += "where\n\n" + "".join(f"$${p}$$\n\n" for p in parts)
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


#: What each reference cited by a classification reason says (``reference/ttt-math.md``).
THEOREMS = {
    "Theorem 5.1": "one gradient step on a layer f(x) = φ(x)·W that is linear and bias-free in W adds the rank-1 "
    "term φ_t(k)ᵀ g_t(k) with g_t = −η ∂L/∂f, so the read o = φ_{t+1}(q)(W_t + φ_t(k)ᵀ g_t(k)) is linear "
    "attention with q̂ = φ_{t+1}(q), k̂ = φ_t(k), v̂ = g_t(k), S_0 = W_t (single step).",
    "Theorem 5.2": "one step per token unrolls to W_{t+1} = W_0 + Σ_{i≤t} φ_i(k_i)ᵀ g_i(k_i): extended linear "
    "attention, whose kernel φ_i is dynamic (depends on the history) exactly when weights inside φ are updated.",
    "Theorem 5.3": "with momentum α the read is φ_{t+1}(q_t)(W_0 + Σ_i φ_i(k_i)ᵀ m_i), m_i = g_i Σ_{j=i}^{t} β_i^j, "
    "β_i^j = Π_{s=i+1}^{j} α_s: momentum only remixes the values.",
    "Section 3": "the effective value g = −η ∂L/∂f: a dot-product loss gives values that do not read the state; a "
    "squared loss gives ∂L/∂f = f − v, which reads the current state (the delta rule).",
    "Section 4": "components: a dynamic kernel, a weight norm (Norm(A + B) ≠ Norm(A) + Norm(B)) or state-dependent "
    "values need the previous state; per-token η, momentum and per-chunk Newton–Schulz keep a prefix sum.",
    "Section 5": "the parallel chunked form: with a static kernel, state-independent values and no weight norm, the "
    "chunk increments φ(K_n)ᵀṼ_n are computed at once and the state is a prefix sum of them.",
    "Section 5.1": "the rewrite needs a last layer that is linear and bias-free in an updated fast weight.",
}

_REF = re.compile(r"(Theorems? 5\.\d(?:[–-]5\.\d)?|Section \d(?:\.\d)?)")


def cited(reason: str) -> list[str]:
    """The theorems and sections a reason cites, in order (``Theorems 5.1–5.3`` expands)."""
    out = []
    for ref in _REF.findall(reason):
        if ref.startswith("Theorems"):
            lo, hi = (int(x[-1]) for x in re.split(r"[–-]", ref.split()[1]))
            refs = [f"Theorem 5.{i}" for i in range(lo, hi + 1)]
        else:
            refs = [ref]
        out += [r for r in refs if r not in out]
    return out


def _decision(reason: str) -> tuple[str, str]:
    """``("kernel static", "only W is updated …")`` from ``"kernel static: only W …"``."""
    head, sep, rest = reason.partition(": ")
    return (head, rest) if sep and len(head) < 40 else ("", reason)


# ---- Markdown sections of the derivation report; each takes the form and returns Markdown ----

def md_declaration(form: LinearAttentionForm) -> str:
    """The declaration as written, and its settings."""
    v = form.variant
    settings = "".join(f"- **{key}**: {value}\n" for key, value in v.summary().items())
    return f"## Declaration\n\n```python\n{v.source.rstrip()}\n```\n\n{settings}"


def md_gradients(form: LinearAttentionForm) -> str:
    """The inner loss, the split f(x) = φ(x)·W and the gradient of every updated fast weight."""
    eff = _effective(form, to_latex)
    loss = to_latex(form.variant.trace().loss)
    grads = "".join(_display_math(f"\\nabla_{{{u}}} \\ell", g) for u, g in form.gradients.items())
    return (
        "## Inner loss and gradients (derived by our reverse-mode rules)\n\n"
        f"Inner loss of the prediction $y = f(k)$ and the value $v$:\n\n$$L(y, v) = {loss}$$\n\n"
        f"The model splits as a feature map and a last linear layer:\n\n"
        f"$$f(x) = \\phi(x)\\,{form.state},\\qquad \\phi(x) = {eff['feature']}$$\n\n"
        f"$$\\frac{{\\partial L}}{{\\partial f}} = {to_latex(form.dloss)}$$\n\n"
        f"Gradient of $\\ell = L(f(k), v)$ for each updated fast weight:\n\n{grads}"
    )


def md_effective(form: LinearAttentionForm) -> str:
    """The effective query, key, value and initial state."""
    eff = _effective(form, to_latex)
    value = _display_math(r"\hat v", form.value)
    return (
        "## Effective linear attention (Theorems 5.1–5.3)\n\n"
        f"$$\\hat q = {eff['query']}$$\n\n$$\\hat k = {eff['key']}$$\n\n{value}"
        f"$$S_0 = {eff['state0']}$$\n\nLearning rate: {form.lr_placement}\n"
    )


def md_unrolled(form: LinearAttentionForm) -> str:
    """The unrolled state, the mask and, with momentum, its coefficients."""
    out = ["## Unrolled state\n"]
    out += [f"$${f.latex}$$\n" for f in form.unrolled]
    out.append(f"Mask ({form.mask}): ${form.mask_formula.latex}$\n")
    if form.chunk_transform:
        out.append(f"Chunk transform: {form.chunk_transform}\n")
    if form.momentum:
        out.append("## Momentum coefficients (Theorem 5.3)\n")
        out += [f"$${f.latex}$$\n" for f in form.momentum]
    if form.kernel_recurrence:
        out.append("## Dynamic kernel\n")
        out += [f"$${f.latex}$$\n" for f in form.kernel_recurrence]
    return "\n".join(out)


def md_classification(form: LinearAttentionForm) -> str:
    """The classification, each reason with the theorem or section it rests on."""
    c = form.classification
    rows = []
    for reason in c.reasons:
        decision, why = _decision(reason)
        basis = ", ".join(cited(reason)) or "-"
        rows.append(f"| {decision or '-'} | {why.replace('|', '/')} | {basis} |")
    refs = []
    for reason in c.reasons:
        refs += [r for r in cited(reason) if r not in refs]
    statements = "".join(f"- **{r}**: {THEOREMS[r]}\n" for r in refs if r in THEOREMS)
    return (
        "## Classification\n\n"
        "| reducible | kernel | values | parallel | parallel form |\n|---|---|---|---|---|\n"
        f"| {c.reducible} | {c.kernel} | {c.values} | {c.parallel} | {c.parallel_form} |\n\n"
        "| decision | reason | rests on |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + (f"What the cited results say:\n\n{statements}" if statements else "")
    )


def md_certificate(form: LinearAttentionForm) -> str:
    """The exact symbolic certificate (or that it was not run)."""
    cert = form.certificate
    if cert is None:
        return "## Certificate\n\nNot run.\n"
    status = "certified" if cert.certified else "not certified"
    out = (f"## Certificate\n\n**{status}** in {cert.seconds:.2f} s (sizes {cert.sizes}). {cert.checked}.\n\n")
    if cert.failure:
        out += f"Failure: {cert.failure}\n\n"
    return out + f"Kept abstract: {'; '.join(cert.abstract)}.\n"


#: the derivation report's sections, in order (the full ``tttla report`` appends its own)
SECTIONS = (md_declaration, md_gradients, md_effective, md_unrolled, md_classification, md_certificate)


def md_title(form: LinearAttentionForm, kind: str = "Derivation report") -> str:
    return f"# {kind}: `{form.variant.name}`\n\n{form.variant.description}\n"


def render_markdown(form: LinearAttentionForm) -> str:
    """The report as Markdown with LaTeX maths (``$…$`` and ``$$…$$``)."""
    return "\n".join([md_title(form), *(section(form) for section in SECTIONS)])


def _mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        out = convert(latex, display="block" if display else "inline")
    except Exception:  # keep the report whole; show the source instead
        return f"<code>{html.escape(latex)}</code>"
    return out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
          "pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}table{border-collapse:collapse;margin:.6rem 0}"
          "td,th{border:1px solid #bbb;padding:.2rem .6rem;vertical-align:top}th{background:#eee}"
          "math[display=block]{margin:.6rem 0}img{max-width:100%}")

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")


def _image(alt: str, src: str, images: dict) -> str:
    """``<img>`` with the PNG bytes of ``images[src]`` as a data URI (never a link)."""
    if src not in images:
        raise KeyError(f"image {src!r} is referenced but not given")
    data = base64.b64encode(images[src]).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def markdown_to_html(md: str, images: dict | None = None) -> str:
    """A small Markdown subset (headings, lists, tables, code, paragraphs, $ maths, images on
    their own line) to HTML; ``images`` maps each image's file name to its PNG bytes, which are
    embedded as data URIs so the page needs no other file."""
    images = images or {}
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
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table]
            has_head = len(cells) > 1 and all(set(c) <= set("-: ") for c in cells[1])
            head = ("<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr></thead>"
                    if has_head else "")
            rows = cells[2:] if has_head else cells
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table>{head}<tbody>{body}</tbody></table>")
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
        image = _IMAGE.match(line.strip())
        if image:
            out.append(_image(image.group(1), image.group(2), images))
        elif line.startswith("$$") and line.endswith("$$") and len(line) > 4:
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


def html_page(title: str, body: str) -> str:
    """A whole HTML document around ``body``: inline styles, no script, no external URL."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def render_html(form: LinearAttentionForm) -> str:
    """A self-contained HTML page (MathML maths, inline styles, no external URL)."""
    return html_page(f"tttla derive {form.variant.name}", markdown_to_html(render_markdown(form)))


def write_pages(directory, markdown: str, page: str, images: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the images ``report.md`` links to (``name → PNG bytes``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md, html_path = d / "report.md", d / "report.html"
    md.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    for name, data in (images or {}).items():
        (d / name).write_bytes(data)
    return md, html_path


def write_report(form: LinearAttentionForm, directory) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``directory`` (created if needed)."""
    return write_pages(directory, render_markdown(form), render_html(form))
