"""Take a model apart into linear layers under an output head, or say why it cannot be.

:func:`split_model` writes the traced model as ``f(x) = head(z_1, …, z_m; x)`` with linear
layers ``z_j = φ_j(x)·W_j (+ b_j)`` in updated fast weights (a plain model φ(x)·W is one layer
under the identity head), or raises a :class:`ReductionError` naming the offending
sub-expression (:mod:`derivations.classify` then decides what the layers are).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from derivations.autodiff import scalar_function
from derivations.errors import ReductionError
from derivations.printing import function_name, to_text
from derivations.variant import Trace, Variant

__all__ = ["check_supported", "Layer", "split_model"]

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
