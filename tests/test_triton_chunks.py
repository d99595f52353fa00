"""The across-chunk kernels (tttla_kernels/triton_chunks.py) against torch: chunk_scan against
runtime.linear_scan / runtime.chunk_means / torch.cumsum, frobenius_normalize against
X / (‖X‖_F + ε), forward and backward, in Triton's interpreter: coefficients none, per chunk and per
token (ragged, T < L, T = 1), initial states given, expanded and absent, low precision, non-finite
causality, errors, and one launch each on fake tensors."""

from __future__ import annotations

import pytest
import torch

from tttla_kernels import runtime
from tttla_kernels.triton_chunks import chunk_scan, frobenius_normalize
from verify.cost import count, fake_tensors

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

B, H, R, C = 2, 2, 5, 7  # R·C = 35 cells: more than one block in the interpreter, the last partial


def reference_scan(U, a, initial, inclusive):
    """``(states, last)`` from torch: a ``[B, H, N]`` per-chunk coefficient or None (a cumsum)."""
    if a is None:
        h = U.cumsum(2) + (initial.unsqueeze(2) if initial is not None else 0)
    else:
        h = runtime.linear_scan(a[..., None, None], U, initial)
    if inclusive:
        return h, h[:, :, -1]
    first = initial if initial is not None else torch.zeros_like(U[:, :, 0])
    return torch.cat([first.unsqueeze(2), h[:, :, :-1]], 2), h[:, :, -1]


