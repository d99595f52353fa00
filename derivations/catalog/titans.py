"""Titans-style memory (``docs/maths.md`` section 7): a linear memory M trained by ½·MSE with
per-token momentum and weight decay, gradients taken at the chunk-start memory.

    S_t = η_t S_{t−1} − θ_t ∇_M ℓ_t(M_{chunk start}),   M_t = (1 − α_t) M_{t−1} + S_t,   o_t = q_t M_t

maps onto the language as: learning rate θ_t = ``lr``, momentum coefficient η_t =
``momentum`` (the buffer S is the momentum buffer), and the decay 1 − α_t = exp(g_t) with
``log_decay`` g_t = log(1 − α_t), applied to M after the gradient (``gradient_then_decay``).
"""

from derivations.mat import sq_norm
from derivations.spec import chunked, decay, momentum, per_token
from derivations.variant import variant


@variant(
    fast={"M": ("d", "dv")},
    update=["M"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(),
    momentum=momentum(per="token"),
    decay=decay(order="gradient_then_decay"),
    schedule=chunked(order="update_then_apply", size=16),
)
def titans(x, M):
    """Titans: S_t = η_t S_{t-1} − θ_t ∇ℓ_t (at the chunk start), M_t = (1 − α_t) M_{t-1} + S_t, o_t = q_t M_t."""
    return x @ M
