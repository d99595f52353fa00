"""The variant language: declarations, their errors, and the two interpretations."""

import pytest
import sympy
import torch

from derivations import (
    DeclarationError,
    Mat,
    chunked,
    dot,
    momentum,
    newton_schulz,
    per_token,
    silu,
    sq_norm,
    token_level,
    variant,
)
from derivations.functions import FUNCTIONS


def _declare(model, **kw):
    args = dict(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v))
    args.update(kw)
    return variant(**args)(model)


def linear(x, W):
    return x @ W


class TestDeclarationErrors:
    def test_unknown_fast_weight_in_update(self):
        with pytest.raises(DeclarationError, match=r"update names 'W9', which is not a fast weight \(declared: W\)"):
            _declare(linear, update=["W9"])

    def test_shape_mismatch(self):
        def bad(x, W0, W1):
            return x @ W0 @ W1

        with pytest.raises(DeclarationError, match=r"shape mismatch in \(\(x @ W0\) @ W1\): \(1, h\) @ \(d, h\)"):
            _declare(bad, fast={"W0": ("d", "h"), "W1": ("d", "h")}, update=["W1"])

    def test_hadamard_shape_mismatch(self):
        def bad(x, W0, W1):
            return (x @ W0) * (x @ W1)

        with pytest.raises(DeclarationError, match=r"shape mismatch .* \(1, h\) \* \(1, d\) needs equal shapes"):
            _declare(bad, fast={"W0": ("d", "h"), "W1": ("d", "d")}, update=["W1"])

    def test_unsupported_function(self):
        def bad(x, W):
            return torch.exp(x @ W)

        with pytest.raises(DeclarationError, match=r"model uses something outside the variant language.*exp"):
            _declare(bad)

    def test_unsupported_method(self):
        def bad(x, W):
            return (x @ W).softmax(-1)

        with pytest.raises(DeclarationError, match=r"'softmax' is not part of the variant language"):
            _declare(bad)

    @pytest.mark.parametrize("size", [0, -3])
    def test_chunk_size_below_one(self, size):
        with pytest.raises(DeclarationError, match=rf"chunk size must be an integer >= 1, got {size}"):
            _declare(linear, schedule=chunked("apply_then_update", size))

    def test_loss_not_scalar(self):
        with pytest.raises(DeclarationError, match=r"the loss must return a scalar .* got shape \(1, d\)"):
            _declare(linear, loss=lambda y, v: y - v)

    def test_loss_returns_number(self):
        with pytest.raises(DeclarationError, match=r"the loss must return a scalar .* got float"):
            _declare(linear, loss=lambda y, v: 1.0)

    def test_loss_ignores_prediction(self):
        with pytest.raises(DeclarationError, match=r"the loss does not depend on the prediction"):
            _declare(linear, loss=lambda y, v: -dot(v, v))

    def test_model_arguments_must_be_fast_weights(self):
        def wrong(x, W, U):
            return x @ W

        with pytest.raises(DeclarationError, match=r"not declared in fast: U"):
            _declare(wrong)

    def test_model_must_use_updated_weight(self):
        def ignores(x, W, U):
            return x @ W

        with pytest.raises(DeclarationError, match=r"does not use the updated fast weight\(s\) \['U'\]"):
            _declare(ignores, fast={"W": ("d", "d"), "U": ("d", "d")}, update=["U"])

    def test_model_output_must_be_a_row(self):
        def col(x, W):
            return W @ x.T

        with pytest.raises(DeclarationError, match=r"must map the 1 × d input row to a 1 × n row"):
            _declare(col)

    def test_momentum_order_mismatch(self):
        with pytest.raises(DeclarationError, match=r"momentum\(per='chunk'\) needs a block order"):
            _declare(linear, lr=per_token(), momentum=momentum("chunk"), schedule=token_level())
        with pytest.raises(DeclarationError, match=r"momentum\(per='token'\) needs per-token steps"):
            _declare(linear, momentum=momentum("token"))

    def test_bad_newton_schulz(self):
        with pytest.raises(DeclarationError, match=r"LaCT's schedule has 5 steps"):
            newton_schulz(steps=6)
        with pytest.raises(DeclarationError, match=r"expected 2 \(a, b, c\) triples"):
            newton_schulz(steps=2, coefficients=[(1, 2, 3)])
        # zero steps would still divide by the Frobenius norm: refused, not silently dropped (issue 13)
        for steps in (0, -1, True, 2.0):
            with pytest.raises(DeclarationError, match=r"expected an integer >= 1"):
                newton_schulz(steps=steps)

    def test_unknown_order(self):
        with pytest.raises(DeclarationError, match=r"unknown schedule order 'sideways'"):
            chunked("sideways", 4)


class TestInterpretations:
    def test_symbolic_trace_of_swiglu(self):
        v = _declare(
            lambda x, W0, W1, W2: (silu(x @ W0) * (x @ W2)) @ W1,
            fast={"W0": ("d", "h"), "W1": ("h", "d"), "W2": ("d", "h")},
            update=["W1"],
        )
        tr = v.trace()
        assert tr.prediction.shape == (1, sympy.Symbol("d", integer=True, positive=True))
        assert isinstance(tr.prediction, sympy.MatMul)
        assert tr.loss.shape == (1, 1)
        assert v.dims == ("d", "h")

    def test_numeric_rows_are_independent_tokens(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
        W = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
        X, Wm = Mat.rows(x), Mat.weight(W)
        out = silu(X @ Wm) * (X @ Wm)
        assert torch.equal(out.value, torch.nn.functional.silu(x @ W) * (x @ W))
        # a per-token dot product and a per-token column through a weight
        d = dot(X @ Wm, X @ Wm)
        assert d.value.shape == (2, 5, 1)
        torch.testing.assert_close(d.value, ((x @ W) ** 2).sum(-1, keepdim=True))
        col = Mat.weight(W.mT) @ X.T  # (4×3)(3×1) per token
        torch.testing.assert_close(col.value, x @ W)
        torch.testing.assert_close(sq_norm(X).value, (x * x).sum(-1, keepdim=True))

    @pytest.mark.parametrize("name", sorted(FUNCTIONS))
    def test_function_table_interpretations_agree(self, name):
        """Numeric values and symbolic derivatives of every table entry agree."""
        fn = FUNCTIONS[name]
        t = sympy.Symbol("t")
        expr, dexpr = fn.symbolic(t), sympy.diff(fn.symbolic(t), t)
        for point in (-1.3, -0.2, 0.4, 2.1):
            if name == "rsqrt":
                point = abs(point)  # defined for positive arguments only
            xt = torch.tensor(point, dtype=torch.float64, requires_grad=True)
            y = fn.numeric(xt)
            (dy,) = torch.autograd.grad(y, xt)
            assert float(expr.subs(t, point).evalf()) == pytest.approx(y.item(), rel=1e-12)
            assert float(dexpr.subs(t, point).evalf()) == pytest.approx(dy.item(), rel=1e-10)
