"""TTT-Linear and TTT-MLP (Sun et al.; ``docs/maths.md`` sections 5–6).

``f(x) = x + LN(x W + b)`` (TTT-Linear) and ``f(x) = x + LN(gelu_tanh(x W1 + b1) W2 + b2)``
(TTT-MLP), with ½‖f(k) − v‖² as the inner loss: the residual ``x`` makes the target
``v − k`` (ℓ = ½‖LN(z) − (v − k)‖²). γ and β are slow weights of shape
``(1, d)`` (shared with the output LN in the original layer); the biases are updated fast
weights of shape ``(1, ·)``. One mini-batch GD step per chunk of ``b = 16`` tokens, all
gradients at the chunk-start weights, token i of a chunk reading the weights after its own
step (``update_then_apply``: the dual form's ``tril``).

Learning rate. TTT-Linear's η_{ij} = (base/d) max(0, 1/i + ε_i) σ(θ·x_j + c) = a_i b_j is
rank-1: ``per_token(position=True)``. The caller passes η per token, the key factor
b_j = (base/d) σ(θ·x_j + c) (its projection θ, c are slow weights of the layer, outside the
inner loop), and ``lr_position`` a ``[16]``, the position factors a_i = max(0, 1/i + ε_i) (ε
learnable, initialised to 0). Token i of a mini-batch reads W_i = W_0 − a_i Σ_{j≤i} b_j ∇_j, and
the mini-batch leaves W_0 − a_16 Σ_j b_j ∇_j: TTT-Linear's dual form (``docs/maths.md`` section 6), which
tests/test_ttt.py writes out against the oracle.
"""

from derivations.functions import gelu_tanh
from derivations.mat import sq_norm
from derivations.normalization import layer_norm
from derivations.spec import chunked, per_token
from derivations.variant import variant

TTT_SCHEDULE = chunked(order="update_then_apply", size=16)


@variant(
    fast={"W": ("d", "d"), "b": (1, "d"), "gamma": (1, "d"), "beta": (1, "d")},
    update=["W", "b"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(position=True),
    schedule=TTT_SCHEDULE,
)
def ttt_linear(x, W, b, gamma, beta):
    """TTT-Linear: f(x) = x + LN(x W + b), ½‖f(k) − v‖² (target v − k), mini-batch GD."""
    return x + layer_norm(x @ W + b, gamma, beta)


@variant(
    fast={"W1": ("d", "h"), "b1": (1, "h"), "W2": ("h", "d"), "b2": (1, "d"), "gamma": (1, "d"), "beta": (1, "d")},
    update=["W1", "b1", "W2", "b2"],
    loss=lambda y, v: 0.5 * sq_norm(y - v),
    lr=per_token(position=True),
    schedule=TTT_SCHEDULE,
)
def ttt_mlp(x, W1, b1, W2, b2, gamma, beta):
    """TTT-MLP: f(x) = x + LN(gelu_tanh(x W1 + b1) W2 + b2), both layers updated (dynamic kernel)."""
    return x + layer_norm(gelu_tanh(x @ W1 + b1) @ W2 + b2, gamma, beta)
