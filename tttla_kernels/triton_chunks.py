"""Across-chunk kernels in Triton (hand-written, not generated): the small steps that glue a chunked
layer's two big kernels together, each one launch instead of a chain of torch ops.

* ``chunk_scan`` (``tttla::chunk_scan``): the linear recurrence along the chunk axis

      h_n = a_n h_{n−1} + U_n   (n = 0 … N−1, h_{−1} the initial state, zeros when absent),

  U ``[B, H, N, R, C]``; a ≡ 1 (the prefix sum of states), one coefficient per chunk
  ``[B, H, N]`` (a decay across chunks), or one per token ``[B, H, T]`` whose chunk means
  ā_n = (1/|n|) Σ_{t ∈ n} α_t the kernel takes itself (momentum, M_n = ā_n M_{n−1} + ΔS_n; the
  last chunk averages over its real tokens only, as ``runtime.chunk_means``). It returns every
  h_n (inclusive) or every h_{n−1} (exclusive: the state chunk n reads before its own step) and the
  last state h_{N−1}. One program holds a block of R·C cells of h in registers (fp32; fp64 for
  fp64 updates) and walks the chunks in order, so U is read once and the states written once.

* ``frobenius_normalize`` (``tttla::frobenius_normalize``): X / (‖X‖_F + ε) per matrix of
  ``[..., R, C]`` (Muon's and Newton–Schulz's first step), one program per matrix: a pass summing
  the squares, a pass scaling.

Backward, both in Triton: the scan's reverse recurrence (``tttla::chunk_scan_backward``) and the
normalisation's projection (``tttla::frobenius_normalize_backward``); only the scan's reduction
of ∂L/∂a_n over the blocks of cells, and its spread over a chunk's tokens, run in torch.

Offsets are int64; every load past a block's cells or a chunk's tokens is masked. A non-finite
U_n reaches only h_n, h_{n+1}, … (an exclusive states[n] never sees U_n); a non-finite entry of
a matrix makes that matrix alone non-finite, as the torch reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tttla_kernels.runtime import state_dtype
from tttla_kernels.triton_runtime import block_covering, check_device, interpreting, new_output

__all__ = ["chunk_scan", "frobenius_normalize"]


# --- launch configurations -----------------------------------------------------------------
# (cells per program, tokens per load, num_warps): on a GPU, blocks large enough to stream U at
# full bandwidth (LaCT's 384 × 384 state: 144 programs per head); in Triton's interpreter small
# ones, so a test at a small size still crosses blocks and tiles.

_GPU, _INTERPRETER = (1024, 1024, 4), (32, 16, 1)
_NORMALIZE_GPU, _NORMALIZE_INTERPRETER = (4096, 8), (32, 1)


def _scan_config(cells: int, chunk_size: int, device: torch.device) -> dict:
    block, tile, warps = _INTERPRETER if interpreting(device) else _GPU
    return {"BLOCK": block_covering(cells, block), "BT": block_covering(chunk_size, tile), "num_warps": warps}


def _normalize_config(cells: int, device: torch.device) -> dict:
    block, warps = _NORMALIZE_INTERPRETER if interpreting(device) else _NORMALIZE_GPU
    return {"BLOCK": block_covering(cells, block), "num_warps": warps}


# --- the scan along the chunk axis ---------------------------------------------------------

#: the kernels' COEFF flag: a ≡ 1, one coefficient per chunk, the chunk means of one per token
_COEFF_NONE, _COEFF_CHUNK, _COEFF_TOKEN = 0, 1, 2


@triton.jit
def _coefficient(a_base, n, sa, T, L, COEFF: tl.constexpr, acc_t: tl.constexpr, BT: tl.constexpr):
    """a_n: 1 (COEFF 0); ``a[n]`` (1); the mean of ``a[t]`` over chunk n's tokens [nL, min((n+1)L, T)) (2),
    read BT tokens at a time. ``sa`` is the stride of the chunk (1) or token (2) axis."""
    if COEFF == 1:
        return tl.load(a_base + n * sa).to(acc_t)
    elif COEFF == 2:
        start = n * L
        end = tl.minimum(start + L, T)
        total = tl.zeros([BT], dtype=acc_t)
        for t0 in range(start, end, BT):
            t = t0 + tl.arange(0, BT).to(tl.int64)
            total += tl.load(a_base + t * sa, mask=t < end, other=0.0).to(acc_t)
        return tl.sum(total, axis=0) / (end - start).to(acc_t)
    else:
        return tl.full([], 1.0, dtype=acc_t)


@triton.jit
def _initial_block(h0_ptr, i_b, i_h, cells, inside, C, s0b, s0h, s0r, s0c,
                   HAS_H0: tl.constexpr, acc_t: tl.constexpr, BLOCK: tl.constexpr):
    """The cells ``cells`` (flat r·C + c) of the initial state ``[B, H, R, C]`` read through its
    strides (an expanded batch has stride 0), or zeros; in the accumulator dtype."""
    if HAS_H0:
        offs = i_b * s0b + i_h * s0h + (cells // C) * s0r + (cells % C) * s0c
        return tl.load(h0_ptr + offs, mask=inside, other=0.0).to(acc_t)
    return tl.zeros([BLOCK], dtype=acc_t)


@triton.jit
def chunk_scan_fwd_kernel(
    u_ptr, a_ptr, h0_ptr, states_ptr, last_ptr,
    H, N, C, RC, T, L,
    sab, sah, sa, s0b, s0h, s0r, s0c,
    COEFF: tl.constexpr, HAS_H0: tl.constexpr, INCLUSIVE: tl.constexpr,
    BLOCK: tl.constexpr, BT: tl.constexpr,
):
    """h_n = a_n h_{n−1} + U_n for n = 0 … N−1, one block of BLOCK cells of one (batch, head).

    U ``[B, H, N, R, C]`` contiguous (RC = R·C cells per state); a read at ``a_ptr + b·sab + h·sah``
    along its last axis with stride ``sa`` (see ``_coefficient``); h_{−1} the initial state (HAS_H0)
    or zeros. Writes states ``[B, H, N, R, C]`` (h_n when INCLUSIVE, else h_{n−1}) and last
    ``[B, H, R, C]`` = h_{N−1}, in the accumulator dtype (the outputs' dtype). Grid
    ``(⌈RC/BLOCK⌉, B·H)``.
    """
    i_blk, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    acc_t = states_ptr.dtype.element_ty
    cells = i_blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inside = cells < RC
    a_base = a_ptr + i_b * sab + i_h * sah
    h = _initial_block(h0_ptr, i_b, i_h, cells, inside, C, s0b, s0h, s0r, s0c, HAS_H0, acc_t, BLOCK)
    for n in range(0, N):
        at = (i_bh * N + n) * RC + cells
        if not INCLUSIVE:
            tl.store(states_ptr + at, h, mask=inside)
        u = tl.load(u_ptr + at, mask=inside, other=0.0).to(acc_t)
        h = _coefficient(a_base, n, sa, T, L, COEFF, acc_t, BT) * h + u
        if INCLUSIVE:
            tl.store(states_ptr + at, h, mask=inside)
    tl.store(last_ptr + i_bh * RC + cells, h, mask=inside)


@triton.jit
def chunk_scan_bwd_kernel(
    gs_ptr, gl_ptr, states_ptr, a_ptr, h0_ptr, du_ptr, dh0_ptr, da_ptr,
    H, N, C, RC, T, L,
    sab, sah, sa, s0b, s0h, s0r, s0c,
    COEFF: tl.constexpr, HAS_H0: tl.constexpr, INCLUSIVE: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_GL: tl.constexpr, GRAD_A: tl.constexpr, ACC64: tl.constexpr,
    BLOCK: tl.constexpr, BT: tl.constexpr,
):
    """The gradients of ``chunk_scan_fwd_kernel``, chunks in reverse, g = ∂L/∂h_n in registers.

    With G_n = ∂L/∂states[n] (gs, HAS_GS) and ∂L/∂last (gl, HAS_GL) starting g:

        inclusive (states[n] = h_n):      g ← g + G_n;  dU_n = g;  da_n = ⟨g, h_{n−1}⟩;  g ← a_n g
        exclusive (states[n] = h_{n−1}):  dU_n = g;  da_n = ⟨g, h_{n−1}⟩;  g ← a_n g + G_n

    and ∂L/∂h_{−1} = g at the end. h_{n−1} is read from the forward's states (exclusive: states[n];
    inclusive: states[n−1], the initial state at n = 0): the saved outputs, since recomputing
    backwards, h_{n−1} = (h_n − U_n)/a_n, fails where a_n = 0. With GRAD_A each program writes its
    block's part of da_n (divided by the chunk's token count for per-token coefficients: ∂ā_n/∂α_t
    = 1/|n|) to ``da [B, H, N, ⌈RC/BLOCK⌉]``; the caller sums the blocks. dU ``[B, H, N, R, C]`` and
    dh0 ``[B, H, R, C]`` are written in their pointers' dtypes.
    """
    i_blk, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    n_blocks = tl.num_programs(0)
    acc_t = tl.float64 if ACC64 else tl.float32
    cells = i_blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inside = cells < RC
    a_base = a_ptr + i_b * sab + i_h * sah
    g = tl.zeros([BLOCK], dtype=acc_t)
    if HAS_GL:
        g += tl.load(gl_ptr + i_bh * RC + cells, mask=inside, other=0.0).to(acc_t)
    if GRAD_A and INCLUSIVE:
        h0 = _initial_block(h0_ptr, i_b, i_h, cells, inside, C, s0b, s0h, s0r, s0c, HAS_H0, acc_t, BLOCK)
    for j in range(0, N):
        n = N - 1 - j
        at = (i_bh * N + n) * RC + cells
        if INCLUSIVE and HAS_GS:
            g += tl.load(gs_ptr + at, mask=inside, other=0.0).to(acc_t)
        tl.store(du_ptr + at, g.to(du_ptr.dtype.element_ty), mask=inside)
        if GRAD_A:
            if INCLUSIVE:
                earlier = (i_bh * N + tl.maximum(n - 1, 0)) * RC + cells
                h_prev = tl.where(n > 0, tl.load(states_ptr + earlier, mask=inside, other=0.0).to(acc_t), h0)
            else:
                h_prev = tl.load(states_ptr + at, mask=inside, other=0.0).to(acc_t)
            da = tl.sum(tl.where(inside, g * h_prev, 0.0), axis=0)
            if COEFF == 2:
                da = da / (tl.minimum(n * L + L, T) - n * L).to(acc_t)
            tl.store(da_ptr + (i_bh * N + n) * n_blocks + i_blk, da)
        g = _coefficient(a_base, n, sa, T, L, COEFF, acc_t, BT) * g
        if not INCLUSIVE and HAS_GS:
            g += tl.load(gs_ptr + at, mask=inside, other=0.0).to(acc_t)
    tl.store(dh0_ptr + i_bh * RC + cells, g.to(dh0_ptr.dtype.element_ty), mask=inside)


def _check_float(name: str, t: torch.Tensor, updates: torch.Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise ValueError(f"chunk_scan: {name} must be a floating-point tensor, got {t.dtype}")
    if t.device != updates.device:
        raise ValueError(f"chunk_scan: {name} must be on the device of updates ({updates.device}), got {t.device}")


def _coeff_mode(coeff, coeff_chunk_size, B: int, H: int, N: int) -> int:
    """The kernels' COEFF flag; a ValueError names what is wrong with ``coeff``."""
    if coeff is None:
        if coeff_chunk_size is not None:
            raise ValueError("chunk_scan: coeff_chunk_size is given without a per-token coeff")
        return _COEFF_NONE
    if coeff_chunk_size is None:
        if tuple(coeff.shape) != (B, H, N):
            raise ValueError(f"chunk_scan: coeff must be one per chunk [B, H, N] = {[B, H, N]} (or per token "
                             f"[B, H, T] with coeff_chunk_size), got {list(coeff.shape)}")
        return _COEFF_CHUNK
    if coeff_chunk_size < 1:
        raise ValueError(f"chunk_scan: coeff_chunk_size must be >= 1, got {coeff_chunk_size}")
    if coeff.dim() != 3 or tuple(coeff.shape[:2]) != (B, H) or triton.cdiv(coeff.shape[2], coeff_chunk_size) != N:
        raise ValueError(f"chunk_scan: a per-token coeff must be [B, H, T] with ⌈T / coeff_chunk_size⌉ = N = {N} "
                         f"(B, H = {B}, {H}; coeff_chunk_size {coeff_chunk_size}), got {list(coeff.shape)}")
    return _COEFF_TOKEN


