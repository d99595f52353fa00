"""The Triton forms on a real GPU (skipped without CUDA): every form in fp32, fp16 and bf16,
forward and backward, against the fp64 oracle, up to T = 32768.

fp32 must stay within the fp32 bound (docs/maths.md section 13); fp16 and bf16 operands (fp32 accumulators
and states) may be at most 2x as far from the fp64 oracle as the layer executed literally in
the same dtype ("plain torch"). Fresh kernel outputs are NaN-filled.
"""

from __future__ import annotations

import pytest
import torch
from triton_cases import (
    FP32_RMS_RATIO,
    TRITON_VARIANTS,
    assert_within_plain_torch,
    compare,
    inputs,
    run_form,
)

from codegen.generate import import_generated
from derivations.catalog import CATALOG
from verify.forms import usable_forms

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("nan_fill")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: (T, d, chunk): one token; fewer tokens than a chunk; a ragged tail with d not a power of two;
#: several full chunks with d above one 64-wide block
SHAPES = [(1, 64, 64), (50, 64, 64), (300, 48, 128), (1024, 128, 256)]


def _check(name, T, d, chunk, dtype, batch=2, heads=2):
    variant = CATALOG[name]
    fn = import_generated(name).FORMS["triton"]
    case = inputs(variant, T, d, chunk, batch=batch, heads=heads)
    truth = run_form(variant, None, case, torch.float64, chunk)
    got = run_form(variant, fn, case, dtype, chunk)
    assert got[0].device.type == "cuda" and got[0].dtype == dtype
    if dtype == torch.float32:
        compare(truth, got, FP32_RMS_RATIO, f"{name} fp32 T={T} d={d}")
    else:
        plain = run_form(variant, None, case, dtype, chunk)
        assert_within_plain_torch(truth, plain, got, f"{name} {dtype} T={T} d={d}")


@pytest.mark.parametrize("T,d,chunk", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", TRITON_VARIANTS)
def test_triton_on_gpu_matches_the_oracle(name, dtype, T, d, chunk):
    _check(name, T, d, chunk, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["lact_v2", "lact_v6"])
def test_triton_on_gpu_at_32k_tokens(name, dtype):
    """T = 32768 in 16 chunks of 2048: the oracle steps once per chunk."""
    _check(name, 32768, 32, 2048, dtype, batch=1, heads=2)


def _causal_linear_attention(q, k, v, S0, block=1024):
    """o_t = q_t (S0 + Σ_{s≤t} k_sᵀ v_s), written out in torch block by block (time-first inputs)."""
    Q, K, V = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, d]
    S, outs = S0, []
    for i in range(0, Q.shape[2], block):
        qb, kb, vb = Q[:, :, i:i + block], K[:, :, i:i + block], V[:, :, i:i + block]
        outs.append(qb @ S + (qb @ kb.mT).tril() @ vb)
        S = S + kb.mT @ vb
    return torch.cat(outs, dim=2).transpose(1, 2), S


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_attention_on_gpu_at_32k_tokens(dtype):
    """linear_attention steps once per token, so its oracle is 32768 autograd steps: the fp64
    truth here is causal linear attention written out in blocks (the oracle's equal at small T
    is tested above), and "plain torch" is the same code in ``dtype``."""
    fn = import_generated("linear_attention").FORMS["triton"]
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 32768, 2, 32)
    leaves64 = {n: torch.randn(shape, generator=g, device="cuda", dtype=torch.float64) / 6 for n in "qkv"}
    leaves64["S0"] = torch.randn(2, 32, 32, generator=g, device="cuda", dtype=torch.float64)
    w = torch.randn(shape, generator=g, device="cuda", dtype=torch.float64)

    def run(form, dt):
        x = {n: t.to(dt).requires_grad_() for n, t in leaves64.items()}
        o, final = form(x["q"], x["k"], x["v"], x["S0"])
        loss = (o.double() * w).sum() + final.double().pow(2).sum()
        grads = torch.autograd.grad(loss, list(x.values()))
        return o, final, {n: g_ for n, g_ in zip(x, grads)}

    def triton_form(q, k, v, S0):
        return fn(q, k, v, initial_state=S0, output_final_state=True, chunk_size=64)

    truth = run(_causal_linear_attention, torch.float64)
    got = run(triton_form, dtype)
    if dtype == torch.float32:
        compare(truth, got, FP32_RMS_RATIO, "linear_attention fp32 T=32768")
    else:
        plain = run(_causal_linear_attention, dtype)
        assert_within_plain_torch(truth, plain, got, f"linear_attention {dtype} T=32768")


def test_verify_runs_the_triton_form_on_the_gpu():
    """The fuzzing verifier's CPU cases reach the Triton form on the GPU (copied there and back)."""
    forms, notes = usable_forms(dict(import_generated("lact_v2").FORMS))
    assert "triton" in forms and any("on the GPU" in n for n in notes)
    from verify.fuzz import run_campaign

    for dtype in (torch.float64, torch.float32):
        campaign = run_campaign(CATALOG["lact_v2"], {"triton": forms["triton"]}, cases=4, dtype=dtype)
        assert campaign.passed, campaign.to_json()["failures"]
