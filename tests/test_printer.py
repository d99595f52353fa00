"""The torch printer on every node shape the tracer and the reverse-mode rules emit.

Each expression is printed by :class:`TorchEmitter`, run on batched tensors and compared with
the IR evaluated token by token on explicit 2-D tensors (:func:`derivations.numeric.evaluate`,
which shares no code with the printer): a per-token value against each token's value, a
weight-shaped value against the sum over tokens. Distinct dimensions get distinct sizes and
T equals a weight dimension, so a missing sum or a wrong broadcast cannot hide.
"""

import math
import re

import pytest
import sympy
import torch
from sympy.matrices.expressions.matexpr import MatrixElement

from codegen.generate import generate, import_generated
from codegen.printer import COL, CONST, DOT, ROW, WEIGHT, TorchEmitter, TorchScalarPrinter, UnprintableError
from derivations import (
    Mat,
    add_constant,
    broadcast,
    chunked,
    dot,
    layer_norm,
    per_token,
    row_mean,
    rsqrt,
    silu,
    sq_norm,
    sum_all,
    variant,
)
from derivations.autodiff import canonicalize, grad, vjp
from derivations.numeric import evaluate
from verify.forms import usable_forms
from verify.fuzz import run_campaign

d, h = sympy.symbols("d h", integer=True, positive=True)
SIZES = {d: 4, h: 3}
B, H = 2, 1
x, y = sympy.MatrixSymbol("x", 1, d), sympy.MatrixSymbol("y", 1, d)
G, u = sympy.MatrixSymbol("G", 1, h), sympy.MatrixSymbol("u", 1, 1)  # u: a per-token 1 × 1 row
W0, W1 = sympy.MatrixSymbol("W0", d, h), sympy.MatrixSymbol("W1", h, h)
b, c = sympy.MatrixSymbol("b", 1, h), sympy.MatrixSymbol("c", d, 1)  # a row weight and a column weight
ROWS = (x, y, G, u)
SYMBOLS = {s: (s.name, ROW) for s in ROWS} | {s: (s.name, WEIGHT) for s in (W0, W1, b, c)}


def M(s):
    return Mat.sym(s)


def _as_expr(e):
    return e.value if isinstance(e, Mat) else e


def _dot_xy():
    return dot(M(x), M(y)).value


def _entry(e):
    """E[0, 0] of a 1 × 1 expression (indexing a product with [0, 0] would expand it into a Sum)."""
    return MatrixElement(_as_expr(e), 0, 0)