def _check_scan(updates, coeff, initial, coeff_chunk_size) -> int:
    """The kernels' COEFF flag, once every operand of :func:`chunk_scan` is checked (also on fake
    tensors); a ValueError names the argument that is wrong."""
    if updates.dim() != 5 or not updates.dtype.is_floating_point:
        raise ValueError(f"chunk_scan: updates must be a floating-point [B, H, N, R, C] tensor, "
                         f"got {list(updates.shape)} in {updates.dtype}")
    B, H, N, R, C = updates.shape
    mode = _coeff_mode(coeff, coeff_chunk_size, B, H, N)
    if coeff is not None:
        _check_float("coeff", coeff, updates)
    if initial is not None:
        _check_float("initial", initial, updates)
        if tuple(initial.shape) != (B, H, R, C):
            raise ValueError(f"chunk_scan: initial must be [B, H, R, C] = {[B, H, R, C]}, got {list(initial.shape)}")
    return mode


def _coeff_args(coeff, coeff_chunk_size) -> tuple[int, int, int, int, int]:
    """(sab, sah, sa, T, L) of the kernels: the coefficient's strides and, per token, T and L."""
    if coeff is None:
        return 0, 0, 0, 1, 1
    sab, sah, sa = coeff.stride()
    if coeff_chunk_size is None:
        return sab, sah, sa, 1, 1
    return sab, sah, sa, coeff.shape[2], coeff_chunk_size


