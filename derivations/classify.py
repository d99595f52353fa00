"""Is a variant linear attention, and can it run as a parallel prefix scan? With reasons.

:func:`split_last_layer` finds the rewrite's structure ``f(x) = φ(x; Θ) · W`` (or raises a
:class:`ReductionError` naming the offending sub-expression); :func:`classify` decides the
kernel (static/dynamic), the values (state-independent/dependent) and parallelism.
"""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from derivations.autodiff import scalar_function
from derivations.errors import ReductionError
from derivations.form import Classification
from derivations.printing import function_name, to_text
from derivations.variant import Trace, Variant

__all__ = ["check_supported", "split_last_layer", "classify", "values_state_independent"]

_CONSTANTS = (sympy.OneMatrix, sympy.ZeroMatrix, sympy.Identity)


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


def _weights_in(expr, weights: dict) -> tuple[str, ...]:
    return tuple(n for n, w in weights.items() if expr.has(w))


def split_last_layer(variant: Variant, trace: Trace) -> tuple[str, sympy.MatrixExpr]:
    """``(W, φ)`` with ``f(x) = φ(x) · W``; W an updated fast weight not inside φ.

    Raises:
        ReductionError: the last layer is not linear and bias-free in an updated fast
            weight; the message names the sub-expression and the reason.
    """
    pred = trace.prediction
    check_supported(pred, f"variant {variant.name!r}: the model")
    out = to_text(pred)
    head = f"variant {variant.name!r}: the model's output {out} is not linear in a fast weight"
    if isinstance(pred, sympy.MatAdd):
        biases = [t for t in pred.args if not t.has(trace.x)]
        if biases:
            b = " + ".join(to_text(t) for t in biases)
            raise ReductionError(
                f"{head}: ... + {b}: a bias on the last layer (Section 5.1 needs a linear, bias-free last "
                "layer; append a constant-1 feature to φ instead)"
            )
        raise ReductionError(f"{head}: last operation is a sum of {len(pred.args)} terms, not one product φ(x)·W")
    if isinstance(pred, ElementwiseApplyFunction):
        raise ReductionError(f"{head}: last operation is {function_name(pred.function)}")
    if isinstance(pred, sympy.HadamardProduct):
        raise ReductionError(f"{head}: last operation is an element-wise product (⊙)")
    if isinstance(pred, sympy.Transpose):
        raise ReductionError(f"{head}: last operation is a transpose")
    if not isinstance(pred, sympy.MatMul):
        raise ReductionError(f"{head}: the output is {out} itself, with no last layer φ(x)·W")
    scalars = [a for a in pred.args if not isinstance(a, sympy.MatrixExpr)]
    mats = [a for a in pred.args if isinstance(a, sympy.MatrixExpr)]
    last = mats[-1]
    names = {w: n for n, w in trace.weights.items()}
    if last not in names:
        raise ReductionError(f"{head}: its last factor {to_text(last)} is not a fast weight")
    W = names[last]
    if W not in variant.update:
        raise ReductionError(
            f"variant {variant.name!r}: the last layer {W} of {out} is not updated by the inner loop, so the "
            "output is not a linear-attention read of a changing state (update it, Theorem 5.1)"
        )
    if len(mats) == 1 or any(a.has(last) for a in mats[:-1]) or any(s.has(last) for s in scalars):
        raise ReductionError(f"{head}: {W} also appears inside the feature map φ (or there is no φ)")
    phi = sympy.MatMul(*scalars, *mats[:-1]) if scalars or len(mats) > 2 else mats[0]
    if not phi.has(trace.x):
        raise ReductionError(f"{head}: the feature φ = {to_text(phi)} does not read the input row")
    return W, phi


def values_state_independent(dloss, y) -> bool:
    """True iff ∂L/∂f does not involve the prediction ``y`` (Section 3)."""
    return not dloss.has(y)


def classify(variant: Variant, W: str, feature_weights, dloss, y) -> Classification:
    """Kernel, values and parallelism of a reducible variant, one reason per decision."""
    reasons = [
        f"reducible: the model is φ(x)·{W} with {W} an updated fast weight and no bias, so a gradient step "
        f"on {W} adds the rank-1 term φ_t(k)ᵀ g_t(k) (Theorem 5.1)"
    ]
    dyn = [u for u in variant.update if u in feature_weights]
    if dyn:
        kernel = "dynamic"
        reasons.append(
            f"kernel dynamic: the inner loop also updates {', '.join(dyn)} inside φ, so k̂_i = φ_i(k_i) and "
            "q̂_t = φ_{t+1}(q_t) change with the history (Theorem 5.2)"
        )
    else:
        kernel = "static"
        slow = f" ({', '.join(feature_weights)} stay slow weights)" if feature_weights else " (φ is the identity)"
        reasons.append(f"kernel static: only {W} is updated{slow}, so q̂ = φ(q) and k̂ = φ(k) (Theorem 5.2)")
    indep = values_state_independent(dloss, y)
    if indep:
        values = "state_independent"
        reasons.append(
            f"values state-independent: ∂L/∂f = {to_text(dloss)} does not involve the prediction, so "
            "v̂_i = g_i(k_i) depends only on (k_i, v_i, η_i) (Section 3)"
        )
    else:
        values = "state_dependent"
        reasons.append(
            f"values state-dependent: ∂L/∂f = {to_text(dloss)} involves the prediction f_t(k) = φ_t(k)W_t, so "
            "v̂ reads the state (Section 3; for ½‖f − v‖² this is the delta rule)"
        )
    blockers = []
    if kernel == "dynamic":
        blockers.append("the kernel is dynamic (φ_t depends on the whole history, Section 4)")
    if not indep:
        blockers.append("values depend on the state, so each increment needs the previous state (Section 3)")
    if variant.weight_norm is not None:
        blockers.append("weight norm wraps every step, and Norm(A + B) ≠ Norm(A) + Norm(B) (Section 4)")
    if blockers:
        reasons.append("not parallel: " + "; ".join(blockers) + ".")
    else:
        keep = [c for c, on in (("per-token η", variant.lr.kind == "per_token"),
                                ("momentum (a cumulative-product scan)", variant.momentum is not None),
                                ("Newton–Schulz per chunk", variant.orthogonalize is not None)) if on]
        extra = f"; {', '.join(keep)} keep it so (Section 4)" if keep else ""
        reasons.append(
            "parallel: static kernel, state-independent values and no weight norm, so chunk increments "
            f"φ(K_n)ᵀṼ_n are precomputable and the state is an associative prefix sum (Section 5){extra}"
        )
    return Classification(True, kernel, values, not blockers, tuple(reasons))