# name → (expression, the kind it must print as)
CASES = {
    "row @ weight": (M(x) @ M(W0), ROW),
    "chain of weights": (M(x) @ M(W0) @ M(W1), ROW),
    "weight @ weight": (M(W0) @ M(W1), WEIGHT),
    "transposed weight": (M(G) @ M(W0).T, ROW),
    "column times row: sum over tokens": (M(x).T @ M(G), WEIGHT),
    "per-token column times a weight row: (Σ x)ᵀ b": (sympy.MatMul(sympy.Transpose(x), b), WEIGHT),
    "weight column times a per-token row: c (Σ G)": (sympy.MatMul(c, G), WEIGHT),
    "per-token scalar times a token sum": (sympy.MatMul(_entry(dot(M(x), M(y))), sympy.Transpose(x), G), WEIGHT),
    "broadcast @ weight (column sums)": (broadcast(dot(M(x), M(y)), M(x)) @ M(W0), ROW),
    "transposed broadcast times a row": (broadcast(dot(M(x), M(y)), M(x)).T @ M(G), WEIGHT),
    "element-wise of a broadcast @ weight": (silu(broadcast(dot(M(x), M(y)), M(x))) @ M(W0), ROW),
    "identity in a 1 × 1 Hadamard": (sympy.MatMul(-2, sympy.HadamardProduct(sympy.Identity(1), _dot_xy()), G), ROW),
    "identity in a weight Hadamard keeps the diagonal": (sympy.HadamardProduct(sympy.Identity(h), W1), WEIGHT),
    "identity in a product": (sympy.MatMul(x, W0, sympy.Identity(h)), ROW),
    "zero matrix in a sum": (sympy.MatAdd(sympy.MatMul(x, W0), sympy.ZeroMatrix(1, h)), ROW),
    "row sum": (sum_all(M(x)), DOT),
    "row mean broadcast along the row": (M(x) - broadcast(row_mean(M(x)), M(x)), ROW),
    "ones n × n (row sum broadcast)": (sympy.MatMul(x, sympy.OneMatrix(d, d)), DOT),
    "column sums of a weight": (sympy.MatMul(sympy.OneMatrix(1, d), W0), WEIGHT),
    "column sums broadcast to a weight": (sympy.MatMul(sympy.OneMatrix(d, d), W0), WEIGHT),
    "row sums of a weight with a column": (sympy.MatAdd(sympy.MatMul(W0, sympy.OneMatrix(h, 1)),
                                                       sympy.MatMul(W0, sympy.Transpose(G))), COL),
    "column weight plus a column": (M(x).T + M(c), COL),
    "weight times a column": (M(W0) @ M(G).T, COL),
    "add_constant to a 1 × 1": (sympy.MatMul(_entry(add_constant(sq_norm(M(x)), 1.5)), G), ROW),
    "rsqrt-normalised row": (sympy.MatMul(_entry(rsqrt(add_constant(sq_norm(M(y)), 1))), y), ROW),
    "product of 1 × 1s": (sympy.MatMul(_entry(dot(M(x), M(y)) * sq_norm(M(x))), G), ROW),
    "entries multiplied and squared": (sympy.MatMul(_entry(_dot_xy()) ** 2 * _entry(sq_norm(M(x))), G), ROW),
    "per-token scalar times a weight": (sympy.MatMul(_entry(_dot_xy()), W0), WEIGHT),
    "column times a 1 × 1 dot: per token": (sympy.MatMul(sympy.Transpose(x), _dot_xy()), COL),
    "column times a 1 × 1 row: sum over tokens": (sympy.MatMul(sympy.Transpose(x), u), WEIGHT),
    "row weight broadcast over tokens": (M(x) @ M(W0) * M(b) + M(b), ROW),
    "layer norm": (layer_norm(M(x) @ M(W0), M(b), M(b)), ROW),
    "constant": (sympy.MatMul(3, sympy.OneMatrix(1, h)), CONST),
}