def _initial_strides(initial) -> tuple[int, int, int, int]:
    return tuple(initial.stride()) if initial is not None else (0, 0, 0, 0)


@torch.library.custom_op("tttla::chunk_scan", mutates_args=())
def chunk_scan(
    updates: torch.Tensor, coeff: torch.Tensor | None = None, initial: torch.Tensor | None = None, *,
    coeff_chunk_size: int | None = None, inclusive: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states, last)`` of h_n = a_n h_{n−1} + U_n along the chunk axis (n = 0 … N−1) from
    h_{−1} = ``initial`` (zeros when None).

    updates U ``[B, H, N, R, C]`` (any float dtype; copied when not contiguous). ``coeff``: None
    (a ≡ 1, a prefix sum); ``[B, H, N]``, a_n itself; or, with ``coeff_chunk_size`` L, one per token
    ``[B, H, T]`` with ⌈T/L⌉ = N, a_n the mean of chunk n's tokens (a partial last chunk over its
    T − (N−1)L real ones) — read through its strides in any float dtype, so a transposed view of a
    ``[B, T, H]`` tensor costs no copy. ``initial`` ``[B, H, R, C]`` in any float dtype and strides
    (a batch expanded with stride 0 too). ``states`` ``[B, H, N, R, C]``: h_n (``inclusive``) or
    h_{n−1} (exclusive; states[0] = initial); ``last`` ``[B, H, R, C]`` = h_{N−1}; both in the
    accumulator dtype (fp32; fp64 for fp64 updates). Differentiable in updates, coeff and initial.
    """
    check_device(updates)
    mode = _check_scan(updates, coeff, initial, coeff_chunk_size)
    B, H, N, R, C = updates.shape
    updates = updates.contiguous()
    acc = state_dtype(updates)
    states = new_output((B, H, N, R, C), updates, acc)
    last = new_output((B, H, R, C), updates, acc)
    sab, sah, sa, T, L = _coeff_args(coeff, coeff_chunk_size)
    config = _scan_config(R * C, L, updates.device)
    if not last.numel():  # no cell to scan
        return states, last
    chunk_scan_fwd_kernel[(triton.cdiv(R * C, config["BLOCK"]), B * H)](
        updates, coeff if coeff is not None else last, initial if initial is not None else last, states, last,
        H, N, C, R * C, T, L, sab, sah, sa, *_initial_strides(initial),
        COEFF=mode, HAS_H0=initial is not None, INCLUSIVE=inclusive, **config)
    return states, last


@chunk_scan.register_fake
def _(updates, coeff=None, initial=None, *, coeff_chunk_size=None, inclusive=True):
    _check_scan(updates, coeff, initial, coeff_chunk_size)
    B, H, N, R, C = updates.shape
    acc = state_dtype(updates)
    return updates.new_empty(B, H, N, R, C, dtype=acc), updates.new_empty(B, H, R, C, dtype=acc)


@torch.library.custom_op("tttla::chunk_scan_backward", mutates_args=())
def chunk_scan_backward(
    grad_states: torch.Tensor | None, grad_last: torch.Tensor | None, states: torch.Tensor,
    coeff: torch.Tensor | None, initial: torch.Tensor | None, coeff_chunk_size: int | None, inclusive: bool,
    updates_dtype: torch.dtype, grad_coeff: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dU ``[B, H, N, R, C]`` (``updates_dtype``), ∂L/∂initial ``[B, H, R, C]`` (initial's dtype, the
    accumulator's without one) and, with ``grad_coeff``, each block's part of da ``[B, H, N, blocks]``
    (per token: already divided by the chunk's token count; empty without) of :func:`chunk_scan`,
    from the gradients of its states and last state (None: zero). ``states`` is the forward's
    output, read only for da."""
    B, H, N, R, C = states.shape
    acc = states.dtype
    grad_states = grad_states.contiguous() if grad_states is not None else None
    grad_last = grad_last.contiguous() if grad_last is not None else None
    sab, sah, sa, T, L = _coeff_args(coeff, coeff_chunk_size)
    config = _scan_config(R * C, L, states.device)
    n_blocks = triton.cdiv(R * C, config["BLOCK"])
    d_updates = new_output((B, H, N, R, C), states, updates_dtype)
    d_initial = new_output((B, H, R, C), states, initial.dtype if initial is not None else acc)
    d_coeff = new_output((B, H, N, n_blocks) if grad_coeff else (0,), states, acc)
    if not d_initial.numel():  # no cell to scan
        return d_updates, d_initial, d_coeff
    chunk_scan_bwd_kernel[(n_blocks, B * H)](
        grad_states if grad_states is not None else states, grad_last if grad_last is not None else states,
        states, coeff if coeff is not None else states, initial if initial is not None else states,
        d_updates, d_initial, d_coeff,
        H, N, C, R * C, T, L, sab, sah, sa, *_initial_strides(initial),
        COEFF=_coeff_mode(coeff, coeff_chunk_size, B, H, N), HAS_H0=initial is not None, INCLUSIVE=inclusive,
        HAS_GS=grad_states is not None, HAS_GL=grad_last is not None, GRAD_A=grad_coeff,
        ACC64=acc == torch.float64, **config)
    return d_updates, d_initial, d_coeff


