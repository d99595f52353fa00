"""tttla_kernels.fla_compat against flash-linear-attention's own Triton kernels on a GPU (skipped
without CUDA or fla): the same call, in fp32 and bf16, judged against the truth (the same call
through tttla's chunk form in fp64) with Dk ≠ Dv, a ragged T, initial states, and packed sequences.
Each output, final state and gradient of tttla's must be at most twice as far from the truth as
fla's own (relative RMS error), or within the floor of its dtype: fla's fp32 kernels multiply in
TF32, so "equal to fla" within a fixed bound would test fla's rounding, not tttla's correctness.
"""

from __future__ import annotations

import pytest
import torch

from verify.tolerances import relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
fla_ops = pytest.importorskip("fla.ops")

from tttla_kernels import fla_compat  # noqa: E402

B, T, H, K, V = 2, 300, 4, 64, 128
#: relative RMS error from the fp64 truth that always passes, per dtype (docs/maths.md section 13)
FLOOR = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def _inputs(dtype, batch=B, T=T):
    g = torch.Generator(device="cuda").manual_seed(0)

    def leaf(x):
        return x.to(dtype).requires_grad_()

    q, k = (leaf(torch.nn.functional.normalize(torch.randn(batch, T, H, K, device="cuda", generator=g), dim=-1))
            for _ in range(2))
    return dict(
        q=q, k=k, v=leaf(torch.randn(batch, T, H, V, device="cuda", generator=g)),
        beta=leaf(torch.rand(batch, T, H, device="cuda", generator=g)),
        g=leaf(-0.3 * torch.rand(batch, T, H, device="cuda", generator=g)),
        gk=leaf(-0.3 * torch.rand(batch, T, H, K, device="cuda", generator=g)),
        h0=(0.3 * torch.randn(batch, H, K, V, device="cuda", generator=g)).requires_grad_(),
    )


CALLS = {
    "chunk_linear_attn": lambda op, x, **kw: op(x["q"], x["k"], x["v"], initial_state=x["h0"],
                                               output_final_state=True, normalize=False, **kw),
    "chunk_simple_gla": lambda op, x, **kw: op(x["q"], x["k"], x["v"], g=x["g"], initial_state=x["h0"],
                                              output_final_state=True, **kw),
    "chunk_gla": lambda op, x, **kw: op(x["q"], x["k"], x["v"], x["gk"], initial_state=x["h0"],
                                       output_final_state=True, **kw),
    "chunk_delta_rule": lambda op, x, **kw: op(x["q"], x["k"], x["v"], x["beta"], initial_state=x["h0"],
                                              output_final_state=True, **kw),
    "chunk_gated_delta_rule": lambda op, x, **kw: op(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                                    initial_state=x["h0"], output_final_state=True, **kw),
}


def _run(name, op, x, **kw):
    o, final = CALLS[name](op, x, **kw)
    gen = torch.Generator(device="cuda").manual_seed(1)
    w_o, w_f = (torch.randn(t.shape, device="cuda", generator=gen, dtype=torch.float64) for t in (o, final))
    leaves = [t for t in x.values() if t.requires_grad]
    grads = torch.autograd.grad((o.double() * w_o).sum() + (final.double() * w_f).sum(), leaves, allow_unused=True)
    return [o, final, *(torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads))]


def _fp64(x):
    """A copy of the inputs in fp64, fresh leaves."""
    return {n: t.detach().double().requires_grad_(t.requires_grad) for n, t in x.items()}


def _assert_as_close_as_fla(name, x, dtype, **kw):
    truth = _run(name, lambda *a, **k: getattr(fla_compat, name)(*a, form="chunk", **k), _fp64(x), **kw)
    ours = _run(name, getattr(fla_compat, name), x, **kw)
    theirs = _run(name, getattr(fla_ops, name), x, **kw)
    labels = ["o", "final state", *(f"d{n}" for n, t in x.items() if t.requires_grad)]
    bad = {}
    for label, ref, a, b in zip(labels, truth, ours, theirs):
        mine, fla = relative_error(ref, a, "rms_ratio"), relative_error(ref, b, "rms_ratio")
        if not mine <= max(2 * fla, FLOOR[dtype]):
            bad[label] = f"tttla {mine:.2e}, fla {fla:.2e}"
    assert not bad, f"{name} {dtype}: farther from the fp64 truth than twice fla's error: {bad}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(CALLS))
def test_fla_compat_is_as_close_to_the_truth_as_fla(name, dtype):
    _assert_as_close_as_fla(name, _inputs(dtype), dtype)


@pytest.mark.parametrize("name", ["chunk_gated_delta_rule", "chunk_simple_gla"])
def test_packed_sequences_are_as_close_to_the_truth_as_fla(name):
    """Each sequence alone (the delta rule), or all in one fused scan (simple_gla)."""
    x = _inputs(torch.float32, batch=1, T=300)
    x["h0"] = (0.3 * torch.randn(3, H, K, V, device="cuda")).requires_grad_()
    cu = torch.tensor([0, 1, 130, 300], device="cuda")
    _assert_as_close_as_fla(name, x, torch.float32, cu_seqlens=cu)
