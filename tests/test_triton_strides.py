"""``chunk_outer`` and ``chunk_read`` on strided token operands, and ``chunk_outer``'s per-token scale.

The kernels read q, k, v, a, b (and a gate, a scale) through their (batch, head, token) strides:
a heads-first view ``x.transpose(1, 2)`` of a caller's ``[B, T, H, D]`` tensor, or a view expanded
over the batch, must give exactly what its contiguous copy gives, forward and backward, and the
cost model must count no launcher copy for it. The scale multiplies b_t on load:
out_n = Σ_{t ∈ n} a_tᵀ (scale_t b_t), checked against a plain torch reference with its gradients.
"""

from __future__ import annotations

import pytest
import torch
from triton_cases import DEVICE

from tttla_kernels.triton_runtime import (
    MASK_ANTICAUSAL,
    MASK_CAUSAL,
    MASK_NONE,
    chunk_outer,
    chunk_read,
    launcher_copies,
)
from verify.cost import count, fake_tensors
from verify.tolerances import relative_error

pytestmark = pytest.mark.usefixtures("nan_fill", "reversed_grid")

B, T, H, DK, DV, L = 2, 37, 2, 5, 7, 16  # a ragged last chunk; a non-square state
DTYPES = [torch.float64, torch.float32, torch.float16]
MASKS = [MASK_NONE, MASK_CAUSAL, MASK_ANTICAUSAL]


def accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def heads_first(*shape_after_t, T=T, dtype=torch.float32, layout="transposed", seed=0):
    """A heads-first view ``[B, H, T, ...]`` of a token-major tensor ``[B, T, H, ...]``: its
    transpose, or (``"expanded"``) the transpose of one batch row expanded over the batch."""
    g = torch.Generator().manual_seed(seed)
    rows = 1 if layout == "expanded" else B
    x = torch.randn(rows, T, H, *shape_after_t, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    return x.expand(B, *x.shape[1:]).transpose(1, 2)


def leaves(*views):
    """Two copies of each view, as autograd leaves: the view itself (strided) and its contiguous
    copy; returns (strided, contiguous)."""
    strided = [v.detach().requires_grad_() for v in views]
    contiguous = [v.detach().contiguous().requires_grad_() for v in views]
    return strided, contiguous


def outputs_and_grads(fn, inputs, seed=1):
    """fn(*inputs) and the gradients of Σ w ⊙ fn(*inputs) (w fixed) to every input (None for an
    input it does not read)."""
    out = fn(*inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w.to(out.device)).sum(), inputs, allow_unused=True)
    return out, grads


def assert_same(strided, contiguous, what):
    """Bit-identical: the same kernel on the same values, only the addressing differs."""
    for i, (x, y) in enumerate(zip(strided, contiguous)):
        same = (x is None and y is None) or torch.equal(x, y)
        assert same, f"{what}: output/gradient {i} differs between strided and contiguous operands"


def test_launcher_copies_only_channels_not_at_unit_stride():
    x = torch.empty(B, T, H, DK)
    assert not launcher_copies(x.transpose(1, 2))
    assert not launcher_copies(x[:1].expand(B, T, H, DK).transpose(1, 2))
    assert not launcher_copies(torch.empty(B, T, H).transpose(1, 2))  # a scalar gate or a scale
    assert not launcher_copies(torch.empty(B, H, DK, T).mT[..., :1])  # one channel: any stride
    assert launcher_copies(torch.empty(B, H, DK, T).mT)


