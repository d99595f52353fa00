"""Structured fast weights: a depthwise k×k convolution on a token grid (ViTTT's second branch).

A depthwise kernel is declared in ``fast`` as ``depthwise(k)`` and applied with
``depthwise_conv(x, w)``. It is stored ``[k², C]`` per head: column c is channel c's kernel,
its taps row-major, so ``w[ky·k + kx, c] = conv.weight[c, 0, ky, kx]`` for a PyTorch
``Conv2d(C, C, k, padding=k // 2, groups=C)``. The layer's T = h·w tokens are the grid,
row-major, zero-padded at its border.

The two interpretations of :mod:`derivations.mat` differ here by design:

* **executed** (the oracle): ``depthwise_conv`` is ``torch.nn.functional.conv2d`` with one
  group per channel, literally, on the whole grid;
* **traced** (the engine): channels are independent, so the variant is *lowered* to one
  channel: the input row becomes the channel's k×k patch ψ_c(X, p) = (X_{c, p+Δ})_Δ, a
  ``1 × k²`` row, the kernel a ``k² × 1`` state, and ``depthwise_conv(x, w)`` the product
  ``x·w``: sliding-window linear attention (``docs/maths.md`` section 11) with one head per
  channel. Everything downstream (derivation, certificate, generated code) works on that
  lowered variant; generated forms unfold the grid into patches and fold channels into heads.

Lowering is exact only when channels really are independent, which the declaration checks:
every fast weight is depthwise, the model reads the input row only through
``depthwise_conv``, the loss is a sum over channels, nothing mixes columns of a weight
(Newton–Schulz would), and the one step covers the whole grid (a bidirectional schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch
import torch.nn.functional as F

from derivations.autodiff import rationalize
from derivations.errors import DeclarationError
from derivations.mat import Mat

__all__ = ["Depthwise", "Lowering", "depthwise", "depthwise_conv", "check_channel_separable"]


@dataclass(frozen=True)
class Depthwise:
    """A depthwise ``kernel × kernel`` convolution weight, one kernel per channel, stored
    ``[kernel², channels]`` (see the module docstring)."""

    kernel: int

    @property
    def taps(self) -> int:
        return self.kernel * self.kernel

    def describe(self) -> str:
        k = self.kernel
        return f"depthwise {k}×{k} convolution per channel on the h×w token grid, zero-padded"


def depthwise(kernel: int = 3) -> Depthwise:
    """A structured fast weight: one ``kernel × kernel`` depthwise kernel per channel."""
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise DeclarationError(f"depthwise(kernel={kernel!r}): expected an odd integer >= 1 (a centred kernel)")
    return Depthwise(kernel)


@dataclass(frozen=True)
class Lowering(Depthwise):
    """How a lowered (per-channel) variant maps back to its declared spatial layer: its
    :class:`Depthwise` structure, plus ``channels``, the declared channel dimension (the key
    dimension, e.g. ``"d"``), and ``shapes``, the declared storage of every depthwise weight,
    ``(k², channels)``."""

    channels: str
    shapes: dict


def depthwise_conv(x: Mat, w: Mat) -> Mat:
    """The depthwise convolution of the input row ``x`` with the depthwise weight ``w``.

    Executed, on token rows ``[..., T, C]`` whose grid ``(h, w)`` the oracle attaches, and a
    weight ``[..., k², C]``, it is ``conv2d`` with ``groups = C`` per batch and head. Traced,
    where ``x`` is one channel's ``1 × k²`` patch and ``w`` its ``k² × 1`` kernel, it is
    ``x·w``.
    """
    if not isinstance(x, Mat) or x.grid is None:
        label = getattr(x, "label", type(x).__name__)
        raise TypeError(
            f"depthwise_conv() takes the layer's input row itself as its first argument, got {label}: a "
            "convolution reads the grid neighbours of each token, which only the input row has"
        )
    if not isinstance(w, Mat) or w.kind not in ("sym", "weight"):
        raise TypeError(f"depthwise_conv() takes a depthwise fast weight as its second argument, got {w!r}")
    if x.symbolic:
        return x @ w
    return Mat(_conv2d(x.value, w.value, x.grid), (1, w.shape[1]), "row", f"conv({x.label}, {w.label})")


def _conv2d(rows: torch.Tensor, kernels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``conv2d`` of token rows ``[..., T, C]`` on the grid with kernels ``[..., k², C]`` (one
    per channel and leading index), zero padding: ``[..., T, C]``."""
    h, w = grid
    taps, C = kernels.shape[-2:]
    k = math.isqrt(taps)
    lead = torch.broadcast_shapes(rows.shape[:-2], kernels.shape[:-2])
    rows, kernels = rows.expand(*lead, *rows.shape[-2:]), kernels.expand(*lead, taps, C)
    n = math.prod(lead)
    image = rows.reshape(n, h, w, C).permute(0, 3, 1, 2).reshape(1, n * C, h, w)
    weight = kernels.reshape(n, taps, C).transpose(1, 2).reshape(n * C, 1, k, k)
    out = F.conv2d(image, weight, padding=k // 2, groups=n * C)
    return out.reshape(n, C, h, w).permute(0, 2, 3, 1).reshape(*lead, h * w, C)


def check_channel_separable(name: str, loss) -> None:
    """Raise unless ``loss(y, v)`` is a sum over channels Σ_c ℓ(y_c, v_c) (exact, at 3 channels)."""
    n = 3
    y, v = Mat.symbol("y", 1, n), Mat.symbol("v", 1, n)
    whole = rationalize(loss(y, v).value.as_explicit()[0, 0])
    parts = sympy.Integer(0)
    for c in range(n):
        yc, vc = Mat.symbol(f"y{c}", 1, 1), Mat.symbol(f"v{c}", 1, 1)
        part = rationalize(loss(yc, vc).value.as_explicit()[0, 0])
        parts += part.xreplace({yc.value[0, 0]: y.value[0, c], vc.value[0, 0]: v.value[0, c]})
    if sympy.simplify(whole - parts) != 0:
        raise DeclarationError(
            f"variant {name!r}: a depthwise layer needs a loss that is a sum over channels Σ_c ℓ(y_c, v_c) "
            f"(as -dot(y, v) or 0.5 * sq_norm(y - v)), but at 3 channels it is {whole}, not {parts}; a loss "
            "that couples channels (a LayerNorm, a norm of the whole row) cannot be lowered to one channel"
        )


def check_spatial(name: str, fast: dict, update: tuple, orthogonalize, schedule) -> Depthwise | None:
    """The declaration's :class:`Depthwise` structure (None for a dense variant); raises when
    depthwise and dense weights are mixed, kernels differ, or the rule couples channels."""
    kinds = {n: s for n, s in fast.items() if isinstance(s, Depthwise)}
    if not kinds:
        return None
    dense = [n for n in fast if n not in kinds]
    if dense:
        raise DeclarationError(
            f"variant {name!r}: {', '.join(dense)} {'is' if len(dense) == 1 else 'are'} dense but "
            f"{', '.join(kinds)} depthwise; a depthwise layer keeps channels independent, so every fast weight "
            "must be depthwise(k)"
        )
    slow = [n for n in kinds if n not in update]
    if slow:
        raise DeclarationError(
            f"variant {name!r}: the depthwise weight(s) {', '.join(slow)} are not updated; slow depthwise weights "
            "are not supported (the generated forms lower only the state to one head per channel)"
        )
    kernels = {s.kernel for s in kinds.values()}
    if len(kernels) > 1:
        raise DeclarationError(f"variant {name!r}: depthwise kernels of different sizes {sorted(kernels)}")
    if orthogonalize is not None:
        raise DeclarationError(
            f"variant {name!r}: Newton–Schulz mixes the columns (channels) of a depthwise weight, so the layer "
            "no longer splits into channels; drop orthogonalize"
        )
    if schedule.order != "bidirectional":
        raise DeclarationError(
            f"variant {name!r}: a depthwise convolution reads each token's grid neighbours, which a chunked "
            f"schedule ({schedule.order}) would split; use schedule=bidirectional() (one step on the whole grid)"
        )
    return next(iter(kinds.values()))
