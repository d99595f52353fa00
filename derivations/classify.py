"""Is a variant linear attention, and can it run as a parallel prefix scan? With reasons.

:func:`split_model` takes the model apart as ``f(x) = head(z_1, …, z_m; x)`` with linear layers
``z_j = φ_j(x)·W_j (+ b_j)`` in updated fast weights (a plain model φ(x)·W is one layer under
the identity head), or raises a :class:`ReductionError` naming the offending sub-expression;
:func:`classify` decides the structure, the kernel (static/dynamic), the values
(state-independent/dependent), parallelism and the parallel form, one reason per decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from derivations.autodiff import scalar_function
from derivations.errors import ReductionError
from derivations.form import Classification
from derivations.printing import function_name, to_text
from derivations.variant import Trace, Variant

__all__ = ["lowering_reason", "clip_clause", "one_step_reason", "check_supported", "Layer", "split_model",
           "classify", "delta_coefficient", "parallel_form_of"]

_CONSTANTS = (sympy.OneMatrix, sympy.ZeroMatrix, sympy.Identity)


def kernel_kind(variant, feature_weights, static_detail: str, no_features: str) -> tuple[str, str]:
    """``("static" | "dynamic", reason)``: dynamic when the inner loop updates a weight inside φ
    (Theorem 5.2). ``static_detail`` and ``no_features`` word the static case for the caller's form."""
    dyn = [u for u in variant.update if u in feature_weights]
    if dyn:
        return "dynamic", (
            f"kernel dynamic: the inner loop also updates {', '.join(dyn)} inside φ, so k̂_i = φ_i(k_i) and "
            "q̂_t = φ_{t+1}(q_t) change with the history (Theorem 5.2)"
        )
    slow = f" ({', '.join(feature_weights)} stay slow weights)" if feature_weights else no_features
    return "static", f"kernel static: {static_detail}{slow}, so q̂ = φ(q) and k̂ = φ(k) (Theorem 5.2)"

def lowering_reason(variant) -> str | None:
    """Why a spatial (depthwise) variant may be derived one channel at a time, or None."""
    sp = getattr(variant, "spatial", None)
    if sp is None:
        return None
    k = sp.kernel
    return (
        f"lowered per channel: every fast weight is a depthwise {k}×{k} kernel, the model reads the input only "
        "through depthwise_conv and the loss is a sum over channels, so the channels are independent layers; in "
        f"channel c the key is the {k}×{k} patch ψ_c(K, p) = (K_(c, p+Δ))_Δ, a 1 × {k * k} row, and the state is "
        f"the channel's kernel, {k * k} × 1: sliding-window linear attention, one head per channel (Section 7.5, "
        "App. G)"
    )


def clip_clause(variant) -> str:
    """The clip's effect on parallelism, as a clause to append to a 'parallel' reason ('' without a clip)."""
    clip = getattr(variant, "clip", None)
    if clip is None:
        return ""
    return (f"; the {clip.describe()} rescales each step's increment by factors reduced over that step's whole "
            "update set (a diagonal rescale, Section 4), so it applies to whole chunk increments, not to tokens")


def one_step_reason(variant) -> str:
    """Why one bidirectional step is parallel whatever the values and the kernel."""
    return ("parallel: one bidirectional step, so every value is taken at the initial state S_0 and the increments "
            f"k̂ᵀv̂ of all tokens are one batched sum (a prefix scan of length one){clip_clause(variant)}")


def check_supported(expr, where: str) -> None:
    """Raise :class:`ReductionError` at the first IR node the engine has no rule for."""
    if isinstance(expr, (sympy.MatrixSymbol, *_CONSTANTS)):
        return
    if isinstance(expr, ElementwiseApplyFunction):
        if function_name(expr.function) is None:
            body = scalar_function(expr.function)[1]
            raise ReductionError(
                f"{where}: unsupported function {body.func} in {to_text(expr)}: it is not in the function "
                "table (add it with derivations.functions.register, with a SymPy derivative)"
            )
        check_supported(expr.expr, where)
        return
    if isinstance(expr, (sympy.MatMul, sympy.MatAdd, sympy.HadamardProduct, sympy.Transpose)):
        for a in expr.args:
            if isinstance(a, sympy.MatrixExpr):
                check_supported(a, where)
            elif a.atoms(MatrixElement):
                for el in a.atoms(MatrixElement):
                    check_supported(el.parent, where)
        return
    raise ReductionError(
        f"{where}: unsupported operation {type(expr).__name__} in {to_text(expr)}; the engine differentiates "
        "products, sums, transposes, element-wise products and the table's element-wise functions"
    )


