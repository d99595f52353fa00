"""From a :class:`~derivations.form.LinearAttentionForm` to the values a template fills in.

The variant-specific code — the feature map φ, the effective value, and the increment of
every updated fast weight — is printed here from SymPy expressions by
:class:`~codegen.printer.TorchEmitter`. Gradients come from the derivation engine's
reverse-mode rules (:func:`derivations.autodiff.vjp`) with the cotangent ``∂L/∂f``, once
for all weights; every weight's increment prints as a sum over tokens ``aᵀ(∓η_U ⊙ r)`` of
the per-token rows ``r = ∂L/∂z`` at its layer; for the state W it is exactly k̂ᵀ v̂.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass

import sympy

from codegen.plan import FormPlan, biased_layer, plan
from codegen.printer import COL, ROW, WEIGHT, TorchEmitter
from codegen.scalar_printer import TorchScalarPrinter
from codegen.triton_epilogue import Epilogue, NotALinearLayer, linear_epilogue
from derivations.autodiff import canonicalize, vjp
from derivations.classify import delta_coefficient
from derivations.form import LinearAttentionForm
from derivations.loading import reference_of
from derivations.printing import to_text
from derivations.reasons import sentences
from derivations.shard import NotShardable, ShardSummary, shard_summary
from derivations.spec import HEAD
from derivations.structured import Lowering

__all__ = ["ModuleContext", "build_context", "PrintedFunction", "toolkit_version"]


def toolkit_version() -> str:
    """The installed tttla's version (stamped into every generated header); read from the package
    metadata so that codegen never imports the CLI package above it."""
    return importlib.metadata.version("tttla")


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
    slow_weights: tuple[tuple[str, str, str], ...]  # (name, rows, cols) of slow (non-updated) weights
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
    #: which forms are generated from which templates, and how each runs (codegen.plan)
    plan: FormPlan
    reasons: tuple[str, ...]
    feature_map: PrintedFunction
    effective_value: PrintedFunction | None
    increments: PrintedFunction
    #: None, or the decay's order ("decay_then_gradient" / "gradient_then_decay")
    decay: str | None = None
    #: the decay's gate: "token" (the forms take ``log_decay`` g ``[B, T, H]``), "channel" (g
    #: ``[B, T, H, Dk]``) or "head" (a constant per head, printed in ``decay_per_head``); None without
    decay_gate: str | None = None
    #: a per-head decay: the printed log γ_h of every head, and γ_h as text
    decay_per_head: PrintedFunction | None = None
    decay_per_head_text: str = ""
    #: "prefix_scan", "delta_chunk" or "sequential" (the classification's parallel form)
    parallel_form: str = "sequential"
    #: delta_chunk variants: b_t and β_t of v̂_t = b_t − β_t k̂_t S (printed), else None
    delta_terms: PrintedFunction | None = None
    #: the whole model f(x; θ) for headed/gated forms (the read is not φ(x)·W); None otherwise
    model: PrintedFunction | None = None
    #: clip each updated weight's increment column-wise, G[:, c] ← G[:, c]/(‖G[:, c]‖ + 1)
    clip: bool = False
    #: a spatial (depthwise) layer: the forms take ``grid`` and run one head per channel (see
    #: derivations.structured); everything else here describes that per-channel variant
    lowering: Lowering | None = None
    #: the bias b of a layer φ(x)·W + b read directly: the parallel forms scan the stacked state
    #: [W; b] with keys and queries [φ(x), 1]; None otherwise
    bias: str | None = None
    #: a rank-1 learning rate η_ij = a_i η_j: the forms take ``lr_position`` a ``[L]`` (TTT-Linear)
    lr_position: bool = False
    #: the VARIANT argument of ``tttla generate`` that regenerates it (derivations.loading.reference_of)
    reference: str | None = None
    #: the Triton pipeline's φ as one launch (a matmul with an element-wise epilogue), or None
    feature_kernel: Epilogue | None = None
    #: why φ is not one feature kernel (the torch feature map runs), "" when it is or there is no pipeline
    feature_kernel_reason: str = ""
    #: φ in plain text
    feature_text: str = ""
    #: v̂ = c·η·v read in place by the Triton pipeline's increments: "" (v̂ = v), the code of the per-token
    #: factor on ``inputs`` (η applied on load), or None (v̂ is materialised)
    value_on_load: str | None = None
    #: what a slice of the sequence hands to the next (derivations.shard), or None with ``shard_reason``
    shard: ShardSummary | None = None
    shard_reason: str = ""

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


def _decay_per_head(decay) -> PrintedFunction | None:
    """log γ_h of every head from the declared γ_h (a per-head decay), else None."""
    if decay is None or decay.per_head is None:
        return None
    gamma = TorchScalarPrinter().doprint(decay.per_head.subs(HEAD, sympy.Symbol("h")))
    body = "\n".join(["    h = torch.arange(heads, dtype=dtype, device=device)",
                      f"    gamma = torch.as_tensor({gamma}, dtype=dtype, device=device).expand(heads)"])
    return PrintedFunction("log_decay_per_head", ("heads", "dtype", "device"), body, "torch.log(gamma)",
                           f"log γ_h of every head ``[H]``, γ_h = {decay.per_head} (declared)")


def _effective_value(form: LinearAttentionForm, dims) -> PrintedFunction | None:
    """v̂ = ∓η ∂L/∂f when it does not depend on the state (else None)."""
    if form.y in form.dloss.free_symbols:
        return None
    per_token = form.variant.lr.kind == "per_token"
    eta = sympy.MatrixSymbol("eta", 1, 1)  # a per-token η: [B, H, T, 1]
    em = TorchEmitter({form.v: ("v", ROW), eta: ("eta", ROW)}, dims)
    step = (1 if form.variant.ascent else -1) * (eta[0, 0] if per_token else sympy.nsimplify(form.variant.lr.value))
    em.assign("v_hat", canonicalize(sympy.MatMul(step, form.dloss)))  # the printer folds the signs
    sign = "" if form.variant.ascent else "-"
    params = ("v", "eta") if per_token else ("v",)
    return PrintedFunction("effective_value", params, em.code(), "v_hat",
                           f"v̂ = {sign or '+'}η ∂L/∂f: [B, H, T, {form.variant.value_dim}]")


def _feature_kernel(form: LinearAttentionForm, triton: bool) -> tuple[Epilogue | None, str]:
    """φ as the Triton pipeline's feature kernel, or None with the reason (no reason without a pipeline)."""
    if not triton or form.feature == form.x:
        return None, ""
    try:
        return linear_epilogue(form), ""
    except NotALinearLayer as why:
        return None, str(why)


