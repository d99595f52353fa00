"""Decayed and gated linear attention: linear attention whose state forgets, S_t = γ_t S_{t−1} + k_tᵀ v_t.

All three are one linear layer trained by a dot-product loss, one step per token, with a decay
on the state (see ``derivations.spec.Decay``): the loss's gradient does not read the state, so
the decay keeps the layer an associative scan (a scan of decayed sums), and its chunked form
weighs token i's increment in token t's read by exp(G_t − G_i), G the cumulative log decay.
"""

from derivations.mat import dot
from derivations.spec import constant, decay, per_token, token_level
from derivations.variant import variant


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    schedule=token_level(order="update_then_apply"),
    decay=decay(gate="token"),
)
def simple_gla(x, W):
    """Simple gated linear attention: S_t = γ_t S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, one gate per token and head.

    The scalar-gated form of Yang et al., "Gated Linear Attention Transformers with
    Hardware-Efficient Training" (ICML 2024), as flash-linear-attention's ``chunk_simple_gla``;
    Mamba-2's SSD (Dao & Gu, 2024) has the same recurrence with its own parameterisation of g.
    """
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    schedule=token_level(order="update_then_apply"),
    decay=decay(per_head=lambda h: 1 - 2 ** (-5 - h)),
)
def retention(x, W):
    """Retention: S_t = γ_h S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, a constant decay γ_h = 1 − 2^(−5−h) per head.

    The recurrent form of Sun et al., "Retentive Network: A Successor to Transformer for Large
    Language Models" (2023), without its rotation of q and k (apply it to the inputs) and its
    group norm (apply it to the outputs); γ_h as in RetNet's multi-scale retention.
    """
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    schedule=token_level(order="update_then_apply"),
    decay=decay(gate="channel"),
)
def gla(x, W):
    """Gated linear attention: S_t = diag(γ_t) S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, a gate per key channel.

    Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training" (ICML
    2024), as flash-linear-attention's ``chunk_gla`` with its gate gk = log γ and scale 1.
    """
    return x @ W


@variant(
    fast={"W": ("d", "e")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    schedule=token_level(order="update_then_apply"),
    decay=decay(gate="token"),
)
def mamba2(x, W):
    """Mamba-2's state-space duality: S_t = γ_t S_{t−1} + Δ_t k_tᵀ v_t, o_t = q_t S_t, with γ_t = exp(Δ_t A_h).

    The SSD layer of Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
    Through Structured State Space Duality" (ICML 2024), in its linear-attention reading: q = C,
    k = B, v = x (head width e, state width d), the step Δ_t as the per-token learning rate and
    g_t = Δ_t A_h as log_decay; the skip term D x_t is left to the caller. simple_gla with a rate.
    """
    return x @ W
