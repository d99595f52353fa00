"""Normalisations written in the variant language (so both interpretations get them for free)."""

from __future__ import annotations

from derivations.functions import rsqrt
from derivations.mat import Mat, ShapeMismatch, add_constant, broadcast, require_row, row_mean

__all__ = ["layer_norm"]


def layer_norm(z: Mat, gamma: Mat, beta: Mat, eps: float = 1e-6) -> Mat:
    """LayerNorm of a row: ``γ ⊙ (z − μ) / sqrt(var(z) + eps) + β``, μ and var over the row.

    Built from the language's own pieces (row means, a broadcast, the element-wise ``rsqrt``),
    so it is executed by torch in the oracle and differentiated by the engine's reverse-mode
    rules like everything else. ``gamma`` and ``beta`` are ``1 × n`` weights (slow weights of
    the layer, or fast ones).
    """
    require_row(z, "layer_norm")
    for name, w in (("gamma", gamma), ("beta", beta)):
        if not isinstance(w, Mat) or w.shape[0] != 1:
            raise ShapeMismatch(f"layer_norm(): {name} must be a 1 × n weight, got {getattr(w, 'label', w)}")
    centered = z - broadcast(row_mean(z), z)
    inv_std = rsqrt(add_constant(row_mean(centered * centered), eps))
    return gamma * (centered * broadcast(inv_std, z)) + beta