def _tensors(T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in ROWS:
        out[s.name] = torch.randn(B, H, T, int(s.shape[1].subs(SIZES)), generator=g, dtype=torch.float64)
    for s in (W0, W1, b, c):
        rows, cols = (int(n.subs(SIZES)) for n in s.shape)
        out[s.name] = torch.randn(B, H, rows, cols, generator=g, dtype=torch.float64)
    return out


def _printed(expr, tensors):
    em = TorchEmitter(SYMBOLS, {d: "d", h: "h"})
    name = em.assign("out", expr)
    source = f"def f({', '.join(tensors)}):\n{em.code()}\n    return {name}"
    scope = {"torch": torch, "F": torch.nn.functional, "math": math}
    exec(source, scope)  # noqa: S102 - the printer's own output
    return scope["f"](**tensors), em.kind_of(expr), source


def _per_token(expr, tensors, T):
    """The IR evaluated on each token's explicit 2-D tensors: [B, H, T, p, r]."""
    concrete = expr.xreplace(SIZES)
    out = torch.empty(B, H, T, *(int(n) for n in concrete.shape), dtype=torch.float64)
    for i in range(B):
        for j in range(H):
            for t in range(T):
                env = {s.name: tensors[s.name][i, j, t].reshape(1, -1) for s in ROWS}
                env.update({s.name: tensors[s.name][i, j] for s in (W0, W1, b, c)})
                out[i, j, t] = evaluate(concrete, env)
    return out


@pytest.mark.parametrize("T", [SIZES[d], SIZES[h]], ids=["T=d", "T=h"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_node_prints_what_the_ir_means(case, T):
    expr, kind = CASES[case]
    expr = _as_expr(expr)
    tensors = _tensors(T)
    got, got_kind, source = _printed(expr, tensors)
    assert got_kind == kind, source
    want = _per_token(expr, tensors, T)
    p, r = want.shape[-2:]
    if kind == WEIGHT:  # a weight-shaped value of per-token inputs is their sum over tokens
        want = want.sum(2) if expr.free_symbols & set(ROWS) else want[:, :, 0]
        got = got.expand(B, H, p, r)
    elif kind == CONST:
        got = torch.full((B, H, T, p, r), float(got), dtype=torch.float64)
    else:  # per token: a row, a column stored as a row, or a 1 × 1 broadcast
        got = got.unsqueeze(-2 if kind in (ROW, DOT) else -1).expand(B, H, T, p, r)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=source)


def test_the_gradients_of_certified_losses_print():
    """∂L/∂f of -⟨y, v⟩² and of an rsqrt-normalised dot product carry I ⊙ (1 × 1) nodes."""
    v = sympy.MatrixSymbol("y", 1, d)  # v plays y's role for the evaluator's row names
    f = sympy.MatrixSymbol("x", 1, d)
    losses = {
        "squared": -dot(M(f), M(v)) * dot(M(f), M(v)),
        "rsqrt": -dot(M(f), M(v)) * rsqrt(add_constant(sq_norm(M(f)), 1)),
    }
    T = SIZES[d]
    tensors = _tensors(T, seed=3)
    for name, loss in losses.items():
        dloss = canonicalize(grad(loss.value, f))
        assert dloss.has(sympy.Identity), name
        got, kind, source = _printed(dloss, tensors)
        assert kind == ROW, source
        torch.testing.assert_close(got.unsqueeze(-2), _per_token(dloss, tensors, T), rtol=1e-12, atol=1e-12)


def test_weight_gradient_through_a_broadcast_matches_autograd():
    """vjp of broadcast(⟨x, y⟩)·W0 with respect to W0 (a token sum through 𝟙ᵀ), T = d."""
    expr = (broadcast(dot(M(x), M(y)), M(x)) @ M(W0)).value
    T = SIZES[d]
    tensors = _tensors(T, seed=5)
    got, kind, source = _printed(vjp(expr, W0, G), tensors)
    assert kind == WEIGHT, source
    W = tensors["W0"].clone().requires_grad_()
    s = (tensors["x"] * tensors["y"]).sum(-1, keepdim=True)
    out = s * W.sum(-2, keepdim=True)
    (want,) = torch.autograd.grad((out * tensors["G"]).sum(), W)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_unprintable_node_is_named_with_its_expression():
    em = TorchEmitter(SYMBOLS)
    with pytest.raises(UnprintableError, match=r"cannot print Inverse .*W1\*\*\(-1\) \(in x\*W0\*W1\*\*\(-1\)\)"):
        em.assign("out", sympy.MatMul(x, W0, sympy.Inverse(W1)))
    with pytest.raises(UnprintableError, match="no code name for the matrix symbol Q"):
        TorchEmitter(SYMBOLS).assign("out", sympy.MatMul(sympy.MatrixSymbol("Q", 1, d), W0))


def test_scalar_printer_merges_its_functions_and_prints_short_floats():
    printer = TorchScalarPrinter()
    z = sympy.Symbol("z")
    assert printer.known_functions["exp"] == "torch.exp"
    assert printer.known_functions["floor"] == "math.floor"  # PythonCodePrinter's entries are kept
    assert printer.doprint(sympy.Float(1e-6) + z) == "z + 1e-06"
    assert printer.doprint(sympy.Rational(1, 2) * z) == "0.5*z"
    assert printer.doprint(sympy.Float("0.044715") * z**3) == "0.044715*z**3"


def test_names_say_what_values_are_and_negations_fold():
    em = TorchEmitter(SYMBOLS, {d: "d", h: "h"})
    z = M(x) @ M(W0)
    em.assign("out", canonicalize(layer_norm(z, M(b), M(b)).value))
    code = em.code()
    assert "mean_x_W0 = x_W0.mean(-1, keepdim=True)" in code
    assert "centered_x_W0 = x_W0 - mean_x_W0" in code
    assert " 1e-06" in code and "e-6" not in code
    for generic in ("total1", "mm1", "prod4", "tmp"):
        assert generic not in code, code
    # a per-token learning rate times ∂L/∂f = −v folds to one product, no sign
    eta, v = sympy.MatrixSymbol("eta", 1, 1), sympy.MatrixSymbol("v", 1, d)
    em = TorchEmitter({eta: ("eta", ROW), v: ("v", ROW)}, {d: "d"})
    em.assign("v_hat", canonicalize(sympy.MatMul(-1, eta[0, 0], sympy.MatMul(-1, v))))
    assert em.code().strip() == "v_hat = eta * v  # [B, H, T, d]"


def test_shared_subexpressions_are_computed_once():
    em = TorchEmitter(SYMBOLS, {d: "d", h: "h"})
    z = M(x) @ M(W0)
    em.assign("a", (silu(z) * z).value)
    em.assign("b", (silu(z) @ M(W1)).value)
    assert em.code().count("x @ W0") == 1 and em.code().count("F.silu") == 1


def test_a_renamed_value_is_renamed_wherever_it_was_recorded():
    """``assign`` gives a just-computed value the target's name; a product is memoised nested and
    flattened, and a later use of the flattened one must read the new name (the generality
    campaign's ``NameError: k_W0_W1_W2``: ((k·W0)·W1)·W2 assigned as ``prediction``)."""
    em = TorchEmitter(SYMBOLS, {d: "d", h: "h"})
    nested = sympy.MatMul(sympy.MatMul(sympy.MatMul(x, W0), W1), W1)
    em.assign("prediction", nested)
    em.assign("out", sympy.MatAdd(sympy.MatMul(x, W0, W1, W1), y))
    code = em.code()
    assert "prediction + y" in code or "y + prediction" in code, code
    defined = {line.split(" = ")[0].strip() for line in code.splitlines()}
    right_sides = " ".join(line.split(" = ", 1)[1].split("#")[0] for line in code.splitlines())
    used = set(re.findall(r"[A-Za-z_]\w*", right_sides))
    assert used <= defined | {"x", "y", "W0", "W1"}, code


# --- end to end: losses that used to stop at the printer ---------------------------------------


@variant(fast={"W0": ("d", "h"), "W1": ("h", "d")}, update=["W1"], loss=lambda y, v: -dot(y, v) * dot(y, v),
         lr=per_token(), schedule=chunked("apply_then_update", 4))
def squared_dot(x, W0, W1):
    """A squared dot-product loss: ∂L/∂f = −2·(I ⊙ (y·vᵀ))·v."""
    return silu(x @ W0) @ W1


@variant(fast={"W0": ("d", "h"), "W1": ("h", "d")}, update=["W1"],
         loss=lambda y, v: -dot(y, v) * rsqrt(add_constant(sq_norm(y), 1)),
         lr=per_token(), schedule=chunked("apply_then_update", 4))
def rsqrt_dot(x, W0, W1):
    """A dot-product loss normalised by rsqrt(‖y‖² + 1)."""
    return silu(x @ W0) @ W1


@pytest.mark.parametrize("declared", [squared_dot, rsqrt_dot], ids=lambda v: v.name)
def test_generated_code_of_identity_and_rsqrt_losses_verifies_in_fp64(declared, tmp_path):
    generate(declared, tmp_path)
    module = import_generated(declared.name, tmp_path)
    forms, _ = usable_forms(dict(module.FORMS))
    campaign = run_campaign(declared, forms, cases=3, dtype=torch.float64, seed=11)
    results = [r for _, rs in campaign.cases for r in rs]
    assert results and all(r.passed for r in results), [(r.form, r.exception, r.errors) for r in results]