@dataclass(frozen=True)
class Layer:
    """One linear layer ``z = φ(x)·W (+ b)`` of the model, with ``W`` (and ``b``) updated.

    ``bias`` is an updated ``1 × n`` fast weight added to the layer: a key that is
    constantly 1, so the state is ``[W; b]`` and the key ``[φ(x), 1]``. ``z`` is the symbol
    that stands for the layer's output in the model's head.
    """

    state: str
    bias: str | None
    feature: sympy.MatrixExpr
    layer: sympy.MatrixExpr
    z: sympy.MatrixSymbol


def split_model(variant: Variant, trace: Trace) -> tuple[tuple[Layer, ...], sympy.MatrixExpr]:
    """``(layers, head)`` with ``f(x) = head(z_1, …, z_m; x)``, ``z_j = φ_j(x)·W_j (+ b_j)``.

    The outermost linear layers in updated fast weights are taken out of the traced model
    (each layer replaced, wherever it occurs, by a symbol ``z_j``) until the rest — the
    *head* — no longer contains an updated fast weight. The head is ``z`` itself for
    φ(x)·W (the identity head), ``x + LN(z)`` for TTT-Linear, ``z_1 ⊙ silu(z_2)`` for a ViTTT
    GLU. Updated weights inside φ_j (TTT-MLP's first layer) make the kernel dynamic.

    Raises:
        ReductionError: an operation or function the engine cannot differentiate, or an
            updated fast weight used outside any linear layer; the message names the
            sub-expression and says why the output is not φ(x)·W either.
    """
    pred = trace.prediction
    check_supported(pred, f"variant {variant.name!r}: the model")
    updated = {u: trace.weights[u] for u in variant.update}
    head, layers, taken = pred, [], {}
    for node in _preorder(pred):
        if not any(head.has(w) for w in updated.values()):
            break
        cand = _layer_candidate(node, trace, variant)
        if cand is None or node in taken or not head.has(node):
            continue
        W, bias, phi = cand
        z = sympy.MatrixSymbol(f"z_{W}", *node.shape)
        head = head.xreplace({node: z})
        taken[node] = z
        layers.append(Layer(W, bias, phi, node, z))
    left = [u for u, w in updated.items() if head.has(w)]
    if left:
        raise ReductionError(f"{_why_not_plain(variant, trace)}; and as linear layers under an output head: "
                             f"{_why_not_layers(variant, trace, layers, head, left[0])}")
    return tuple(layers), head


def _layer_candidate(node, trace, variant):
    """``(W, bias, φ)`` when ``node`` is φ(x)·W (+ b) with W, b updated, else None."""
    names = {w: n for n, w in trace.weights.items()}
    updated = {trace.weights[u] for u in variant.update}
    bias = None
    product = node
    if isinstance(node, sympy.MatAdd):
        products = [t for t in node.args if isinstance(t, sympy.MatMul)]
        rest = [t for t in node.args if not isinstance(t, sympy.MatMul)]
        if len(products) != 1 or len(rest) != 1 or rest[0] not in updated or rest[0].shape[0] != 1:
            return None
        product, bias = products[0], names[rest[0]]
    if not isinstance(product, sympy.MatMul):
        return None
    scalars, inner, last = _factors(product)
    if last not in updated or not inner:
        return None
    if any(a.has(last) for a in inner) or any(s.has(last) for s in scalars):
        return None
    if bias is not None and any(a.has(trace.weights[bias]) for a in inner):
        return None
    phi = _feature(scalars, inner)
    if not phi.has(trace.x):
        return None
    return names[last], bias, phi


def _factors(product: sympy.MatMul):
    """``(scalars, inner matrices, last matrix)`` of a matrix product."""
    scalars = [a for a in product.args if not isinstance(a, sympy.MatrixExpr)]
    mats = [a for a in product.args if isinstance(a, sympy.MatrixExpr)]
    return scalars, mats[:-1], mats[-1]


def _feature(scalars, inner):
    """φ = the product of everything before the last layer's weight."""
    return sympy.MatMul(*scalars, *inner) if scalars or len(inner) > 1 else inner[0]


