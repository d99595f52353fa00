"""The IR node of an element-wise function applied to a matrix expression, and the scalar
function it applies."""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

__all__ = ["Elementwise", "scalar_function"]


class Elementwise(ElementwiseApplyFunction):
    """A function applied entry by entry to a matrix expression, 1 × 1 ones included.

    SymPy's own node calls the function on a 1 × 1 operand itself, treating the matrix as a
    scalar (which breaks e.g. silu of one channel's ``x·w``). Built with this class, the node
    stays element-wise at every shape, and rebuilding it (``xreplace``) keeps it so.
    """

    def __new__(cls, function, expr):
        expr = sympy.sympify(expr)
        if not expr.is_Matrix:
            raise ValueError(f"{expr} must be a matrix expression")
        if not isinstance(function, sympy.Lambda):
            d = sympy.Dummy("d")
            function = sympy.Lambda(d, function(d))
        return sympy.MatrixExpr.__new__(cls, function, expr)


def scalar_function(fn) -> tuple[sympy.Dummy, sympy.Expr]:
    """``(d, body)`` with ``body`` the scalar function applied to the dummy ``d``.

    ``fn`` is what ``ElementwiseApplyFunction`` stores: a SymPy ``Lambda`` (possibly
    wrapping one of our function classes) or a function class itself.
    """
    if isinstance(fn, sympy.Lambda):
        (d,) = fn.variables
        return d, fn.expr
    d = sympy.Dummy("d")
    return d, fn(d)
