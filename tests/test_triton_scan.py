"""The fused scans (tttla_kernels/triton_scan.py) against the recurrences written out, forward and
backward (q, k, v, the initial state and the gate), in Triton's interpreter: block sizes, ragged
tails, strided inputs, strong gates, non-finite causality and its errors."""

from __future__ import annotations

import pytest
import torch
from triton.runtime.errors import OutOfResources

from tttla_kernels import triton_runtime
from tttla_kernels.triton_scan import MAX_WIDTH, fused_chunk_scan, fused_scan, scan_fused, value_block

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def recurrence(q, k, v, g, S0):
    """S_t = e^{g_t} S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, token by token."""
    B, H, T, DK = q.shape
    S = S0.clone() if S0 is not None else q.new_zeros(B, H, DK, v.shape[-1])
    outs = []
    for t in range(T):
        gamma = g[:, :, t].exp()[..., None, None] if g is not None else 1.0
        S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, None, :] @ S)[:, :, 0])
    return torch.stack(outs, 2), S


def block_cumulative(g, block):
    """G_t = Σ_(s ≤ t in its block) g_s."""
    T = g.shape[-1]
    N = -(-T // block)
    return torch.nn.functional.pad(g, (0, N * block - T)).unflatten(-1, (N, block)).cumsum(-1).flatten(-2)[..., :T]


def _inputs(T, gate, dtype=torch.float64, seed=0, strength=1.0, DV=6):
    gen = torch.Generator().manual_seed(seed)
    B, H, DK = 1, 2, 5

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    q = randn(B, T, H, DK).transpose(1, 2).requires_grad_()  # a strided [B, H, T, Dk] view
    k = randn(B, H, T, DK).requires_grad_()
    v = randn(B, T, H, DV).transpose(1, 2).requires_grad_()
    S0 = torch.randn(B, H, DK, DV, generator=gen, dtype=torch.float64).to(torch.promote_types(dtype, torch.float32))
    g = (-strength * torch.rand(B, H, T, generator=gen, dtype=torch.float64)).to(S0.dtype) if gate else None
    return q, k, v, g, S0.requires_grad_(), ([g.requires_grad_()] if gate else [])


def assert_same_scan(o, final, o_ref, S_ref, leaves, names=("q", "k", "v", "S0", "g")):
    """o and the final state equal the reference's (fp64), and so do their gradients to ``leaves`` (an input
    the reference leaves unused must get a zero gradient)."""
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, S_ref, rtol=1e-12, atol=1e-12)
    w_o, w_s = torch.randn_like(o_ref), torch.randn_like(S_ref)
    want = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_s).sum(), leaves, allow_unused=True)
    got = torch.autograd.grad((o * w_o).sum() + (final * w_s).sum(), leaves)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-10, atol=1e-11,
                                   msg=f"gradient of {name}")


@pytest.mark.parametrize(("T", "block"), [(1, 16), (20, 16), (64, 16), (75, 32)])
@pytest.mark.parametrize("gate", [False, True])
def test_fused_scan_is_the_recurrence_fp64(T, block, gate):
    q, k, v, g, S0, gates = _inputs(T, gate, seed=T)
    o_ref, S_ref = recurrence(q, k, v, g, S0)
    o, final = fused_scan(q, k, v, block_cumulative(g, block) if gate else None, S0, block)
    assert o.stride()[1:3] == (v.shape[-1], v.shape[1] * v.shape[-1])  # o written [B, T, H, Dv]
    assert_same_scan(o, final, o_ref, S_ref, [q, k, v, S0, *gates])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_scan_in_low_precision(dtype):
    q, k, v, g, S0, _ = _inputs(40, True, dtype=dtype, seed=1)
    o_ref, S_ref = recurrence(*(x.double() for x in (q, k, v, g, S0)))
    o, final = fused_scan(q, k, v, block_cumulative(g, 16), S0, 16)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert o.dtype == dtype and final.dtype == torch.float32
    assert ((o.double() - o_ref).abs().max() / o_ref.abs().max()) < tol
    assert ((final.double() - S_ref).abs().max() / S_ref.abs().max()) < tol


def test_strong_gates_underflow_without_inf_or_nan():
    """g = −20 per token: Γ over a block of 64 is e^{−1280}; no ratio is formed as e^{+…}."""
    q, k, v, _, S0, _ = _inputs(100, False, seed=2)
    g = torch.full(q.shape[:3], -20.0, dtype=torch.float64, requires_grad=True)
    o, final = fused_scan(q, k, v, block_cumulative(g, 64), S0, 64)
    o_ref, S_ref = recurrence(q, k, v, g, S0)
    torch.testing.assert_close(o, o_ref)
    grads = torch.autograd.grad(o.sum() + final.sum(), [q, k, v, S0, g])
    assert all(torch.isfinite(x).all() for x in grads)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nonfinite_input_reaches_only_later_tokens(name):
    q, k, v, g, S0, _ = _inputs(40, True, seed=3)
    G = block_cumulative(g, 16)
    clean, _ = fused_scan(q, k, v, G, S0, 16)
    x = {"q": q.detach().clone(), "k": k.detach().clone(), "v": v.detach().clone()}
    x[name][:, :, 21, 0] = float("nan")
    o, _ = fused_scan(x["q"], x["k"], x["v"], G, S0.detach(), 16)
    bad = ~torch.isfinite(o).all(-1)  # [B, H, T]
    assert not bad[:, :, :21].any() and bad[:, :, 21].all()
    torch.testing.assert_close(o[:, :, :21], clean[:, :, :21])
    if name == "q":  # a query reaches only its own output
        assert not bad[:, :, 22:].any()