def _inputs(N, coeff, initial, T=None, L=None, dtype=torch.float64, seed=0):
    """U ``[B, H, N, R, C]``; the coefficient as chunk_scan takes it and as reference_scan does (per
    token: a ``[B, H, T]`` view of a ``[B, T, H]`` tensor and its chunk means); the initial state
    (``expanded``: a ``[H, R, C]`` state broadcast over the batch); the leaves to differentiate."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, normal=True):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) if normal else \
            torch.rand(*shape, generator=gen, dtype=torch.float64)
        return (scale * x).to(dtype).requires_grad_()

    U = rand(B, H, N, R, C)
    leaves = {"updates": U}
    a = a_ref = None
    kwargs = {}
    if coeff == "chunk":
        a = a_ref = leaves["coeff"] = rand(B, H, N, normal=False)
    elif coeff == "token":
        alpha = leaves["coeff"] = rand(B, T, H, normal=False)
        a = alpha.transpose(1, 2)
        a_ref = runtime.chunk_means(a[..., None].double(), L)
        kwargs = {"coeff_chunk_size": L}
    h0 = h0_ref = None
    if initial == "given":
        h0 = h0_ref = leaves["initial"] = rand(B, H, R, C)
    elif initial == "expanded":
        leaves["initial"] = rand(H, R, C)
        h0 = h0_ref = leaves["initial"].expand(B, H, R, C)
    return U, a, h0, kwargs, a_ref, h0_ref, leaves


def _weighted(states, last, w_states, w_last):
    return (states * w_states).sum() + (last * w_last).sum()


def _check_against_reference(N, coeff, initial, inclusive, T=None, L=None, seed=0):
    U, a, h0, kwargs, a_ref, h0_ref, leaves = _inputs(N, coeff, initial, T, L, seed=seed)
    states, last = chunk_scan(U, a, h0, inclusive=inclusive, **kwargs)
    states_ref, last_ref = reference_scan(U, a_ref, h0_ref, inclusive)
    assert states.dtype == last.dtype == torch.float64
    torch.testing.assert_close(states, states_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)
    w_states, w_last = torch.randn_like(states_ref), torch.randn_like(last_ref)
    got = torch.autograd.grad(_weighted(states, last, w_states, w_last), list(leaves.values()))
    want = torch.autograd.grad(_weighted(states_ref, last_ref, w_states, w_last), list(leaves.values()))
    for name, x, y in zip(leaves, got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-11, msg=f"gradient of {name}")


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("initial", [None, "given", "expanded"])
@pytest.mark.parametrize("coeff", [None, "chunk"])
def test_chunk_scan_is_the_reference_fp64(coeff, initial, inclusive, nan_fill):
    _check_against_reference(5, coeff, initial, inclusive)


@pytest.mark.parametrize(("T", "L"), [(18, 4), (20, 4), (3, 8), (1, 4), (1, 1), (50, 20)],
                         ids=["ragged", "whole", "T<L", "T=1", "L=1", "chunk>tile"])
@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_chunk_scan_takes_the_chunk_means_of_a_per_token_coefficient(T, L, inclusive, nan_fill, reversed_grid):
    """ā_n is runtime.chunk_means; ∂L/∂α_t = ∂L/∂ā_n / |n| reaches every real token of chunk n."""
    _check_against_reference(-(-T // L), "token", "expanded", inclusive, T=T, L=L, seed=T + L)


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_chunk_scan_gradcheck(inclusive):
    """Tiny sizes (N = 3 chunks of 3 tokens, the last of 1; 2 × 3 states): every input's gradient."""
    gen = torch.Generator().manual_seed(1)
    U, alpha, h0 = (torch.rand(*shape, generator=gen, dtype=torch.float64).requires_grad_()
                    for shape in ((1, 1, 3, 2, 3), (1, 7, 1), (1, 1, 2, 3)))
    assert torch.autograd.gradcheck(
        lambda u, a, s: chunk_scan(u, a.transpose(1, 2), s, coeff_chunk_size=3, inclusive=inclusive), (U, alpha, h0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunk_scan_accumulates_low_precision_inputs_in_fp32(dtype):
    """bf16/fp16 updates and coefficients with an fp32 initial state: fp32 states, close to fp64."""
    U, a, _, kwargs, _, _, leaves = _inputs(6, "token", None, T=22, L=4, dtype=dtype, seed=2)
    h0 = torch.randn(B, H, R, C)
    states, last = chunk_scan(U, a, h0, inclusive=True, **kwargs)
    a64 = runtime.chunk_means(a.detach().double()[..., None], 4)
    ref, last_ref = reference_scan(U.detach().double(), a64, h0.double(), True)
    assert states.dtype == last.dtype == torch.float32
    assert (states.double() - ref).abs().max() / ref.abs().max() < 1e-6
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-6, atol=1e-6)
    d_u, d_alpha = torch.autograd.grad(states.sum(), [U, leaves["coeff"]])
    assert d_u.dtype == d_alpha.dtype == dtype


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_a_nonfinite_update_reaches_only_later_states(inclusive):
    """NaN in U_2: inclusive states 2… and exclusive states 3… are NaN, every earlier state is not."""
    U, a, h0, kwargs, _, _, _ = _inputs(5, "token", "given", T=20, L=4, seed=3)
    U = U.detach().clone()
    U[:, :, 2, 1, 3] = float("nan")
    states, last = chunk_scan(U, a.detach(), h0.detach(), inclusive=inclusive, **kwargs)
    first_bad = 2 if inclusive else 3
    finite = torch.isfinite(states).flatten(3).all(-1)  # [B, H, N]
    assert finite[:, :, :first_bad].all() and not finite[:, :, first_bad:].any()
    assert not torch.isfinite(last).all()


def test_chunk_scan_of_one_chunk_and_one_cell():
    U = torch.randn(1, 1, 1, 1, 1, dtype=torch.float64)
    states, last = chunk_scan(U, torch.full((1, 1, 1), 0.5, dtype=torch.float64), torch.ones(1, 1, 1, 1),
                              inclusive=False)
    assert states.item() == 1.0 and last.item() == 0.5 + U.item()
    U = torch.zeros(1, 1, 2, 0, 3, requires_grad=True)  # no cells: nothing to launch
    states, last = chunk_scan(U, torch.ones(1, 1, 2))
    assert states.shape == (1, 1, 2, 0, 3) and last.shape == (1, 1, 0, 3)
    assert torch.autograd.grad(states.sum() + last.sum(), U)[0].shape == U.shape


def test_chunk_scan_errors_name_the_argument():
    U = torch.zeros(B, H, 3, R, C)
    with pytest.raises(ValueError, match=r"updates must be a floating-point \[B, H, N, R, C\]"):
        chunk_scan(U[0])
    with pytest.raises(ValueError, match="updates must be a floating-point"):
        chunk_scan(U.int())
    with pytest.raises(ValueError, match=r"coeff must be one per chunk \[B, H, N\] = \[2, 2, 3\]"):
        chunk_scan(U, torch.ones(B, H, 4))
    with pytest.raises(ValueError, match=r"per-token coeff must be \[B, H, T\] with ⌈T / coeff_chunk_size⌉ = N = 3"):
        chunk_scan(U, torch.ones(B, H, 13), coeff_chunk_size=4)
    with pytest.raises(ValueError, match="coeff_chunk_size must be >= 1, got 0"):
        chunk_scan(U, torch.ones(B, H, 3), coeff_chunk_size=0)
    with pytest.raises(ValueError, match="coeff_chunk_size is given without a per-token coeff"):
        chunk_scan(U, coeff_chunk_size=4)
    with pytest.raises(ValueError, match="coeff must be a floating-point tensor"):
        chunk_scan(U, torch.ones(B, H, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"coeff must be on the device of updates \(cpu\), got meta"):
        chunk_scan(U, torch.ones(B, H, 3, device="meta"))
    with pytest.raises(ValueError, match=r"initial must be \[B, H, R, C\] = \[2, 2, 5, 7\], got \[2, 2, 7, 5\]"):
        chunk_scan(U, initial=torch.zeros(B, H, C, R))


def frobenius_reference(X, eps):
    return X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)


def test_frobenius_normalize_is_the_reference_fp64(nan_fill, reversed_grid):
    """Matrices of 35 entries (a partial last block), one of them zero (its gradient is dY / ε)."""
    X = torch.randn(3, 4, R, C, dtype=torch.float64)
    X[1, 2] = 0.0
    X.requires_grad_()
    Y, Y_ref = frobenius_normalize(X, 1e-7), frobenius_reference(X, 1e-7)
    torch.testing.assert_close(Y, Y_ref, rtol=1e-13, atol=1e-15)
    dY = torch.randn_like(Y)
    got, = torch.autograd.grad(Y, X, dY)
    want, = torch.autograd.grad(Y_ref, X, dY)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8)


