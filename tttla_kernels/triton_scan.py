"""The fused scans of a prefix scan, in Triton (hand-written, not generated): one step per token
(``fused_scan``) or one per chunk (``fused_chunk_scan``, further down).

For a layer whose state takes one step per token and is read right after it — linear
attention, and its decayed forms (simple_gla, retention, Mamba-2) —

    S_t = γ_t S_{t−1} + k_tᵀ v_t,   o_t = q_t S_t   (γ_t = exp(g_t), γ ≡ 1 without a gate),

one program per (batch, head) and block of value columns (:func:`value_block`: split until the grid
fills the GPU) walks the blocks of ``BT`` tokens in order with its columns of the state in fp32
registers. Per block, with G_t = Σ_{s ≤ t in the block} g_s and S the state before it:

    o_t = e^{G_t} q_t S + Σ_{s ≤ t} e^{G_t − G_s} (q_t · k_s) v_s,
    S  ← e^{G_L} S + Σ_s (e^{G_L − G_s} k_s)ᵀ v_s,

so a call reads q, k, v once, writes o and the final state once and, when a gradient can flow, the
state before every block for the backward pass (fp32, ``[B, H, N, Dk, Dv]``). The block size does not
change the result (the schedule steps once per token). Tokens are read and o is written in the
caller's layout through strides (``[B, H, T, D]`` views of ``[B, T, H, D]`` tensors need no copy).
Every ratio e^{G_t − G_s} is taken under the mask (exponent ≤ 0 for gates ≤ 0), and a NaN or inf
at token s reaches only rows t ≥ s (``drop_nonfinite``).

The backward pass runs the blocks in reverse with dS = ∂L/∂S (after the block) in registers:

    dq_t = e^{G_t} dO_t Sᵀ + Σ_{s ≤ t} e^{G_t − G_s} (dO_t · v_s) k_s,
    dk_s = Σ_{t ≥ s} e^{G_t − G_s} (dO_t · v_s) q_t + e^{G_L − G_s} v_s dSᵀ,
    dv_s = Σ_{t ≥ s} e^{G_t − G_s} (q_t · k_s) dO_t + e^{G_L − G_s} k_s dS,
    dG_t = q_t · dq_t − k_t · dk_t (+ ⟨dS, S_after⟩ at the block's last token),
    dS  ← e^{G_L} dS + Σ_t (e^{G_t} q_t)ᵀ dO_t,

dG being the gradient of the block-cumulative gate (torch's cumsum carries it to g). The backward
splits the value columns as the forward does; dq, dk and dG sum over every value column, so each
column block writes its share and the launcher adds them. Either pass starts from
:func:`value_block` and halves the column block while the compiled kernel wants more shared memory
than the GPU has (``widest_fitting``). The forward and backward are ``torch.library`` custom ops
(``tttla::scan_fused``, ``tttla::scan_fused_backward``).

Packed sequences (fla's ``cu_seqlens``, B = 1): program (n, h) walks sequence n alone, from its own
initial state to its own final state, its blocks starting at its first token; the states saved for
the backward pass are laid out sequence after sequence (``block_offsets[n]`` blocks before sequence n).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tttla_kernels.runtime import state_dtype
from tttla_kernels.triton_runtime import (
    block_covering,
    check_device,
    drop_nonfinite,
    new_output,
    summed,
    value_block,
    widest_fitting,
)
from tttla_kernels.varlen import block_offsets, blocks_bound

__all__ = ["fused_scan", "scan_fused", "fused_chunk_scan", "scan_chunks", "MAX_WIDTH", "value_block"]

#: the widest key or value a program holds in registers
MAX_WIDTH = 256


@triton.jit
def _tile(ptr, t0, T, st, sd, D, BT: tl.constexpr, BD: tl.constexpr):
    """Rows t0 … t0 + BT of a strided ``[T, D]`` matrix (zeros past T and D)."""
    t = t0 + tl.arange(0, BT)
    d = tl.arange(0, BD)
    return tl.load(ptr + t[:, None] * st + d[None, :] * sd, mask=(t[:, None] < T) & (d[None, :] < D), other=0.0)


@triton.jit
def _put(ptr, x, t0, T, st, sd, D, BT: tl.constexpr, BD: tl.constexpr):
    t = t0 + tl.arange(0, BT)
    d = tl.arange(0, BD)
    tl.store(ptr + t[:, None] * st + d[None, :] * sd, x.to(ptr.dtype.element_ty),
             mask=(t[:, None] < T) & (d[None, :] < D))


@triton.jit
def _gates(g_ptr, t0, T, HAS_GATE: tl.constexpr, BT: tl.constexpr):
    """G_t of the block's rows and G at its last real token (zeros without a gate). Rows past T take
    the last real G, so every ratio a padded row enters is e^0 or smaller, never an overflow."""
    t = t0 + tl.arange(0, BT)
    real = t < T
    if HAS_GATE:
        G = tl.load(g_ptr + t, mask=real, other=0.0)
    else:
        G = tl.zeros([BT], dtype=tl.float32)
    last = tl.sum(tl.where(t == tl.minimum(t0 + BT, T) - 1, G, 0.0), axis=0)
    return tl.where(real, G, last), last


@triton.jit
def _state_cells(DK, DV, v0, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets of the columns v0 … v0 + BV of a contiguous ``[DK, DV]`` state in a ``[BK, BV]`` tile, and
    the mask of its cells."""
    rk = tl.arange(0, BK)
    rv = v0 + tl.arange(0, BV)
    return rk[:, None] * DV + rv[None, :], (rk[:, None] < DK) & (rv[None, :] < DV)