def _value_on_load(form: LinearAttentionForm) -> str | None:
    """v̂ as a per-token factor on v (see ModuleContext.value_on_load), or None when it is not c·η_t·v."""
    if form.value == form.v:
        return ""
    if not isinstance(form.value, sympy.MatMul) or [a for a in form.value.args if a.is_Matrix] != [form.v]:
        return None
    factor = sympy.Mul(*[a for a in form.value.args if not a.is_Matrix])
    eta = form.eta if isinstance(form.eta, sympy.Symbol) else None
    c = factor / eta if eta is not None else factor
    if not c.is_number or eta is None:  # a constant rate ≠ 1 (rare): v̂ is materialised
        return None
    return "inputs.eta[..., 0]" if c == 1 else f"{TorchScalarPrinter().doprint(c)} * inputs.eta[..., 0]"


def _increments(form: LinearAttentionForm, dims, multi) -> PrintedFunction:
    """ΔU = ∓Σ_i η_{U,i} ∇_U ℓ_i for every updated weight U, at the current weights.

    The vjp is linear in its cotangent, η_U is one number per token, and everything between
    the prediction and a weight's sum over tokens is per token. So the gradients are taken
    once with the cotangent G = ∂L/∂f (no η): each is a sum over tokens Σ_i a_iᵀ r_i (a
    per-token gradient, e.g. a bias's, is Σ_i r_i), whose per-token rows r — ∂L/∂z at the
    weight's layer z = a·U, shared by the weights of a layer and computed once — are scaled
    by ∓η_U where the tokens are summed: ΔU = aᵀ(∓η_U ⊙ r).
    """
    variant = form.variant
    trace = variant.trace()
    k = trace.x
    symbols = {k: ("k", ROW), form.v: ("v", ROW)}
    symbols.update({w: (n, WEIGHT) for n, w in trace.weights.items()})
    em = TorchEmitter(symbols, dims)
    if form.feature_weights or form.feature != form.x:
        em.assign("k_hat", form.feature.xreplace({form.x: k, **{form.weights[n]: trace.weights[n]
                                                               for n in form.feature_weights}}))
    if form.y in form.dloss.free_symbols and form.is_linear:  # state-dependent values read f(k)
        em.assign("prediction", trace.prediction)
    em.assign("dL_df", canonicalize(form.dloss.xreplace({form.y: trace.prediction})))
    G = sympy.MatrixSymbol("G", *trace.prediction.shape)  # the cotangent ∂L/∂f, already named
    em.names[G], em.kinds[G] = "dL_df", ROW
    sign = "" if variant.ascent else "-"
    per_token = variant.lr.kind == "per_token"

    def scale(name):  # ∓η_U: a per-token [B, H, T, 1] or a constant
        return sign + (_eta_name(name, multi) if per_token else repr(float(variant.lr.value)))

    sums = {name: _token_sums(em, canonicalize(vjp(trace.prediction, trace.weights[name], G)))
            for name in variant.update}
    order = sorted(variant.update, key=lambda n: (max(_size(r) for _, r in sums[n]),
                                                  all(a is None for a, _ in sums[n]),
                                                  variant.update.index(n)))
    results = {}
    for name in order:  # the rows nearest the prediction first: the others are computed from them
        terms, eta = [], scale(name)
        for i, (key, row) in enumerate(sums[name]):
            tag = f"_{i}" if len(sums[name]) > 1 else ""
            if key is False:  # not a sum over tokens of rows: the vjp with the scaled cotangent G_U
                G_U = sympy.MatrixSymbol(f"G_{name}", *G.shape)
                if G_U not in em.names:
                    em.names[G_U], em.kinds[G_U] = em.line(f"G_{name}", f"{eta} * dL_df", ROW, G.shape), ROW
                term = row.xreplace({G: G_U})
                code = em.value(term, f"d{name}{tag}")
                terms.append(code if em.kind_of(term) == WEIGHT else f"{code}.sum(-2, keepdim=True)")
            elif key is None:  # a per-token gradient (a bias: its key is constantly 1) sums over the tokens
                r = em.value(row, f"dL_d{name}{tag}")
                summed = f"({eta} * {r}).sum(-2" if per_token else f"{eta} * {r}.sum(-2"
                terms.append(summed + ", keepdim=True)")
            else:  # Σ_i a_iᵀ (∓η_i r_i); a constant learning rate scales the sum
                r, a = em.value(row, f"dL_dz_{name}{tag}"), em.value(key)
                terms.append(f"{a}.mT @ ({eta} * {r})" if per_token else f"{eta} * ({a}.mT @ {r})")
        results[name] = em.line(f"d{name}", " + ".join(terms), WEIGHT, trace.weights[name].shape)
    eta_params = tuple(_eta_name(n, multi) for n in variant.update) if per_token else ()
    params = ("k", "v", *eta_params, *variant.fast)
    returns = "{" + ", ".join(f'"{n}": {results[n]}' for n in variant.update) + "}"
    doc = "increments ΔU = " + ("+" if variant.ascent else "−") + "Σ_i η_i ∇_U ℓ_i of the updated weights"
    return PrintedFunction("chunk_increments", params, em.code(), returns, doc)


