"""ViT³ / ViTTT's two branches: the GLU (``docs/maths.md`` section 5) and the 3×3 depthwise
convolution (section 11).

``f(x) = (x W1) ⊙ silu(x W2)``, both weights updated, one bidirectional step on all tokens
with the mean dot-product loss −(s/N) Σ_n ⟨f(k_n), v_n⟩, s = 9^{−1/2} = 1/3.

The scale is split between the declaration and the caller: the loss carries s = 1/3
(``-dot(y, v) / 3``) and the per-token learning rate η_n is the caller's, ``1/N`` for the
reference layer (N = tokens in the update set: T for the bidirectional step). With the
column-wise clip G[:, c] ← G[:, c] / (‖G[:, c]‖ + 1) the scale matters (the clip is not
scale-invariant), so pass η = 1/N to reproduce ViTTT exactly.

The depthwise branch convolves the keys on the h×w token grid (T = h·w, row-major, zero
padding) with one 3×3 kernel per channel, stored ``w [9, d]`` (column c = channel c's kernel,
taps row-major); its loss −(s/N) Σ_{c,p} f(K)_{c,p} V_{c,p} is the same dot product, and
``column_clip()`` on ``w`` is ViTTT's per-kernel clip G ← G/(‖G‖_F + 1). Traced one channel at
a time, it is sliding-window linear attention whose key is the channel's 3×3 patch.
"""

from derivations.functions import silu
from derivations.mat import dot
from derivations.spec import bidirectional, column_clip, per_token
from derivations.structured import depthwise, depthwise_conv
from derivations.variant import variant

#: ViTTT's inner step, shared by both branches: the mean dot-product loss −(s/N) Σ_n ⟨f(k_n), v_n⟩
#: with s = 1/3 in the loss and η = 1/N from the caller, one bidirectional step
STEP = dict(loss=lambda y, v: -dot(y, v) / 3, lr=per_token(), schedule=bidirectional())
GLU = dict(fast={"W1": ("d", "d"), "W2": ("d", "d")}, update=["W1", "W2"], **STEP)
DWCONV = dict(fast={"w": depthwise(3)}, update="w", **STEP)


@variant(**GLU, clip=column_clip())
def vittt_glu(x, W1, W2):
    """ViTTT GLU branch: (x W1) ⊙ silu(x W2), one bidirectional step, column-clipped gradients."""
    return (x @ W1) * silu(x @ W2)


@variant(**GLU)
def vittt_glu_noclip(x, W1, W2):
    """ViTTT GLU branch without the gradient clip (the App. F form)."""
    return (x @ W1) * silu(x @ W2)


@variant(**DWCONV, clip=column_clip())
def vittt_dwconv(x, w):
    """ViTTT 3×3 depthwise-convolution branch: one bidirectional step on the h×w grid, per-kernel clip."""
    return depthwise_conv(x, w)


@variant(**DWCONV)
def vittt_dwconv_noclip(x, w):
    """ViTTT 3×3 depthwise-convolution branch without the clip (the App. G form)."""
    return depthwise_conv(x, w)