@triton.jit
def _state(ptr, cells, inside, GIVEN: tl.constexpr, acc_t: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """A state tile read at ``ptr`` (GIVEN) or zeros, in the accumulator dtype."""
    if GIVEN:
        return tl.load(ptr + cells, mask=inside, other=0.0).to(acc_t)
    return tl.zeros([BK, BV], dtype=acc_t)


@triton.jit
def _sequence(i_bh, H, T, NB, cu_ptr, boff_ptr, VARLEN: tl.constexpr, BT: tl.constexpr):
    """Program i_bh's batch row, head, first token, token count and first saved block: (b, h, 0, T, 0)
    for a batch, (0, h, cu[n], cu[n+1] − cu[n], block_offsets[n]) for sequence n of a packed row."""
    if VARLEN:
        i_n, i_h = i_bh // H, i_bh % H
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        T_seq = (tl.load(cu_ptr + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        return 0, i_h, bos, T_seq, tl.load(boff_ptr + i_n).to(tl.int64)
    return i_bh // H, i_bh % H, 0, T, 0


@triton.jit
def _read_span(q_base, o_base, S, start, end, sqt, sqd, sot, sod, DK, DV,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """o_t = q_t S for the tokens [start, end), BT at a time."""
    for t0 in range(start, end, BT):
        q = _tile(q_base, t0, end, sqt, sqd, DK, BT, BK)
        _put(o_base, tl.dot(q, S.to(q.dtype), input_precision="ieee"), t0, end, sot, sod, DV, BT, BV)


@triton.jit
def scan_fused_fwd_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, o_ptr, final_ptr, states_ptr, cu_ptr, boff_ptr,
    H, T, NB, DK, DV,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    HAS_GATE: tl.constexpr, HAS_S0: tl.constexpr, SAVE: tl.constexpr, VARLEN: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (batch, head) — or (sequence, head) with VARLEN — and BV value columns: o, the final state
    ``[DK, DV]`` and, with SAVE, the state before every block (NB blocks per head), in those columns. A
    program of a split grid recomputes the block's scores q kᵀ, which every value column shares."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h, bos, T_seq, block0 = _sequence(i_bh, H, T, NB, cu_ptr, boff_ptr, VARLEN, BT)
    acc_t = final_ptr.dtype.element_ty
    in_t = q_ptr.dtype.element_ty
    v0 = i_v * BV
    q_base = q_ptr + i_b * sqb + i_h * sqh + bos * sqt
    k_base = k_ptr + i_b * skb + i_h * skh + bos * skt
    v_base = v_ptr + i_b * svb + i_h * svh + bos * svt + v0 * svd
    o_base = o_ptr + i_b * sob + i_h * soh + bos * sot + v0 * sod
    g_base = g_ptr + (i_b * H + i_h) * T + bos
    st_base = states_ptr + ((i_b * H + i_h) * NB + block0) * DK * DV
    cells, inside = _state_cells(DK, DV, v0, BK, BV)
    S = _state(s0_ptr + i_bh * DK * DV, cells, inside, HAS_S0, acc_t, BK, BV)
    rt = tl.arange(0, BT)
    causal = rt[None, :] <= rt[:, None]
    T = T_seq
    for i_n in range(0, tl.cdiv(T, BT)):
        t0 = i_n * BT
        if SAVE:
            tl.store(st_base + i_n * DK * DV + cells, S, mask=inside)
        q = _tile(q_base, t0, T, sqt, sqd, DK, BT, BK)
        k = _tile(k_base, t0, T, skt, skd, DK, BT, BK)
        v = _tile(v_base, t0, T, svt, svd, DV - v0, BT, BV)
        G, last = _gates(g_base, t0, T, HAS_GATE, BT)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee").to(acc_t)  # q_t · k_s
        ratio = tl.exp(tl.where(causal, G[:, None] - G[None, :], -float("inf")))
        scores = tl.where(causal, scores * ratio, 0.0)
        v_kept, reached = drop_nonfinite(v, True)
        o = tl.dot(q, S.to(in_t), input_precision="ieee").to(acc_t) * tl.exp(G)[:, None]
        o += tl.dot(scores.to(in_t), v_kept, input_precision="ieee").to(acc_t)
        o = tl.where(reached, float("nan"), o)
        _put(o_base, o, t0, T, sot, sod, DV - v0, BT, BV)
        k_tail = (k.to(acc_t) * tl.exp(last - G)[:, None]).to(in_t)  # e^{G_L − G_s} k_s
        S = S * tl.exp(last) + tl.dot(tl.trans(k_tail), v, input_precision="ieee").to(acc_t)
    tl.store(final_ptr + i_bh * DK * DV + cells, S, mask=inside)


@triton.jit
def scan_fused_bwd_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, final_ptr, do_ptr, dsf_ptr, dq_ptr, dk_ptr, dv_ptr, dg_ptr, ds0_ptr,
    cu_ptr, boff_ptr, B, H, T, NB, DK, DV,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    HAS_GATE: tl.constexpr, HAS_DSF: tl.constexpr, VARLEN: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (batch, head) — or (sequence, head) with VARLEN — and BV value columns, blocks in reverse: dv
    ``[T, DV]`` and dS_0 ``[DK, DV]`` in those columns, and this column block's share of dq, dk ``[T, DK]``
    and dG ``[T]`` (sums over the value columns: one slice of ``[NV, B·H, …]`` per block, summed by the
    launcher)."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h, bos, T_seq, block0 = _sequence(i_bh, H, T, NB, cu_ptr, boff_ptr, VARLEN, BT)
    row = i_b * H + i_h  # the (batch, head) row of the [B, H, T, ·] tensors
    part = (i_v * B * H + row) * T + bos  # this program's first token in its slice of the partial sums
    acc_t = states_ptr.dtype.element_ty
    in_t = q_ptr.dtype.element_ty
    v0 = i_v * BV
    q_base = q_ptr + i_b * sqb + i_h * sqh + bos * sqt
    k_base = k_ptr + i_b * skb + i_h * skh + bos * skt
    v_base = v_ptr + i_b * svb + i_h * svh + bos * svt + v0 * svd
    do_base = do_ptr + i_b * sob + i_h * soh + bos * sot + v0 * sod
    g_base = g_ptr + row * T + bos
    T_all, T = T, T_seq  # the row's tokens; this program's
    n_blocks = tl.cdiv(T, BT)
    st_base = states_ptr + (row * NB + block0) * DK * DV
    cells, inside = _state_cells(DK, DV, v0, BK, BV)
    dS = _state(dsf_ptr + i_bh * DK * DV, cells, inside, HAS_DSF, acc_t, BK, BV)
    rt = tl.arange(0, BT)
    causal = rt[None, :] <= rt[:, None]
    for j in range(0, n_blocks):
        i_n = n_blocks - 1 - j
        t0 = i_n * BT
        S = tl.load(st_base + i_n * DK * DV + cells, mask=inside, other=0.0)
        q = _tile(q_base, t0, T, sqt, sqd, DK, BT, BK)
        k = _tile(k_base, t0, T, skt, skd, DK, BT, BK)
        v = _tile(v_base, t0, T, svt, svd, DV - v0, BT, BV)
        do = _tile(do_base, t0, T, sot, sod, DV - v0, BT, BV)
        G, last = _gates(g_base, t0, T, HAS_GATE, BT)
        ratio = tl.exp(tl.where(causal, G[:, None] - G[None, :], -float("inf")))  # [t, s]
        tail = tl.exp(last - G)  # e^{G_L − G_s}
        # intra-chunk products; a non-finite dO_t or v_s must reach only the rows that read it
        do_kept, do_reached = drop_nonfinite(do, False)  # dv_s, dk_s sum over t ≥ s
        v_kept, v_reached = drop_nonfinite(v, True)  # dq_t sums over s ≤ t
        scores = tl.where(causal, tl.dot(q, tl.trans(k), input_precision="ieee").to(acc_t) * ratio, 0.0)
        dp = tl.where(causal, tl.dot(do, tl.trans(v_kept), input_precision="ieee").to(acc_t) * ratio, 0.0)
        dp_t = tl.where(causal, tl.dot(do_kept, tl.trans(v), input_precision="ieee").to(acc_t) * ratio, 0.0)
        dq = tl.dot(do, tl.trans(S.to(in_t)), input_precision="ieee").to(acc_t) * tl.exp(G)[:, None]
        dq += tl.dot(dp.to(in_t), k, input_precision="ieee").to(acc_t)
        dq = tl.where(tl.sum(v_reached.to(tl.int32), axis=1)[:, None] > 0, float("nan"), dq)
        dk = tl.dot(tl.trans(dp_t).to(in_t), q, input_precision="ieee").to(acc_t)
        dk += tl.dot(v, tl.trans(dS.to(in_t)), input_precision="ieee").to(acc_t) * tail[:, None]
        dv = tl.dot(tl.trans(scores).to(in_t), do_kept, input_precision="ieee").to(acc_t)
        dv += tl.dot(k, dS.to(in_t), input_precision="ieee").to(acc_t) * tail[:, None]
        dv = tl.where(do_reached, float("nan"), dv)
        dk = tl.where(tl.sum(do_reached.to(tl.int32), axis=1)[:, None] > 0, float("nan"), dk)
        t = t0 + rt
        if HAS_GATE:
            # the state after this block: the next block's saved state, or the final one
            after = tl.where(i_n + 1 < n_blocks, st_base + (i_n + 1) * DK * DV, final_ptr + i_bh * DK * DV)
            S_after = tl.load(after + cells, mask=inside, other=0.0)
            dG = tl.sum(q.to(acc_t) * dq, axis=1) - tl.sum(k.to(acc_t) * dk, axis=1)
            at_end = t == tl.minimum(t0 + BT, T) - 1
            dG += tl.where(at_end, tl.sum(tl.sum(dS * S_after, axis=1), axis=0), 0.0)
            tl.store(dg_ptr + part + t, dG, mask=t < T)
        _put(dq_ptr + part * DK, dq, t0, T, DK, 1, DK, BT, BK)
        _put(dk_ptr + part * DK, dk, t0, T, DK, 1, DK, BT, BK)
        _put(dv_ptr + (row * T_all + bos) * DV + v0, dv, t0, T, DV, 1, DV - v0, BT, BV)
        q_read = (q.to(acc_t) * tl.exp(G)[:, None]).to(in_t)
        dS = dS * tl.exp(last) + tl.dot(tl.trans(q_read), do, input_precision="ieee").to(acc_t)
    tl.store(ds0_ptr + i_bh * DK * DV + cells, dS, mask=inside)


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())


def _check(q, k, v) -> None:
    """The operands of either scan: one dtype, on a device a kernel can run on, a state that fits."""
    check_device(q)
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"scan: {name} must have q's dtype {q.dtype}, got {x.dtype}")
    DK, DV = q.shape[-1], v.shape[-1]
    if max(DK, DV) > MAX_WIDTH:
        raise ValueError(f"scan holds the state in registers: Dk and Dv must be <= {MAX_WIDTH}, got {DK}, {DV}")


def fused_scan(q, k, v, g, initial, block_size: int, cu_seqlens: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, final state)`` of the scan; the states before every block are written for the backward
    pass only when a gradient can flow (an inference call writes o and the final state alone).

    ``cu_seqlens``: N sequences packed along T of a batch of one (offsets ``[N + 1]``, checked by the
    caller); ``initial`` and the final state are then one per sequence, ``[N, H, Dk, Dv]``."""
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, initial))
    # the saved blocks of sequence n start after those of the sequences before it
    offsets = None if cu_seqlens is None else block_offsets(cu_seqlens, block_size)
    o, final, _ = scan_fused(q, k, v, g, initial, block_size, save, cu_seqlens, offsets)
    return o, final


def _programs(B: int, H: int, cu_seqlens: torch.Tensor | None) -> int:
    """The scan's rows of programs: one per (batch, head), or per (sequence, head) of a packed row."""
    return (B if cu_seqlens is None else cu_seqlens.shape[0] - 1) * H


@torch.library.custom_op("tttla::scan_fused", mutates_args=())
def scan_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, initial: torch.Tensor | None,
    block_size: int, save_states: bool = True, cu_seqlens: torch.Tensor | None = None,
    block_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k ``[B, H, T, Dk]``, v ``[B, H, T, Dv]`` (any strides, one dtype), g the block-cumulative
    log gate ``[B, H, T]`` (state dtype) or None, initial ``[B, H, Dk, Dv]`` or None → o ``[B, H, T, Dv]``
    (a view of a ``[B, T, H, Dv]`` tensor, q's dtype), the final state ``[B, H, Dk, Dv]`` and the states
    before the blocks ``[B, H, NB, Dk, Dv]`` (state dtype; empty without ``save_states``, and then
    there is no backward). With ``cu_seqlens`` (B = 1) and ``block_offsets`` (:func:`fused_scan`) the
    initial and final states are ``[N, H, Dk, Dv]``, one per sequence."""
    _check(q, k, v)
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"scan_fused: block_size must be a power of two, got {block_size}")
    if g is not None and (g.shape != q.shape[:3] or g.dtype != state_dtype(q)):
        raise ValueError(f"scan_fused: g must be [B, H, T] = {list(q.shape[:3])} in {state_dtype(q)}, "
                         f"got {list(g.shape)} in {g.dtype}")
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    g = g.contiguous() if g is not None else None
    rows = _programs(B, H, cu_seqlens)
    NB = blocks_bound(T, block_size, cu_seqlens)
    o = new_output((B, T, H, DV), q).transpose(1, 2)
    final = new_output((rows // H, H, DK, DV), q, state_dtype(q))
    states = new_output((B, H, NB if save_states else 0, DK, DV), q, state_dtype(q))
    s0 = initial.contiguous() if initial is not None else final

    def run(BV: int):
        scan_fused_fwd_kernel[(rows, triton.cdiv(DV, BV))](
            q, k, v, g if g is not None else final, s0, o, final, states,
            cu_seqlens if cu_seqlens is not None else final, block_offsets if cu_seqlens is not None else final,
            H, T, NB, DK, DV, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            HAS_GATE=g is not None, HAS_S0=initial is not None, SAVE=save_states, VARLEN=cu_seqlens is not None,
            BT=block_size, BK=block_covering(DK), BV=BV)

    key = ("scan_fused", q.device, q.dtype, DK, DV, block_size, g is not None, initial is not None, save_states)
    widest_fitting(key, value_block(rows, DV), run)
    return o, final, states


@scan_fused.register_fake
def _(q, k, v, g, initial, block_size, save_states=True, cu_seqlens=None, block_offsets=None):
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    acc = state_dtype(q)
    o = q.new_empty(B, T, H, DV).transpose(1, 2)
    n = blocks_bound(T, block_size, cu_seqlens) if save_states else 0
    final = q.new_empty(_programs(B, H, cu_seqlens) // H, H, DK, DV, dtype=acc)
    return o, final, q.new_empty(B, H, n, DK, DV, dtype=acc)


@torch.library.custom_op("tttla::scan_fused_backward", mutates_args=())
def scan_fused_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, states: torch.Tensor,
    final: torch.Tensor, do: torch.Tensor, d_final: torch.Tensor | None, block_size: int,
    cu_seqlens: torch.Tensor | None = None, block_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk ``[B, H, T, Dk]``, dv ``[B, H, T, Dv]`` (q's dtype), dG ``[B, H, T]`` and dS_0
    ``[B, H, Dk, Dv]`` (``[N, H, Dk, Dv]`` packed; state dtype) of :func:`scan_fused`, from dO and
    ∂L/∂(final state)."""
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    acc = states.dtype
    rows = _programs(B, H, cu_seqlens)
    g = g.contiguous() if g is not None else None
    dv = new_output((B, H, T, DV), q, acc)
    ds0 = new_output(final.shape, q, acc)
    dsf = d_final.contiguous() if d_final is not None else states

    def run(BV: int):
        NV = triton.cdiv(DV, BV)  # dq, dk and dG: one partial sum per value block
        dq, dk = (new_output((NV, B, H, T, DK), q, acc) for _ in range(2))
        dg = new_output((NV, B, H, T), q, acc) if g is not None else states
        scan_fused_bwd_kernel[(rows, NV)](
            q, k, v, g if g is not None else states, states, final, do, dsf, dq, dk, dv, dg, ds0,
            cu_seqlens if cu_seqlens is not None else states, block_offsets if cu_seqlens is not None else states,
            B, H, T, states.shape[2], DK, DV, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            HAS_GATE=g is not None, HAS_DSF=d_final is not None, VARLEN=cu_seqlens is not None,
            BT=block_size, BK=block_covering(DK), BV=BV)
        return summed(dq), summed(dk), (summed(dg) if g is not None else ds0.new_zeros(0))

    key = ("scan_fused_backward", q.device, q.dtype, DK, DV, block_size, g is not None, d_final is not None)
    dq, dk, dg = widest_fitting(key, value_block(rows, DV), run)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), dg, ds0


@scan_fused_backward.register_fake
def _(q, k, v, g, states, final, do, d_final, block_size, cu_seqlens=None, block_offsets=None):
    acc = states.dtype
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(q.shape[:3], dtype=acc) if g is not None else q.new_empty(0, dtype=acc),
            q.new_empty(final.shape, dtype=acc))


def _keep_for_backward(ctx, q, k, v, gate, initial, output) -> None:
    """What either scan's backward reads: the operands, the gate, the saved states and the final state."""
    ctx.has_initial = initial is not None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # an unused output gets None, not a zero-filled gradient
    ctx.save_for_backward(q, k, v, gate, output[2], output[1])


def _kept(ctx, d_o, op: str, wrapper: str):
    """The tensors :func:`_keep_for_backward` kept, and dO (zeros when o got no gradient)."""
    if not ctx.saved_states:
        raise RuntimeError(f"{op}: called with save_states=False, so it has no backward (use {wrapper})")
    q, k, v, gate, states, final = ctx.saved_tensors
    return q, k, v, gate, states, final, (q.new_zeros(*q.shape[:3], v.shape[-1]) if d_o is None else d_o)


def _setup(ctx, inputs, output):
    q, k, v, g, initial, ctx.block_size, ctx.saved_states, ctx.cu_seqlens, ctx.block_offsets = inputs
    _keep_for_backward(ctx, q, k, v, g, initial, output)


def _backward(ctx, d_o, d_final, _):
    q, k, v, g, states, final, d_o = _kept(ctx, d_o, "scan_fused", "fused_scan")
    dq, dk, dv, dg, ds0 = scan_fused_backward(q, k, v, g, states, final, d_o, d_final, ctx.block_size,
                                              ctx.cu_seqlens, ctx.block_offsets)
    return (dq, dk, dv, (dg if g is not None else None), (ds0 if ctx.has_initial else None),
            None, None, None, None)


scan_fused.register_autograd(_backward, setup_context=_setup)


# --- a scan that steps once per chunk (apply_then_update, block_inclusive) ---------------------
#
# For a schedule of one step per chunk of L tokens, S_n = Γ_n S_{n−1} + Σ_{s ∈ n} k_sᵀ v_s
# (Γ_n = e^{gc_n}, gc_n the chunk's log decay, 0 without one), and chunk n reads S_{n−1}
# (``INCLUSIVE`` false: apply_then_update, whose last chunk is only read) or S_n (block_inclusive).
# There is no intra-chunk term, so a chunk is walked in sub-blocks of BT tokens whatever L is.
#
# Backward, chunks in reverse, dS = ∂L/∂S_n in registers (the read's term added first when the
# chunk reads S_n):
#
#     dq_t = dO_t S_readᵀ,  dk_s = v_s dSᵀ,  dv_s = k_s dS,  dgc_n = ⟨dS, Γ_n S_{n−1}⟩,
#     dS ← Γ_n dS (+ Σ_t q_tᵀ dO_t when the chunk reads S_{n−1}).


@triton.jit
def scan_chunks_fwd_kernel(
    q_ptr, k_ptr, v_ptr, gc_ptr, s0_ptr, o_ptr, final_ptr, states_ptr,
    H, T, L, DK, DV,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    INCLUSIVE: tl.constexpr, HAS_GATE: tl.constexpr, HAS_S0: tl.constexpr, SAVE: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (batch, head) and BV value columns: o, the final state and, with SAVE, S_{n−1} of every chunk
    ``[N, DK, DV]``, in those columns."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    acc_t = final_ptr.dtype.element_ty
    v0 = i_v * BV
    q_base = q_ptr + i_b * sqb + i_h * sqh
    k_base = k_ptr + i_b * skb + i_h * skh
    v_base = v_ptr + i_b * svb + i_h * svh + v0 * svd
    o_base = o_ptr + i_b * sob + i_h * soh + v0 * sod
    n_chunks = tl.cdiv(T, L)
    st_base = states_ptr + i_bh * n_chunks * DK * DV
    cells, inside = _state_cells(DK, DV, v0, BK, BV)
    S = _state(s0_ptr + i_bh * DK * DV, cells, inside, HAS_S0, acc_t, BK, BV)
    for i_n in range(0, n_chunks):
        start = i_n * L
        end = tl.minimum(start + L, T)
        if SAVE:
            tl.store(st_base + i_n * DK * DV + cells, S, mask=inside)
        if not INCLUSIVE:  # read S_{n−1}
            _read_span(q_base, o_base, S, start, end, sqt, sqd, sot, sod, DK, DV - v0, BT, BK, BV)
        if INCLUSIVE or i_n < n_chunks - 1:  # apply_then_update's last chunk is only read
            update = tl.zeros([BK, BV], dtype=acc_t)
            for t0 in range(start, end, BT):
                k = _tile(k_base, t0, end, skt, skd, DK, BT, BK)
                v = _tile(v_base, t0, end, svt, svd, DV - v0, BT, BV)
                update += tl.dot(tl.trans(k), v, input_precision="ieee").to(acc_t)
            if HAS_GATE:
                S = S * tl.exp(tl.load(gc_ptr + i_bh * n_chunks + i_n))
            S = S + update
        if INCLUSIVE:  # read S_n
            _read_span(q_base, o_base, S, start, end, sqt, sqd, sot, sod, DK, DV - v0, BT, BK, BV)
    tl.store(final_ptr + i_bh * DK * DV + cells, S, mask=inside)


@triton.jit
def scan_chunks_bwd_kernel(
    q_ptr, k_ptr, v_ptr, gc_ptr, states_ptr, final_ptr, do_ptr, dsf_ptr, dq_ptr, dk_ptr, dv_ptr, dgc_ptr, ds0_ptr,
    H, T, L, DK, DV,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    INCLUSIVE: tl.constexpr, HAS_GATE: tl.constexpr, HAS_DSF: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One (batch, head) and BV value columns, chunks in reverse: dv ``[T, DV]`` and dS_0 in those
    columns, and this column block's share of dq, dk ``[T, DK]`` and dgc ``[N]`` (summed by the
    launcher, as in :func:`scan_fused_bwd_kernel`)."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    part = i_v * tl.num_programs(0) + i_bh
    v0 = i_v * BV
    acc_t = final_ptr.dtype.element_ty
    in_t = q_ptr.dtype.element_ty
    q_base = q_ptr + i_b * sqb + i_h * sqh
    k_base = k_ptr + i_b * skb + i_h * skh
    v_base = v_ptr + i_b * svb + i_h * svh + v0 * svd
    do_base = do_ptr + i_b * sob + i_h * soh + v0 * sod
    n_chunks = tl.cdiv(T, L)
    st_base = states_ptr + i_bh * n_chunks * DK * DV
    cells, inside = _state_cells(DK, DV, v0, BK, BV)
    dS = _state(dsf_ptr + i_bh * DK * DV, cells, inside, HAS_DSF, acc_t, BK, BV)
    for j in range(0, n_chunks):
        i_n = n_chunks - 1 - j
        start = i_n * L
        end = tl.minimum(start + L, T)
        before = tl.load(st_base + i_n * DK * DV + cells, mask=inside, other=0.0)  # S_{n−1}
        stepped = INCLUSIVE or i_n < n_chunks - 1
        if INCLUSIVE:  # the chunk read S_n: its read's gradient joins dS before the step's
            after = tl.where(i_n + 1 < n_chunks, st_base + (i_n + 1) * DK * DV, final_ptr + i_bh * DK * DV)
            after = tl.load(after + cells, mask=inside, other=0.0)  # S_n
            for t0 in range(start, end, BT):
                do = _tile(do_base, t0, end, sot, sod, DV - v0, BT, BV)
                q = _tile(q_base, t0, end, sqt, sqd, DK, BT, BK)
                _put(dq_ptr + part * T * DK, tl.dot(do, tl.trans(after.to(in_t)), input_precision="ieee"),
                     t0, end, DK, 1, DK, BT, BK)
                dS += tl.dot(tl.trans(q), do, input_precision="ieee").to(acc_t)
        if stepped:
            for t0 in range(start, end, BT):
                k = _tile(k_base, t0, end, skt, skd, DK, BT, BK)
                v = _tile(v_base, t0, end, svt, svd, DV - v0, BT, BV)
                _put(dk_ptr + part * T * DK, tl.dot(v, tl.trans(dS.to(in_t)), input_precision="ieee"),
                     t0, end, DK, 1, DK, BT, BK)
                _put(dv_ptr + i_bh * T * DV + v0, tl.dot(k, dS.to(in_t), input_precision="ieee"),
                     t0, end, DV, 1, DV - v0, BT, BV)
            if HAS_GATE:
                decay = tl.exp(tl.load(gc_ptr + i_bh * n_chunks + i_n))
                tl.store(dgc_ptr + part * n_chunks + i_n, tl.sum(tl.sum(dS * before, axis=1), axis=0) * decay)
                dS = dS * decay
        else:  # the last chunk of apply_then_update takes no step: k and v get no gradient
            for t0 in range(start, end, BT):
                zero = tl.zeros([BT, BK], dtype=acc_t)
                _put(dk_ptr + part * T * DK, zero, t0, end, DK, 1, DK, BT, BK)
                _put(dv_ptr + i_bh * T * DV + v0, tl.zeros([BT, BV], dtype=acc_t), t0, end, DV, 1, DV - v0, BT, BV)
            if HAS_GATE:
                tl.store(dgc_ptr + part * n_chunks + i_n, 0.0)
        if not INCLUSIVE:  # the chunk read S_{n−1}
            for t0 in range(start, end, BT):
                do = _tile(do_base, t0, end, sot, sod, DV - v0, BT, BV)
                q = _tile(q_base, t0, end, sqt, sqd, DK, BT, BK)
                _put(dq_ptr + part * T * DK, tl.dot(do, tl.trans(before.to(in_t)), input_precision="ieee"),
                     t0, end, DK, 1, DK, BT, BK)
                dS += tl.dot(tl.trans(q), do, input_precision="ieee").to(acc_t)
    tl.store(ds0_ptr + i_bh * DK * DV + cells, dS, mask=inside)


def fused_chunk_scan(q, k, v, gc, initial, chunk_size: int, inclusive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, final state)`` of a scan that steps once per chunk (see :func:`fused_scan`); ``gc`` is
    each chunk's log decay ``[B, H, N]`` or None."""
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, gc, initial))
    o, final, _ = scan_chunks(q, k, v, gc, initial, chunk_size, inclusive, save)
    return o, final


