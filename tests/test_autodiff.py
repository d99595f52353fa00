"""Every reverse-mode rule, checked exactly (SymPy element-wise) and numerically (torch.autograd, fp64)."""

from __future__ import annotations

import pytest
import sympy
import torch
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from derivations.autodiff import derivative_function, grad, vjp
from derivations.functions import FUNCTIONS, ScalarFunction
from derivations.numeric import evaluate

X = sympy.MatrixSymbol("X", 2, 3)
Y = sympy.MatrixSymbol("Y", 2, 3)
P = sympy.MatrixSymbol("P", 3, 2)
Q = sympy.MatrixSymbol("Q", 3, 3)
r = sympy.MatrixSymbol("r", 1, 2)
c = sympy.Symbol("c")


def _entry(*factors):
    """The only entry of the 1×1 product of ``factors``, kept as a MatrixElement."""
    return MatrixElement(sympy.MatMul(*factors), 0, 0)


def _ew(name, expr):
    return ElementwiseApplyFunction(FUNCTIONS[name].symbolic, expr)


CASES = {
    "symbol": X,
    "other_symbol": Y,
    "matmul": sympy.MatMul(P, P.T, X.T).T,
    "matmul_scalar": sympy.MatMul(c, X, Q),
    "matmul_self": sympy.MatMul(X, P, X),
    "matadd": sympy.MatAdd(X, sympy.MatMul(-3, Y), sympy.MatMul(X, Q)),
    "transpose": sympy.Transpose(sympy.MatMul(Q, X.T)),
    "hadamard": sympy.HadamardProduct(X, Y, X),
    "scalar_entry": sympy.MatMul(sympy.MatMul(r, X, P, r.T)[0, 0], X),
    "one_matrix": sympy.MatMul(sympy.OneMatrix(1, 2), X),
    # scalar factors that are entries of 1×1 expressions (unevaluated, as the tracer's dot(a, b)[0, 0] with
    # symbolic shapes) or of X itself: constants, powers, products
    "scalar_entry_times_constant": sympy.MatMul(3 * _entry(r, X, P, r.T), Y),
    "scalar_entry_squared": sympy.MatMul(_entry(r, X, P, r.T) ** 2, Y),
    "scalar_entries_product": sympy.MatMul(_entry(r, X, P, r.T) * _entry(r, X, X.T, r.T), Y),
    "entry_of_x_cubed": sympy.MatMul(c * X[1, 2] ** 3, Y),
    **{f"fn_{n}": sympy.HadamardProduct(_ew(n, sympy.MatMul(X, Q)), Y) for n in FUNCTIONS if n != "rsqrt"},
    # rsqrt is defined for positive arguments only (LayerNorm's var + ε)
    "fn_rsqrt": sympy.HadamardProduct(_ew("rsqrt", sympy.HadamardProduct(sympy.MatMul(X, Q), sympy.MatMul(X, Q))), Y),
}


def _explicit_map(expr):
    syms = {s for s in expr.atoms(sympy.MatrixSymbol)}
    return {s: sympy.ImmutableMatrix(*s.shape, lambda i, j, s=s: sympy.Symbol(f"{s.name}_{i}{j}", real=True))
            for s in syms}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_sympy_elementwise(name):
    expr = CASES[name]
    G = sympy.MatrixSymbol("G", *expr.shape)
    got = vjp(expr, X, G)
    assert got.shape == X.shape
    env = _explicit_map(sympy.MatAdd(sympy.HadamardProduct(G, expr), sympy.ZeroMatrix(*expr.shape)))
    env.update(_explicit_map(X))
    E = expr.xreplace(env).doit().as_explicit()  # doit: entries of explicit products, evaluated
    s = sum(a * b for a, b in zip(env[G], E))
    Xe = env[X]
    zero = isinstance(got, sympy.ZeroMatrix)
    got_e = sympy.zeros(2, 3) if zero else sympy.Matrix(got.xreplace(env).doit().as_explicit())
    for i in range(2):
        for j in range(3):
            want = sympy.diff(s, Xe[i, j])
            d = sympy.expand(got_e[i, j] - want)
            assert d == 0 or sympy.simplify(d) == 0, (name, i, j, got_e[i, j], want)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_elementwise_derivatives_match_their_closed_forms(name):
    """The rules' f′ (``fdiff``, also what the SymPy element-wise check and the certificate
    differentiate with) against SymPy's derivative of the closed form ``closed(x)``, which shares
    nothing with ``fdiff``, at points on both sides of 0 (rsqrt: positive arguments)."""
    x = sympy.Symbol("x", real=True)
    f = FUNCTIONS[name].symbolic(x)
    closed = type(f).closed(x) if isinstance(f, ScalarFunction) else f  # SymPy's own (tanh, identity)
    independent = sympy.diff(closed, x)
    rule = derivative_function(_ew(name, X).function)
    points = [0.3, 1.0, 2.5] if name == "rsqrt" else [-1.7, -0.3, 0.6, 2.2]
    for x0 in points:
        assert abs(float(rule(x0).evalf(30)) - float(independent.subs(x, x0).evalf(30))) < 1e-12, (name, x0)