@pytest.mark.parametrize("layout", ["transposed", "expanded"])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_of_heads_first_views_matches_contiguous(dtype, mask, layout):
    q, k = (heads_first(DK, dtype=dtype, layout=layout, seed=s) for s in (0, 1))
    v = heads_first(DV, dtype=dtype, layout=layout, seed=2)
    N = -(-T // L)
    S = torch.randn(B, H, N, DV, DK, dtype=accumulator(dtype), device=DEVICE).mT  # a transposed state
    strided, contiguous = leaves(q, k, v, S)

    def read(q, k, v, S):
        return chunk_read(q, k, v, S, L, mask, DV)

    out_s, grads_s = outputs_and_grads(read, strided)
    out_c, grads_c = outputs_and_grads(read, contiguous)
    assert_same((out_s, *grads_s), (out_c, *grads_c), f"chunk_read {dtype} mask {mask} {layout}")


@pytest.mark.parametrize("gate", ["scalar", "keys"])
def test_gated_read_of_heads_first_views_matches_contiguous(gate):
    """The gate too is read through its strides: a heads-first ``[B, T, H]`` or ``[B, T, H, Dk]``."""
    q, k = (heads_first(DK, seed=s) for s in (0, 1))
    v = heads_first(DV, seed=2)
    log_gate = -heads_first(*(() if gate == "scalar" else (DK,)), seed=3).abs()
    G = torch.cat([part.cumsum(2) for part in log_gate.split(L, dim=2)], dim=2)  # within each chunk
    G = G.transpose(1, 2).contiguous().transpose(1, 2)  # stored token-major, read heads-first
    assert not G.is_contiguous()
    strided, contiguous = leaves(q, k, v, G)

    def read(q, k, v, G):
        return chunk_read(q, k, v, None, L, MASK_CAUSAL, DV, G)

    out_s, grads_s = outputs_and_grads(read, strided)
    out_c, grads_c = outputs_and_grads(read, contiguous)
    assert_same((out_s, *grads_s), (out_c, *grads_c), f"gated read ({gate})")


@pytest.mark.parametrize("layout", ["transposed", "expanded"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_outer_of_heads_first_views_matches_contiguous(dtype, layout):
    a = heads_first(DK, dtype=dtype, layout=layout, seed=0)
    b = heads_first(DV, dtype=dtype, layout=layout, seed=1)
    scale = heads_first(dtype=accumulator(dtype), layout=layout, seed=2)
    strided, contiguous = leaves(a, b, scale)

    def outer(a, b, scale):
        return chunk_outer(a, b, L, scale)

    out_s, grads_s = outputs_and_grads(outer, strided)
    out_c, grads_c = outputs_and_grads(outer, contiguous)
    assert_same((out_s, *grads_s), (out_c, *grads_c), f"chunk_outer {dtype} {layout}")


def reference_outer(a, b, chunk_size, scale=None):
    """Σ_{t ∈ n} a_tᵀ (scale_t b_t) per chunk of ``chunk_size`` tokens, in plain torch."""
    if scale is not None:
        b = b * scale[..., None]
    return torch.stack([x.mT @ y for x, y in zip(a.split(chunk_size, dim=2), b.split(chunk_size, dim=2))], dim=2)


@pytest.mark.parametrize("tokens", [37, 5, 1])  # a ragged tail; fewer tokens than a chunk; one token
def test_scaled_outer_matches_reference_in_fp64(tokens):
    a, b, scale = (heads_first(*d, T=tokens, dtype=torch.float64, seed=s) for s, d in enumerate([(DK,), (DV,), ()]))
    ours, refs = leaves(a, b, scale)
    out, grads = outputs_and_grads(lambda a, b, s: chunk_outer(a, b, L, s), ours)
    ref_out, ref_grads = outputs_and_grads(lambda a, b, s: reference_outer(a, b, L, s), refs)
    assert out.shape == (B, H, -(-tokens // L), DK, DV)
    for name, x, y in zip(["out", "da", "db", "dscale"], (out, *grads), (ref_out, *ref_grads)):
        assert relative_error(y, x, "max_rel") <= 1e-12, name


def test_scaled_outer_gradcheck():
    a, b, scale = (heads_first(*d, T=5, dtype=torch.float64, seed=s)[:1, :1] for s, d in enumerate([(2,), (3,), ()]))
    inputs = [x.detach().requires_grad_() for x in (a, b, scale)]
    assert torch.autograd.gradcheck(lambda a, b, s: chunk_outer(a, b, 2, s), inputs)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_scaled_outer_in_fp16(scale_dtype):
    """fp16 operands, the scale in theirs or the accumulator dtype: b_t scale_t is rounded to fp16
    once, the sum accumulates in fp32; near the fp64 reference, forward and backward."""
    a, b = (heads_first(d, dtype=torch.float16, seed=s) for s, d in enumerate([DK, DV]))
    scale = heads_first(dtype=scale_dtype, seed=2)
    ours = [x.detach().requires_grad_() for x in (a, b, scale)]
    refs = [x.detach().double().requires_grad_() for x in (a, b, scale)]
    out, grads = outputs_and_grads(lambda a, b, s: chunk_outer(a, b, L, s), ours)
    ref_out, ref_grads = outputs_and_grads(lambda a, b, s: reference_outer(a, b, L, s), refs)
    assert out.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float16, torch.float16, scale_dtype]
    for name, x, y in zip(["out", "da", "db", "dscale"], (out, *grads), (ref_out, *ref_grads)):
        assert relative_error(y, x, "rms_ratio") <= 5e-3, name


def test_scaled_outer_op_checks():
    """The custom op's schema (scale last, optional), fake implementation and autograd registration."""
    a, b = heads_first(DK, T=20, seed=0), heads_first(DV, T=20, seed=1)
    scale = heads_first(T=20, seed=2).requires_grad_()
    torch.library.opcheck(chunk_outer, (a.requires_grad_(), b, L, scale),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_scale_is_checked_by_name():
    a = torch.randn(B, H, T, DK, device=DEVICE)
    with pytest.raises(ValueError, match=r"scale must have shape \[B, H, T\]"):
        chunk_outer(a, a, L, torch.ones(B, H, T, 1, device=DEVICE))
    with pytest.raises(ValueError, match="scale must be in the operands' dtype"):
        chunk_outer(a, a, L, torch.ones(B, H, T, dtype=torch.float64, device=DEVICE))


def launcher_copy_ops(tally) -> list[str]:
    return [op.name for op in tally.ops if op.name.endswith("(launcher copy)")]


def test_heads_first_views_cost_no_launcher_copy():
    """On fake tensors: heads-first views of ``[B, T, H, D]`` reach both kernels with no copy,
    forward and backward; channels not at unit stride are still copied (and counted)."""
    N = -(-T // L)
    with fake_tensors():
        q, k, v = (torch.empty(B, T, H, D, device="meta", requires_grad=True) for D in (DK, DK, DV))
        eta = torch.empty(B, T, H, device="meta", requires_grad=True)
        S = torch.empty(B, H, N, DK, DV, device="meta", requires_grad=True)
        qh, kh, vh, eta_h = (x.transpose(1, 2) for x in (q, k, v, eta))

        def forward_backward():
            states = chunk_outer(kh, vh, L, eta_h)
            o = chunk_read(qh, kh, vh, S, L, MASK_CAUSAL, DV) + chunk_read(qh, None, None, states, L, MASK_NONE, DV)
            torch.autograd.grad(o, (q, k, v, eta, S), grad_outputs=torch.empty_like(o))

        tally = count(forward_backward)
        outer = count(lambda: chunk_outer(kh, vh, L, eta_h))
        channels_strided = count(lambda: chunk_outer(kh, vh.mT.contiguous().mT, L))
    assert {"tttla::chunk_outer", "tttla::chunk_read"} <= {op.name for op in tally.ops}
    assert launcher_copy_ops(tally) == []
    assert [op.name for op in outer.ops] == ["tttla::chunk_outer"]
    assert launcher_copy_ops(channels_strided) == ["tttla::chunk_outer (launcher copy)"]
