"""Element-wise functions of the variant language.

Each entry has a numeric implementation (torch) and a symbolic one (a SymPy scalar
function whose ``fdiff`` gives its derivative), so a variant that calls ``silu(x @ W0)``
runs as torch code in the oracle and traces to ``silu`` applied element-wise in the
derivation engine. Extend the table with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy

from derivations.mat import Mat

__all__ = [
    "ElementwiseFunction",
    "FUNCTIONS",
    "register",
    "silu",
    "gelu",
    "gelu_tanh",
    "tanh",
    "sigmoid",
    "relu",
    "identity",
    "rsqrt",
]


# --- symbolic scalar functions ------------------------------------------------------


class ScalarFunction(sympy.Function):
    """A named element-wise function: printed by name, differentiated by ``fdiff``,
    evaluated numerically through its closed form ``closed(x)``."""

    nargs = 1
    latex_name = ""

    @classmethod
    def closed(cls, x):
        raise NotImplementedError

    def _eval_evalf(self, prec):
        from sympy.core.evalf import prec_to_dps

        return self.closed(self.args[0]).evalf(prec_to_dps(prec))

    def _eval_rewrite_as_closed(self, x, **kwargs):
        return self.closed(x)

    def _latex(self, printer):
        return rf"{self.latex_name}\left({printer._print(self.args[0])}\right)"


class Sigmoid(ScalarFunction):
    """σ(x) = 1 / (1 + e^{-x})."""

    latex_name = r"\sigma"

    @classmethod
    def closed(cls, x):
        return 1 / (1 + sympy.exp(-x))

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)


class SiLU(ScalarFunction):
    """silu(x) = x σ(x)."""

    latex_name = r"\operatorname{silu}"

    @classmethod
    def closed(cls, x):
        return x / (1 + sympy.exp(-x))

    def fdiff(self, argindex=1):
        x = self.args[0]
        s = Sigmoid(x)
        return s * (1 + x * (1 - s))


class GELU(ScalarFunction):
    """gelu(x) = x Φ(x), Φ the standard normal CDF (the exact, erf-based form)."""

    latex_name = r"\operatorname{gelu}"

    @classmethod
    def closed(cls, x):
        return x * (1 + sympy.erf(x / sympy.sqrt(2))) / 2

    def fdiff(self, argindex=1):
        x = self.args[0]
        cdf = (1 + sympy.erf(x / sympy.sqrt(2))) / 2
        pdf = sympy.exp(-(x**2) / 2) / sympy.sqrt(2 * sympy.pi)
        return cdf + x * pdf


_GELU_C = sympy.sqrt(2 / sympy.pi)
_GELU_A = sympy.Rational(44715, 1000000)


class GELUTanh(ScalarFunction):
    """gelu_tanh(x) = x/2 (1 + tanh(√(2/π)(x + 0.044715 x³)))."""

    latex_name = r"\operatorname{gelu}_{\tanh}"

    @classmethod
    def closed(cls, x):
        return x * (1 + sympy.tanh(_GELU_C * (x + _GELU_A * x**3))) / 2

    def fdiff(self, argindex=1):
        x = self.args[0]
        u = sympy.tanh(_GELU_C * (x + _GELU_A * x**3))
        return (1 + u) / 2 + x * (1 - u**2) * _GELU_C * (1 + 3 * _GELU_A * x**2) / 2


class ReLU(ScalarFunction):
    """relu(x) = max(0, x); its derivative is the Heaviside step (0 at 0)."""

    latex_name = r"\operatorname{relu}"

    @classmethod
    def closed(cls, x):
        return sympy.Max(0, x)

    def fdiff(self, argindex=1):
        return sympy.Heaviside(self.args[0], 0)


class Rsqrt(ScalarFunction):
    """rsqrt(x) = 1/√x (the inverse standard deviation of LayerNorm)."""

    latex_name = r"\operatorname{rsqrt}"

    @classmethod
    def closed(cls, x):
        return 1 / sympy.sqrt(x)

    def fdiff(self, argindex=1):
        return -Rsqrt(self.args[0]) ** 3 / 2


def _identity_sym(x):
    return x


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementwiseFunction:
    """An element-wise function with its two interpretations.

    ``numeric`` maps a torch tensor to a torch tensor; ``symbolic`` maps a SymPy scalar to
    a SymPy scalar (differentiable with ``sympy.diff``); ``torch_source`` is how generated
    code spells it (``F`` is ``torch.nn.functional``).
    """

    name: str
    numeric: Callable
    symbolic: Callable
    torch_source: str

    def __call__(self, arg):
        if isinstance(arg, Mat):
            return arg.apply(self)
        import torch

        if isinstance(arg, torch.Tensor):
            return self.numeric(arg)
        if isinstance(arg, sympy.Basic) and not isinstance(arg, sympy.MatrixBase):
            return self.symbolic(arg)
        raise TypeError(
            f"{self.name}() takes a fast-weight expression, a torch tensor or a SymPy scalar; got {type(arg).__name__}"
        )

    def __repr__(self):
        return f"<element-wise function {self.name}>"


FUNCTIONS: dict[str, ElementwiseFunction] = {}


def register(name: str, numeric: Callable, symbolic: Callable, torch_source: str) -> ElementwiseFunction:
    """Add an element-wise function to the language and return its DSL callable.

    ``symbolic`` must be differentiable by SymPy (a ``sympy.Function`` subclass with
    ``fdiff``, or a lambda built from differentiable SymPy functions).
    """
    if name in FUNCTIONS:
        raise ValueError(f"element-wise function {name!r} is already registered")
    fn = ElementwiseFunction(name, numeric, symbolic, torch_source)
    FUNCTIONS[name] = fn
    return fn


def _torch_fns():
    import torch
    import torch.nn.functional as F

    return torch, F


def _silu(x):
    return _torch_fns()[1].silu(x)


def _gelu(x):
    return _torch_fns()[1].gelu(x)


def _gelu_tanh(x):
    return _torch_fns()[1].gelu(x, approximate="tanh")


def _tanh(x):
    return _torch_fns()[0].tanh(x)


def _sigmoid(x):
    return _torch_fns()[0].sigmoid(x)


def _relu(x):
    return _torch_fns()[1].relu(x)


def _identity(x):
    return x


def _rsqrt(x):
    return _torch_fns()[0].rsqrt(x)


silu = register("silu", _silu, SiLU, "F.silu({})")
gelu = register("gelu", _gelu, GELU, "F.gelu({})")
gelu_tanh = register("gelu_tanh", _gelu_tanh, GELUTanh, "F.gelu({}, approximate='tanh')")
tanh = register("tanh", _tanh, sympy.tanh, "torch.tanh({})")
sigmoid = register("sigmoid", _sigmoid, Sigmoid, "torch.sigmoid({})")
relu = register("relu", _relu, ReLU, "F.relu({})")
identity = register("identity", _identity, _identity_sym, "{}")
rsqrt = register("rsqrt", _rsqrt, Rsqrt, "torch.rsqrt({})")