def _preorder(expr):
    yield expr
    for a in expr.args:
        if isinstance(a, sympy.MatrixExpr):
            yield from _preorder(a)


def _why_not_plain(variant: Variant, trace: Trace) -> str:
    """Why the model's output is not φ(x)·W read directly, with W an updated fast weight outside
    φ and no bias (Section 5.1)."""
    pred = trace.prediction
    out = to_text(pred)
    head = f"variant {variant.name!r}: the model's output {out} is not linear in a fast weight"
    if isinstance(pred, sympy.MatAdd):
        biases = [t for t in pred.args if not t.has(trace.x)]
        if biases:
            b = " + ".join(to_text(t) for t in biases)
            return (f"{head}: ... + {b}: a bias on the last layer (Section 5.1 needs a linear, bias-free last "
                    "layer; append a constant-1 feature to φ instead)")
        return f"{head}: last operation is a sum of {len(pred.args)} terms, not one product φ(x)·W"
    if isinstance(pred, ElementwiseApplyFunction):
        return f"{head}: last operation is {function_name(pred.function)}"
    if isinstance(pred, sympy.HadamardProduct):
        return f"{head}: last operation is an element-wise product (⊙)"
    if isinstance(pred, sympy.Transpose):
        return f"{head}: last operation is a transpose"
    if not isinstance(pred, sympy.MatMul):
        return f"{head}: the output is {out} itself, with no last layer φ(x)·W"
    scalars, inner, last = _factors(pred)
    names = {w: n for n, w in trace.weights.items()}
    if last not in names:
        return f"{head}: its last factor {to_text(last)} is not a fast weight"
    W = names[last]
    if W not in variant.update:
        return (f"variant {variant.name!r}: the last layer {W} of {out} is not updated by the inner loop, so the "
                "output is not a linear-attention read of a changing state (update it, Theorem 5.1)")
    if not inner or any(a.has(last) for a in inner) or any(s.has(last) for s in scalars):
        return f"{head}: {W} also appears inside the feature map φ (or there is no φ)"
    return f"{head}: the feature φ = {to_text(_feature(scalars, inner))} does not read the input row"


def _why_not_layers(variant: Variant, trace: Trace, layers, head, u: str) -> str:
    """Where the updated fast weight ``u`` is left in the head: the smallest sub-expression
    using it other than as a linear layer."""
    w = trace.weights[u]
    smallest = head
    for n in _preorder(head):
        if n.has(w) and n != w and n.count_ops() < smallest.count_ops():
            smallest = n
    taken_text = ", ".join(f"{to_text(lay.z)} = {to_text(lay.layer)}" for lay in layers) or "none"
    return (f"variant {variant.name!r}: the model's output {to_text(trace.prediction)} is not linear attention: "
            f"the updated fast weight {u} enters it through {to_text(smallest)}, which is not a linear layer "
            f"φ(x)·{u} (+ bias) with {u} outside φ (linear layers taken out: {taken_text}; Section 5.1)")


def delta_coefficient(dloss, y):
    """c when ∂L/∂f = c·y + r with r free of the prediction y and c a nonzero number, i.e.
    ∂L/∂f is affine in y with Jacobian c·I (½‖f − v‖²: c = 1; c·‖f − v‖²: 2c); else None."""
    expanded = sympy.expand(dloss)
    c = sympy.Integer(0)
    for term in expanded.args if isinstance(expanded, sympy.MatAdd) else (expanded,):
        if not term.has(y):
            continue
        if term == y:
            c += 1
            continue
        if isinstance(term, sympy.MatMul):
            scalars = [a for a in term.args if not isinstance(a, sympy.MatrixExpr)]
            mats = [a for a in term.args if isinstance(a, sympy.MatrixExpr)]
            if mats == [y] and all(s.is_number for s in scalars):
                c += sympy.Mul(*scalars)
                continue
        return None
    c = sympy.nsimplify(c)
    return c if c != 0 else None