@torch.library.custom_op("tttla::scan_chunks", mutates_args=())
def scan_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: torch.Tensor | None, initial: torch.Tensor | None,
    chunk_size: int, inclusive: bool, save_states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`scan_fused` for one step per chunk of ``chunk_size`` tokens: o, the final state and
    S_{n−1} of every chunk ``[B, H, N, Dk, Dv]`` (empty without ``save_states``)."""
    _check(q, k, v)
    if chunk_size < 1:
        raise ValueError(f"scan_chunks: chunk_size must be >= 1, got {chunk_size}")
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    N = triton.cdiv(T, chunk_size)
    if gc is not None and (tuple(gc.shape) != (B, H, N) or gc.dtype != state_dtype(q)):
        raise ValueError(f"scan_chunks: gc must be [B, H, N] = {[B, H, N]} in {state_dtype(q)}, "
                         f"got {list(gc.shape)} in {gc.dtype}")
    gc = gc.contiguous() if gc is not None else None
    o = new_output((B, T, H, DV), q).transpose(1, 2)
    final = new_output((B, H, DK, DV), q, state_dtype(q))
    states = new_output((B, H, N if save_states else 0, DK, DV), q, state_dtype(q))

    def run(BV: int):
        scan_chunks_fwd_kernel[(B * H, triton.cdiv(DV, BV))](
            q, k, v, gc if gc is not None else final, initial.contiguous() if initial is not None else final,
            o, final, states, H, T, chunk_size, DK, DV,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            INCLUSIVE=inclusive, HAS_GATE=gc is not None, HAS_S0=initial is not None, SAVE=save_states,
            BT=_CHUNK_TILE, BK=block_covering(DK), BV=BV)

    key = ("scan_chunks", q.device, q.dtype, DK, DV, inclusive, gc is not None, initial is not None, save_states)
    widest_fitting(key, value_block(B * H, DV), run)
    return o, final, states


#: the token tile the chunk scan walks its chunks in
_CHUNK_TILE = 64


@scan_chunks.register_fake
def _(q, k, v, gc, initial, chunk_size, inclusive, save_states=True):
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    acc = state_dtype(q)
    n = -(-T // chunk_size) if save_states else 0
    return (q.new_empty(B, T, H, DV).transpose(1, 2), q.new_empty(B, H, DK, DV, dtype=acc),
            q.new_empty(B, H, n, DK, DV, dtype=acc))


@torch.library.custom_op("tttla::scan_chunks_backward", mutates_args=())
def scan_chunks_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: torch.Tensor | None, states: torch.Tensor,
    final: torch.Tensor, do: torch.Tensor, d_final: torch.Tensor | None, chunk_size: int, inclusive: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (q's dtype), dgc ``[B, H, N]`` and dS_0 (state dtype) of :func:`scan_chunks`."""
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    acc = states.dtype
    dv = new_output((B, H, T, DV), q, acc)
    ds0 = new_output((B, H, DK, DV), q, acc)

    def run(BV: int):
        NV = triton.cdiv(DV, BV)  # dq, dk and dgc: one partial sum per value block
        dq, dk = (new_output((NV, B, H, T, DK), q, acc) for _ in range(2))
        dgc = new_output((NV, *gc.shape), q, acc) if gc is not None else states
        scan_chunks_bwd_kernel[(B * H, NV)](
            q, k, v, gc.contiguous() if gc is not None else states, states, final, do,
            d_final.contiguous() if d_final is not None else states, dq, dk, dv, dgc, ds0, H, T, chunk_size, DK, DV,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            INCLUSIVE=inclusive, HAS_GATE=gc is not None, HAS_DSF=d_final is not None,
            BT=_CHUNK_TILE, BK=block_covering(DK), BV=BV)
        return summed(dq), summed(dk), (summed(dgc) if gc is not None else ds0.new_zeros(0))

    key = ("scan_chunks_backward", q.device, q.dtype, DK, DV, inclusive, gc is not None, d_final is not None)
    dq, dk, dgc = widest_fitting(key, value_block(B * H, DV), run)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), dgc, ds0


@scan_chunks_backward.register_fake
def _(q, k, v, gc, states, final, do, d_final, chunk_size, inclusive):
    acc = states.dtype
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            gc.new_empty(gc.shape) if gc is not None else q.new_empty(0, dtype=acc),
            q.new_empty(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=acc))


def _chunks_setup(ctx, inputs, output):
    q, k, v, gc, initial, ctx.chunk_size, ctx.inclusive, ctx.saved_states = inputs
    _keep_for_backward(ctx, q, k, v, gc, initial, output)


def _chunks_backward(ctx, d_o, d_final, _):
    q, k, v, gc, states, final, d_o = _kept(ctx, d_o, "scan_chunks", "fused_chunk_scan")
    dq, dk, dv, dgc, ds0 = scan_chunks_backward(q, k, v, gc, states, final, d_o, d_final, ctx.chunk_size,
                                                ctx.inclusive)
    return dq, dk, dv, (dgc if gc is not None else None), (ds0 if ctx.has_initial else None), None, None, None


scan_chunks.register_autograd(_chunks_backward, setup_context=_chunks_setup)
