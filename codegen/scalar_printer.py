"""Scalar SymPy expressions (bodies of element-wise functions and their derivatives) as torch code.

Like SymPy's NumPy printer: a :class:`~sympy.printing.pycode.PythonCodePrinter` whose table of
known functions is PythonCodePrinter's with torch's entries merged over it, plus the element-wise
functions of :data:`derivations.functions.FUNCTIONS` printed through their torch spelling.
"""

from __future__ import annotations

import sympy
from sympy.printing.pycode import PythonCodePrinter

from derivations.functions import FUNCTIONS

__all__ = ["DecimalPrinter", "TorchScalarPrinter"]


class DecimalPrinter(PythonCodePrinter):
    """A Python code printer whose numbers print as shortest-exact decimals (0.5, not 1/2), unparenthesised
    where non-negative (0.5*x, not (0.5)*x): the base of the torch and Triton scalar printers."""

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Rational(self, expr):
        return repr(float(expr))

    _print_Half = _print_Rational

    def parenthesize(self, item, level, strict=False):
        if item.is_Number and item >= 0:
            return self._print(item)
        return super().parenthesize(item, level, strict)


class TorchScalarPrinter(DecimalPrinter):
    """Scalar SymPy expressions as element-wise torch code; floats print shortest-exact."""

    _torch_functions = {
        "exp": "torch.exp",
        "log": "torch.log",
        "tanh": "torch.tanh",
        "sinh": "torch.sinh",
        "cosh": "torch.cosh",
        "erf": "torch.erf",
        "sqrt": "torch.sqrt",
        "Abs": "torch.abs",
    }

    def __init__(self, settings=None):
        super().__init__(settings)
        self.known_functions = {**self.known_functions, **self._torch_functions}
        # our element-wise functions, printed through their torch spelling
        self._by_class = {fn.symbolic: fn for fn in FUNCTIONS.values() if isinstance(fn.symbolic, type)}

    def _print_Function(self, expr):
        fn = self._by_class.get(type(expr))
        if fn is not None:
            return fn.torch_source.format(self._print(expr.args[0]))
        return super()._print_Function(expr)

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        return f"({x} > 0).to({x}.dtype)"

    def _print_Max(self, expr):
        a, b = expr.args
        return f"torch.clamp_min({self._print(b)}, {self._print(a)})" if a.is_number else super()._print_Max(expr)

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp == sympy.S.Half:
            return f"math.sqrt({self._print(base)})" if base.is_number else f"torch.sqrt({self._print(base)})"
        if base.is_number and exp.is_number:
            return repr(float(expr))
        return super()._print_Pow(expr, rational=rational)
