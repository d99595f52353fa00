"""tttla_kernels.fla_compat against flash-linear-attention's own Triton kernels on a GPU (skipped
without CUDA or fla): the same call gives the same outputs, final states and gradients, within what
two different fp32/bf16 computations of one layer can differ by (relative RMS error), with Dk ≠ Dv,
a ragged T, initial states, and packed sequences."""

from __future__ import annotations

import pytest
import torch

from verify.tolerances import relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
fla_ops = pytest.importorskip("fla.ops")

from tttla_kernels import fla_compat  # noqa: E402

B, T, H, K, V = 2, 300, 4, 64, 128
#: relative RMS error allowed between two implementations in each dtype (fla's fp32 dots may use TF32)
BOUND = {torch.float32: 5e-3, torch.bfloat16: 3e-2}


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
    w_o, w_f = torch.randn(o.shape, device="cuda", generator=gen), torch.randn(final.shape, device="cuda",
                                                                               generator=gen)
    leaves = [t for t in x.values() if t.requires_grad]
    grads = torch.autograd.grad((o.float() * w_o).sum() + (final.float() * w_f).sum(), leaves, allow_unused=True)
    return [o, final, *(torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(CALLS))
def test_fla_compat_is_fla_on_the_gpu(name, dtype):
    x = _inputs(dtype)
    ours = _run(name, getattr(fla_compat, name), x)
    theirs = _run(name, getattr(fla_ops, name), x)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert relative_error(b, a, "rms_ratio") < BOUND[dtype], f"{name} {dtype}: result {i}"


def test_packed_sequences_are_fla_on_the_gpu():
    x = _inputs(torch.float32, batch=1, T=300)
    x["h0"] = (0.3 * torch.randn(3, H, K, V, device="cuda")).requires_grad_()
    cu = torch.tensor([0, 1, 130, 300], device="cuda")
    ours = _run("chunk_gated_delta_rule", fla_compat.chunk_gated_delta_rule, x, cu_seqlens=cu)
    theirs = _run("chunk_gated_delta_rule", fla_ops.chunk_gated_delta_rule, x, cu_seqlens=cu)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert relative_error(b, a, "rms_ratio") < BOUND[torch.float32], f"varlen: result {i}"
