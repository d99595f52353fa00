"""ViT³ / ViTTT's GLU branch (reference Section 7.4).

``f(x) = (x W1) ⊙ silu(x W2)``, both weights updated, one bidirectional step on all tokens
with the mean dot-product loss −(s/N) Σ_n ⟨f(k_n), v_n⟩, s = 9^{−1/2} = 1/3.

The scale is split between the declaration and the caller: the loss carries s = 1/3
(``-dot(y, v) / 3``) and the per-token learning rate η_n is the caller's, ``1/N`` for the
reference layer (N = tokens in the update set: T for the bidirectional step). With the
column-wise clip G[:, c] ← G[:, c] / (‖G[:, c]‖ + 1) the scale matters (the clip is not
scale-invariant), so pass η = 1/N to reproduce ViTTT exactly.
"""

from derivations import bidirectional, column_clip, dot, per_token, silu, variant

GLU = {"W1": ("d", "d"), "W2": ("d", "d")}


@variant(
    fast=GLU,
    update=["W1", "W2"],
    loss=lambda y, v: -dot(y, v) / 3,
    lr=per_token(),
    clip=column_clip(),
    schedule=bidirectional(),
)
def vittt_glu(x, W1, W2):
    """ViTTT GLU branch: (x W1) ⊙ silu(x W2), one bidirectional step, column-clipped gradients."""
    return (x @ W1) * silu(x @ W2)


@variant(
    fast=GLU,
    update=["W1", "W2"],
    loss=lambda y, v: -dot(y, v) / 3,
    lr=per_token(),
    schedule=bidirectional(),
)
def vittt_glu_noclip(x, W1, W2):
    """ViTTT GLU branch without the gradient clip (the App. F form)."""
    return (x @ W1) * silu(x @ W2)
