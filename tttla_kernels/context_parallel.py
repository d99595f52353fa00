"""Context parallelism for the prefix-scan forms: each rank of a ``torch.distributed`` group holds a
contiguous slice of the sequence, in rank order (hand-written, not generated).

Every quantity a prefix-scan form carries from one chunk to the next — the momentum buffer, the
state — is a linear scan over the chunks, h_n = a_n h_{n−1} + b_n (a_n = ᾱ_n, Γ_n or 1). A step is
the affine map h ↦ a h + b, and two compose as (a₂, b₂)∘(a₁, b₁) = (a₂a₁, a₂b₁ + b₂), so a rank's
whole slice is one such map, its *summary* (A_r = Π_n a_n, h_r = its scan from zero). The ranks
all-gather the summaries (a few state-sized tensors, whatever the slice length), each combines
those of the ranks before it onto the sequence's initial value, h_in, and corrects its own scan:

    h_n = (Π_{m≤n} a_m) h_in + h_n^local.

A per-chunk nonlinearity between two scans (Newton–Schulz, the clip) acts on one chunk's value, so
it runs locally once the scan before it is exact. The exchange is an autograd function whose backward
is the reverse exchange (one all-reduce of every rank's share of the summaries' gradients), so every
gradient (of q, k, v, the per-token inputs, the slow weights, the initial state) is exact, when every
rank calls backward on its own slice's loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = ["Shard", "shard_of", "sharded_scan", "affine_slice_start"]


class Shard(NamedTuple):
    """This process's place in a context-parallel group."""

    group: object  # the torch.distributed process group
    rank: int
    world: int

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1


