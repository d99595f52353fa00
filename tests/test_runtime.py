"""The numerics of tttla_kernels.runtime that generated forms share."""

from __future__ import annotations

import pytest
import torch

from tttla_kernels.runtime import linear_scan, newton_schulz_steps


def _loop(a, b, initial):
    """h_n = a_n h_{n−1} + b_n, one chunk at a time (the definition)."""
    h, out = initial, []
    for n in range(b.shape[2]):
        h = a[:, :, n] * h + b[:, :, n]
        out.append(h)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("N", [1, 2, 3, 7, 8, 33])
@pytest.mark.parametrize("factor", ["scalar", "rows"])
def test_linear_scan_is_the_recurrence_forward_and_backward(N, factor):
    g = torch.Generator().manual_seed(N)
    shape = (2, 3, N, 4, 1) if factor == "rows" else (2, 3, N, 1, 1)
    a = torch.rand(shape, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 3, N, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    got, want = linear_scan(a, b, h0), _loop(a, b, h0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * w).sum(), (a, b, h0))
    for x, y in zip(grads, torch.autograd.grad((want * w).sum(), (a, b, h0))):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_linear_scan_without_initial_state_and_with_zero_factors():
    """No initial state is a zero one; a zero factor restarts the scan exactly (no division)."""
    b = torch.randn(1, 1, 6, 2, 2, dtype=torch.float64)
    a = torch.tensor([0.5, 0.0, 0.9, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 6, 1, 1)
    torch.testing.assert_close(linear_scan(a, b), _loop(a, b, torch.zeros(1, 1, 2, 2, dtype=torch.float64)))
    torch.testing.assert_close(linear_scan(a, b)[:, :, 3], b[:, :, 3])


@pytest.mark.parametrize("j", [0, 4, 9])
def test_linear_scan_is_causal_for_nonfinite_input(j):
    """A NaN in b_j or a_j reaches only h_j, h_{j+1}, …"""
    g = torch.Generator().manual_seed(j)
    a, b = torch.rand(1, 2, 10, 1, 1, generator=g), torch.randn(1, 2, 10, 3, 3, generator=g)
    for which in ("a", "b"):
        x = {"a": a.clone(), "b": b.clone()}
        x[which][:, :, j] = float("nan")
        h = linear_scan(x["a"], x["b"])
        assert torch.isfinite(h[:, :, :j]).all(), which
        torch.testing.assert_close(h[:, :, :j], linear_scan(a, b)[:, :, :j])


def test_linear_scan_grows_linearly():
    """No N × N intermediate: the autograd graph of a scan over N chunks holds O(N) elements."""
    def saved(N):
        a = torch.rand(1, 1, N, 1, 1, requires_grad=True)
        b = torch.randn(1, 1, N, 2, 2, requires_grad=True)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            linear_scan(a, b).sum()
        return total

    assert saved(4096) < 4.5 * saved(1024)


LACT_STEPS = ((4.0848, -6.8946, 2.927), (3.9505, -6.3029, 2.6377), (2.8366, -3.0525, 1.2012))


def _steps_by_autograd(X):
    """The Newton–Schulz steps written out (autograd differentiates them)."""
    wide = X.shape[-2] <= X.shape[-1]
    X = X if wide else X.mT
    for a, b, c in LACT_STEPS:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X if wide else X.mT


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 6, 4), (4, 4), (1, 1)], ids=["wide", "tall", "square", "1x1"])
def test_newton_schulz_backward_is_autograds(shape):
    """The explicit backward of the steps equals autograd's through the written-out steps (fp64)."""
    g = torch.Generator().manual_seed(len(shape))
    X = torch.randn(*shape, generator=g, dtype=torch.float64)
    X = (X / torch.linalg.matrix_norm(X, keepdim=True)).requires_grad_()
    W = torch.randn(shape, generator=g, dtype=torch.float64)
    got, want = newton_schulz_steps(X, LACT_STEPS), _steps_by_autograd(X)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad_got, = torch.autograd.grad((got * W).sum(), X)
    grad_want, = torch.autograd.grad((want * W).sum(), X)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-11, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: newton_schulz_steps(x, LACT_STEPS), (X.detach().requires_grad_(),))
