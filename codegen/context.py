"""From a :class:`~derivations.form.LinearAttentionForm` to the values a template fills in.

The variant-specific code — the feature map φ, the effective value, and the increment of
every updated fast weight — is printed here from SymPy expressions by
:class:`~codegen.printer.TorchEmitter`. Gradients come from the derivation engine's
reverse-mode rules (:func:`derivations.autodiff.vjp`) with a per-token cotangent
``G_U = ∓η_U ⊙ ∂L/∂f``, so every weight's increment prints as a sum over tokens
``aᵀ G``; for the state W it is exactly k̂ᵀ v̂.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from codegen.printer import ROW, WEIGHT, TorchEmitter
from derivations.autodiff import tidy, vjp
from derivations.form import LinearAttentionForm
from tttla import __version__

__all__ = ["ModuleContext", "build_context", "PrintedFunction", "COMPUTE_CHUNK"]

#: default block size of the parallel forms when the schedule fixes the step (token level)
COMPUTE_CHUNK = 64


@dataclass(frozen=True)
class PrintedFunction:
    """A generated helper: its parameters, body lines (already indented) and result."""

    name: str
    params: tuple[str, ...]
    body: str
    returns: str
    doc: str


@dataclass(frozen=True)
class ModuleContext:
    """Everything the templates need for one variant."""

    name: str
    description: str
    spec_hash: str
    version: str
    order: str
    default_chunk: int | None
    fixed_chunk: bool
    state: str
    updated: tuple[tuple[str, str, str], ...]  # (name, rows, cols) of updated weights
    static: tuple[tuple[str, str, str], ...]  # (name, rows, cols) of slow (non-updated) weights
    feature_weights: tuple[str, ...]
    key_dim: str
    value_dim: str
    state_rows: str
    per_token_lr: bool
    lr_value: float
    sign: str  # "-" (descent) or "+" (ascent)
    momentum: str | None  # None, "chunk" or "token"
    ns_coefficients: tuple | None
    ns_eps: float
    weight_norm_eps: float | None
    queries_from_keys: bool
    parallel: bool
    parallel_template: bool
    fallback_reason: str
    reasons: tuple[str, ...]
    feature_map: PrintedFunction
    effective_value: PrintedFunction | None
    increments: PrintedFunction
    #: the default *compute* chunk of the parallel forms (chunk, triton) of a variant whose
    #: schedule fixes the semantic step (token level) but whose chunked form is valid for any
    #: block size (update_then_apply, state-independent values, no momentum or Newton–Schulz);
    #: None when the chunk size is the schedule's own (or there is no parallel form)
    compute_chunk: int | None = None

    @property
    def multi_state(self) -> bool:
        return len(self.updated) > 1


def _dim_names(variant):
    return {sympy.Symbol(d, integer=True, positive=True): d for d in (*variant.dims, variant.value_dim)}


def _eta_name(name: str, multi: bool) -> str:
    return f"eta_{name}" if multi else "eta"


def _feature_map(form: LinearAttentionForm, dims) -> PrintedFunction:
    x = form.x
    symbols = {x: ("x", ROW), **{form.weights[n]: (n, WEIGHT) for n in form.feature_weights}}
    em = TorchEmitter(symbols, dims)
    result = "x" if form.feature == x else em.assign("phi", form.feature)
    params = ("x", *form.feature_weights)
    dh = form.feature.shape[1]
    doc = f"φ(x): [B, H, T, {form.variant.key_dim}] → [B, H, T, {dims.get(dh, dh)}]"
    return PrintedFunction("feature_map", params, em.code(), result, doc)


def _effective_value(form: LinearAttentionForm, dims, eta_expr) -> PrintedFunction | None:
    """v̂ = ∓η ∂L/∂f when it does not depend on the state (else None)."""
    if form.y in form.dloss.free_symbols:
        return None
    G = sympy.MatrixSymbol("G", *form.dloss.shape)
    em = TorchEmitter({form.v: ("v", ROW), G: ("G", ROW)}, dims)
    em.assign("dL_df", tidy(form.dloss))
    sign = "" if form.variant.ascent else "-"
    em.lines.append(f"v_hat = {sign}{eta_expr} * dL_df  # [B, H, T, {form.variant.value_dim}]")
    params = ("v", "eta") if form.variant.lr.kind == "per_token" else ("v",)
    return PrintedFunction("effective_value", params, em.code(), "v_hat",
                           f"v̂ = {sign or '+'}η ∂L/∂f: [B, H, T, {form.variant.value_dim}]")


def _increments(form: LinearAttentionForm, dims, multi) -> PrintedFunction:
    """ΔU = ∓Σ_i η_{U,i} ∇_U ℓ_i for every updated weight U, at the current weights."""
    variant = form.variant
    trace = variant.trace()
    k = trace.x
    symbols = {k: ("k", ROW), form.v: ("v", ROW)}
    symbols.update({w: (n, WEIGHT) for n, w in trace.weights.items()})
    em = TorchEmitter(symbols, dims)
    if form.feature_weights or form.feature != form.x:
        em.assign("k_hat", form.feature.xreplace({form.x: k, **{form.weights[n]: trace.weights[n]
                                                               for n in form.feature_weights}}))
    if form.y in form.dloss.free_symbols:  # state-dependent values read the prediction f(k)
        em.assign("prediction", trace.prediction)
    dloss = tidy(form.dloss.xreplace({form.y: trace.prediction}))
    em.assign("dL_df", dloss)
    sign = "" if variant.ascent else "-"
    per_token = variant.lr.kind == "per_token"
    results = []
    for name in variant.update:
        eta = _eta_name(name, multi) if per_token else repr(float(variant.lr.value))
        G = sympy.MatrixSymbol(f"G_{name}", *trace.prediction.shape)
        g_name = "v_hat" if name == form.state else f"G_{name}"
        em.names[G], em.kinds[G] = g_name, ROW
        em._used.add(g_name)
        em.lines.append(f"{g_name} = {sign}{eta} * dL_df  # [B, H, T, {variant.value_dim}]")
        results.append(em.assign(f"d{name}", tidy(vjp(trace.prediction, trace.weights[name], G))))
    eta_params = tuple(_eta_name(n, multi) for n in variant.update) if per_token else ()
    params = ("k", "v", *eta_params, *variant.fast)
    returns = "{" + ", ".join(f'"{n}": {r}' for n, r in zip(variant.update, results)) + "}"
    doc = "increments ΔU = " + ("+" if variant.ascent else "−") + "Σ_i η_i ∇_U ℓ_i of the updated weights"
    return PrintedFunction("chunk_increments", params, em.code(), returns, doc)


def build_context(form: LinearAttentionForm) -> ModuleContext:
    """Collect and print everything the templates need for ``form``'s variant."""
    variant = form.variant
    dims = _dim_names(variant)
    multi = len(variant.update) > 1
    sizes_of = {n: tuple(str(s) for s in shape) for n, shape in variant.fast.items()}
    sched = variant.schedule
    token_steps = sched.order == "update_then_apply"
    template_ok = form.parallel and not (token_steps and (variant.momentum or variant.orthogonalize))
    if not form.parallel:
        fallback = "; ".join(r for r in form.classification.reasons if r.startswith("not parallel")) or \
            "it is not an associative prefix scan"
    elif not template_ok:
        fallback = ("per-token steps with momentum or Newton–Schulz are not expressed as a chunked "
                    "prefix sum yet")
    else:
        fallback = ""
    eta_expr = "eta" if variant.lr.kind == "per_token" else repr(float(variant.lr.value))
    return ModuleContext(
        name=variant.name,
        description=variant.description,
        spec_hash=variant.spec_hash,
        version=__version__,
        order=sched.order,
        default_chunk=sched.chunk_size,
        fixed_chunk=sched.fixed,
        state=form.state,
        updated=tuple((n, *sizes_of[n]) for n in variant.update),
        static=tuple((n, *sizes_of[n]) for n in variant.static),
        feature_weights=form.feature_weights,
        key_dim=variant.key_dim,
        value_dim=variant.value_dim,
        state_rows=sizes_of[form.state][0],
        per_token_lr=variant.lr.kind == "per_token",
        lr_value=float(variant.lr.value),
        sign="+" if variant.ascent else "-",
        momentum=variant.momentum.per if variant.momentum else None,
        ns_coefficients=variant.orthogonalize.coefficients if variant.orthogonalize else None,
        ns_eps=variant.orthogonalize.eps if variant.orthogonalize else 0.0,
        weight_norm_eps=variant.weight_norm.eps if variant.weight_norm else None,
        queries_from_keys=variant.queries == "key",
        parallel=form.parallel,
        parallel_template=template_ok,
        fallback_reason=fallback,
        reasons=form.classification.reasons,
        feature_map=_feature_map(form, dims),
        effective_value=_effective_value(form, dims, eta_expr) if template_ok else None,
        increments=_increments(form, dims, multi),
        compute_chunk=COMPUTE_CHUNK if template_ok and sched.fixed and token_steps else None,
    )
