"""φ as one Triton matmul with an element-wise epilogue (tttla_kernels/triton_features.py) against
the torch feature map it stands for, in Triton's interpreter: SwiGLU (two products), one and three
products, fp64/fp32/fp16, forward and backward (tokens and weights expanded over the batch), tokens
read in place through transposed views, ragged blocks, T = 1, the registry, the errors, and the
launch count on fake tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tttla_kernels import triton_features
from tttla_kernels.triton_features import linear_features, register_epilogue
from verify.cost import count, fake_tensors


@triton.jit
def _swiglu(a0, a1):
    return a0 / (1.0 + tl.exp(-a0)) * a1


def swiglu(x, W0, W2):
    return F.silu(x @ W0) * (x @ W2)


@triton.jit
def _relu(a0):
    return tl.maximum(a0, 0.0)


def relu(x, W0):
    return torch.relu(x @ W0)


@triton.jit
def _gated_sum(a0, a1, a2):
    return a0 * a1 + a2 * a2


def gated_sum(x, W0, W1, W2):
    return (x @ W0) * (x @ W1) + (x @ W2) ** 2


EPILOGUES = {
    "swiglu": (register_epilogue("test/swiglu", _swiglu, swiglu, 2), swiglu, 2),
    "relu": (register_epilogue("test/relu", _relu, relu, 1), relu, 1),
    "gated_sum": (register_epilogue("test/gated_sum", _gated_sum, gated_sum, 3), gated_sum, 3),
}

#: forward and gradient tolerances against the fp64 torch feature map
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 2e-2}


def _case(n_inputs, n_weights, dtype, B=2, T=37, H=3, D=40, DH=45, seed=0):
    """xs as ``[B, H, T, d]`` views of ``[B, T, H, d]`` tensors, weights ``[H, d, h]`` (leaves) and
    their expands over the batch, in fp64 (the reference's) and cast to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    xs64 = [torch.randn(B, T, H, D, generator=gen, dtype=torch.float64).transpose(1, 2) for _ in range(n_inputs)]
    ws64 = [torch.randn(H, D, DH, generator=gen, dtype=torch.float64) / D ** 0.5 for _ in range(n_weights)]
    xs = [x.to(dtype).requires_grad_() for x in xs64]  # still [B, T, H, d] in memory
    ws = [w.to(dtype).requires_grad_() for w in ws64]
    return xs, ws, [w.expand(B, H, D, DH) for w in ws], xs64, ws64


def _check_against_torch(name, n_inputs, dtype, **sizes):
    key, torch_fn, n = EPILOGUES[name]
    xs, ws, ws_b, xs64, ws64 = _case(n_inputs, n, dtype, **sizes)
    H, D = xs[0].shape[1], xs[0].shape[3]
    assert xs[0].stride()[1:] == (D, H * D, 1) and ws_b[0].stride(0) == 0  # [B, T, H, d] in memory
    outs = linear_features(xs, ws_b, key)
    want = [torch_fn(x, *ws64) for x in xs64]
    tol = TOLERANCE[dtype]
    assert len(outs) == n_inputs
    for out, ref in zip(outs, want):
        assert out.dtype == dtype and out.is_contiguous() and out.shape == ref.shape
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grads = [torch.randn_like(ref) for ref in want]
    got = torch.autograd.grad(outs, [*xs, *ws], [g.to(dtype) for g in grads])
    leaves64 = [x.clone().requires_grad_() for x in xs64] + [w.clone().requires_grad_() for w in ws64]
    ref_outs = [torch_fn(x, *leaves64[n_inputs:]) for x in leaves64[:n_inputs]]
    expected = torch.autograd.grad(ref_outs, leaves64, grads)
    for g, e in zip(got, expected):
        assert g.dtype == dtype and g.shape == e.shape
        torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * max(1.0, e.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n_inputs", [1, 2])
def test_swiglu_is_the_torch_feature_map(dtype, n_inputs, nan_fill, reversed_grid):
    _check_against_torch("swiglu", n_inputs, dtype)


@pytest.mark.parametrize("name", ["relu", "gated_sum"])
def test_one_and_three_products(name, nan_fill):
    _check_against_torch(name, 2, torch.float64, T=20, D=17, DH=33)


def test_one_token():
    _check_against_torch("swiglu", 2, torch.float64, B=2, T=1, H=2, D=8, DH=5)


def test_one_launch_reads_the_views_in_place(monkeypatch):
    """Both inputs in one launch, and the kernel is given the caller's strided views themselves."""
    launches = []
    launch = triton_features.launch

    def recording(kernel, grid, args, *rest):
        launches.append(args)
        return launch(kernel, grid, args, *rest)

    monkeypatch.setattr(triton_features, "launch", recording)
    key, _, n = EPILOGUES["swiglu"]
    xs, _, ws_b, _, _ = _case(2, n, torch.float64, T=5, D=8, DH=6)
    linear_features(xs, ws_b, key)
    assert len(launches) == 1
    args = launches[0]
    assert args[0] is xs[0] and args[1] is xs[1] and args[2] is ws_b[0] and args[3] is ws_b[1]


def test_counted_as_one_launch_on_fake_tensors():
    """At LaCT's shape the forward of φ(q), φ(k) is one launch and nothing else (no copy of the
    transposed views); the backward runs on fake tensors and gives every leaf its gradient."""
    key, _, n = EPILOGUES["swiglu"]
    B, T, H, D = 1, 32768, 4, 384
    with fake_tensors():
        xs = [torch.empty(B, T, H, D, dtype=torch.bfloat16, device="meta").transpose(1, 2).requires_grad_()
              for _ in range(2)]
        ws = [torch.empty(H, D, D, dtype=torch.bfloat16, device="meta", requires_grad=True) for _ in range(n)]
        tally = count(lambda: linear_features(xs, [w.expand(B, H, D, D) for w in ws], key))
        assert [op.name for op in tally.ops] == ["tttla::linear_features"]
        assert tally.launches == 1
        assert tally.flops == 2 * 2 * n * B * H * T * D * D
        assert tally.ops[0].written == 2 * B * H * T * D * 2
        outs = linear_features(xs, [w.expand(B, H, D, D) for w in ws], key)
        assert [tuple(o.shape) for o in outs] == [(B, H, T, D)] * 2
        grads = torch.autograd.grad(outs, [*xs, *ws], [torch.empty_like(o) for o in outs])
        assert [tuple(g.shape) for g in grads] == [tuple(t.shape) for t in (*xs, *ws)]


def test_unused_output_and_frozen_inputs():
    """A gradient for one output only, and only to the inputs that ask for one."""
    key, torch_fn, n = EPILOGUES["swiglu"]
    xs, ws, ws_b, xs64, ws64 = _case(2, n, torch.float64, T=9, D=8, DH=6)
    xs[1].requires_grad_(False)
    ws[0].requires_grad_(False)
    q_hat, _ = linear_features(xs, [w.expand_as(ws_b[0]) for w in ws], key)
    g_q, g_w2 = torch.autograd.grad(q_hat.sum(), [xs[0], ws[1]])
    x, w2 = xs64[0].clone().requires_grad_(), ws64[1].clone().requires_grad_()
    want = torch.autograd.grad(torch_fn(x, ws64[0], w2).sum(), [x, w2])
    torch.testing.assert_close(g_q, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_w2, want[1], rtol=1e-12, atol=1e-12)


def test_registry():
    key, _, _ = EPILOGUES["swiglu"]
    assert register_epilogue(key, _swiglu, swiglu, 2) == key  # a module reload: nothing changes
    source = "def relu(x, W0):\n    return x @ W0\n"
    first, again = {}, {}
    exec(compile(source, "generated.py", "exec"), first)  # the same module loaded twice
    exec(compile(source, "generated.py", "exec"), again)
    assert first["relu"] is not again["relu"]
    register_epilogue("test/reloaded", _relu, first["relu"], 1)
    register_epilogue("test/reloaded", _relu, again["relu"], 1)
    with pytest.raises(ValueError, match="'test/swiglu' is already registered"):
        register_epilogue(key, _swiglu, relu, 2)
    with pytest.raises(ValueError, match="'test/swiglu' is already registered"):
        register_epilogue(key, _relu, swiglu, 2)
    for n in (0, 4):
        with pytest.raises(ValueError, match="n_products must be 1, 2 or 3"):
            register_epilogue("test/bad", _relu, relu, n)
    with pytest.raises(ValueError, match="triton_fn must be a @triton.jit function"):
        register_epilogue("test/bad", relu, relu, 1)


def _error_cases():
    key, _, _ = EPILOGUES["swiglu"]
    x = torch.randn(1, 2, 5, 8)
    w = torch.randn(1, 2, 8, 6)
    return {
        "unknown key": (([x], [w, w], "test/none"), "epilogue must be a key given to register_epilogue"),
        "three inputs": (([x, x, x], [w, w], key), "xs must hold 1 or 2 inputs"),
        "shapes differ": (([x, x[:, :, :4]], [w, w], key), r"xs\[1\] must match xs\[0\]"),
        "dtypes differ": (([x, x.double()], [w, w], key), r"xs\[1\] must match xs\[0\]"),
        "weight count": (([x], [w], key), "takes 2 weights, got 1"),
        "d mismatch": (([x], [w, torch.randn(1, 2, 7, 6)], key), r"weights\[1\] must be \[B, H, d, h\]"),
        "h mismatch": (([x], [w, torch.randn(1, 2, 8, 5)], key), r"weights\[1\] must be \[B, H, d, h\]"),
        "weight dtype": (([x], [w, w.double()], key), r"weights\[1\] must be in xs' dtype"),
        "last stride": (([x.mT.contiguous().mT], [w, w], key), r"xs\[0\] must have last stride 1"),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_errors_name_the_argument(case):
    args, message = _error_cases()[case]
    with pytest.raises(ValueError, match=message):
        linear_features(*args)


#: compiles the kernel for a Hopper GPU (sm_90) outside the interpreter: Triton's front end calls
#: the constexpr epilogue, and the PTX goes through ptxas to a cubin; no GPU is needed
_COMPILE_FOR_SM90 = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from tttla_kernels.triton_features import linear_features_kernel as kernel

@triton.jit
def swiglu(a0, a1):
    return a0 / (1.0 + tl.exp(-a0)) * a1

@triton.jit
def gated_sum(a0, a1, a2):
    return a0 * a1 + a2 * a2

def source(dtype, epilogue, n, blocks):
    flags = dict(EPILOGUE=epilogue, N_PRODUCTS=n, BT=blocks[0], BN=blocks[1], BD=blocks[2])
    unit = {"sw0n": 1, "sw1n": 1, "sw2n": 1}  # a weight's last stride of 1, as Triton specializes it
    signature = {name: "*" + dtype if name.endswith("_ptr") else "constexpr" if name in {**flags, **unit} else "i32"
                 for name in kernel.arg_names}
    return triton.compiler.ASTSource(kernel, signature, {**flags, **unit})

bf16 = source("bf16", swiglu, 2, (128, 64, 64))
assert bf16.hash() != source("bf16", gated_sum, 3, (128, 64, 64)).hash()  # each epilogue its own kernel
compiled = triton.compile(bf16, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
assert "wgmma" in compiled.asm["ptx"] and compiled.asm["cubin"]
triton.compile(source("fp64", gated_sum, 3, (32, 32, 16)), target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_compiles_for_a_gpu(tmp_path):
    """The epilogue passed as a ``tl.constexpr`` JITFunction compiles for a GPU (not only in the
    interpreter), and enters the compiled kernel's key."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    script = tmp_path / "compile_for_sm90.py"  # @triton.jit reads its functions' source from a file
    script.write_text(_COMPILE_FOR_SM90)
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_on_a_gpu(dtype):
    """LaCT's widths on a GPU: φ(q), φ(k) in one launch against the fp64 torch feature map
    (bf16 operands: the result is rounded to bf16, 2⁻⁸ relative)."""
    key, torch_fn, n = EPILOGUES["swiglu"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, D = 1, 4096, 4, 384
    xs = [torch.randn(B, T, H, D, device="cuda", generator=gen).to(dtype).transpose(1, 2) for _ in range(2)]
    ws = [(torch.randn(H, D, D, device="cuda", generator=gen) / D ** 0.5).to(dtype) for _ in range(n)]
    outs = linear_features(xs, [w.expand(B, H, D, D) for w in ws], key)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for x, out in zip(xs, outs):
        torch.testing.assert_close(out.double(), torch_fn(x.double(), *(w.double() for w in ws)), rtol=tol, atol=tol)