def _token_sums(em: TorchEmitter, grad) -> list:
    """A weight's gradient ``grad`` (linear in the cotangent) as terms ``(a, r)``: Σ_i a_iᵀ r_i
    with ``a`` a column (a transposed per-token row) and ``r`` a per-token row; ``(None, r)``
    when ``grad`` itself is per token (Σ_i r_i); ``(False, term)`` for a term of another shape."""
    if em.peek_kind(grad) != WEIGHT:
        return [(None, grad)]
    out = []
    for term in grad.args if isinstance(grad, sympy.MatAdd) else (grad,):
        split = None
        if isinstance(term, sympy.MatMul):
            scalars = [f for f in term.args if not isinstance(f, sympy.MatrixExpr)]
            mats = [f for f in term.args if isinstance(f, sympy.MatrixExpr)]
            for j in range(1, len(mats)):
                key, row = _product(mats[:j]), canonicalize(sympy.MatMul(*scalars, *mats[j:]))
                if em.peek_kind(key) == COL and em.peek_kind(row) == ROW:
                    split = (key, row)
                    break
        out.append(split or (False, term))
    return out


def _product(mats):
    return mats[0] if len(mats) == 1 else sympy.MatMul(*mats)


def _size(expr) -> int:
    """The number of distinct nodes of ``expr`` (how much of the computation it is)."""
    return len(set(sympy.preorder_traversal(expr)))


def _model(form: LinearAttentionForm, dims) -> PrintedFunction | None:
    """The whole model f(x; θ), for headed and gated forms (None when f = φ(x)·W)."""
    if form.is_linear:
        return None
    trace = form.variant.trace()
    symbols = {trace.x: ("x", ROW), **{w: (n, WEIGHT) for n, w in trace.weights.items()}}
    em = TorchEmitter(symbols, dims)
    result = em.assign("prediction", trace.prediction)
    params = ("x", *form.variant.fast)
    doc = (f"f(x; θ) = {to_text(form.head)} with "
           + ", ".join(f"{to_text(lay.z)} = {to_text(lay.layer)}" for lay in form.layers)
           + f": [B, H, T, {form.variant.key_dim}] → [B, H, T, {form.variant.value_dim}]")
    return PrintedFunction("model", params, em.code(), result, doc)