def _gather(x: torch.Tensor, group) -> torch.Tensor:
    """``[world, *x.shape]``: every rank's x (no autograd)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.stack(parts)


def _sum_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """x summed over the dimensions along which ``shape`` broadcast to it."""
    dims = [i for i, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1]
    return x.sum(dims, keepdim=True) if dims else x


class _CarryIn(torch.autograd.Function):
    """h_in of rank r: the sequence's initial value (rank 0's, broadcast) carried through the slices
    of ranks 0 … r−1, h ↦ A_j h + h_j, from every rank's (A_j, h_j).

    Its backward is the reverse exchange: with G = ∂L/∂h_in, rank r's share of ∂L/∂h_j is the G carried
    back to slice j (G ← A_j G), of ∂L/∂A_j the sum of G ⊙ (the value entering slice j), of ∂L/∂h_0's
    initial value the G left at the start; one all-reduce hands every rank the sum of its shares, so
    every rank must run it (every rank's output reads h_in, so every backward does)."""

    @staticmethod
    def forward(ctx, end, total, initial, shard, matrix):
        group = shard.group
        ends = _gather(end, group)
        totals = None if total is None else _gather(total, group)
        h = initial.detach().clone()
        dist.broadcast(h, src=dist.get_global_rank(group, 0), group=group)
        entering = []
        for r in range(shard.rank):
            entering.append(h)
            h = (h if totals is None else totals[r] @ h if matrix else totals[r] * h) + ends[r]
        ctx.shard, ctx.matrix = shard, matrix
        ctx.total_shape = None if total is None else total.shape  # None: no coefficients (a ≡ 1)
        ctx.save_for_backward(*(() if totals is None else (totals, *entering)))
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        shard = ctx.shard
        saved = ctx.saved_tensors
        has_total = ctx.total_shape is not None
        totals, entering = (saved[0], saved[1:]) if has_total else (None, ())
        d_ends = G.new_zeros(shard.world, *G.shape)
        d_totals = G.new_zeros(shard.world, *ctx.total_shape) if has_total else None
        for j in reversed(range(shard.rank)):
            d_ends[j] = G
            if totals is not None and ctx.matrix:  # h ↦ A_j h + h_j
                d_totals[j] = G @ entering[j].mT
                G = totals[j].mT @ G
            elif totals is not None:  # h ↦ A_j ⊙ h + h_j
                d_totals[j] = _sum_to(G * entering[j], ctx.total_shape)
                G = totals[j] * G
        shares = [d_ends.flatten(), G.flatten()] + ([d_totals.flatten()] if d_totals is not None else [])
        flat = torch.cat(shares)
        dist.all_reduce(flat, group=shard.group)
        d_ends_all, d_initial, d_totals_all = flat.split([d_ends.numel(), G.numel(),
                                                          flat.numel() - d_ends.numel() - G.numel()])
        d_end = d_ends_all.view_as(d_ends)[shard.rank]
        d_total = d_totals_all.view_as(d_totals)[shard.rank] if d_totals is not None else None
        return d_end, d_total, (d_initial.view_as(G) if shard.first else None), None, None


def shard_of(group, *, tokens: int, chunk_size: int, aligned: bool, signature: tuple) -> Shard:
    """This rank's :class:`Shard`, after checking that the ranks agree: the same ``signature`` (batch,
    heads, widths, dtype, chunk size — anything a slice must share) and, when the schedule steps once
    per chunk (``aligned``), slices of whole chunks but the last rank's. Every rank sees every rank's
    values, so every rank raises the same error (no rank is left waiting in a collective)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group: torch.distributed is not initialised (call "
                           "torch.distributed.init_process_group first, or pass process_group=None)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    mine = torch.tensor([tokens, *signature], dtype=torch.int64)
    every = _gather(mine, group)
    if (every[:, 1:] != mine[1:]).any():
        rows = ", ".join(f"rank {r}: {tuple(every[r, 1:].tolist())}" for r in range(world))
        raise ValueError("process_group: every rank must hold a slice of the same batch, heads, widths, dtype and "
                         f"chunk size; got (batch, heads, Dk, Dv, dtype, chunk) {rows}")
    lengths = every[:, 0].tolist()
    if min(lengths) < 1:
        raise ValueError(f"process_group: every rank must hold at least one token, got slice lengths {lengths}")
    if aligned and any(n % chunk_size for n in lengths[:-1]):
        raise ValueError(f"process_group: the schedule steps once per chunk of {chunk_size} tokens, so every rank "
                         f"but the last must hold whole chunks; got slice lengths {lengths}")
    return Shard(group, rank, world)


def sharded_scan(a: torch.Tensor | None, local: torch.Tensor, initial: torch.Tensor | None,
                 shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact scan h_n = a_n h_{n−1} + b_n of this rank's chunks, from ``local`` (its scan of
    b from zero, ``[B, H, N, …]``), the coefficients ``a`` (broadcasting against ``local`` along dim 2,
    None for a ≡ 1) and the sequence's ``initial`` value (rank 0's is used; None: zero).

    Returns ``(h, h_in)``: every h_n of the slice, and the value the slice starts from. The ranks
    exchange h_r = local[:, :, -1] and, with coefficients, A_r = Π_n a_n (a's own shape: one number
    per chunk stays one number)."""
    carried = None if a is None else torch.cumprod(a.expand(*a.shape[:2], local.shape[2], *a.shape[3:]), dim=2)
    start = initial if initial is not None else torch.zeros_like(local[:, :, 0])
    h_in = _CarryIn.apply(local[:, :, -1], None if carried is None else carried[:, :, -1], start, shard, False)
    if carried is None:
        return local + h_in.unsqueeze(2), h_in
    return local + carried * h_in.unsqueeze(2), h_in


def affine_slice_start(transitions: torch.Tensor, increments: torch.Tensor, initial: torch.Tensor,
                       shard: Shard) -> torch.Tensor:
    """The state this rank's slice starts from, for a state that each block maps affinely,
    S ↦ M_n S + B_n (the delta rule's WY blocks: M_n = Γ_n I − K̂_nᵀ W_n, B_n = K̂_nᵀ U_n): the slice's
    summary is (A = M_{N−1} ⋯ M_0, its S from zero), ``transitions`` ``[B, H, N, Dk, Dk]`` and
    ``increments`` ``[B, H, N, Dk, Dv]``; ``initial`` is the sequence's (rank 0's)."""
    A = torch.eye(transitions.shape[-1], dtype=transitions.dtype, device=transitions.device)
    A = A.expand_as(transitions[:, :, 0])
    h = torch.zeros_like(increments[:, :, 0])
    for n in range(increments.shape[2]):
        A, h = transitions[:, :, n] @ A, transitions[:, :, n] @ h + increments[:, :, n]
    return _CarryIn.apply(h, A, initial, shard, True)
