"""The paper's LaCT chain (Liu et al., Table 2) and its Table 1 baselines.

``lact`` is the full LaCT causal-LLM layer; ``lact_v1`` … ``lact_v6`` each drop one more
component (the chain is cumulative). Shapes: SwiGLU fast weights W0, W2: d × h and
W1: h × d; the single-layer variants have one fast weight W: d × d.
"""

from derivations.functions import silu
from derivations.mat import dot, sq_norm
from derivations.spec import chunked, constant, momentum, newton_schulz, per_token, weight_norm
from derivations.variant import variant

SWIGLU = {"W0": ("d", "h"), "W1": ("h", "d"), "W2": ("d", "h")}
LACT_SCHEDULE = chunked(order="apply_then_update", size=2048)


@variant(
    fast=SWIGLU,
    update=["W0", "W1", "W2"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    weight_norm=weight_norm(),
    schedule=LACT_SCHEDULE,
)
def lact(x, W0, W1, W2):
    """Full LaCT: SwiGLU fast weights, all updated, momentum, Muon, weight norm."""
    return (silu(x @ W0) * (x @ W2)) @ W1


@variant(
    fast=SWIGLU,
    update=["W1"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    weight_norm=weight_norm(),
    schedule=LACT_SCHEDULE,
)
def lact_v1(x, W0, W1, W2):
    """V1: only the last layer W1 is updated (static SwiGLU kernel)."""
    return (silu(x @ W0) * (x @ W2)) @ W1


@variant(
    fast=SWIGLU,
    update=["W1"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    schedule=LACT_SCHEDULE,
)
def lact_v2(x, W0, W1, W2):
    """V2: V1 without weight norm (fully parallel)."""
    return (silu(x @ W0) * (x @ W2)) @ W1


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    schedule=LACT_SCHEDULE,
)
def lact_v3(x, W):
    """V3: V2 with a single linear layer (φ = identity)."""
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    schedule=LACT_SCHEDULE,
)
def lact_v4(x, W):
    """V4: V3 with a constant learning rate η = 1."""
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    schedule=LACT_SCHEDULE,
)
def lact_v5(x, W):
    """V5: V4 without momentum."""
    return x @ W


@variant(
    fast={"W": ("d", "dv")},
    update=["W"],
    loss=lambda y, v: -dot(y, v),
    lr=constant(1.0),
    schedule=LACT_SCHEDULE,
)
def lact_v6(x, W):
    """V6: V5 without Muon: plain (block-exclusive) linear attention."""
    return x @ W


@variant(
    fast=SWIGLU,
    update=["W0", "W1", "W2"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    weight_norm=weight_norm(),
    ascent=True,
    schedule=LACT_SCHEDULE,
)
def lact_ga(x, W0, W1, W2):
    """Baseline LaCT taking gradient-ascent steps (Table 1)."""
    return (silu(x @ W0) * (x @ W2)) @ W1


@variant(
    fast=SWIGLU,
    update=["W0", "W1", "W2"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    weight_norm=weight_norm(),
    queries="key",
    schedule=LACT_SCHEDULE,
)
def lact_no_query(x, W0, W1, W2):
    """Baseline LaCT reading with its keys in place of queries (Table 1)."""
    return (silu(x @ W0) * (x @ W2)) @ W1


@variant(
    fast=SWIGLU,
    update=["W0", "W1", "W2"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(),
    momentum=momentum(per="chunk"),
    orthogonalize=newton_schulz(steps=5, coefficients="lact"),
    weight_norm=weight_norm(),
    schedule=LACT_SCHEDULE,
)
def lact_mse(x, W0, W1, W2):
    """Baseline LaCT with the ½·MSE inner loss (state-dependent values)."""
    return (silu(x @ W0) * (x @ W2)) @ W1