def parallel_form_of(variant: Variant, kernel: str, indep: bool, parallel: bool, dloss, y) -> tuple[str, str | None]:
    """The parallel form (``prefix_scan``, ``delta_chunk`` or ``sequential``) and, unless it is
    the prefix scan (whose reason is already given), one sentence saying why."""
    if parallel:
        return "prefix_scan", None
    c = delta_coefficient(dloss, y)
    sched = variant.schedule
    blockers = []
    if kernel == "dynamic":
        blockers.append("the kernel is dynamic")
    if not indep and c is None:
        blockers.append(f"∂L/∂f = {to_text(dloss)} is not affine in the prediction with Jacobian c·I")
    if variant.weight_norm is not None:
        blockers.append("weight norm is not affine in the state")
    if variant.orthogonalize is not None:
        blockers.append("Newton–Schulz is not affine in the state")
    if variant.momentum is not None:
        blockers.append("momentum carries a second state (the momentum buffer)")
    if not (sched.order == "update_then_apply" and sched.fixed and sched.chunk_size == 1):
        blockers.append("the steps are not one per token")
    if not blockers:
        gated = getattr(variant, "decay", None) is not None
        beta = to_text((-c if variant.ascent else c) * sympy.Symbol("η_t"))
        return "delta_chunk", (
            f"chunk-parallel (delta_chunk): ∂L/∂f = {to_text(dloss)} is affine in the prediction with Jacobian "
            f"{c}·I and there is one step per token, so each step is the affine map "
            f"S ↦ {'γ_t' if gated else ''}(I − β_t k̂_tᵀk̂_t)S + k̂_tᵀb_t with β_t = {beta} (Section 3, the delta "
            "rule); such maps compose in DeltaNet's WY/UT representation, so a chunk's steps become one "
            "triangular solve (I + A)⁻¹ and matrix products"
            + (" with cumulative log-decays inside the chunk (gated DeltaNet)" if gated else "")
            + ", and only the chunk states are sequential"
        )
    within = ""
    if kernel == "static" and not indep and sched.order == "update_then_apply" and (sched.chunk_size or 1) > 1:
        within = ("; within a chunk every gradient is taken at the chunk-start state, so each chunk is exact "
                  "linear attention (Section 3), and the chunks run as a scan")
    return "sequential", f"sequential: no chunked parallel form, because {'; '.join(blockers)}{within}."


def classify(variant: Variant, layers, head, feature_weights, dloss_z, dloss, y) -> Classification:
    """Structure, kernel, values, parallelism and parallel form of ``f = head(z_1, …; x)``.

    ``dloss_z`` maps each layer's state to ∂ℓ/∂z_j of the effective loss ℓ = L(head(z), v);
    ``dloss`` is ∂L/∂f of the declared loss in the prediction ``y``. One bias-free layer read
    directly (structure ``"linear"``, f = φ(x)·W) is worded in terms of ∂L/∂f and may have
    DeltaNet's chunk form; a head or a bias is worded in terms of ∂ℓ/∂z.
    """
    structure = "gated" if len(layers) > 1 else ("linear" if head == layers[0].z else "headed")
    plain = structure == "linear" and layers[0].bias is None
    reasons = [r for r in (lowering_reason(variant),) if r]
    reasons += _reducible_reasons(layers, head, structure, dloss_z, plain)
    W = layers[0].state
    kernel, reason = (kernel_kind(variant, feature_weights, f"only {W} is updated", " (φ is the identity)") if plain
                      else kernel_kind(variant, feature_weights, "no updated weight inside φ", ""))
    reasons.append(reason)
    dependent = {u: sorted(to_text(lay.z) for lay in layers if g.has(lay.z)) for u, g in dloss_z.items()}
    indep = not any(dependent.values())
    reasons.append(_values_reason(indep, plain, structure, layers, dependent, dloss))
    one_step = variant.schedule.order == "bidirectional"
    blockers = []
    if kernel == "dynamic" and not one_step:
        blockers.append("the kernel is dynamic (φ_t depends on the whole history, Section 4)")
    if not indep and not one_step:
        blockers.append("values depend on the state, so each increment needs the previous state (Section 3)" if plain
                        else "values depend on the state, so each chunk's increment needs the previous chunk's state "
                        "(exact linear attention within a chunk, whose gradients are all taken at the chunk-start "
                        "state; sequential across chunks, Section 3)")
    if variant.weight_norm is not None:
        blockers.append("weight norm wraps every step, and Norm(A + B) ≠ Norm(A) + Norm(B) (Section 4)")
    if blockers:
        reasons.append("not parallel: " + "; ".join(blockers) + ".")
    elif one_step:
        reasons.append(one_step_reason(variant))
    else:
        reasons.append(_prefix_scan_reason(variant, plain))
    if plain:
        parallel_form, why = parallel_form_of(variant, kernel, indep, not blockers, dloss, y)
    else:  # DeltaNet's chunk form is generated for φ(x)·W only
        parallel_form, why = ("sequential" if blockers else "prefix_scan"), None
    if why:
        reasons.append(why)
    values = "state_independent" if indep else "state_dependent"
    return Classification(True, kernel, values, not blockers, tuple(reasons), parallel_form, structure)


