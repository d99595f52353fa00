"""Random inputs for a variant: q, k, v, learning rates, momentum, decay and initial fast weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from derivations.variant import Variant

__all__ = ["Case", "make_case", "default_sizes", "grid_for"]


@dataclass
class Case:
    """One set of layer inputs, ready for ``run_direct(variant, **case.kwargs())``."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    initial_weights: dict
    lr: torch.Tensor | dict | None = None
    momentum: torch.Tensor | None = None
    chunk_size: int | None = None
    sizes: dict = field(default_factory=dict)
    #: g = log γ ``[B, T, H]`` for variants with a decay, else None
    log_decay: torch.Tensor | None = None
    #: the token grid ``(h, w)`` of a spatial (depthwise) variant, h·w = T; else None
    grid: tuple[int, int] | None = None
    #: a ``[L]`` of a ``per_token(position=True)`` learning rate, else None
    lr_position: torch.Tensor | None = None

    def kwargs(self) -> dict:
        return dict(
            grid=self.grid,
            lr_position=self.lr_position,
            q=self.q,
            k=self.k,
            v=self.v,
            initial_weights=self.initial_weights,
            lr=self.lr,
            momentum=self.momentum,
            chunk_size=self.chunk_size,
            log_decay=self.log_decay,
        )

    def leaves(self) -> dict[str, torch.Tensor]:
        """Every input tensor, by name (for gradient checks)."""
        out = {"q": self.q, "k": self.k, "v": self.v}
        out.update({f"W[{n}]": w for n, w in self.initial_weights.items()})
        if isinstance(self.lr, dict):
            out.update({f"lr[{n}]": t for n, t in self.lr.items()})
        elif self.lr is not None:
            out["lr"] = self.lr
        if self.momentum is not None:
            out["momentum"] = self.momentum
        if self.log_decay is not None:
            out["log_decay"] = self.log_decay
        if self.lr_position is not None:
            out["lr_position"] = self.lr_position
        return out


def default_sizes(variant: Variant, dim: int) -> dict[str, int]:
    """Every named dimension of the variant set to ``dim``."""
    return {d: dim for d in (*variant.dims, variant.value_dim) if d.isidentifier()}


def grid_for(T: int) -> tuple[int, int]:
    """The squarest grid ``(h, w)`` with h·w = T and h ≤ w (``(1, T)`` for a prime T)."""
    h = max(n for n in range(1, int(T**0.5) + 1) if T % n == 0)
    return h, T // h


def make_case(
    variant: Variant,
    *,
    batch: int = 1,
    seq_len: int = 16,
    heads: int = 1,
    sizes: dict[str, int] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    requires_grad: bool = False,
    lr_range: tuple[float, float] = (0.0, 1.0),
    momentum_range: tuple[float, float] = (0.0, 1.0),
    normalize_qk: bool = True,
    decay_range: tuple[float, float] = (0.5, 1.0),
    grid: tuple[int, int] | None = None,
) -> Case:
    """Random inputs for one call of ``variant``.

    q and k rows are L2-normalised (as in LaCT) unless ``normalize_qk`` is False; v is
    standard normal; fast weights are N(0, 1/rows); learning rates, momentum coefficients and
    a rank-1 learning rate's position factors are uniform in the given ranges; for a variant with
    a decay, γ is uniform in ``decay_range`` (within (0, 1]) and the case holds ``log_decay`` = log γ; a spatial variant
    gets ``grid`` (default :func:`grid_for` T).
    """
    if not 0.0 < decay_range[0] <= decay_range[1] <= 1.0:
        raise ValueError(f"decay_range must lie within (0, 1], got {decay_range}")
    sizes = sizes or default_sizes(variant, 8)
    g = generator or torch.Generator().manual_seed(0)
    B, T, H = batch, seq_len, heads
    Dk, Dv = sizes[variant.key_dim], sizes.get(variant.value_dim, None) or int(variant.value_dim)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    def uniform(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)

    q, k = randn(B, T, H, Dk), randn(B, T, H, Dk)
    if normalize_qk:
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    v = randn(B, T, H, Dv)
    weights = {}
    for name in variant.fast:
        r, c = variant.shape_of(name, sizes)
        weights[name] = randn(B, H, r, c) / r**0.5
    lr = None
    if variant.lr.kind == "per_token":
        lr = {u: uniform(*lr_range, B, T, H) for u in variant.update}
        if len(variant.update) == 1:
            lr = lr[variant.update[0]]
    mom = uniform(*momentum_range, B, T, H) if variant.momentum else None
    log_decay = uniform(*decay_range, B, T, H).log() if variant.decay else None
    if variant.spatial is not None:
        grid = tuple(grid) if grid is not None else grid_for(T)
    elif grid is not None:
        raise ValueError(f"variant {variant.name!r} has no spatial structure; do not pass grid")
    position = None
    if variant.lr.position:  # a_i per mini-batch position, in the learning-rate range
        position = uniform(*lr_range, chunk_size or variant.schedule.chunk_size)
    case = Case(q, k, v, weights, lr, mom, chunk_size, dict(sizes), log_decay, grid, position)
    if requires_grad:
        for t in case.leaves().values():
            t.requires_grad_(True)
    return case
