"""FLOP models of the forms of a variant, counted from the shapes (matmuls only).

Only matrix products are counted, at 2·m·n·k each; element-wise work (activations, the
learning-rate scaling, momentum's scalar mixing, weight norm) is left out. Per (batch, head),
with T tokens, chunk L, N = ⌈T/L⌉ inner steps (T for a token-level schedule):

* read      — the model f(q; W) per token: its matmuls (and convolutions, for a depthwise
  layer), counted once by ``torch.utils.flop_counter`` on the declared model at the given sizes;
* increment — the inner-loss gradient per token, counted the same way on the oracle's
  autograd step (forward plus the backward that reaches the updated weights), less the
  last layer's forward product when ∂L/∂y does not read the prediction y (−⟨y, v⟩ losses:
  state-independent values, which the generated forms never compute);
* Newton–Schulz — per inner step and updated weight ``[m, n]`` (m ≤ n): per NS step
  A = XXᵀ (2m²n), A² (2m³), (bA + cA²)X (2m²n);
* chunk form only: momentum mixing of the N chunk increments (2·N²·r·c per updated weight)
  and, for block-inclusive schedules, intra-chunk attention (2·L·(r + c) per token).

Forward plus backward is taken as 3× the forward (the backward of a matmul is two matmuls).

:func:`largest_product` reads the products a call actually runs (its mm/bmm/addmm/baddbmm
shapes, caught by ``torch.utils.flop_counter``): the benchmark's "% matmul" reference takes the
inner dimension of a form's largest one (:mod:`verify.bench`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from derivations.variant import Variant

__all__ = ["ModelFlops", "model_flops", "form_flops", "Product", "products", "largest_product"]


@dataclass(frozen=True)
class ModelFlops:
    """Matmul FLOPs per token of one read and of one inner-loss gradient, per (batch, head)."""

    read: float
    increment: float


def _per_token(fn, rows: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / rows


def model_flops(variant: Variant, sizes: dict[str, int], rows: int = 4) -> ModelFlops:
    """Count the matmul FLOPs of the declared model and of its inner-loss gradient per token."""
    from verify.oracle import increments, read_model

    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(1, 1, *variant.shape_of(n, sizes), generator=g) for n in variant.fast}
    K = torch.randn(1, 1, rows, sizes[variant.key_dim], generator=g)
    dv = sizes.get(variant.value_dim) or int(variant.value_dim)
    V = torch.randn(1, 1, rows, dv, generator=g)
    eta = {u: torch.ones(1, 1, rows, 1) for u in variant.update}
    grid = (1, rows) if variant.spatial is not None else None  # a spatial layer: its conv2d on a 1 × rows grid
    read = _per_token(lambda: read_model(variant, weights, K, grid), rows)
    if variant.spatial is not None:
        # each kernel's gradient is one correlation the size of its convolution; torch's counter charges
        # a grouped convolution's weight gradient once per group, so it is not asked here
        inc = read + sum(2 * math.prod(variant.shape_of(u, sizes)) for u in variant.update)
    else:
        grad_ready = {n: (w.requires_grad_() if n in variant.update else w) for n, w in weights.items()}
        with torch.enable_grad():
            inc = _per_token(lambda: increments(variant, grad_ready, K, V, eta, False), rows)
    last = [u for u in variant.update if variant.fast[u][1] == variant.value_dim]
    if len(last) == 1 and not _loss_reads_prediction(variant, dv):
        r, c = variant.shape_of(last[0], sizes)
        inc -= 2 * r * c
    return ModelFlops(read=read, increment=inc)


def _loss_reads_prediction(variant: Variant, dv: int) -> bool:
    """Whether ∂L/∂y changes with y (MSE: yes; −⟨y, v⟩: no), tried at two random predictions."""
    from derivations.mat import Mat

    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, 1, 2, dv, generator=g, dtype=torch.float64)
    grads = []
    for _ in range(2):
        y = torch.randn(1, 1, 2, dv, generator=g, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            loss = variant.loss(Mat.rows(y, "y"), Mat.rows(v, "v")).value.sum()
            grads.append(torch.autograd.grad(loss, y)[0])
    return not torch.allclose(grads[0], grads[1])


def _newton_schulz(variant: Variant, sizes: dict[str, int]) -> float:
    """FLOPs of one orthogonalisation of every updated weight."""
    if variant.orthogonalize is None:
        return 0.0
    total = 0.0
    for u in variant.update:
        r, c = variant.shape_of(u, sizes)
        m, n = min(r, c), max(r, c)
        total += len(variant.orthogonalize.coefficients) * (4 * m * m * n + 2 * m**3)
    return total


def form_flops(variant: Variant, form: str, *, batch_heads: int, seq_len: int, sizes: dict[str, int],
               chunk_size: int | None, backward: bool = False, per_token: ModelFlops | None = None) -> float:
    """Matmul FLOPs of one call of ``form`` ("recurrent" or "chunk") on ``batch_heads`` heads."""
    per_token = per_token or model_flops(variant, sizes)
    T = seq_len
    L = T if variant.schedule.order == "bidirectional" else (chunk_size or variant.schedule.chunk_size or T)
    steps = T if variant.schedule.order == "update_then_apply" else math.ceil(T / L)
    flops = T * (per_token.read + per_token.increment) + steps * _newton_schulz(variant, sizes)
    if form == "chunk":
        for u in variant.update:
            r, c = variant.shape_of(u, sizes)
            if variant.momentum is not None:
                flops += 2 * steps * steps * r * c
            if variant.schedule.order == "block_inclusive":
                flops += 2 * T * L * (r + c)
    flops *= batch_heads
    return 3 * flops if backward else flops


@dataclass(frozen=True)
class Product:
    """One matrix product ``[batch, m, k] × [batch, k, n]``; ``k`` is its inner dimension."""

    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def products(call) -> list[Product]:
    """Every matrix product (mm, bmm, addmm, baddbmm: what ``@`` and ``matmul`` dispatch to) that
    one ``call()`` runs, in order."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    found: list[Product] = []

    def record(a, b) -> int:
        found.append(Product(a[0] if len(a) == 3 else 1, a[-2], a[-1], b[-1]))
        return found[-1].flops

    mapping = {aten.mm: lambda a, b, *_, **__: record(a, b), aten.bmm: lambda a, b, *_, **__: record(a, b),
               aten.addmm: lambda _, a, b, *__, **___: record(a, b),
               aten.baddbmm: lambda _, a, b, *__, **___: record(a, b)}
    with FlopCounterMode(display=False, custom_mapping=mapping):
        call()
    return found


def largest_product(call) -> Product | None:
    """The product of one ``call()`` with the most FLOPs (of equal ones, the widest inner
    dimension); None when it runs no matrix product."""
    return max(products(call), key=lambda p: (p.flops, p.k), default=None)
