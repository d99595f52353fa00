"""Evaluate IR expressions on torch tensors (for checks of derived expressions).

``evaluate(expr, env)`` walks the same node types as :mod:`derivations.autodiff`; ``env``
maps matrix-symbol names to 2-D tensors of their concrete shapes and scalar-symbol names
to numbers or 0-d tensors. Element-wise functions run through the numeric side of the
function table; their derivatives (SymPy scalar expressions) through a small scalar
printer-free evaluator. torch is imported lazily: this module is the numeric
interpretation of the IR, the only place in ``derivations`` that touches torch.
"""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from derivations.autodiff import scalar_function
from derivations.functions import FUNCTIONS

__all__ = ["evaluate", "evaluate_scalar"]


def _torch():
    import torch

    return torch


def _function_table():
    return {fn.symbolic: fn.numeric for fn in FUNCTIONS.values() if isinstance(fn.symbolic, type)}


def evaluate_scalar(expr, env):
    """A SymPy scalar expression on tensors: ``env`` maps symbols (or names) to values."""
    torch = _torch()
    table = _function_table()
    if expr in env:
        return env[expr]
    if isinstance(expr, sympy.Symbol) and expr.name in env:
        return env[expr.name]
    if expr.is_Number or expr in (sympy.pi, sympy.E):
        return float(expr)
    if isinstance(expr, sympy.Add):
        return sum(evaluate_scalar(a, env) for a in expr.args)
    if isinstance(expr, sympy.Mul):
        out = 1.0
        for a in expr.args:
            out = out * evaluate_scalar(a, env)
        return out
    if isinstance(expr, sympy.Pow):
        return evaluate_scalar(expr.base, env) ** evaluate_scalar(expr.exp, env)
    if isinstance(expr, sympy.matrices.expressions.matexpr.MatrixElement):
        return evaluate(expr.parent, env)[int(expr.i), int(expr.j)]
    args = [evaluate_scalar(a, env) for a in expr.args]
    if expr.func in table:
        return table[expr.func](torch.as_tensor(args[0]))
    simple = {sympy.exp: torch.exp, sympy.erf: torch.erf, sympy.tanh: torch.tanh, sympy.log: torch.log}
    if expr.func in simple:
        return simple[expr.func](torch.as_tensor(args[0]))
    if expr.func is sympy.Heaviside:
        x = torch.as_tensor(args[0])
        at0 = args[1] if len(args) > 1 else 0.5
        return torch.where(x > 0, 1.0, torch.where(x < 0, 0.0, at0)).to(x.dtype)
    raise ValueError(f"cannot evaluate {expr.func} numerically")


def _apply(fn, tensor):
    d, body = scalar_function(fn)
    if body == d:
        return tensor
    table = _function_table()
    if isinstance(body, sympy.Function) and body.func in table and body.args == (d,):
        return table[body.func](tensor)
    return evaluate_scalar(body, {d: tensor})


def evaluate(expr, env):
    """A matrix expression as a 2-D tensor; ``env`` maps names to tensors or numbers."""
    torch = _torch()
    if isinstance(expr, sympy.MatrixSymbol):
        return env[expr.name]
    if isinstance(expr, sympy.OneMatrix):
        return torch.ones(int(expr.shape[0]), int(expr.shape[1]), dtype=torch.float64)
    if isinstance(expr, sympy.ZeroMatrix):
        return torch.zeros(int(expr.shape[0]), int(expr.shape[1]), dtype=torch.float64)
    if isinstance(expr, sympy.Identity):
        return torch.eye(int(expr.shape[0]), dtype=torch.float64)
    if isinstance(expr, sympy.MatrixBase):
        return torch.stack([torch.stack([torch.as_tensor(evaluate_scalar(e, env), dtype=torch.float64)
                                         for e in expr.row(i)]) for i in range(expr.rows)])
    if isinstance(expr, sympy.MatAdd):
        return sum(evaluate(a, env) for a in expr.args)
    if isinstance(expr, sympy.Transpose):
        return evaluate(expr.arg, env).T
    if isinstance(expr, sympy.HadamardProduct):
        out = evaluate(expr.args[0], env)
        for a in expr.args[1:]:
            out = out * evaluate(a, env)
        return out
    if isinstance(expr, sympy.MatMul):
        scale, out = 1.0, None
        for a in expr.args:
            if isinstance(a, sympy.MatrixExpr):
                t = evaluate(a, env)
                out = t if out is None else out @ t
            else:
                scale = scale * evaluate_scalar(a, env)
        return scale * out
    if isinstance(expr, ElementwiseApplyFunction):
        return _apply(expr.function, evaluate(expr.expr, env))
    raise ValueError(f"cannot evaluate {type(expr).__name__} numerically: {expr}")
