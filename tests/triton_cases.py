"""Cases and comparisons shared by the Triton tests (test_triton.py, test_gpu.py).

A form is run on a copy of a case in some dtype on ``DEVICE`` (the GPU where there is one,
else the CPU under Triton's interpreter); the result is ``(o, final, {leaf: grad})`` for the
loss Σ w·o + Σ final², so every output and every input's gradient are compared.
"""

from __future__ import annotations

import torch

from verify.forms import cast_case, form_kwargs
from verify.inputs import make_case
from verify.oracle import run_direct
from verify.tolerances import relative_error

TRITON_VARIANTS = ["lact_v2", "lact_v3", "lact_v4", "lact_v5", "lact_v6", "linear_attention"]
#: Triton forms not in test_gpu.py's large-shape matrix: the WY/UT delta form's block-state kernel
#: (run on an H200 at test_triton.py's small shapes only) and the depthwise (per-channel) lowering
#: through the prefix-scan kernels (interpreter only)
INTERPRETER_ONLY_VARIANTS = ["delta_rule", "gated_delta_rule", "vittt_dwconv"]
FP32_RMS_RATIO = 1e-4  # docs/maths.md section 13: fp32 against the fp64 oracle
#: where the kernels run: the GPU, or the CPU under Triton's interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(variant, T, d, chunk, batch=2, heads=2, seed=0, h=None):
    # h ≠ d and dv ≠ d: the state is not square (SwiGLU's hidden width, a value width of its own)
    sizes = {"d": d, "h": d + 2 if h is None else h, "dv": d + 1}
    sizes = {k: n for k, n in sizes.items() if k in (*variant.dims, variant.value_dim)}
    return make_case(variant, batch=batch, seq_len=T, heads=heads, sizes=sizes, chunk_size=chunk,
                     requires_grad=True, generator=torch.Generator().manual_seed(seed))


def run_form(variant, fn, case, dtype, chunk, device=DEVICE):
    """(o, final, {leaf name: grad}) of one form on a copy of ``case`` in ``dtype`` on ``device``."""
    cast = cast_case(case, dtype, device=device)
    cast.chunk_size = chunk
    leaves = cast.leaves()
    if fn is None:
        if variant.schedule.fixed:
            cast.chunk_size = None  # the oracle steps as the schedule says
        o, final = run_direct(variant, **cast.kwargs())
        final = final[variant.update[0]]
    else:
        kwargs = form_kwargs(variant, cast)
        if chunk is not None and variant.schedule.order != "bidirectional":
            kwargs["chunk_size"] = chunk  # also a compute chunk for token-level schedules
        o, final = fn(cast.q, cast.k, cast.v, **kwargs)
    weights = torch.linspace(-1.0, 1.0, o.numel(), dtype=torch.float64, device=o.device).reshape(o.shape)
    loss = (o.double() * weights).sum() + final.double().pow(2).sum()
    used = {n: t for n, t in leaves.items() if not (variant.queries == "key" and n == "q")}
    grads = torch.autograd.grad(loss, list(used.values()), allow_unused=True)
    return o, final, {n: (torch.zeros_like(t) if g is None else g) for (n, t), g in zip(used.items(), grads)}


def _errors(ref, got) -> dict[str, float]:
    """RMS ratio of every output of ``got`` (o, the final state, each gradient) against ``ref``."""
    o, final, grads = ref
    o2, final2, grads2 = got
    errors = {"o": relative_error(o, o2, "rms_ratio"), "final": relative_error(final, final2, "rms_ratio")}
    errors.update({f"d{n}": relative_error(grads[n], grads2[n], "rms_ratio") for n in grads})
    return errors


def assert_within_plain_torch(truth, plain, got, what, factor=2.0):
    """Each output of ``got`` at most ``factor`` x as far from ``truth`` as ``plain`` (the layer
    executed literally in the same dtype), or within the fp32 bound."""
    ours, theirs = _errors(truth, got), _errors(truth, plain)
    bad = {k: f"{ours[k]:.2e} > {factor:g} x {theirs[k]:.2e}" for k in ours
           if not ours[k] <= max(factor * theirs[k], FP32_RMS_RATIO)}
    assert not bad, f"{what}: farther from the fp64 oracle than {factor:g}x plain torch: {bad}"


def compare(ref, got, bound, what):
    bad = {k: f"{e:.2e}" for k, e in _errors(ref, got).items() if not e <= bound}
    assert not bad, f"{what}: RMS ratio above {bound:g}: {bad}"