def test_nonfinite_output_gradient_reaches_only_earlier_tokens():
    """dO non-finite at t: the gradients of inputs at s > t cannot depend on it and stay finite."""
    q, k, v, g, S0, gates = _inputs(40, True, seed=4)
    o, _ = fused_scan(q, k, v, block_cumulative(g, 16), S0, 16)
    d_o = torch.randn_like(o)
    d_o[:, :, 18, 2] = float("nan")
    dq, dk, dv, dg = torch.autograd.grad(o, [q, k, v, *gates], d_o)
    for name, grad in (("q", dq), ("k", dk), ("v", dv), ("g", dg[..., None])):
        assert torch.isfinite(grad[:, :, 19:]).all(), name
    assert not torch.isfinite(dq[:, :, 18]).all()


def test_fused_scan_errors_name_what_is_wrong():
    q, k, v, g, S0, _ = _inputs(8, True)
    with pytest.raises(ValueError, match="block_size must be a power of two, got 12"):
        fused_scan(q, k, v, None, S0, 12)
    with pytest.raises(ValueError, match=r"g must be \[B, H, T\] = \[1, 2, 8\]"):
        fused_scan(q, k, v, g[..., :4], S0, 16)
    wide = torch.zeros(1, 1, 2, MAX_WIDTH + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"Dk and Dv must be <= {MAX_WIDTH}"):
        fused_scan(wide, wide, wide, None, None, 16)


def test_inference_writes_no_block_states():
    """Without a gradient to carry, the forward writes o and the final state only."""
    q, k, v, g, S0, _ = _inputs(40, True, seed=5)
    G = block_cumulative(g, 16)
    with torch.no_grad():
        o, final = fused_scan(q, k, v, G, S0, 16)
        _, _, states = scan_fused(q, k, v, G, S0, 16, False)
    o_ref, S_ref = recurrence(q.detach(), k.detach(), v.detach(), g, S0.detach())
    assert states.shape[2] == 0
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(final, S_ref)


def chunk_recurrence(q, k, v, gc, S0, L, inclusive):
    """One step per chunk, S_n = e^{gc_n} S_{n−1} + K_nᵀ V_n; chunk n reads S_n (inclusive) or
    S_{n−1}, and then apply_then_update's last chunk takes no step."""
    T = q.shape[2]
    N = -(-T // L)
    S, outs = S0.clone(), []
    for n in range(N):
        s, e = n * L, min((n + 1) * L, T)
        if not inclusive:
            outs.append(q[:, :, s:e] @ S)
            if n == N - 1:
                break
        decay = gc[:, :, n].exp()[..., None, None] if gc is not None else 1.0
        S = decay * S + k[:, :, s:e].mT @ v[:, :, s:e]
        if inclusive:
            outs.append(q[:, :, s:e] @ S)
    return torch.cat(outs, 2), S


@pytest.mark.parametrize(("T", "L"), [(1, 4), (13, 4), (150, 70)], ids=["T=1", "ragged", "chunk>tile"])
@pytest.mark.parametrize("inclusive", [False, True], ids=["apply_then_update", "block_inclusive"])
@pytest.mark.parametrize("gate", [False, True])
def test_fused_chunk_scan_is_the_chunk_recurrence_fp64(T, L, inclusive, gate):
    q, k, v, _, S0, _ = _inputs(T, False, seed=T + L)
    N = -(-T // L)
    gc = (-torch.rand(1, 2, N, dtype=torch.float64)).requires_grad_() if gate else None
    o_ref, S_ref = chunk_recurrence(q, k, v, gc, S0, L, inclusive)
    o, final = fused_chunk_scan(q, k, v, gc, S0, L, inclusive)
    assert_same_scan(o, final, o_ref, S_ref, [q, k, v, S0, *([gc] if gate else [])])


def test_fused_chunk_scan_is_causal_for_nonfinite_keys():
    """A NaN key in chunk n reaches only the chunks that read a later state (apply_then_update: n + 1 on)."""
    q, k, v, _, S0, _ = _inputs(40, False, seed=6)
    bad = k.detach().clone()
    bad[:, :, 13, 1] = float("nan")  # chunk 1 of chunks of 8
    o, _ = fused_chunk_scan(q.detach(), bad, v.detach(), None, S0.detach(), 8, False)
    nonfinite = ~torch.isfinite(o).all(-1)
    assert not nonfinite[:, :, :16].any() and nonfinite[:, :, 16:].all()


def test_a_state_wider_than_the_registers_falls_back_to_the_pipeline():
    """linear_attention's Triton form at Dk = Dv = MAX_WIDTH + 1 takes the two-kernel pipeline and
    still equals the chunk form."""
    from tttla_kernels.linear_attention import FORMS

    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 5, 1, MAX_WIDTH + 1, generator=gen, dtype=torch.float64) for _ in range(3))
    o, final = FORMS["triton"](q, k, v, output_final_state=True, chunk_size=4)
    o_ref, final_ref = FORMS["chunk"](q, k, v, output_final_state=True, chunk_size=4)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(final, final_ref)


