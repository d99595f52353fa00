"""The block-state pass of the delta rule's WY/UT chunked form, in Triton (hand-written, not generated).

The generated ``triton_chunk.py`` of a ``delta_chunk`` variant builds every block's matrices
in torch (the triangular solve for U and W, the masked scores, the decays) and hands the
sequential part here. For blocks n = 0 … N−1, starting from S_0, with the state in registers:

    u_n = U_n − W_n S_n,   O_n = Q_n S_n + P_n u_n,   S_{n+1} = g_n S_n + Kᵀ_n u_n

(g_n ≡ 1 without a decay). P_n is lower triangular, so a NaN or inf in u_s reaches the rows t ≥ s
of O_n only (``drop_nonfinite``), and backwards a NaN or inf in dO_t the rows s ≤ t of du only. The
backward pass runs the blocks in reverse with ∂L/∂S in registers:

    du = P_nᵀ dO_n + K_n dS_{n+1},  dU_n = du,  dW_n = −du S_nᵀ,  dP_n = dO_n u_nᵀ,
    dK_n = u_n dS_{n+1}ᵀ,  dQ_n = dO_n S_nᵀ,  dg_n = ⟨S_n, dS_{n+1}⟩,
    dS_n = Q_nᵀ dO_n − W_nᵀ du + g_n dS_{n+1}

from the states S_n the forward pass saved. Every recurrence above acts on each value column of S
on its own (u, O, S_{n+1} and dS_n column by column), so one program per (batch, head, block of
BV value columns) holds its columns of the state (BK × BV, BK a power of two ≥ 16 covering D_k)
and whole blocks (BL ≥ L); the backward's dW, dP, dK, dQ and dg sum over the value columns, so
each program writes its partial sums and the launcher adds them. BV starts as wide as
``value_block`` allows and halves while the compiled kernel wants more shared memory than the GPU
has (``widest_fitting``). Operands are in the state dtype (fp32, or fp64), products at full
("ieee") precision. Both passes are torch.library custom ops (``tttla::delta_scan``,
``tttla::delta_scan_backward``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tttla_kernels.triton_runtime import (
    block_covering,
    check_device,
    drop_nonfinite,
    new_output,
    summed,
    value_block,
    widest_fitting,
)

__all__ = ["delta_scan"]


@triton.jit
def _load(ptr, rows, cols, R, C, BR: tl.constexpr, BC: tl.constexpr):
    """A [BR, BC] tile of a contiguous [R, C] matrix at ``ptr`` (zeros outside)."""
    r = tl.arange(0, BR)
    c = tl.arange(0, BC)
    return tl.load(ptr + r[:, None] * C + c[None, :], mask=(r[:, None] < rows) & (c[None, :] < cols), other=0.0)


@triton.jit
def _store(ptr, x, rows, cols, C, BR: tl.constexpr, BC: tl.constexpr):
    r = tl.arange(0, BR)
    c = tl.arange(0, BC)
    tl.store(ptr + r[:, None] * C + c[None, :], x.to(ptr.dtype.element_ty),
             mask=(r[:, None] < rows) & (c[None, :] < cols))


@triton.jit
def delta_scan_fwd_kernel(
    u_ptr, w_ptr, q_ptr, p_ptr, k_ptr, g_ptr, s0_ptr, o_ptr, states_ptr, final_ptr,
    N, L, DK, DV, HAS_DECAY: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (batch, head) and BV value columns: U, O ``[N, L, DV]``; W, Q, K ``[N, L, DK]``; P ``[N, L, L]``;
    g ``[N]``; S_0 and the final state ``[DK, DV]``; states ``[N, DK, DV]`` (S_n before block n)."""
    bh = tl.program_id(0).to(tl.int64)
    v0 = tl.program_id(1) * BV  # this program's first value column
    cols = DV - v0
    S = _load(s0_ptr + bh * DK * DV + v0, DK, cols, DK, DV, BK, BV)
    for n in range(N):
        blk = bh * N + n
        _store(states_ptr + blk * DK * DV + v0, S, DK, cols, DV, BK, BV)
        w = _load(w_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        u = _load(u_ptr + blk * L * DV + v0, L, cols, L, DV, BL, BV)
        q = _load(q_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        p = _load(p_ptr + blk * L * L, L, L, L, L, BL, BL)
        k = _load(k_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        u = u - tl.dot(w, S, input_precision="ieee")  # the block's effective values at their own steps
        finite_u, reached = drop_nonfinite(u, True)  # P is lower triangular: u_s reaches rows t ≥ s only
        o = tl.dot(q, S, input_precision="ieee") + tl.dot(p, finite_u, input_precision="ieee")
        _store(o_ptr + blk * L * DV + v0, tl.where(reached, float("nan"), o), L, cols, DV, BL, BV)
        if HAS_DECAY:
            S = tl.load(g_ptr + blk) * S
        S = S + tl.dot(tl.trans(k), u, input_precision="ieee")
    _store(final_ptr + bh * DK * DV + v0, S, DK, cols, DV, BK, BV)


@triton.jit
def delta_scan_bwd_kernel(
    u_ptr, w_ptr, q_ptr, p_ptr, k_ptr, g_ptr, states_ptr, do_ptr, dfinal_ptr,
    du_ptr, dw_ptr, dq_ptr, dp_ptr, dk_ptr, dg_ptr, ds0_ptr,
    N, L, DK, DV, HAS_DECAY: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """The reverse pass of ``delta_scan_fwd_kernel`` for one (batch, head) and BV value columns: du and
    dS_0 have the shapes of U and S_0; dW, dQ, dK, dP and dg one partial sum per value block,
    ``[NV, B·H, …]``."""
    bh = tl.program_id(0).to(tl.int64)
    iv = tl.program_id(1).to(tl.int64)
    v0 = iv * BV  # this program's first value column
    cols = DV - v0
    part = iv * tl.num_programs(0) * N  # this value block's slice of the partial sums, in blocks
    dS = _load(dfinal_ptr + bh * DK * DV + v0, DK, cols, DK, DV, BK, BV)  # ∂L/∂S_{n+1}
    for i in range(N):
        n = N - 1 - i
        blk = bh * N + n
        S = _load(states_ptr + blk * DK * DV + v0, DK, cols, DK, DV, BK, BV)
        w = _load(w_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        u = _load(u_ptr + blk * L * DV + v0, L, cols, L, DV, BL, BV)
        q = _load(q_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        p = _load(p_ptr + blk * L * L, L, L, L, L, BL, BL)
        k = _load(k_ptr + blk * L * DK, L, DK, L, DK, BL, BK)
        do = _load(do_ptr + blk * L * DV + v0, L, cols, L, DV, BL, BV)
        u = u - tl.dot(w, S, input_precision="ieee")
        finite_do, reached = drop_nonfinite(do, False)  # Pᵀ is upper triangular: dO_t reaches du_s, s ≤ t only
        du = tl.where(reached, float("nan"), tl.dot(tl.trans(p), finite_do, input_precision="ieee"))
        du = du + tl.dot(k, dS, input_precision="ieee")
        _store(du_ptr + blk * L * DV + v0, du, L, cols, DV, BL, BV)
        at = part + blk  # the partial sums of this block and value block
        _store(dw_ptr + at * L * DK, -tl.dot(du, tl.trans(S), input_precision="ieee"), L, DK, DK, BL, BK)
        _store(dp_ptr + at * L * L, tl.dot(do, tl.trans(u), input_precision="ieee"), L, L, L, BL, BL)
        _store(dk_ptr + at * L * DK, tl.dot(u, tl.trans(dS), input_precision="ieee"), L, DK, DK, BL, BK)
        _store(dq_ptr + at * L * DK, tl.dot(do, tl.trans(S), input_precision="ieee"), L, DK, DK, BL, BK)
        carry = dS
        if HAS_DECAY:
            tl.store(dg_ptr + at, tl.sum(tl.sum(S * dS, axis=1), axis=0))
            carry = tl.load(g_ptr + blk) * dS
        dS = carry + tl.dot(tl.trans(q), do, input_precision="ieee") - tl.dot(tl.trans(w), du, input_precision="ieee")
    _store(ds0_ptr + bh * DK * DV + v0, dS, DK, cols, DV, BK, BV)


def _sizes(U: torch.Tensor, W: torch.Tensor) -> tuple[int, int, int, int, int]:
    BH, N, L, DV = U.shape
    return BH, N, L, W.shape[-1], DV


@torch.library.custom_op("tttla::delta_scan", mutates_args=())
def _delta_scan(U: torch.Tensor, W: torch.Tensor, Q: torch.Tensor, P: torch.Tensor, K: torch.Tensor,
                g: torch.Tensor, S0: torch.Tensor, has_decay: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    BH, N, L, DK, DV = _sizes(U, W)
    O = new_output((BH, N, L, DV), U)
    states = new_output((BH, N, DK, DV), U)
    final = new_output((BH, DK, DV), U)

    def run(BV: int):
        delta_scan_fwd_kernel[(BH, triton.cdiv(DV, BV))](U, W, Q, P, K, g, S0, O, states, final, N, L, DK, DV,
                                                         HAS_DECAY=has_decay, BL=block_covering(L),
                                                         BK=block_covering(DK), BV=BV)

    widest_fitting(("delta_scan", U.device, U.dtype, L, DK, DV, has_decay), value_block(BH, DV), run)
    return O, states, final


@_delta_scan.register_fake
def _(U, W, Q, P, K, g, S0, has_decay):
    BH, N, L, DK, DV = _sizes(U, W)
    return U.new_empty(BH, N, L, DV), U.new_empty(BH, N, DK, DV), U.new_empty(BH, DK, DV)


@torch.library.custom_op("tttla::delta_scan_backward", mutates_args=())
def _delta_scan_backward(U: torch.Tensor, W: torch.Tensor, Q: torch.Tensor, P: torch.Tensor, K: torch.Tensor,
                         g: torch.Tensor, states: torch.Tensor, dO: torch.Tensor, dfinal: torch.Tensor,
                         has_decay: bool) -> list[torch.Tensor]:
    BH, N, L, DK, DV = _sizes(U, W)
    dU = new_output(U.shape, U)
    dS0 = new_output((BH, DK, DV), U)

    def run(BV: int):
        NV = triton.cdiv(DV, BV)  # dW, dQ, dP, dK and dg: one partial sum per value block
        dW, dQ, dP, dK = (new_output((NV, *t.shape), t) for t in (W, Q, P, K))
        dg = U.new_zeros(NV, *g.shape)  # written only with a decay
        delta_scan_bwd_kernel[(BH, NV)](U, W, Q, P, K, g, states, dO, dfinal, dU, dW, dQ, dP, dK, dg, dS0,
                                        N, L, DK, DV, HAS_DECAY=has_decay, BL=block_covering(L),
                                        BK=block_covering(DK), BV=BV)
        return [summed(t) for t in (dW, dQ, dP, dK, dg)]

    dW, dQ, dP, dK, dg = widest_fitting(("delta_scan_backward", U.device, U.dtype, L, DK, DV, has_decay),
                                        value_block(BH, DV), run)
    return [dU, dW, dQ, dP, dK, dg, dS0]


@_delta_scan_backward.register_fake
def _(U, W, Q, P, K, g, states, dO, dfinal, has_decay):
    return [torch.empty_like(t) for t in (U, W, Q, P, K, g)] + [U.new_empty(U.shape[0], W.shape[-1], U.shape[-1])]


def _setup(ctx, inputs, output):
    U, W, Q, P, K, g, S0, has_decay = inputs
    ctx.save_for_backward(U, W, Q, P, K, g, output[1])
    ctx.has_decay = has_decay


def _backward(ctx, dO, dstates, dfinal):
    U, W, Q, P, K, g, states = ctx.saved_tensors
    dO = torch.zeros(U.shape, dtype=U.dtype, device=U.device) if dO is None else dO.contiguous()
    BH, _, _, DK, DV = _sizes(U, W)
    dfinal = U.new_zeros(BH, DK, DV) if dfinal is None else dfinal.contiguous()
    dU, dW, dQ, dP, dK, dg, dS0 = _delta_scan_backward(U, W, Q, P, K, g, states, dO, dfinal, ctx.has_decay)
    return dU, dW, dQ, dP, dK, (dg if ctx.has_decay else None), dS0, None


_delta_scan.register_autograd(_backward, setup_context=_setup)


def delta_scan(U, W, Q, P, K, decay, S0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the blocks' states in sequence: ``(O [B, H, N, L, DV], S_N [B, H, DK, DV])``.

    U ``[B, H, N, L, DV]``; W, Q, K ``[B, H, N, L, DK]``; P ``[B, H, N, L, L]``; decay ``[B, H, N]``
    or None; S0 ``[B, H, DK, DV]``. Every tensor in S0's dtype (fp32 or fp64) on one device.
    """
    check_device(S0)
    B, H, N, L, DV = U.shape
    DK = W.shape[-1]
    dtype = S0.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"delta_scan: the state must be fp32 or fp64, got {dtype}")

    def flat(t, *shape):
        return t.to(dtype).reshape(B * H, *shape).contiguous()

    has_decay = decay is not None
    g = flat(decay, N) if has_decay else S0.new_ones(B * H, N)
    O, _, final = _delta_scan(flat(U, N, L, DV), flat(W, N, L, DK), flat(Q, N, L, DK), flat(P, N, L, L),
                              flat(K, N, L, DK), g, flat(S0, DK, DV), has_decay)
    return O.reshape(B, H, N, L, DV), final.reshape(B, H, DK, DV)
