"""Causal linear attention as a TTT layer: one linear layer, dot-product loss, one step per token."""

from derivations.mat import dot
from derivations.spec import constant, token_level
from derivations.variant import variant


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    schedule=token_level(order="update_then_apply"),
)
def linear_attention(x, W):
    """Causal linear attention: S_t = S_{t-1} + k_tᵀ v_t, o_t = q_t S_t (token-inclusive)."""
    return x @ W