def _delta_terms(form: LinearAttentionForm, dims) -> PrintedFunction:
    """b and β of a delta_chunk variant: with ∂L/∂f = c·y + r(v) (derived), the effective value
    at the state S is v̂ = ∓η (c·k̂S + r) = b − β k̂S with b = ∓η·r and β = ±η·c."""
    variant = form.variant
    c = delta_coefficient(form.dloss, form.y)
    expanded = sympy.expand(form.dloss)
    terms = [t for t in (expanded.args if isinstance(expanded, sympy.MatAdd) else (expanded,)) if not t.has(form.y)]
    em = TorchEmitter({form.v: ("v", ROW)}, dims)
    sign = "" if variant.ascent else "-"
    per_token = variant.lr.kind == "per_token"
    eta = "eta" if per_token else repr(float(variant.lr.value))
    if terms:
        em.assign("dL_df_at_0", canonicalize(sympy.MatAdd(*terms) if len(terms) > 1 else terms[0]))
        em.lines.append(f"b = {sign}{eta} * dL_df_at_0  # [B, H, T, {variant.value_dim}]")
    else:
        em.lines.append("b = torch.zeros_like(v)  # ∂L/∂f has no term without the prediction")
    beta = -float(c) if variant.ascent else float(c)
    if per_token:
        em.lines.append(f"beta = {beta!r} * eta  # [B, H, T, 1]")
    else:
        em.lines.append(f"beta = torch.full_like(v[..., :1], {beta * float(variant.lr.value)!r})  # [B, H, T, 1]")
    params = ("v", "eta") if per_token else ("v",)
    doc = (f"b and β of v̂_t = b_t − β_t k̂_t S (∂L/∂f = {c}·f + r(v), b = {sign or '+'}η·r, β = "
           f"{'−' if variant.ascent else ''}{c}·η): [B, H, T, {variant.value_dim}], [B, H, T, 1]")
    return PrintedFunction("delta_terms", params, em.code(), "b, beta", doc)


def build_context(form: LinearAttentionForm) -> ModuleContext:
    """Collect and print everything the templates need for ``form``'s variant."""
    reference = reference_of(form.variant)
    if form.variant.spatial is not None:  # the code runs the per-channel variant the engine derived
        form = dataclasses.replace(form, variant=form.variant.lowered())
    variant = form.variant
    dims = _dim_names(variant)
    multi = len(variant.update) > 1
    sizes_of = {n: tuple(str(s) for s in shape) for n, shape in variant.fast.items()}
    sched = variant.schedule
    forms = plan(form)
    return ModuleContext(
        name=variant.name,
        description=variant.description,
        spec_hash=variant.spec_hash,
        version=toolkit_version(),
        order=sched.order,
        default_chunk=sched.chunk_size,
        fixed_chunk=sched.fixed,
        state=form.state,
        updated=tuple((n, *sizes_of[n]) for n in variant.update),
        slow_weights=tuple((n, *sizes_of[n]) for n in variant.slow_weights),
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
        plan=forms,
        reasons=sentences(form.classification.reasons),
        feature_map=_feature_map(form, dims),
        effective_value=_effective_value(form, dims) if forms.chunk_template == "prefix_scan" else None,
        increments=_increments(form, dims, multi),
        decay=variant.decay.order if variant.decay else None,
        decay_gate=variant.decay.gate if variant.decay else None,
        decay_per_head=_decay_per_head(variant.decay),
        decay_per_head_text=str(variant.decay.per_head) if variant.decay and variant.decay.per_head is not None else "",
        parallel_form=form.classification.parallel_form,
        delta_terms=_delta_terms(form, dims) if forms.chunk_template == "delta_chunk" else None,
        model=_model(form, dims),
        clip=getattr(variant, "clip", None) is not None,
        lowering=variant.lowering,
        lr_position=variant.lr.position,
        bias=biased_layer(form) if forms.chunk_template == "prefix_scan" else None,
        reference=reference,
        **_pipeline_fields(form, forms, multi),
        **_shard_fields(form),
    )


def _shard_fields(form: LinearAttentionForm) -> dict:
    """ModuleContext.shard and shard_reason."""
    try:
        return {"shard": shard_summary(form)}
    except NotShardable as why:
        return {"shard": None, "shard_reason": str(why)}


def _pipeline_fields(form: LinearAttentionForm, forms: FormPlan, multi: bool) -> dict:
    """The Triton pipeline's fused pieces (ModuleContext.feature_kernel … value_on_load)."""
    pipeline = "triton" in forms.forms and forms.chunk_template == "prefix_scan"
    simple = pipeline and not multi and biased_layer(form) is None
    kernel, reason = _feature_kernel(form, simple)
    value = _value_on_load(form) if simple else None
    reads_values = form.variant.schedule.order == "update_then_apply" or form.variant.lr.position
    if value and reads_values:  # the read's intra-chunk term takes v̂ itself
        value = None
    return {"feature_kernel": kernel, "feature_kernel_reason": reason, "feature_text": to_text(form.feature),
            "value_on_load": value}
