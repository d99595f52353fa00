"""A feature map that is one linear layer, φ(x) = E(x W_1, …, x W_m), as a Triton matmul epilogue.

The Triton pipeline computes φ(Q) and φ(K) in one launch (``tttla_kernels.triton_features``): the
kernel accumulates the products a_i = x W_i in fp32 and applies the element-wise part E to them
before the store. This module finds that split in the derived φ (:func:`linear_epilogue`) and prints
E as the body of a ``@triton.jit`` function (:class:`TritonScalarPrinter`), e.g. LaCT's SwiGLU
silu(x W0) ⊙ (x W2) as ``a0 / (1 + tl.exp(-a0)) * a1``.

φ qualifies when its matrix expression is built from products x W (W a slow weight of φ, d × h) by
element-wise functions, Hadamard products, sums and scalar factors only; anything else (x itself,
a bias row, a second layer, a transpose) keeps the torch feature map, with the reason.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from codegen.scalar_printer import DecimalPrinter
from derivations.functions import ScalarFunction
from derivations.printing import to_text

__all__ = ["Epilogue", "NotALinearLayer", "linear_epilogue", "TritonScalarPrinter"]

#: the most products a feature kernel accumulates (tttla_kernels.triton_features)
MAX_PRODUCTS = 3


class NotALinearLayer(ValueError):
    """φ is not E(x W_1, …, x W_m): names the sub-expression that is not."""


class Epilogue(NamedTuple):
    """φ(x) = E(x W_1, …, x W_m): the weights in product order and E's Triton body in a0 … a(m−1)."""

    weights: tuple[str, ...]
    body: str


class TritonScalarPrinter(DecimalPrinter):
    """Scalar SymPy expressions as fp32 Triton code: ``tl.exp``, ``tl.sigmoid`` … (tanh through the
    sigmoid, as Triton has no tanh); the language's element-wise functions through their closed forms."""

    _tl_functions = {"exp": "tl.exp", "log": "tl.log", "sqrt": "tl.sqrt", "erf": "tl.erf", "Abs": "tl.abs",
                     "sin": "tl.sin", "cos": "tl.cos"}

    def __init__(self, settings=None):
        super().__init__(settings)
        self.known_functions = dict(self._tl_functions)

    def doprint(self, expr, assign_to=None):
        closed = expr.replace(lambda e: isinstance(e, ScalarFunction), lambda e: type(e).closed(e.args[0]))
        return super().doprint(closed, assign_to)

    def _print_Function(self, expr):
        raise NotALinearLayer(f"the element-wise function {expr.func.__name__} has no Triton spelling")

    def _print_tanh(self, expr):
        return f"(2 * tl.sigmoid(2 * {self._print(expr.args[0])}) - 1)"

    def _print_sinh(self, expr):
        x = self._print(expr.args[0])
        return f"((tl.exp({x}) - tl.exp(-{x})) / 2)"

    def _print_cosh(self, expr):
        x = self._print(expr.args[0])
        return f"((tl.exp({x}) + tl.exp(-{x})) / 2)"

    def _print_Max(self, expr):
        return self._fold("tl.maximum", expr.args)

    def _print_Min(self, expr):
        return self._fold("tl.minimum", expr.args)

    def _fold(self, fn: str, args) -> str:
        """``fn`` over ``args`` pairwise, a tensor first (numbers as floats: tl.maximum(a0, 0.0))."""
        tensors_first = sorted(args, key=lambda a: a.is_number)
        printed = [repr(float(a)) if a.is_number else self._print(a) for a in tensors_first]
        out = printed[0]
        for a in printed[1:]:
            out = f"{fn}({out}, {a})"
        return out

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        return f"tl.where({x} > 0, 1.0, 0.0)"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if base.is_number and exp.is_number:
            return repr(float(expr))
        b = self.parenthesize(base, 100)
        if exp == sympy.S.Half:
            return f"tl.sqrt({self._print(base)})"
        if exp == -sympy.S.Half:
            return f"tl.rsqrt({self._print(base)})"
        if exp.is_Integer and 0 < abs(int(exp)) <= 4:
            power = " * ".join([b] * abs(int(exp)))
            return power if exp > 0 else f"1 / ({power})"
        raise NotALinearLayer(f"the power {expr} has no Triton spelling (integer powers up to 4, ±1/2)")

    def _print_Pi(self, expr):
        return repr(float(sympy.pi))

    def _print_Exp1(self, expr):
        return repr(float(sympy.E))


def linear_epilogue(form) -> Epilogue:
    """φ of ``form`` as one layer of products with a Triton epilogue; :class:`NotALinearLayer` (naming
    the sub-expression) when it is not one."""
    products: dict = {}  # slow weight symbol → its accumulator symbol a_i
    weight_names = {form.weights[n]: n for n in form.feature_weights}

    def scalar(node):
        if isinstance(node, sympy.MatMul):
            factors = [a for a in node.args if not a.is_number]
            number = sympy.Mul(*[a for a in node.args if a.is_number])
            if len(factors) == 1 and factors[0] != form.x:  # a scalar times a matrix expression
                return number * scalar(factors[0])
            if len(factors) != 2 or factors[0] != form.x or factors[1] not in weight_names:
                raise NotALinearLayer(f"{to_text(node)} is not a product x·W of the input with one slow weight")
            w = factors[1]
            if w not in products:
                products[w] = sympy.Dummy(weight_names[w])
            return number * products[w]
        if isinstance(node, ElementwiseApplyFunction):
            return node.function(scalar(node.expr))
        if isinstance(node, sympy.HadamardProduct):
            return sympy.Mul(*[scalar(a) for a in node.args])
        if isinstance(node, sympy.MatAdd):
            return sympy.Add(*[scalar(a) for a in node.args])
        raise NotALinearLayer(f"{to_text(node)} is not built from products x·W by element-wise functions, "
                              "Hadamard products, sums and scalar factors")

    if form.feature == form.x or not form.feature_weights:
        raise NotALinearLayer("φ has no slow weight: it is computed without a matmul")
    body = scalar(form.feature)
    if len(products) > MAX_PRODUCTS:
        raise NotALinearLayer(f"φ takes {len(products)} products x·W; a feature kernel accumulates at most "
                              f"{MAX_PRODUCTS}")
    order = [w for w in (form.weights[n] for n in form.feature_weights) if w in products]  # a_i in declared order
    body = body.xreplace({products[w]: sympy.Symbol(f"a{i}") for i, w in enumerate(order)})
    return Epilogue(tuple(weight_names[w] for w in order), TritonScalarPrinter().doprint(body))
