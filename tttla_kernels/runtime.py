"""Helpers shared by generated modules and the oracle: argument checks that name the
offending argument, the expected and the given shape, dtype or device."""

from __future__ import annotations

import torch

__all__ = ["check_qkv", "check_per_token", "check_state", "check_chunk_size"]


def _fail(msg: str):
    raise ValueError(msg)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Check time-first ``q, k: [B, T, H, Dk]`` and ``v: [B, T, H, Dv]``; return (B, T, H, Dk, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must have shape [B, T, H, D] (4 dims), got {tuple(t.shape)}")
        if not t.is_floating_point():
            _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, T, H, Dk = q.shape
    if T < 1:
        _fail(f"q must hold at least one token (T >= 1), got shape {tuple(q.shape)}")
    if tuple(k.shape) != (B, T, H, Dk):
        _fail(f"k must have the shape of q, [B, T, H, Dk] = {[B, T, H, Dk]}, got {list(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        _fail(f"v must have shape [B, T, H, Dv] with [B, T, H] = {[B, T, H]}, got {list(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            _fail(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            _fail(f"{name} must be on the device of q ({q.device}), got {t.device}")
    return B, T, H, Dk, v.shape[-1]


def check_per_token(name: str, t, q: torch.Tensor) -> None:
    """Check a per-token coefficient (learning rate, momentum) ``[B, T, H]`` against q."""
    B, T, H = q.shape[:3]
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape [B, T, H] = {[B, T, H]}, got {type(t).__name__}")
    if tuple(t.shape) != (B, T, H):
        _fail(f"{name} must have shape [B, T, H] = {[B, T, H]}, got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        _fail(f"{name} must be on the device of q ({q.device}), got {t.device}")


def check_state(name: str, t, batch: int, heads: int, shape: tuple[int, int], device) -> None:
    """Check a state or fast weight ``[B, H, rows, cols]`` (or ``[H, rows, cols]``, shared by the batch)."""
    want = [batch, heads, *shape]
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}")
    if tuple(t.shape) not in (tuple(want), tuple(want[1:])):
        _fail(f"{name} must have shape [B, H, rows, cols] = {want} (or {want[1:]}), got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != device:
        _fail(f"{name} must be on the device of q ({device}), got {t.device}")


def check_chunk_size(chunk_size) -> int:
    """A chunk size must be an integer >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        _fail(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return chunk_size