@chunk_scan_backward.register_fake
def _(grad_states, grad_last, states, coeff, initial, coeff_chunk_size, inclusive, updates_dtype, grad_coeff):
    B, H, N, R, C = states.shape
    n_blocks = -(-R * C // _scan_config(R * C, coeff_chunk_size or 1, states.device)["BLOCK"])
    return (states.new_empty(B, H, N, R, C, dtype=updates_dtype),
            states.new_empty(B, H, R, C, dtype=initial.dtype if initial is not None else states.dtype),
            states.new_empty(*((B, H, N, n_blocks) if grad_coeff else (0,))))


def _scan_setup(ctx, inputs, keyword_only_inputs, output):
    updates, coeff, initial = inputs
    ctx.coeff_chunk_size = keyword_only_inputs["coeff_chunk_size"]
    ctx.inclusive = keyword_only_inputs["inclusive"]
    ctx.updates_dtype = updates.dtype
    ctx.has_initial = initial is not None
    ctx.set_materialize_grads(False)  # an unused output gets None, not a zero-filled gradient
    # (needs_input_grad omits trailing inputs left at their defaults: read coeff's entry only with one)
    ctx.grad_coeff = coeff is not None and ctx.needs_input_grad[1]
    # the states are read only for da; without it the backward needs their shape alone
    ctx.save_for_backward(output[0] if ctx.grad_coeff else None, coeff, initial)
    ctx.shape, ctx.acc = output[0].shape, output[0].dtype


def _spread_over_tokens(d_chunk: torch.Tensor, T: int, L: int) -> torch.Tensor:
    """∂L/∂α_t = ∂L/∂ā_{c(t)} / |c(t)| (the division done in the kernel): ``[B, H, N]`` → ``[B, H, T]``."""
    B, H, N = d_chunk.shape
    return d_chunk[..., None].expand(B, H, N, L).reshape(B, H, N * L)[..., :T]


def _scan_backward(ctx, grad_states, grad_last):
    states, coeff, initial = ctx.saved_tensors
    grad_coeff = ctx.grad_coeff
    if states is None:  # only their shape, dtype and device are read: one element stands for them
        device = (grad_states if grad_states is not None else grad_last).device
        states = torch.empty((), dtype=ctx.acc, device=device).expand(ctx.shape)
    d_updates, d_initial, d_blocks = chunk_scan_backward(
        grad_states, grad_last, states, coeff, initial, ctx.coeff_chunk_size, ctx.inclusive, ctx.updates_dtype,
        grad_coeff)
    d_coeff = None
    if grad_coeff:
        d_coeff = d_blocks.sum(-1)
        if ctx.coeff_chunk_size is not None:
            d_coeff = _spread_over_tokens(d_coeff, coeff.shape[2], ctx.coeff_chunk_size)
        d_coeff = d_coeff.to(coeff.dtype)
    return d_updates, d_coeff, (d_initial if ctx.has_initial else None)


chunk_scan.register_autograd(_scan_backward, setup_context=_scan_setup)


# --- the Frobenius normalisation -----------------------------------------------------------

@triton.jit
def frobenius_normalize_fwd_kernel(x_ptr, y_ptr, RC, eps, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    """Y = X / (‖X‖_F + ε) for one matrix of RC contiguous entries: Σ x² in BLOCK-sized pieces
    (fp32; fp64 when ACC64), then each entry divided, written in Y's dtype. Grid ``(matrices,)``."""
    acc_t = tl.float64 if ACC64 else tl.float32
    base = tl.program_id(0).to(tl.int64) * RC
    squares = tl.zeros([BLOCK], dtype=acc_t)
    for c0 in range(0, RC, BLOCK):
        cells = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        squares += x * x
    scale = tl.sqrt(tl.sum(squares, axis=0)) + eps
    for c0 in range(0, RC, BLOCK):
        cells = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        tl.store(y_ptr + base + cells, (x / scale).to(y_ptr.dtype.element_ty), mask=cells < RC)


@triton.jit
def frobenius_normalize_bwd_kernel(x_ptr, dy_ptr, dx_ptr, RC, eps, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    """dX of Y = X / s, s = n + ε, n = ‖X‖_F, for one matrix (∂n/∂X = X/n):

        dX = (dY − (⟨dY, X⟩ / (n s)) X) / s,   and dX = dY / s where n = 0

    (the norm's gradient term vanishes with X), from a pass summing x² and dy·x and a pass writing
    dX in its pointer's dtype. Grid ``(matrices,)``."""
    acc_t = tl.float64 if ACC64 else tl.float32
    base = tl.program_id(0).to(tl.int64) * RC
    squares = tl.zeros([BLOCK], dtype=acc_t)
    products = tl.zeros([BLOCK], dtype=acc_t)
    for c0 in range(0, RC, BLOCK):
        cells = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        dy = tl.load(dy_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        squares += x * x
        products += dy * x
    norm = tl.sqrt(tl.sum(squares, axis=0))
    scale = norm + eps
    along = tl.where(norm > 0, tl.sum(products, axis=0) / tl.where(norm > 0, norm * scale, 1.0), 0.0)
    for c0 in range(0, RC, BLOCK):
        cells = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        dy = tl.load(dy_ptr + base + cells, mask=cells < RC, other=0.0).to(acc_t)
        tl.store(dx_ptr + base + cells, ((dy - along * x) / scale).to(dx_ptr.dtype.element_ty), mask=cells < RC)


def _matrices(X: torch.Tensor) -> tuple[int, int]:
    """(matrices, entries per matrix) of ``X [..., R, C]``."""
    RC = X.shape[-2] * X.shape[-1]
    return (X.numel() // RC if RC else 0), RC


def _check_normalize(X: torch.Tensor, out_dtype: torch.dtype | None) -> None:
    if X.dim() < 2 or not X.dtype.is_floating_point:
        raise ValueError(f"frobenius_normalize: X must be a floating-point [..., R, C] tensor, "
                         f"got {list(X.shape)} in {X.dtype}")
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise ValueError(f"frobenius_normalize: out_dtype must be a floating-point dtype, got {out_dtype}")


@torch.library.custom_op("tttla::frobenius_normalize", mutates_args=())
def frobenius_normalize(X: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """X / (‖X‖_F + ε) per matrix of ``X [..., R, C]`` (any float dtype; copied when not contiguous),
    the norm summed in fp32 (fp64 for fp64 X), returned contiguous in ``out_dtype`` (default X's):
    ``X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)``, one launch."""
    check_device(X)
    _check_normalize(X, out_dtype)
    X = X.contiguous()
    Y = new_output(X.shape, X, out_dtype)
    matrices, RC = _matrices(X)
    if matrices:
        frobenius_normalize_fwd_kernel[(matrices,)](X, Y, RC, eps, ACC64=state_dtype(X) == torch.float64,
                                                    **_normalize_config(RC, X.device))
    return Y


@frobenius_normalize.register_fake
def _(X, eps, out_dtype=None):
    _check_normalize(X, out_dtype)
    return X.new_empty(X.shape, dtype=out_dtype if out_dtype is not None else X.dtype)


@torch.library.custom_op("tttla::frobenius_normalize_backward", mutates_args=())
def frobenius_normalize_backward(X: torch.Tensor, dY: torch.Tensor, eps: float) -> torch.Tensor:
    """∂L/∂X of :func:`frobenius_normalize` from ∂L/∂Y, in X's dtype (one launch)."""
    X, dY = X.contiguous(), dY.contiguous()
    dX = new_output(X.shape, X)
    matrices, RC = _matrices(X)
    if matrices:
        frobenius_normalize_bwd_kernel[(matrices,)](X, dY, dX, RC, eps, ACC64=state_dtype(X) == torch.float64,
                                                    **_normalize_config(RC, X.device))
    return dX


@frobenius_normalize_backward.register_fake
def _(X, dY, eps):
    return X.new_empty(X.shape)


def _normalize_setup(ctx, inputs, output):
    X, ctx.eps, _ = inputs
    ctx.save_for_backward(X)


def _normalize_backward(ctx, dY):
    (X,) = ctx.saved_tensors
    return frobenius_normalize_backward(X, dY, ctx.eps), None, None


frobenius_normalize.register_autograd(_normalize_backward, setup_context=_normalize_setup)
