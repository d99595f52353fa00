"""Triton kernels shared by every generated ``triton_chunk.py`` (hand-written, not generated).

Two kernels carry every chunked product of the parallel form, forward and backward; nothing
in them depends on the variant (the variant-specific parts — the feature map φ, the effective
value, momentum, Newton–Schulz, the read order — live in the generated module):

* ``chunk_outer``: per chunk n, Σ_{t ∈ n} a_tᵀ b_t (increments ΔS_n = K̂_nᵀ V̂_n, and
  ∂L/∂S_n = Q̂_nᵀ dO_n);
* ``chunk_read``: o_t = q_t S_{c(t)} + Σ_{s ∈ c(t), mask(s, t)} (q_t · k_s) v_s (the outputs, and
  every gradient of a read: dq, dk, dv are reads with the roles of q, k, v, S permuted),
  optionally decayed by a gate (simple_gla, GLA, RetNet retention): the cumulative log gate G
  within each chunk, one per token or per channel, weighs the state term by e^{G_t} and the pair
  (t, s) by e^{G_t − G_s}, exponents taken under the mask so that any gate ≤ 0 is stable.

Each is a torch.library custom op (``tttla::chunk_outer``, ``tttla::chunk_read``) whose backward
is built from the two ops again, so the autograd graph (and ``torch.compile``) never sees a raw
kernel launch.

Operands enter ``tl.dot`` in their own dtype (fp16/bf16 on tensor cores; fp32 and fp64 at full
("ieee") precision) and accumulate in fp32 (fp64 for fp64 operands); the states S are kept in
the accumulator dtype and rounded to the operands' dtype only as a dot operand. The token
operands (``[B, H, T, D]``) are read through their batch, head and token strides — a heads-first
view ``x.transpose(1, 2)`` of a caller's ``[B, T, H, D]`` tensor needs no copy — and a launcher
copies one only when its channels are not at unit stride (``launcher_copies``). Block sizes are
powers of two (≥ 16 for ``tl.dot``) with masked loads; offsets are int64. Each kernel has a
default launch configuration per operand width and, with ``TTTLA_AUTOTUNE=1`` on a GPU, a short
list of candidates timed once per problem. Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set before this module is imported) runs one configuration.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
import triton.testing
from triton.runtime.errors import OutOfResources

from tttla_kernels.runtime import state_dtype

__all__ = ["MASK_NONE", "MASK_CAUSAL", "MASK_ANTICAUSAL", "chunk_outer", "chunk_read", "check_device", "new_output",
           "drop_nonfinite", "block_covering", "interpreting", "launch", "launch_candidates", "launcher_copies"]

# Masks of the intra-chunk term of chunk_read: which tokens s of t's chunk it reads.
MASK_NONE, MASK_CAUSAL, MASK_ANTICAUSAL = 0, 1, 2  # none; s ≤ t; s ≥ t (the transpose of causal)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreting(device: torch.device) -> bool:
    """Whether a kernel on ``device`` runs in Triton's interpreter (TRITON_INTERPRET=1 and a CPU tensor);
    a fake tensor on the ``meta`` device stands for a GPU's (the cost model counts the GPU's launch)."""
    return _interpreting() and device.type == "cpu"


def check_device(t: torch.Tensor) -> None:
    """A Triton kernel's tensor must be on the GPU, or on the CPU under Triton's interpreter."""
    if t.device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "the Triton form runs on a GPU, or on the CPU in Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton and this module are imported (or use the chunk form on the CPU)"
        )


def block_covering(n: int, cap: int | None = None) -> int:
    """A power-of-two block covering ``n`` (at least 16, for tl.dot), at most ``cap`` (which is raised to 16)."""
    block = max(16, triton.next_power_of_2(n))
    return block if cap is None else min(block, max(16, cap))


# --- launch configurations -----------------------------------------------------------------
# A configuration is the kernel's block sizes plus num_warps and num_stages. The first
# candidate is the default; with TTTLA_AUTOTUNE=1 (on a GPU) each new problem — the kernel,
# its sizes and dtype — times every candidate once and keeps the fastest.

#: per kernel and operand width (bits; "interpreter" for Triton's CPU interpreter): the block
#: caps — chunk_outer (BA, BB, BT), chunk_read (BT, BK, BV) — with num_warps and num_stages
_CANDIDATES = {
    "outer": {
        "interpreter": [((64, 64, 64), 4, 1)],
        # tensor cores, large tiles; first: the fastest for LaCT's d = h = 384, chunk 2048, bf16 on
        # an H100 (TTTLA_AUTOTUNE=1)
        16: [((64, 128, 64), 4, 3), ((64, 64, 64), 4, 3), ((128, 64, 64), 4, 3), ((128, 128, 64), 8, 3),
             ((128, 128, 32), 8, 4), ((128, 128, 64), 8, 2)],
        32: [((64, 64, 32), 4, 2), ((64, 64, 16), 4, 3), ((128, 64, 32), 8, 2), ((32, 32, 32), 4, 2)],
        64: [((32, 32, 16), 4, 2), ((64, 32, 16), 4, 2), ((32, 32, 32), 4, 2)],
    },
    "read": {
        "interpreter": [((64, 64, 64), 4, 1)],
        16: [((128, 64, 128), 8, 2), ((64, 64, 64), 4, 2), ((64, 64, 128), 8, 2), ((64, 128, 128), 8, 2),
             ((128, 64, 64), 4, 3), ((64, 32, 128), 4, 3)],
        32: [((32, 32, 64), 4, 2), ((64, 32, 64), 4, 2), ((32, 64, 64), 8, 2), ((64, 32, 32), 4, 3)],
        64: [((16, 32, 32), 4, 2), ((32, 16, 32), 4, 2), ((16, 16, 64), 4, 2)],
    },
    # a per-channel gate's diagonal block holds a [BT, BT, BK] (key gate) or [BT, BT, BV] (value
    # gate) product in registers: small tiles (not yet timed on a GPU)
    "read_channel_gate": {
        "interpreter": [((64, 64, 64), 4, 1)],
        16: [((32, 16, 16), 4, 2), ((16, 16, 32), 4, 2)],
        32: [((32, 16, 16), 4, 2), ((16, 16, 32), 4, 2)],
        64: [((16, 16, 16), 4, 2)],
    },
}


def launch_candidates(table: dict, covers: dict[str, int], dtype: torch.dtype) -> list[dict]:
    """Launch configs for ``dtype`` operands from a kernel's ``table`` (as in ``_CANDIDATES``): each
    block (name → the size it must cover, in the table's order) the power of two covering it, at
    most its cap."""
    width = "interpreter" if _interpreting() else dtype.itemsize * 8
    return [{**{name: block_covering(n, cap) for (name, n), cap in zip(covers.items(), caps)},
             "num_warps": warps, "num_stages": stages}
            for caps, warps, stages in table[width]]


_TUNED: dict[tuple, dict] = {}


def _autotuning() -> bool:
    return os.environ.get("TTTLA_AUTOTUNE") == "1" and not _interpreting()


def launch(kernel, grid, args: tuple, flags: dict, key: tuple, candidates: list[dict]) -> None:
    """Launch ``kernel`` on ``grid(config)``: the default config, or (TTTLA_AUTOTUNE=1) the fastest
    candidate for ``key``, timed once per key with triton.testing.do_bench (a candidate that fails
    to compile, e.g. for want of shared memory, is skipped). The kernels overwrite their whole
    output, so a timing launch leaves nothing behind."""
    config = candidates[0]
    if _autotuning():
        if key not in _TUNED:
            timings = []
            for cand in candidates:
                try:
                    ms = triton.testing.do_bench(
                        lambda cand=cand: kernel[grid(cand)](*args, **flags, **cand), warmup=5, rep=25)
                except Exception:  # noqa: BLE001 — a config this GPU cannot run is not a candidate
                    continue
                timings.append((ms, len(timings), cand))
            _TUNED[key] = min(timings)[2] if timings else candidates[0]
        config = _TUNED[key]
    kernel[grid(config)](*args, **flags, **config)


_FITTING: dict[tuple, int] = {}


#: forward programs that keep a GPU's streaming multiprocessors busy (an H100 has 132)
TARGET_PROGRAMS = 128


def value_block(batch_heads: int, DV: int) -> int:
    """The value columns one forward program of a scan holds: all of them, halved while the grid of
    B·H·⌈Dv/BV⌉ programs is below :data:`TARGET_PROGRAMS` and BV stays ≥ 32 (fla's grid over value
    blocks × B·H). Each column block re-reads the keys and queries (from L2) and recomputes what it
    needs of them; where a backward sums over the value columns, each block writes a partial sum
    (:func:`summed`)."""
    BV = block_covering(DV)
    while batch_heads * triton.cdiv(DV, BV) < TARGET_PROGRAMS and BV >= 64:
        BV //= 2
    return BV


def summed(parts: torch.Tensor) -> torch.Tensor:
    """The sum of a backward's partial results over the value blocks (dim 0): one block's as it is."""
    return parts[0] if parts.shape[0] == 1 else parts.sum(0)


def widest_fitting(key: tuple, start: int, run, floor: int = 16):
    """``run(width)`` with the widest power-of-two ``width`` ≤ ``start`` whose kernel fits the GPU:
    a compiled kernel that wants more shared memory than the device has is refused by Triton before
    it launches (``OutOfResources``), and the width is halved, down to ``floor``. The width that fit
    is remembered by ``key`` (what decides the kernel's size: its widths, dtype, flags)."""
    width = min(start, _FITTING.get(key, start))
    while True:
        try:
            result = run(width)
        except OutOfResources:
            if width <= floor:
                raise
            width //= 2
            continue
        _FITTING[key] = width
        return result


def tuned_configs() -> dict[tuple, dict]:
    """The configurations chosen so far by TTTLA_AUTOTUNE=1, by problem key (for benchmark logs)."""
    return dict(_TUNED)


def new_output(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh output buffer on ``like``'s device (in ``dtype``, default ``like``'s); filled with
    NaN when TTTLA_NAN_FILL=1 so an element a kernel forgets to write cannot pass a test."""
    dtype = like.dtype if dtype is None else dtype
    if os.environ.get("TTTLA_NAN_FILL") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


@triton.jit
def _head(ptr, i_bh, H, stride_b, stride_h):
    """The address of program ``i_bh = b·H + h``'s (batch, head) slice of a tensor ``[B, H, ...]``
    read through its strides (a size-1 or broadcast dimension may carry any stride)."""
    return ptr + (i_bh // H) * stride_b + (i_bh % H) * stride_h


@triton.jit
def chunk_outer_kernel(
    a_ptr, b_ptr, scale_ptr, out_ptr, T, L, N, H, DA, DB,
    a_stride_b, a_stride_h, a_stride_t, b_stride_b, b_stride_h, b_stride_t,
    scale_stride_b, scale_stride_h, scale_stride_t,
    HAS_SCALE: tl.constexpr, BT: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr,
):
    """out[bh, n] = Σ_{t ∈ chunk n} a[bh, t]ᵀ (scale[bh, t] b[bh, t]) (no scale: 1).

    a ``[B, H, T, DA]``, b ``[B, H, T, DB]`` read through their (batch, head, token) strides, the
    channels at unit stride; scale ``[B, H, T]`` through its strides, multiplying each row of b in
    the accumulator dtype before it is rounded to b's dtype for the product; out
    ``[B·H, N, DA, DB]`` contiguous, in the accumulator dtype (fp32, fp64 for fp64 inputs). Grid
    ``(⌈DA/BA⌉, ⌈DB/BB⌉, N·B·H)``; chunk n holds tokens [nL, min((n+1)L, T)), read BT at a time
    (masked ragged tail).
    """
    i_a, i_b, i_nbh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_bh, i_n = i_nbh // N, i_nbh % N
    acc_t = out_ptr.dtype.element_ty  # the output is the accumulator: fp32 (fp64 for fp64 operands)
    offs_a = i_a * BA + tl.arange(0, BA)
    offs_b = i_b * BB + tl.arange(0, BB)
    start = i_n * L
    end = tl.minimum(start + L, T)
    a_base = _head(a_ptr, i_bh, H, a_stride_b, a_stride_h)
    b_base = _head(b_ptr, i_bh, H, b_stride_b, b_stride_h)
    scale_base = _head(scale_ptr, i_bh, H, scale_stride_b, scale_stride_h)
    acc = tl.zeros([BA, BB], dtype=acc_t)
    for t0 in range(0, L, BT):
        offs_t = start + t0 + tl.arange(0, BT)
        in_chunk = offs_t < end
        a = tl.load(a_base + offs_t[:, None] * a_stride_t + offs_a[None, :],
                    mask=in_chunk[:, None] & (offs_a[None, :] < DA), other=0.0)  # [BT, BA]
        b = tl.load(b_base + offs_t[:, None] * b_stride_t + offs_b[None, :],
                    mask=in_chunk[:, None] & (offs_b[None, :] < DB), other=0.0)  # [BT, BB]
        if HAS_SCALE:  # scale_t b_t, multiplied in the accumulator dtype
            scale = tl.load(scale_base + offs_t * scale_stride_t, mask=in_chunk, other=0.0).to(acc_t)  # [BT]
            b = (b.to(acc_t) * scale[:, None]).to(b_ptr.dtype.element_ty)
        acc += tl.dot(tl.trans(a), b, input_precision="ieee").to(acc_t)
    out = out_ptr + (i_bh * N + i_n) * DA * DB
    tl.store(out + offs_a[:, None] * DB + offs_b[None, :], acc,
             mask=(offs_a[:, None] < DA) & (offs_b[None, :] < DB))


@triton.jit
def drop_nonfinite(v, causal: tl.constexpr):
    """The values ``v [BT, BV]`` of a diagonal block (sources s in the rows' own token order) with
    their non-finite entries zeroed, and where the masked sum over s reaches one: s ≤ t
    (``causal``) or s ≥ t. Multiplying a masked-out value by a zero score would give 0·NaN = NaN
    in rows that cannot read it; a row that does read it is non-finite, so the caller sets it NaN."""
    bad = ((v - v) != 0).to(tl.int32)  # NaN or ±inf
    seen = tl.cumsum(bad, axis=0)  # Σ_{s ≤ t}
    if not causal:
        seen = tl.sum(bad, axis=0)[None, :] - seen + bad  # Σ_{s ≥ t}
    return tl.where(bad != 0, tl.zeros_like(v), v), seen > 0


@triton.jit
def _gate_tile(g_base, g_stride_t, offs_t, rows, offs_c, n_c, PER_CHANNEL: tl.constexpr):
    """The cumulative log gate G of tokens ``offs_t`` (``g_stride_t`` apart): ``[BT, BC]`` per
    channel (channels ``offs_c`` of ``n_c``), ``[BT]`` for a scalar gate; 0 outside the rows and
    channels."""
    if PER_CHANNEL:
        g = tl.load(g_base + offs_t[:, None] * g_stride_t + offs_c[None, :],
                    mask=rows[:, None] & (offs_c[None, :] < n_c), other=0.0)
    else:
        g = tl.load(g_base + offs_t * g_stride_t, mask=rows, other=0.0)
    return g


@triton.jit
def _decay(log_decay, keep):
    """exp(log_decay) where ``keep``, else 0: the exponent is masked *before* exp, so a pair the
    mask drops (whose exponent may be large and positive) gives 0, never inf or NaN."""
    return tl.exp(tl.where(keep, log_decay, float("-inf")))


@triton.jit
def chunk_read_kernel(
    q_ptr, k_ptr, v_ptr, s_ptr, g_ptr, o_ptr, T, L, N, H, DK, DV,
    q_stride_b, q_stride_h, q_stride_t, k_stride_b, k_stride_h, k_stride_t,
    v_stride_b, v_stride_h, v_stride_t, g_stride_b, g_stride_h, g_stride_t,
    s_stride_b, s_stride_h, s_stride_n, s_stride_r, s_stride_c,
    HAS_STATE: tl.constexpr, MASK: tl.constexpr, GATE: tl.constexpr, ACC64: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """o[bh, t] = q_t S_{c(t)} + Σ_{s ∈ chunk c(t), mask(s, t)} (q_t · k_s) v_s, optionally gated.

    q, k ``[B, H, T, DK]`` and v ``[B, H, T, DV]`` (one dtype) read through their (batch, head,
    token) strides, the channels at unit stride; o ``[B·H, T, DV]`` contiguous; S
    ``[B, H, N, DK, DV]`` (the accumulator dtype) read through all its strides (a transposed view
    needs no copy) and rounded to q's dtype for the product. HAS_STATE: add the state term;
    MASK: 0 no intra-chunk term, 1 s ≤ t, 2 s ≥ t. Grid ``(⌈DV/BV⌉, N·⌈L/BT⌉, B·H)``: a program writes BT tokens of one
    chunk (masked ragged tail), accumulating in fp32 (fp64 when ACC64). A NaN or inf in q_t, k_s
    or v_s reaches only the rows t that read it (``drop_nonfinite``).

    GATE: 0 none; G the cumulative log gate (within each chunk) ``g`` holds, in the accumulator
    dtype, read through its strides (channels at unit stride) — 1 scalar ``[B, H, T]``, 2 per key
    channel ``[B, H, T, DK]``, 3 per value channel ``[B, H, T, DV]``. The gated read is

        o_tj = Σ_c q_tc e^{G_tc} S_cj + Σ_{s, mask(s, t)} Σ_c q_tc k_sc v_sj e^{G_tc − G_sc}  (1, 2)
        o_tj = e^{G_tj} (q_t S)_j + Σ_{s, mask(s, t)} (q_t · k_s) v_sj e^{G_tj − G_sj}          (3)

    (a scalar gate is the same on every channel). The exponent G_t − G_s of a pair is taken only
    where the mask keeps the pair (``_decay``): with gates ≤ 0 it is ≤ 0 under the causal mask
    (and under the anticausal mask when the caller passes −G, as the backward does), so the
    terms underflow to 0 rather than overflow, however negative the gates. A per-channel gate
    cannot be a factor of the score matrix: the diagonal source block (where the mask cuts
    through it) sums the per-pair, per-channel product in registers (``[BT, BT, BK]`` or
    ``[BT, BT, BV]``); an off-diagonal block, whose every source lies on one side of every row,
    factors through the reference token r between them (the first row for s ≤ t, the last for
    s ≥ t): e^{G_t − G_s} = e^{G_t − G_r} · e^{G_r − G_s}, both ≤ 1 when the pair's exponent is.
    A NaN or inf in G reaches only the rows whose kept pairs read it.
    """
    i_v, i_tb, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    n_blocks = tl.cdiv(L, BT)
    i_n, i_j = i_tb // n_blocks, i_tb % n_blocks
    acc_t = tl.float64 if ACC64 else tl.float32
    in_t = q_ptr.dtype.element_ty
    start = i_n * L
    end = tl.minimum(start + L, T)
    offs_t = start + i_j * BT + tl.arange(0, BT)
    rows = offs_t < end
    offs_v = i_v * BV + tl.arange(0, BV)
    cols = offs_v < DV
    q_base = _head(q_ptr, i_bh, H, q_stride_b, q_stride_h)
    k_base = _head(k_ptr, i_bh, H, k_stride_b, k_stride_h)
    v_base = _head(v_ptr, i_bh, H, v_stride_b, v_stride_h)
    g_base = _head(g_ptr, i_bh, H, g_stride_b, g_stride_h)
    acc = tl.zeros([BT, BV], dtype=acc_t)
    poisoned = tl.zeros([BT, BV], dtype=tl.int1)  # a non-finite value v_s with mask(s, t) in column c
    if HAS_STATE:  # q_t S_{c(t)}
        s_base = _head(s_ptr, i_bh, H, s_stride_b, s_stride_h) + i_n * s_stride_n
        for k0 in range(0, DK, BK):
            offs_k = k0 + tl.arange(0, BK)
            q = tl.load(q_base + offs_t[:, None] * q_stride_t + offs_k[None, :],
                        mask=rows[:, None] & (offs_k[None, :] < DK), other=0.0)  # [BT, BK]
            if GATE == 2:  # q_t ⊙ e^{G_t}
                q = (q.to(acc_t) * tl.exp(_gate_tile(g_base, g_stride_t, offs_t, rows, offs_k, DK, True))).to(in_t)
            s = tl.load(s_base + offs_k[:, None] * s_stride_r + offs_v[None, :] * s_stride_c,
                        mask=(offs_k[:, None] < DK) & cols[None, :], other=0.0).to(in_t)  # [BK, BV]
            acc += tl.dot(q, s, input_precision="ieee").to(acc_t)
        if GATE == 1:
            acc *= tl.exp(_gate_tile(g_base, g_stride_t, offs_t, rows, offs_v, 1, False))[:, None]
        if GATE == 3:
            acc *= tl.exp(_gate_tile(g_base, g_stride_t, offs_t, rows, offs_v, DV, True))
    if MASK != 0:  # the chunk's own tokens, one block of BT sources at a time
        if MASK == 1:
            lo, hi = 0, i_j + 1
            ref = tl.minimum(start + i_j * BT, end - 1)  # a token at or before every row, after every source
        else:
            lo, hi = i_j, n_blocks
            ref = tl.minimum(start + i_j * BT + BT, end) - 1  # at or after every row, before every source
        if GATE == 1:
            g_rows = _gate_tile(g_base, g_stride_t, offs_t, rows, offs_v, 1, False)  # [BT]
        if GATE == 3:
            g_rows = _gate_tile(g_base, g_stride_t, offs_t, rows, offs_v, DV, True)  # [BT, BV]
            g_ref = tl.load(g_base + ref * g_stride_t + offs_v, mask=cols, other=0.0)  # [BV]
        for i_s in range(lo, hi):
            offs_s = start + i_s * BT + tl.arange(0, BT)
            sources = offs_s < end
            if MASK == 1:
                keep = offs_s[None, :] <= offs_t[:, None]
            else:
                keep = offs_s[None, :] >= offs_t[:, None]
            pair = keep & sources[None, :] & rows[:, None]  # where a gate's exponent is taken
            scores = tl.zeros([BT, BT], dtype=acc_t)  # q_t · k_s
            for k0 in range(0, DK, BK):
                offs_k = k0 + tl.arange(0, BK)
                q = tl.load(q_base + offs_t[:, None] * q_stride_t + offs_k[None, :],
                            mask=rows[:, None] & (offs_k[None, :] < DK), other=0.0)  # [BT, BK]
                k = tl.load(k_base + offs_s[:, None] * k_stride_t + offs_k[None, :],
                            mask=sources[:, None] & (offs_k[None, :] < DK), other=0.0)  # [BT, BK]
                if GATE == 2:  # Σ_c q_tc k_sc e^{G_tc − G_sc}
                    g_q = _gate_tile(g_base, g_stride_t, offs_t, rows, offs_k, DK, True)  # [BT, BK]
                    g_k = _gate_tile(g_base, g_stride_t, offs_s, sources, offs_k, DK, True)  # [BT, BK]
                    if i_s == i_j:  # the per-pair, per-channel product
                        scores += tl.sum(q.to(acc_t)[:, None, :] * k.to(acc_t)[None, :, :]
                                         * _decay(g_q[:, None, :] - g_k[None, :, :], pair[:, :, None]), axis=2)
                    else:  # through the reference token: q_t e^{G_t − G_r} · k_s e^{G_r − G_s}
                        g_r = tl.load(g_base + ref * g_stride_t + offs_k, mask=offs_k < DK, other=0.0)[None, :]
                        q = (q.to(acc_t) * _decay(g_q - g_r, rows[:, None])).to(in_t)
                        k = (k.to(acc_t) * _decay(g_r - g_k, sources[:, None])).to(in_t)
                        scores += tl.dot(q, tl.trans(k), input_precision="ieee").to(acc_t)
                else:
                    scores += tl.dot(q, tl.trans(k), input_precision="ieee").to(acc_t)
            if GATE == 1:  # e^{G_t − G_s}
                g_src = _gate_tile(g_base, g_stride_t, offs_s, sources, offs_v, 1, False)
                scores *= _decay(g_rows[:, None] - g_src[None, :], pair)
            scores = tl.where(keep & sources[None, :], scores, 0.0)
            v = tl.load(v_base + offs_s[:, None] * v_stride_t + offs_v[None, :],
                        mask=sources[:, None] & cols[None, :], other=0.0)  # [BT, BV]
            if i_s == i_j:  # the diagonal block, where the mask drops sources: see drop_nonfinite
                v, reached = drop_nonfinite(v, MASK == 1)
                poisoned = poisoned | reached
            if GATE == 3:  # Σ_s scores_ts v_sj e^{G_tj − G_sj}
                g_v = _gate_tile(g_base, g_stride_t, offs_s, sources, offs_v, DV, True)  # [BT, BV]
                if i_s == i_j:  # the per-pair, per-channel product
                    acc += tl.sum(scores[:, :, None] * v.to(acc_t)[None, :, :]
                                  * _decay(g_rows[:, None, :] - g_v[None, :, :], pair[:, :, None]), axis=1)
                else:  # through the reference token: e^{G_t − G_r} Σ_s scores_ts (v_s e^{G_r − G_s})
                    v = (v.to(acc_t) * _decay(g_ref[None, :] - g_v, sources[:, None])).to(in_t)
                    acc += (_decay(g_rows - g_ref[None, :], rows[:, None])
                            * tl.dot(scores.to(in_t), v, input_precision="ieee").to(acc_t))
            else:
                acc += tl.dot(scores.to(in_t), v, input_precision="ieee").to(acc_t)
        acc = tl.where(poisoned, float("nan"), acc)
    tl.store(o_ptr + i_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=rows[:, None] & cols[None, :])


def launcher_copies(x: torch.Tensor) -> bool:
    """Whether a launcher copies the token operand ``x`` (``[B, H, T, D]``, or ``[B, H, T]`` for a
    scalar gate or a scale) before its kernel reads it: only when its D > 1 channels are not at unit
    stride. Every other stride (batch, head, token: a heads-first view ``x.transpose(1, 2)`` of a
    ``[B, T, H, D]`` tensor, a batch-expanded view) is passed to the kernel. verify/cost.py counts
    a launcher's copies with this."""
    return x.dim() == 4 and x.shape[-1] > 1 and x.stride(-1) != 1


def _strided(x: torch.Tensor) -> torch.Tensor:
    """``x`` as its kernel reads it: itself, or a contiguous copy when ``launcher_copies(x)``."""
    return x.contiguous() if launcher_copies(x) else x


def _token_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """The (batch, head, token) strides of a token operand ``[B, H, T, ...]``."""
    return x.stride(0), x.stride(1), x.stride(2)


def _check_scale(scale: torch.Tensor, a: torch.Tensor) -> None:
    """chunk_outer's per-token scale: ``[B, H, T]`` in a's dtype or the accumulator dtype, on a's
    device; a ValueError names what is wrong."""
    B, H, T = a.shape[:3]
    if tuple(scale.shape) != (B, H, T):
        raise ValueError(f"chunk_outer: scale must have shape [B, H, T] = {[B, H, T]}, got {list(scale.shape)}")
    if scale.dtype not in (a.dtype, state_dtype(a)):
        raise ValueError(f"chunk_outer: scale must be in the operands' dtype {a.dtype} or the accumulator dtype "
                         f"{state_dtype(a)}, got {scale.dtype}")
    if scale.device != a.device:
        raise ValueError(f"chunk_outer: scale must be on the device of a ({a.device}), got {scale.device}")


def _launch_outer(a: torch.Tensor, b: torch.Tensor, chunk_size: int, scale: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Σ_{t ∈ n} a_tᵀ (scale_t b_t) per chunk: a ``[B, H, T, Da]``, b ``[B, H, T, Db]`` (one dtype),
    scale ``[B, H, T]`` or None → ``[B, H, N, Da, Db]`` in the accumulator dtype (fp32, fp64 for
    fp64 operands)."""
    check_device(a)
    if a.dtype != b.dtype:
        raise ValueError(f"chunk_outer: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if scale is not None:
        _check_scale(scale, a)
    a, b = _strided(a), _strided(b)
    B, H, T, DA = a.shape
    DB = b.shape[-1]
    N = triton.cdiv(T, chunk_size)
    out = new_output((B, H, N, DA, DB), a, state_dtype(a))  # the accumulator dtype
    has_scale = scale is not None
    scale_strides = _token_strides(scale) if has_scale else (0, 0, 0)

    def grid(cfg):
        return (triton.cdiv(DA, cfg["BA"]), triton.cdiv(DB, cfg["BB"]), N * B * H)

    launch(chunk_outer_kernel, grid,
           (a, b, scale if has_scale else a, out, T, chunk_size, N, H, DA, DB,  # a: not read
            *_token_strides(a), *_token_strides(b), *scale_strides), {"HAS_SCALE": has_scale},
           ("outer", DA, DB, chunk_size, T, B * H, a.dtype, has_scale),
           launch_candidates(_CANDIDATES["outer"], {"BA": DA, "BB": DB, "BT": chunk_size}, a.dtype))
    return out


def _read_grid(DV: int, N: int, L: int, BH: int, BT: int, BV: int):
    return (triton.cdiv(DV, BV), N * triton.cdiv(L, BT), BH)


#: the kernel's GATE flag: no gate, one scalar per token, one per key channel, one per value channel
_GATE_NONE, _GATE_SCALAR, _GATE_KEYS, _GATE_VALUES = 0, 1, 2, 3


def _gate_mode(g: torch.Tensor | None, q: torch.Tensor, value_dim: int, gate_values: bool) -> int:
    """The kernel's GATE flag for the cumulative log gate ``g`` of a read of q ``[B, H, T, Dk]``;
    a ValueError names what is wrong with ``g``."""
    if g is None:
        return _GATE_NONE
    B, H, T, DK = q.shape
    per_channel, channels = (_GATE_VALUES, value_dim) if gate_values else (_GATE_KEYS, DK)
    side = "value" if gate_values else "key"
    if tuple(g.shape) == (B, H, T):
        mode = _GATE_SCALAR
    elif tuple(g.shape) == (B, H, T, channels):
        mode = per_channel
    else:
        raise ValueError(f"chunk_read: g must have shape [B, H, T] = {[B, H, T]} (a scalar gate) or "
                         f"[B, H, T, D{side[0]}] = {[B, H, T, channels]} (one per {side} channel), "
                         f"got {list(g.shape)}")
    if g.dtype != state_dtype(q):
        raise ValueError(f"chunk_read: g must be in the accumulator dtype {state_dtype(q)} (q is {q.dtype}), "
                         f"got {g.dtype}")
    if g.device != q.device:
        raise ValueError(f"chunk_read: g must be on the device of q ({q.device}), got {g.device}")
    return mode


def _launch_read(q, k, v, S, chunk_size: int, mask: int, value_dim: int, g=None, gate_values: bool = False
                 ) -> torch.Tensor:
    """o_t = q_t S_{c(t)} + Σ_{s ∈ c(t), mask} (q_t · k_s) v_s: q ``[B, H, T, Dk]``, k ``[B, H, T, Dk]``
    or None, v ``[B, H, T, Dv]`` or None (q's dtype; any strides but the channels', see
    ``launcher_copies``), S ``[B, H, N, Dk, Dv]`` (any strides) or None → ``[B, H, T, Dv]``
    contiguous in q's dtype; gated by the cumulative log gate g (see ``chunk_read``)."""
    check_device(q)
    gate = _gate_mode(g, q, value_dim, gate_values)
    q = _strided(q)
    B, H, T, DK = q.shape
    N = triton.cdiv(T, chunk_size)
    k, v, g = (q if x is None else _strided(x) for x in (k, v, g))  # q: not read
    o = new_output((B, H, T, value_dim), q)
    has_state = S is not None
    state_strides = S.stride() if has_state else (0,) * 5
    token_strides = (stride for x in (q, k, v, g) for stride in _token_strides(x))

    def grid(cfg):
        return _read_grid(value_dim, N, chunk_size, B * H, cfg["BT"], cfg["BV"])

    flags = {"HAS_STATE": has_state, "MASK": mask, "GATE": gate, "ACC64": state_dtype(q) == torch.float64}
    table = "read_channel_gate" if gate in (_GATE_KEYS, _GATE_VALUES) else "read"
    launch(chunk_read_kernel, grid,
           (q, k, v, S if has_state else q, g, o, T, chunk_size, N, H, DK, value_dim,  # q: not read
            *token_strides, *state_strides), flags,
            ("read", DK, value_dim, chunk_size, T, B * H, q.dtype, has_state, mask, gate),
            launch_candidates(_CANDIDATES[table], {"BT": chunk_size, "BK": DK, "BV": value_dim}, q.dtype))
    return o


@torch.library.custom_op("tttla::chunk_outer", mutates_args=())
def chunk_outer(a: torch.Tensor, b: torch.Tensor, chunk_size: int, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Per chunk n, Σ_{t ∈ n} a_tᵀ (scale_t b_t): a ``[B, H, T, Da]``, b ``[B, H, T, Db]`` →
    ``[B, H, N, Da, Db]`` in the accumulator dtype (fp32, fp64 for fp64 operands).

    a and b are read through their strides (a heads-first view of ``[B, T, H, D]`` needs no copy;
    only channels not at unit stride are copied). scale, optional: ``[B, H, T]`` (any strides) in
    the operands' dtype or the accumulator dtype; each row b_t is multiplied by scale_t in the
    accumulator dtype on load, then rounded to the operands' dtype for the product (exact up to
    that rounding: in fp64, one fp64 product), so scale ⊙ b is never materialised (LaCT's
    ΔS_n = φ(K_n)ᵀ (η_n ⊙ V_n) reads V in place).
    """
    return _launch_outer(a, b, chunk_size, scale)


@chunk_outer.register_fake
def _(a, b, chunk_size, scale=None):
    B, H, T, DA = a.shape
    return a.new_empty(B, H, -(-T // chunk_size), DA, b.shape[-1], dtype=state_dtype(a))  # as _launch_outer


def _outer_setup(ctx, inputs, output):
    a, b, ctx.chunk_size, scale = inputs
    ctx.save_for_backward(a, b, scale)


def _scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale_t x_t (x ``[B, H, T, D]``, scale ``[B, H, T]``), multiplied in the wider of the two
    dtypes and returned in x's."""
    return (x * scale[..., None]).to(x.dtype)


def _outer_backward(ctx, grad):
    """With G_n = ∂L/∂out_n and b̃_t = scale_t b_t (b̃ = b without a scale), two state-only reads:

        ∂a_t = b̃_t G_{c(t)}ᵀ = scale_t (b_t G_{c(t)}ᵀ),   r_t = a_t G_{c(t)},
        ∂b_t = scale_t r_t,   ∂scale_t = b_t · r_t.
    """
    a, b, scale = ctx.saved_tensors
    grad_a = chunk_read(b, None, None, grad.mT, ctx.chunk_size, MASK_NONE, a.shape[-1])
    grad_b = chunk_read(a, None, None, grad, ctx.chunk_size, MASK_NONE, b.shape[-1])
    if scale is None:
        return grad_a, grad_b, None, None
    grad_scale = None
    if ctx.needs_input_grad[3]:
        acc = state_dtype(a)
        grad_scale = (b.to(acc) * grad_b.to(acc)).sum(-1).to(scale.dtype)
    return _scale_rows(grad_a, scale), _scale_rows(grad_b, scale), None, grad_scale


chunk_outer.register_autograd(_outer_backward, setup_context=_outer_setup)


@torch.library.custom_op("tttla::chunk_read", mutates_args=())
def chunk_read(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    S: torch.Tensor | None,
    chunk_size: int,
    mask: int,
    value_dim: int,
    g: torch.Tensor | None = None,
    gate_values: bool = False,
) -> torch.Tensor:
    """o_t = q_t S_{c(t)} + Σ_{s ∈ c(t), mask(s, t)} (q_t · k_s) v_s → ``[B, H, T, value_dim]``.

    q, k ``[B, H, T, Dk]``, v ``[B, H, T, value_dim]``, S ``[B, H, N, Dk, value_dim]``; k and v
    are only read with an intra-chunk mask, S only when given. Every operand is read through its
    strides (q, k, v and g copied only when their channels are not at unit stride); o is
    contiguous.

    g, the optional gate: the cumulative log gate G_t = Σ_{s ∈ c(t), s ≤ t} log γ_s *within each
    chunk* (restarting at every chunk start; the caller's cumsum, so autograd reaches the per-token
    gates through it), in the accumulator dtype (fp32, fp64 for fp64 operands; fp32 also for fp16
    and bf16 operands). ``[B, H, T]``: a scalar gate, o_t = e^{G_t} q_t S_{c(t)} + Σ_s e^{G_t − G_s}
    (q_t · k_s) v_s. ``[B, H, T, Dk]``: one per key channel (it scales the rows of S),
    o_t = (q_t ⊙ e^{G_t}) S_{c(t)} + Σ_s Σ_c q_tc k_sc e^{G_tc − G_sc} v_s. With ``gate_values``,
    ``[B, H, T, value_dim]``: one per value channel, o_tj = e^{G_tj} (q_t S_{c(t)})_j +
    Σ_s (q_t · k_s) v_sj e^{G_tj − G_sj} (the backward of a key gate needs it). Stable for gates
    ≤ 0 under the causal mask (every exponent taken is ≤ 0), and under the anticausal one for −G.
    """
    return _launch_read(q, k, v, S, chunk_size, mask, value_dim, g, gate_values)


@chunk_read.register_fake
def _(q, k, v, S, chunk_size, mask, value_dim, g=None, gate_values=False):
    return q.new_empty(*q.shape[:3], value_dim)


def _read_setup(ctx, inputs, output):
    q, k, v, S, ctx.chunk_size, ctx.mask, _, g, ctx.gate_values = inputs
    ctx.save_for_backward(q, k, v, S, g, output if g is not None and ctx.gate_values else None)


def _gate_factor(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """e^G broadcast against ``like [B, H, T, D]`` (a scalar gate on every channel), in like's dtype."""
    return (g if g.dim() == 4 else g[..., None]).exp().to(like.dtype)


def _gate_grad(a: torch.Tensor, da: torch.Tensor, b: torch.Tensor, db: torch.Tensor | None,
               g: torch.Tensor) -> torch.Tensor:
    """a ⊙ da − b ⊙ db (no second term when db is None) in g's dtype, summed over the channels for
    a scalar gate g."""
    grad = a.to(g.dtype) * da.to(g.dtype)
    if db is not None:
        grad = grad - b.to(g.dtype) * db.to(g.dtype)
    return grad if g.dim() == 4 else grad.sum(-1)


def _read_backward(ctx, dO):
    """dq = dO Sᵀ + mask(dO Vᵀ) K; dk = mask(dO Vᵀ)ᵀ Q; dv = mask(Q Kᵀ)ᵀ dO; dS_n = Q_nᵀ dO_n.

    All are reads again (the transposed mask reads s ≥ t) and one chunk_outer.

    Gated (key gate G: scalar or per key channel), with A_ts = Σ_c q_tc k_sc e^{G_tc − G_sc}:

        dq_tc = e^{G_tc} (dO_t Sᵀ)_c + Σ_{s, mask} (dO_t · v_s) k_sc e^{G_tc − G_sc}
              = read(dO, v, k, Sᵀ, mask, G on the *value* channels of that read),
        dk_sc = Σ_{t, mask} (v_s · dO_t) q_tc e^{G_tc − G_sc}
              = read(v, dO, q, −, flipped, −G on the value channels): the row is s, the column
                t, so the exponent (−G_sc) − (−G_tc) = G_tc − G_sc is ≤ 0 under the flipped mask,
        dv_s  = Σ_{t, mask} A_ts dO_t = read(k, q, dO, −, flipped, −G on the key channels),
        dS_n  = Σ_{t ∈ n} (q_t ⊙ e^{G_t})ᵀ dO_t = chunk_outer(q ⊙ e^G, dO) (a scalar gate: chunk_outer's
                scale, e^{G_t} applied to dO_t on load).

    The gate's gradient: G_tc enters o through e^{G_tc} in the state term and e^{G_tc − G_sc} as the
    row t of a pair, each term's derivative being the term itself, which summed against dO_t is
    q_tc dq_tc (dq in full, state term included); and through e^{G_t'c − G_tc} as the source t of
    the pairs (t', t), with the opposite sign, which summed is k_tc dk_tc. So dG = q ⊙ dq − k ⊙ dk
    per channel (summed over the channels for a scalar gate; the pair s = t appears in both and
    cancels, as its factor e^0 does not depend on G). A value gate is the mirror image: dq and dk
    are key-gated reads, dv value-gated, dS_n = Σ_t q_tᵀ (dO_t ⊙ e^{G_t}), and the same argument
    on the output side gives dG = dO ⊙ o − v ⊙ dv.
    """
    q, k, v, S, g, o = ctx.saved_tensors
    L, mask, gate_values = ctx.chunk_size, ctx.mask, ctx.gate_values
    flipped = {MASK_NONE: MASK_NONE, MASK_CAUSAL: MASK_ANTICAUSAL, MASK_ANTICAUSAL: MASK_CAUSAL}[mask]
    # the gates of the permuted reads: G for dq, −G for dk and dv (the flipped mask); dq and dk
    # gate the other side than the forward, dv the same side
    g_q, g_kv = (None, None) if g is None else (g, -g)
    grad_S = None
    if S is not None:
        if g is None:
            grad_S = chunk_outer(q, dO, L)
        elif g.dim() == 3:  # a scalar gate: Σ_t q_tᵀ (e^{G_t} dO_t), e^G applied on load
            grad_S = chunk_outer(q, dO, L, g.exp())
        elif gate_values:
            grad_S = chunk_outer(q, dO * _gate_factor(g, dO), L)
        else:
            grad_S = chunk_outer(q * _gate_factor(g, q), dO, L)
    if S is None and mask == MASK_NONE:
        grad_q = torch.zeros_like(q)
    else:
        grad_q = chunk_read(dO, v, k, None if S is None else S.mT, L, mask, q.shape[-1], g_q, not gate_values)
    grad_k = grad_v = None
    if mask != MASK_NONE:
        grad_k = chunk_read(v, dO, q, None, L, flipped, k.shape[-1], g_kv, not gate_values)
        grad_v = chunk_read(k, q, dO, None, L, flipped, v.shape[-1], g_kv, gate_values)
    grad_g = None
    if g is not None:
        grad_g = _gate_grad(dO, o, v, grad_v, g) if gate_values else _gate_grad(q, grad_q, k, grad_k, g)
    return grad_q, grad_k, grad_v, grad_S, None, None, None, grad_g, None


chunk_read.register_autograd(_read_backward, setup_context=_read_setup)
