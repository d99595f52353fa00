"""The delta rule (DeltaNet) and the gated delta rule as TTT layers: one linear layer, ½·MSE,
one step per token."""

from derivations.mat import sq_norm
from derivations.spec import decay, per_token, token_level
from derivations.variant import variant


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(),
    schedule=token_level(order="update_then_apply"),
)
def delta_rule(x, W):
    """Delta rule: S_t = S_{t-1} + η_t k_tᵀ (v_t − k_t S_{t-1}), read after the step."""
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(),
    decay=decay(order="decay_then_gradient"),
    schedule=token_level(order="update_then_apply"),
)
def gated_delta_rule(x, W):
    """Gated delta rule: S_t = γ_t (I − η_t k_tᵀk_t) S_{t-1} + η_t k_tᵀ v_t with γ_t = exp(g_t), read after the step."""
    return x @ W
