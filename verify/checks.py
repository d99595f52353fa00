"""The oracle's argument checks, written here so that the ground truth depends on nothing it
checks: each error names the argument, the expected and the given shape, dtype or device."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["check_qkv", "check_tensor", "check_chunk_size", "check_grid", "expected_shape"]


def expected_shape(dims: Mapping[str, int], batchless: bool = False) -> str:
    """``[B, T, H] = [2, 6, 2]`` (with ``(or [6, 2])`` when the leading dimension may be left out)."""
    sizes = list(dims.values())
    return f"[{', '.join(dims)}] = {sizes}" + (f" (or {sizes[1:]})" if batchless else "")


def check_tensor(name: str, t, dims: Mapping[str, int], device: torch.device, *, note: str = "",
                 batchless: bool = False) -> None:
    """A floating-point tensor of shape ``dims`` (named dimension → size) on ``device`` (q's).

    ``batchless``: the leading dimension may be left out (a weight shared by the batch);
    ``note`` follows the expected shape in the error."""
    want = f"{expected_shape(dims, batchless)}{note}"
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}")
    sizes = list(dims.values())
    if list(t.shape) != sizes and not (batchless and list(t.shape) == sizes[1:]):
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {t.device}")


def check_qkv(q, k, v) -> dict[str, int]:
    """Time-first ``q, k: [B, T, H, Dk]`` and ``v: [B, T, H, Dv]`` of one dtype and device; their sizes by name."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, D] (4 dims), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    dims = dict(zip(("B", "T", "H", "Dk"), q.shape))
    if dims["T"] < 1:
        raise ValueError(f"q must hold at least one token (T >= 1), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q, {expected_shape(dims)}, got {list(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B, T, H, Dv] with [B, T, H] = {list(q.shape[:3])}, got {list(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    return {**dims, "Dv": v.shape[-1]}


def check_scale(scale, reads_queries: bool) -> None:
    """The oracle's own check of fla's ``scale`` (it imports nothing from the code it checks)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number (fla's default is Dk ** -0.5), got {scale!r}")
    if scale != 1 and not reads_queries:
        raise ValueError(f"scale multiplies the queries, which this layer does not read; it must be 1, got {scale!r}")


def check_chunk_size(chunk_size) -> int:
    """A chunk size is an integer >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return chunk_size


def check_grid(name: str, grid, T: int) -> None:
    """A token grid ``(h, w)`` of integers >= 1 holding the T tokens: h·w = T."""
    pair = isinstance(grid, (tuple, list)) and len(grid) == 2
    if not pair or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid):
        raise ValueError(f"{name} must be a pair (h, w) of integers >= 1, got {grid!r}")
    if grid[0] * grid[1] != T:
        raise ValueError(f"{name} {tuple(grid)} holds h·w = {grid[0] * grid[1]} tokens, but q has T = {T}")
