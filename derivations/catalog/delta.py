"""The delta rule (DeltaNet) as a TTT layer: one linear layer, ½·MSE, one step per token."""

from derivations import per_token, sq_norm, token_level, variant


@variant(
    fast={"W": ("d", "d")},
    update=["W"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(),
    schedule=token_level(order="update_then_apply"),
)
def delta_rule(x, W):
    """Delta rule: S_t = S_{t-1} + η_t k_tᵀ (v_t − k_t S_{t-1}), read after the step."""
    return x @ W