def _random_env(expr, gen):
    env = {}
    for s in expr.atoms(sympy.MatrixSymbol):
        env[s.name] = torch.randn(int(s.shape[0]), int(s.shape[1]), dtype=torch.float64, generator=gen)
    env["c"] = 0.7
    return env


@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_torch_autograd(name):
    expr = CASES[name]
    G = sympy.MatrixSymbol("G", *expr.shape)
    gen = torch.Generator().manual_seed(hash(name) % 2**31)
    env = _random_env(sympy.MatAdd(sympy.HadamardProduct(G, expr), sympy.ZeroMatrix(*expr.shape)), gen)
    env["X"] = torch.randn(2, 3, dtype=torch.float64, generator=gen).requires_grad_()
    s = (env["G"] * evaluate(expr, env)).sum()
    if s.requires_grad:
        (want,) = torch.autograd.grad(s, env["X"], allow_unused=True)
    else:
        want = None
    want = torch.zeros(2, 3, dtype=torch.float64) if want is None else want
    got = vjp(expr, X, G)
    got_t = torch.zeros(2, 3, dtype=torch.float64) if isinstance(got, sympy.ZeroMatrix) else evaluate(got, env)
    torch.testing.assert_close(got_t.detach(), want, rtol=1e-10, atol=1e-12)


def test_grad_of_inner_losses():
    d = sympy.Symbol("d", integer=True, positive=True)
    y, v = sympy.MatrixSymbol("y", 1, d), sympy.MatrixSymbol("v", 1, d)
    dot = sympy.MatMul(-1, y, v.T)
    assert grad(dot, y) == sympy.MatMul(-1, v)
    mse = sympy.MatMul(sympy.Rational(1, 2), sympy.MatMul(sympy.MatAdd(y, -v), sympy.MatAdd(y, -v).T))
    got = grad(mse, y)
    assert y in got.free_symbols and str(got) == str(sympy.MatAdd(y, -v))
    assert grad(dot, sympy.MatrixSymbol("z", 1, d)) == sympy.ZeroMatrix(1, d)


def test_grad_needs_a_scalar():
    with pytest.raises(ValueError, match="1 × 1"):
        grad(X, X)


def test_shared_sub_expression_is_differentiated_once():
    """Reverse mode over the DAG: z = x·W + b reaches LayerNorm's output along several paths
    (the centred row, its mean, the variance); their cotangents are summed at z first, so ∇_W
    is one product xᵀ G_z instead of one per path."""
    from derivations.mat import Mat
    from derivations.normalization import layer_norm

    x, W, b = Mat.symbol("x", 1, 3), Mat.symbol("W", 3, 3), Mat.symbol("b", 1, 3)
    ln = layer_norm(x @ W + b, Mat.symbol("g", 1, 3), Mat.symbol("bb", 1, 3))
    G = sympy.MatrixSymbol("G", 1, 3)
    got = vjp(ln.value, W.value, G)
    assert isinstance(got, sympy.MatMul) and got.args[0] == x.value.T
    assert got.args[1] == vjp(ln.value, b.value, G)  # G_z, the bias's gradient