def test_frobenius_normalize_gradcheck():
    X = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: frobenius_normalize(x, 1e-3), (X,))


@pytest.mark.parametrize(("dtype", "out_dtype", "rtol"), [
    (torch.float32, torch.bfloat16, 2 ** -7),  # the lead's call; Triton's interpreter truncates to bf16
    (torch.float16, None, 2 ** -10),
    (torch.float32, None, 1e-6),
])
def test_frobenius_normalize_sums_in_fp32(dtype, out_dtype, rtol):
    """fp32 momenta to bf16 and fp16 to fp16: the fp64 result rounded once, to within one step of
    the output dtype (the interpreter rounds fp32 → bf16 towards zero, a GPU to nearest)."""
    X = torch.randn(2, 3, 9, 6, dtype=torch.float64).to(dtype).mT  # strided: the launcher copies it
    Y = frobenius_normalize(X, 1e-7, out_dtype=out_dtype)
    want = frobenius_reference(X.double(), 1e-7)
    assert Y.dtype == (out_dtype or dtype) and Y.shape == X.shape
    torch.testing.assert_close(Y.double(), want, rtol=rtol, atol=1e-7)


def test_frobenius_normalize_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"X must be a floating-point \[\.\.\., R, C\] tensor, got \[4\]"):
        frobenius_normalize(torch.zeros(4), 1e-7)
    with pytest.raises(ValueError, match="out_dtype must be a floating-point dtype"):
        frobenius_normalize(torch.zeros(2, 2), 1e-7, out_dtype=torch.int32)


def test_one_launch_each_at_lacts_shape_on_fake_tensors():
    """B = 1, H = 4, T = 32768, d = h = 384, chunks of 2048: momentum (per-token bf16 α read as a
    [B, T, H] view), the prefix sum of states from an expanded fp32 W and the normalisation each
    take one launch forward; their backward runs on fake tensors too."""
    N, L, d = 16, 2048, 384
    with fake_tensors():
        dS = torch.empty(1, 4, N, d, d, device="meta", requires_grad=True)
        alpha = torch.empty(1, N * L, 4, device="meta", dtype=torch.bfloat16, requires_grad=True)
        W = torch.empty(4, d, d, device="meta", requires_grad=True)
        tallies = {}

        def momentum():
            tallies["M"], = chunk_scan(dS, alpha.transpose(1, 2), coeff_chunk_size=L)[:1]

        forward = {"momentum": count(momentum),
                   "normalise": count(lambda: tallies.update(Y=frobenius_normalize(tallies["M"], 1e-7,
                                                                                   out_dtype=torch.bfloat16))),
                   "prefix": count(lambda: tallies.update(S=chunk_scan(tallies["Y"], None, W.expand(1, 4, d, d),
                                                                       inclusive=False)))}
        for name, tally in forward.items():
            assert tally.launches == 1, (name, [op.name for op in tally.ops])
        assert forward["momentum"].flops == 2 * 4 * N * d * d
        states, last = tallies["S"]
        backward = count(lambda: torch.autograd.grad([states, last], [dS, alpha, W],
                                                     [torch.empty_like(states), torch.empty_like(last)]))
    names = [op.name for op in backward.ops]
    for op in ("tttla::chunk_scan_backward", "tttla::frobenius_normalize_backward"):
        assert op in names
    assert names.count("tttla::chunk_scan_backward") == 2
