"""A feature map φ as one Triton matmul with an element-wise epilogue (hand-written, not generated).

For a feature map whose only matrix products are x W_i with slow weights W_0 … W_{n−1} (n ≤ 3)
followed by an element-wise function e — LaCT's SwiGLU φ(x) = silu(x W_0) ⊙ (x W_2), a one-layer
φ(x) = σ(x W_0) — one launch computes φ of the queries and of the keys together:

    a_i = x W_i  (i < n, [T, d] · [d, h], accumulated in fp32, fp64 for fp64),
    φ(x) = e(a_0, …, a_{n−1})  (element by element, in the accumulator dtype),

written ``[B, H, T, h]`` contiguous in x's dtype. The generated module supplies e as a
``@triton.jit`` function and registers it with the torch function computing the same φ
(:func:`register_epilogue`); the kernel receives e as a ``tl.constexpr`` argument (Triton ≥ 3
puts a constexpr JITFunction's ``cache_key`` into the compiled kernel's key, so each epilogue
compiles its own kernel) and calls it on the accumulators. A custom op's schema cannot hold a
function, so ``tttla::linear_features`` takes the epilogue's registry key.

The tokens x are read through their strides (a ``[B, H, T, d]`` view of a ``[B, T, H, d]``
tensor needs no copy), and so are the weights (a ``[B, H, d, h]`` expand of ``[H, d, h]``, batch
stride 0, is read in place). Grid ``(⌈T/BT⌉, ⌈h/BN⌉, B·H·len(xs))``: the last axis picks the
(batch, head) and which input; each program loops over d in blocks of BD (masked ragged tails,
int64 offsets). The backward recomputes φ with the registered torch function (its bmm at full
speed) and differentiates it with torch.autograd, so it is the torch form's exact maths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tttla_kernels.triton_runtime import check_device, launch, launch_candidates, new_output

__all__ = ["register_epilogue", "registered_epilogue", "linear_features", "linear_features_op", "MAX_PRODUCTS"]

#: the most products x W_i one epilogue may combine (the kernel holds that many accumulators)
MAX_PRODUCTS = 3


class Epilogue(NamedTuple):
    """A registered epilogue: e as a ``@triton.jit`` function of ``n_products`` accumulators, and
    the torch function ``feature_map(x, *weights)`` computing the same φ with autograd."""

    triton_fn: object
    torch_fn: Callable
    n_products: int


_EPILOGUES: dict[str, Epilogue] = {}


def _identity(fn):
    """What makes two functions the same: their module and code (a reloaded module makes new function
    objects with equal code); the object itself for a callable without code."""
    fn = getattr(fn, "fn", fn)  # a @triton.jit function wraps its Python one
    return getattr(fn, "__module__", None), getattr(fn, "__code__", fn)


def register_epilogue(key: str, triton_fn, torch_fn: Callable, n_products: int) -> str:
    """Register the epilogue ``triton_fn`` (``@triton.jit``, fp32 — fp64 for fp64 — accumulators
    a_0 … a_{n−1} in, φ out) under ``key`` with ``torch_fn(x, W_0, …)`` (the same φ in torch);
    returns ``key``. Registering a key again with the same functions (a module reload) does
    nothing; with different ones it is a ValueError."""
    if not 1 <= n_products <= MAX_PRODUCTS:
        raise ValueError(f"register_epilogue({key!r}): n_products must be 1, 2 or 3 (the kernel's accumulators), "
                         f"got {n_products}")
    if not callable(getattr(triton_fn, "fn", None)):
        raise ValueError(f"register_epilogue({key!r}): triton_fn must be a @triton.jit function, got {triton_fn!r}")
    if not callable(torch_fn):
        raise ValueError(f"register_epilogue({key!r}): torch_fn must be callable, got {torch_fn!r}")
    known = _EPILOGUES.get(key)
    if known is not None:
        if (known.n_products == n_products and _identity(known.triton_fn) == _identity(triton_fn)
                and _identity(known.torch_fn) == _identity(torch_fn)):
            return key
        raise ValueError(f"register_epilogue: the key {key!r} is already registered with other functions "
                         f"({known.triton_fn!r}, {known.torch_fn!r}, n_products={known.n_products})")
    _EPILOGUES[key] = Epilogue(triton_fn, torch_fn, n_products)
    return key


def registered_epilogue(key: str) -> Epilogue:
    """The epilogue registered under ``key``."""
    if key not in _EPILOGUES:
        raise ValueError(f"linear_features: epilogue must be a key given to register_epilogue, got {key!r} "
                         f"(registered: {sorted(_EPILOGUES)})")
    return _EPILOGUES[key]


@triton.jit
def _product(x, w_ptr, offs_d, offs_n, D, DH, swd, swn):
    """x ``[BT, BD]`` times the ``[BD, BN]`` tile of a strided ``[D, DH]`` weight (zeros outside)."""
    w = tl.load(w_ptr + offs_d[:, None] * swd + offs_n[None, :] * swn,
                mask=(offs_d[:, None] < D) & (offs_n[None, :] < DH), other=0.0)
    return tl.dot(x, w, input_precision="ieee")


@triton.jit
def linear_features_kernel(
    x0_ptr, x1_ptr, w0_ptr, w1_ptr, w2_ptr, o0_ptr, o1_ptr,
    BH, H, T, D, DH,
    sx0b, sx0h, sx0t, sx1b, sx1h, sx1t,
    sw0b, sw0h, sw0d, sw0n, sw1b, sw1h, sw1d, sw1n, sw2b, sw2h, sw2d, sw2n,
    EPILOGUE: tl.constexpr, N_PRODUCTS: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):
    """o[b, h, t] = EPILOGUE(x[b, h, t] W_0[b, h], …, x[b, h, t] W_{N−1}[b, h]) for the input x the
    program's last grid index picks (x0 or x1, written to o0 or o1).

    x ``[B, H, T, D]`` (last stride 1) and the weights ``[B, H, D, DH]`` (one dtype) read through
    their strides; o ``[B, H, T, DH]`` contiguous. Grid ``(⌈T/BT⌉, ⌈DH/BN⌉, BH·n_inputs)``;
    accumulators in fp32 (fp64 for fp64 operands), the epilogue applied to them, the result
    rounded to o's dtype.
    """
    i_t, i_n, i_xbh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_bh = i_xbh % BH
    i_b, i_h = i_bh // H, i_bh % H
    first = i_xbh < BH  # the input: x0 or x1 (a select, not a branch: both sides share one type)
    x_base = tl.where(first, x0_ptr + i_b * sx0b + i_h * sx0h, x1_ptr + i_b * sx1b + i_h * sx1h)
    sxt = tl.where(first, sx0t, sx1t).to(tl.int64)
    o_base = tl.where(first, o0_ptr, o1_ptr) + i_bh * T * DH
    acc_t = tl.float64 if x0_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs_t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
    offs_n = (i_n * BN + tl.arange(0, BN)).to(tl.int64)
    rows = offs_t < T
    a0 = tl.zeros([BT, BN], dtype=acc_t)
    a1 = tl.zeros([BT, BN], dtype=acc_t)
    a2 = tl.zeros([BT, BN], dtype=acc_t)
    for d0 in range(0, D, BD):
        offs_d = d0 + tl.arange(0, BD)
        x = tl.load(x_base + offs_t[:, None] * sxt + offs_d[None, :],
                    mask=rows[:, None] & (offs_d[None, :] < D), other=0.0)  # [BT, BD]
        a0 += _product(x, w0_ptr + i_b * sw0b + i_h * sw0h, offs_d, offs_n, D, DH, sw0d, sw0n).to(acc_t)
        if N_PRODUCTS >= 2:
            a1 += _product(x, w1_ptr + i_b * sw1b + i_h * sw1h, offs_d, offs_n, D, DH, sw1d, sw1n).to(acc_t)
        if N_PRODUCTS >= 3:
            a2 += _product(x, w2_ptr + i_b * sw2b + i_h * sw2h, offs_d, offs_n, D, DH, sw2d, sw2n).to(acc_t)
    if N_PRODUCTS == 1:
        phi = EPILOGUE(a0)
    elif N_PRODUCTS == 2:
        phi = EPILOGUE(a0, a1)
    else:
        phi = EPILOGUE(a0, a1, a2)
    tl.store(o_base + offs_t[:, None] * DH + offs_n[None, :], phi.to(o0_ptr.dtype.element_ty),
             mask=rows[:, None] & (offs_n[None, :] < DH))


#: the kernel's launch configurations per operand width (bits; "interpreter" for Triton's CPU
#: interpreter): block caps (BT, BN, BD), num_warps, num_stages, the first the default (the rest
#: timed with TTTLA_AUTOTUNE=1). 16-bit: at LaCT's T = 32768, d = h = 384, two accumulators of
#: [128, 64] fp32 per program (not yet timed on a GPU).
CANDIDATES = {
    "interpreter": [((32, 32, 16), 4, 1)],  # small, so the tests walk several blocks on every axis
    16: [((128, 64, 64), 4, 3), ((128, 128, 64), 8, 3), ((64, 128, 64), 4, 3), ((128, 64, 32), 4, 4),
         ((64, 64, 64), 4, 3)],
    32: [((64, 64, 32), 4, 2), ((128, 64, 32), 8, 2), ((64, 32, 32), 4, 3)],
    64: [((32, 32, 16), 4, 2), ((64, 32, 16), 4, 2)],
}


def _check(xs: list[torch.Tensor], weights: list[torch.Tensor], key: str) -> Epilogue:
    """The epilogue of ``key``, once the operands fit it (a ValueError names what does not)."""
    ep = registered_epilogue(key)
    if len(xs) not in (1, 2):
        raise ValueError(f"linear_features: xs must hold 1 or 2 inputs (queries, keys), got {len(xs)}")
    x = xs[0]
    if x.dim() != 4:
        raise ValueError(f"linear_features: xs[0] must be [B, H, T, d], got shape {list(x.shape)}")
    for i, other in enumerate(xs[1:], 1):
        if other.shape != x.shape or other.dtype != x.dtype or other.device != x.device:
            raise ValueError(f"linear_features: xs[{i}] must match xs[0] ({list(x.shape)}, {x.dtype}, {x.device}), "
                             f"got {list(other.shape)}, {other.dtype}, {other.device}")
    for i, other in enumerate(xs):
        if other.shape[-1] > 1 and other.stride(-1) != 1:
            raise ValueError(f"linear_features: xs[{i}] must have last stride 1 (its other strides may be any), "
                             f"got strides {list(other.stride())}")
    if len(weights) != ep.n_products:
        raise ValueError(f"linear_features: the epilogue {key!r} takes {ep.n_products} weights, got {len(weights)}")
    B, H, _, D = x.shape
    DH = weights[0].shape[-1]
    for i, w in enumerate(weights):
        if w.dim() != 4 or tuple(w.shape) != (B, H, D, DH):
            raise ValueError(f"linear_features: weights[{i}] must be [B, H, d, h] = {[B, H, D, DH]} (d from xs, "
                             f"h from weights[0]), got {list(w.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"linear_features: weights[{i}] must be in xs' dtype {x.dtype} on {x.device}, "
                             f"got {w.dtype} on {w.device}")
    return ep


def _launch_features(xs: list[torch.Tensor], weights: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    ep = _check(xs, weights, key)
    x = xs[0]
    check_device(x)
    B, H, T, D = x.shape
    DH = weights[0].shape[-1]
    outs = [new_output((B, H, T, DH), x) for _ in xs]
    x_args = (xs * 2)[:2]  # a single input stands in for the second, which is not read
    w_args = (weights * MAX_PRODUCTS)[:MAX_PRODUCTS]  # likewise the unused weights
    o_args = (outs * 2)[:2]

    def grid(cfg):
        return (triton.cdiv(T, cfg["BT"]), triton.cdiv(DH, cfg["BN"]), B * H * len(xs))

    args = (*x_args, *w_args, *o_args, B * H, H, T, D, DH, *(s for t in x_args for s in t.stride()[:3]),
            *(s for w in w_args for s in w.stride()))
    launch(linear_features_kernel, grid, args, {"EPILOGUE": ep.triton_fn, "N_PRODUCTS": ep.n_products},
            ("features", key, len(xs), T, D, DH, B * H, x.dtype),
            launch_candidates(CANDIDATES, {"BT": T, "BN": DH, "BD": D}, x.dtype))
    return outs


@torch.library.custom_op("tttla::linear_features", mutates_args=())
def linear_features_op(xs: list[torch.Tensor], weights: list[torch.Tensor], epilogue: str) -> list[torch.Tensor]:
    """φ(x) = e(x W_0, …, x W_{n−1}) of every x in ``xs`` (1 or 2, ``[B, H, T, d]``, last stride 1)
    with ``weights`` (n, ``[B, H, d, h]``, any strides, xs' dtype) and the epilogue e registered
    under ``epilogue`` → one ``[B, H, T, h]`` per x (contiguous, xs' dtype), in one launch."""
    return _launch_features(xs, weights, epilogue)


@linear_features_op.register_fake
def _(xs, weights, epilogue):
    _check(xs, weights, epilogue)
    return [x.new_empty(*x.shape[:3], weights[0].shape[-1]) for x in xs]


def _setup(ctx, inputs, output):
    xs, weights, ctx.key = inputs
    ctx.n_inputs = len(xs)
    ctx.set_materialize_grads(False)  # an unused output's gradient is None, not zeros
    ctx.save_for_backward(*xs, *weights)


def _backward(ctx, grads):
    """Recompute φ with the registered torch function on detached inputs (its bmm at full speed)
    and differentiate it: the torch form's exact maths. A weight expanded over the batch gets the
    full ``[B, H, d, h]`` gradient here; the caller's expand sums it."""
    saved = ctx.saved_tensors
    xs, weights = saved[:ctx.n_inputs], saved[ctx.n_inputs:]
    needs_x, needs_w = ctx.needs_input_grad[:2]  # one flag per tensor of each list
    torch_fn = registered_epilogue(ctx.key).torch_fn
    with torch.enable_grad():
        xs_d = [x.detach().requires_grad_(n) for x, n in zip(xs, needs_x)]
        ws_d = [w.detach().requires_grad_(n) for w, n in zip(weights, needs_w)]
        pairs = [(torch_fn(x, *ws_d), g) for x, g in zip(xs_d, grads) if g is not None]
        leaves = [t for t in (*xs_d, *ws_d) if t.requires_grad]
        found = iter(torch.autograd.grad([phi for phi, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
                     if pairs and leaves else [None] * len(leaves))
    grad_xs = [next(found) if t.requires_grad else None for t in xs_d]
    grad_ws = [next(found) if t.requires_grad else None for t in ws_d]
    return grad_xs, grad_ws, None


linear_features_op.register_autograd(_backward, setup_context=_setup)


def linear_features(xs: list[torch.Tensor], weights: list[torch.Tensor], epilogue: str) -> list[torch.Tensor]:
    """φ of each of ``xs`` (queries and keys) in one launch: see :func:`linear_features_op`."""
    return linear_features_op(list(xs), list(weights), epilogue)
