"""Random inputs for a variant: q, k, v, initial fast weights and the optional inputs it takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from derivations.variant import Variant
from verify.signature import INPUT_NAMES, check_given, draw_inputs, grid_for, input_leaves, resolve_ranges

__all__ = ["Case", "make_case", "default_sizes", "grid_for"]


@dataclass
class Case:
    """One set of layer inputs, ready for ``run_direct(variant, **case.kwargs())``.

    ``optional`` holds the variant's optional inputs by name (see :mod:`verify.signature`); each
    is also an attribute, ``case.lr``, ``case.grid``, … (None where the variant takes none).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    initial_weights: dict
    chunk_size: int | None = None
    sizes: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        if name in INPUT_NAMES:
            return self.__dict__.get("optional", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name not in INPUT_NAMES:
            super().__setattr__(name, value)
        elif value is None:
            self.optional.pop(name, None)
        else:
            self.optional[name] = value

    def kwargs(self) -> dict:
        return dict(q=self.q, k=self.k, v=self.v, initial_weights=self.initial_weights, chunk_size=self.chunk_size,
                    **self.optional)

    def leaves(self) -> dict[str, torch.Tensor]:
        """Every input tensor, by name (for gradient checks)."""
        out = {"q": self.q, "k": self.k, "v": self.v}
        out.update({f"W[{n}]": w for n, w in self.initial_weights.items()})
        out.update(input_leaves(self.optional))
        return out


def default_sizes(variant: Variant, dim: int) -> dict[str, int]:
    """Every named dimension of the variant set to ``dim``."""
    return {d: dim for d in (*variant.dims, variant.value_dim) if d.isidentifier()}


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
    normalize_qk: bool = True,
    grid: tuple[int, int] | None = None,
    **ranges: tuple[float, float],
) -> Case:
    """Random inputs for one call of ``variant``.

    q and k rows are L2-normalised (as in LaCT) unless ``normalize_qk`` is False; v is standard
    normal; fast weights are N(0, 1/rows); the optional inputs the variant takes are drawn as
    :data:`~verify.signature.OPTIONAL_INPUTS` says, from ``ranges``: ``lr_range`` (learning rates
    and a rank-1 learning rate's position factors), ``momentum_range`` (coefficients α), both
    (0, 1) by default, and ``decay_range`` (γ, within (0, 1], default (0.5, 1); the case holds
    ``log_decay`` = log γ). A spatial variant gets ``grid`` (default :func:`grid_for` T).
    """
    ranges = resolve_ranges(ranges)
    sizes = sizes or default_sizes(variant, 8)
    g = generator or torch.Generator().manual_seed(0)
    B, T, H = batch, seq_len, heads
    missing = [d for d in dict.fromkeys((*variant.dims, variant.value_dim)) if d.isidentifier() and d not in sizes]
    if missing:
        raise ValueError(f"sizes: give a size for every named dimension of {variant.name!r}; missing {missing} "
                         f"(got {sorted(sizes)})")
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
    dims = {"B": B, "T": T, "H": H, "Dk": Dk, "Dv": Dv, "L": chunk_size or variant.schedule.chunk_size}
    given = {"grid": tuple(grid)} if grid is not None else {}
    check_given(variant, given, dims, q.device)
    case = Case(q, k, v, weights, chunk_size, dict(sizes), draw_inputs(variant, dims, uniform, ranges, given))
    if requires_grad:
        for t in case.leaves().values():
            t.requires_grad_(True)
    return case