def test_value_blocks_fill_the_gpu_and_stop_at_32_columns():
    assert value_block(64, 128) == 64  # linear attention at B·H = 64: two column blocks, 128 programs
    assert value_block(128, 128) == 128  # enough programs already
    assert value_block(1, 256) == 32 and value_block(1, 40) == 32 and value_block(1, 20) == 32


@pytest.mark.parametrize("scan", ["tokens", "chunks"])
@pytest.mark.parametrize("gate", [False, True])
def test_a_grid_split_over_value_blocks_is_the_recurrence(scan, gate):
    """Dv = 40 in column blocks of 32 (the second one ragged), one program each: the forward of both
    scans still equals the recurrence, and the backward (split the same way, dq, dk and the gates'
    gradients summed over the column blocks) its gradients."""
    assert value_block(2, 40) == 32  # B·H = 2 is far below the target: the columns split
    T, L = 37, 16
    q, k, v, g, S0, gates = _inputs(T, gate, seed=9, DV=40)
    if scan == "tokens":
        o_ref, S_ref = recurrence(q, k, v, g, S0)
        o, final = fused_scan(q, k, v, block_cumulative(g, L) if gate else None, S0, L)
    else:
        gc = (-torch.rand(1, 2, -(-T // L), dtype=torch.float64)).requires_grad_() if gate else None
        gates = [gc] if gate else []
        o_ref, S_ref = chunk_recurrence(q, k, v, gc, S0, L, False)
        o, final = fused_chunk_scan(q, k, v, gc, S0, L, False)
    assert_same_scan(o, final, o_ref, S_ref, [q, k, v, S0, *gates])


class _SharedMemoryLimit:
    """A kernel whose launches with more than ``widest`` value columns are refused as a GPU refuses a
    kernel that wants more shared memory than it has (Triton's ``OutOfResources``, before launching)."""

    def __init__(self, kernel, widest):
        self.kernel, self.widest, self.widths = kernel, widest, []

    def __getitem__(self, grid):
        def launch(*args, **flags):
            self.widths.append(flags["BV"])
            if flags["BV"] > self.widest:
                raise OutOfResources(4 * 232448, 232448, "shared memory")
            return self.kernel[grid](*args, **flags)
        return launch


@pytest.mark.parametrize("scan", ["tokens", "chunks"])
def test_a_kernel_too_big_for_the_gpu_halves_its_value_block(scan, monkeypatch):
    """Both passes of both scans start from value_block's width and halve it while the GPU refuses the
    kernel; the narrower split gives the same numbers, and the width that fit is remembered."""
    import tttla_kernels.triton_scan as module
    monkeypatch.setattr(triton_runtime, "_FITTING", {})
    names = ("scan_fused_fwd_kernel", "scan_fused_bwd_kernel") if scan == "tokens" else (
        "scan_chunks_fwd_kernel", "scan_chunks_bwd_kernel")
    limits = [_SharedMemoryLimit(getattr(module, name), widest=16) for name in names]
    for name, limit in zip(names, limits):
        monkeypatch.setattr(module, name, limit)
    T, L = 37, 16
    q, k, v, g, S0, gates = _inputs(T, True, seed=4, DV=40)
    gc = (-torch.rand(1, 2, -(-T // L), dtype=torch.float64)).requires_grad_()
    if scan == "tokens":
        o_ref, S_ref = recurrence(q, k, v, g, S0)
        o, final = fused_scan(q, k, v, block_cumulative(g, L), S0, L)
    else:
        gates = [gc]
        o_ref, S_ref = chunk_recurrence(q, k, v, gc, S0, L, False)
        o, final = fused_chunk_scan(q, k, v, gc, S0, L, False)
    assert_same_scan(o, final, o_ref, S_ref, [q, k, v, S0, *gates])
    for limit in limits:
        assert limit.widths[:2] == [32, 16] and set(limit.widths[2:]) <= {16}
    o, final = fused_scan(q, k, v, block_cumulative(g, L), S0, L) if scan == "tokens" else \
        fused_chunk_scan(q, k, v, gc, S0, L, False)
    assert limits[0].widths[-1] == 16 and limits[0].widths.count(32) == 1  # remembered: no second refusal


def test_widest_fitting_stops_at_its_floor():
    def never_fits(width):
        raise OutOfResources(1, 0, "shared memory")
    with pytest.raises(OutOfResources):
        triton_runtime.widest_fitting(("never fits",), 64, never_fits, floor=16)
    assert ("never fits",) not in triton_runtime._FITTING