def _reducible_reasons(layers, head, structure, dloss_z, plain) -> list[str]:
    """Why each layer is a linear-attention update (Theorem 5.1), and how the head combines them."""
    if plain:
        W = layers[0].state
        return [f"reducible: the model is φ(x)·{W} with {W} an updated fast weight and no bias, so a gradient step "
                f"on {W} adds the rank-1 term φ_t(k)ᵀ g_t(k) (Theorem 5.1)"]
    out = []
    for lay in layers:
        bias = (f" + {lay.bias}, the bias being a key constantly 1 (state [{lay.state}; {lay.bias}], key "
                f"[φ(x), 1])" if lay.bias else "")
        out.append(
            f"reducible: {to_text(lay.z)} = {to_text(lay.layer)} is a linear layer φ(x)·{lay.state}{bias} in updated "
            f"fast weights, so a gradient step on it adds the rank-1 term k̂ᵀ v̂ with v̂ = −η ∂ℓ/∂z (Theorem 5.1)"
        )
    if structure == "gated":
        out.append(
            f"gated: the output {to_text(head)} combines {len(layers)} linear-attention reads "
            f"({', '.join(to_text(lay.z) for lay in layers)}), each linear in its own updated weight; "
            "the combination is element-wise (a GLU of linear attentions, Section 7.4 set form)"
        )
    elif structure == "headed":
        out.append(
            f"output head: f = {to_text(head)} with {to_text(layers[0].z)} the last linear layer; the head is "
            "absorbed into the effective loss ℓ(z) = L(head(z), v), so v̂ = −η ∂ℓ/∂z = "
            f"−η·{to_text(dloss_z[layers[0].state])}"
            " (Section 3, LN-MSE)"
        )
    return out


def _values_reason(indep, plain, structure, layers, dependent, dloss) -> str:
    """Whether v̂ reads the state (Section 3)."""
    if plain and indep:
        return (f"values state-independent: ∂L/∂f = {to_text(dloss)} does not involve the prediction, so "
                "v̂_i = g_i(k_i) depends only on (k_i, v_i, η_i) (Section 3)")
    if plain:
        return (f"values state-dependent: ∂L/∂f = {to_text(dloss)} involves the prediction f_t(k) = φ_t(k)W_t, so "
                "v̂ reads the state (Section 3; for ½‖f − v‖² this is the delta rule)")
    if indep:
        return "values state-independent: ∂ℓ/∂z does not involve the layers' outputs (Section 3)"
    which = "; ".join(f"∂ℓ/∂{to_text(next(lay.z for lay in layers if lay.state == u))} reads {', '.join(zs)}"
                      for u, zs in dependent.items() if zs)
    through = ", nonlinearly through the head" if structure != "linear" else ""
    return f"values state-dependent: {which}, i.e. the prediction at the current state{through} (Section 3)"


def _prefix_scan_reason(variant: Variant, plain: bool) -> str:
    """Why a static kernel with state-independent values is an associative prefix sum (Section 5)."""
    if not plain:
        return ("parallel: static kernel and state-independent values, so chunk increments are precomputable and "
                "the state is an associative prefix sum (Section 5)")
    keep = [c for c, on in (("per-token η", variant.lr.kind == "per_token"),
                            ("per-position a_i (a rank-1 mask inside the chunk)", variant.lr.position),
                            ("momentum (a cumulative-product scan)", variant.momentum is not None),
                            ("decay (a cumulative-product scan, as simple_gla)", variant.decay is not None),
                            ("Newton–Schulz per chunk", variant.orthogonalize is not None)) if on]
    extra = f"; {', '.join(keep)} keep it so (Section 4)" if keep else ""
    return ("parallel: static kernel, state-independent values and no weight norm, so chunk increments "
            f"φ(K_n)ᵀṼ_n are precomputable and the state is an associative prefix sum (Section 5){extra}"
            f"{clip_clause(variant)}")
