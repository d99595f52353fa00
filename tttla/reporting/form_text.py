"""The derived form as plain data, Unicode text and LaTeX (what ``tttla derive`` prints)."""

from __future__ import annotations

import dataclasses

import sympy

from derivations.form import LinearAttentionForm, Reason
from derivations.printing import prose_subscripts, to_latex, to_text
from derivations.reasons import decision, explanation, sentences
from derivations.shared_parts import named_if_long, parts_used
from tttla.reporting import formulas

__all__ = ["effective", "verdict", "verdict_line", "read", "PARALLELISM", "summary", "render_text",
           "render_latex", "NamedParts", "named_parts", "References", "LONG", "INLINE"]

#: an expression whose text is longer than this many characters is shown with its shared parts named
LONG = 160
#: the most characters of maths a line of prose or a table cell holds; a longer expression there is
#: replaced by a reference "(n)" to an equation displayed after it (about half a line of text)
INLINE = 60


@dataclasses.dataclass(frozen=True)
class NamedParts:
    """The gradients and the effective value v̂ with the sub-expressions they share named once,
    across all of them (``c_1, c_2, …``, :func:`derivations.shared_parts.shared_parts_of`); ``defs``
    is empty when every one is short."""

    gradients: dict
    value: sympy.Basic
    defs: list

    def new_defs(self, exprs, shown=()) -> list:
        """The definitions ``exprs`` use (directly or through others) but those named in ``shown``."""
        return [(s, d) for s, d in parts_used(exprs, self.defs) if s not in shown]


def named_parts(form: LinearAttentionForm) -> NamedParts:
    """The form's gradients and v̂, with their shared parts named when one prints longer than :data:`LONG`."""
    mains, defs = named_if_long([*form.gradients.values(), form.value], "c", LONG)
    # number the gradients' parts first, so each block of definitions reads c_1, c_2, … in order
    first = parts_used(mains[:-1], defs)
    order = first + [d for d in defs if d not in first]
    renamed = {s: sympy.MatrixSymbol(f"c_{i}", *s.shape) for i, (s, _) in enumerate(order, 1)}
    mains = [m.xreplace(renamed) for m in mains]
    return NamedParts(dict(zip(form.gradients, mains)), mains[-1],
                      [(renamed[s], d.xreplace(renamed)) for s, d in order])


class References:
    """Long expressions taken out of prose and table cells: :meth:`printer` prints an expression
    of at most :data:`INLINE` characters as it is and a longer one as ``(n)``, the number of the
    equation it is displayed in afterwards (:attr:`equations`, each expression once)."""

    def __init__(self, printer=to_text):
        self._print = printer
        self.equations: dict = {}  # expression → its number

    def placeholder(self, expr):
        """``expr``, or a symbol named ``(n)`` standing for it when it is long."""
        if not isinstance(expr, sympy.Basic) or len(to_text(expr)) <= INLINE:
            return expr
        n = self.equations.setdefault(expr, len(self.equations) + 1)
        return sympy.MatrixSymbol(f"({n})", *expr.shape) if isinstance(expr, sympy.MatrixExpr) \
            else sympy.Symbol(f"({n})")

    def printer(self, expr) -> str:
        return self._print(self.placeholder(expr))

    def reason(self, reason: Reason) -> Reason:
        """``reason`` with each long expression among its facts (or in a tuple of them) a reference."""
        def short(value):
            if isinstance(value, tuple):
                return tuple(short(v) for v in value)
            return self.placeholder(value)

        return dataclasses.replace(reason, facts={k: short(v) for k, v in reason.facts.items()})

    def sentence(self, reason: Reason) -> str:
        return f"{decision(reason)}: {explanation(self.reason(reason))}"

    def displayed(self) -> tuple[list[tuple[int, sympy.Basic]], list]:
        """The referenced expressions as ``[(n, expression), …]`` with the parts they share named
        (``u_1, u_2, …``, defined in the second list) when one is long."""
        mains, defs = named_if_long(self.equations, "u", LONG)
        return list(zip(self.equations.values(), mains)), defs


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
    return _verdict_line(verdict(form))


def _verdict_line(v: dict) -> str:
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
    """(title, [lines]) pairs of the text rendering."""
    v, c = form.variant, form.classification
    eff = effective(form, printer)
    parts = named_parts(form)
    grads = [f"∇_{u} ℓ = {printer(g)}" for u, g in parts.gradients.items()]
    grads += _where(parts.new_defs(parts.gradients.values()), printer)
    shown = {s for s, _ in parts.new_defs(parts.gradients.values())}
    value = [f"v̂ = {printer(parts.value)}", *_where(parts.new_defs([parts.value], shown), printer)]
    refs = References(printer)
    classification = [_verdict_line(verdict(form) | {"read": read(form, refs.printer)}),
                      *[f"- {refs.sentence(r)}" for r in c.reasons]]
    equations, defs = refs.displayed()
    classification += [f"  ({n}) {printer(e)}" for n, e in equations] + _where(defs, printer)
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
    out.append(("classification", classification))
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


def _where(defs, printer) -> list[str]:
    """``where c_1 = …`` and one line per further definition, indented under it."""
    return [f"    {'where' if i == 0 else '     '} {printer(s)} = {printer(d)}" for i, (s, d) in enumerate(defs)]


def render_text(form: LinearAttentionForm) -> str:
    """The form as readable Unicode text (``tttla derive``), subscripts in prose set as Unicode."""
    lines = []
    for title, body in _sections(form, to_text, lambda f: f.text):
        lines.append(title.upper() if title == "variant" else title)
        lines += [f"  {prose_subscripts(b)}" for b in body]
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
