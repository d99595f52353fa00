"""The generated Triton forms: on the GPU where there is one, else in Triton's CPU interpreter
(conftest sets TRITON_INTERPRET=1 when torch sees no CUDA device).

Every Triton form is checked, forward and backward, against the fp64 oracle (the truth) and
against its own torch chunk form, in fp32 on small ragged shapes; fresh kernel outputs are
NaN-filled (TTTLA_NAN_FILL=1) so an element no program writes fails the comparison, and the
interpreter runs each grid's programs in reverse order, so a program writing outside its tile is
not silently overwritten by the program that owns it. Larger
shapes, fp16/bf16 and T = 32768 are in test_gpu.py (GPU only).
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from triton_cases import (
    DEVICE,
    FP32_RMS_RATIO,
    INTERPRETER_ONLY_VARIANTS,
    TRITON_VARIANTS,
    assert_within_plain_torch,
    compare,
    inputs,
    run_form,
)

from codegen.generate import PACKAGE_ROOT, generate, import_generated, render_variant
from derivations.catalog import CATALOG
from tttla_kernels import triton_runtime
from verify.inputs import make_case
from verify.tolerances import relative_error

pytestmark = pytest.mark.usefixtures("nan_fill", "reversed_grid")

#: (T, d, chunk): one token, fewer tokens than a chunk, a ragged tail, an exact multiple
SHAPES = [(1, 3, 8), (5, 8, 8), (37, 3, 16), (64, 16, 16)]


@pytest.mark.parametrize("T,d,chunk", SHAPES)
@pytest.mark.parametrize("name", TRITON_VARIANTS + INTERPRETER_ONLY_VARIANTS)
def test_triton_matches_oracle_and_chunk_form(name, T, d, chunk):
    variant = CATALOG[name]
    forms = import_generated(name).FORMS
    case = inputs(variant, T, d, chunk)
    truth = run_form(variant, None, case, torch.float64, chunk)
    triton32 = run_form(variant, forms["triton"], case, torch.float32, chunk)
    chunk32 = run_form(variant, forms["chunk"], case, torch.float32, chunk)
    compare(truth, triton32, FP32_RMS_RATIO, f"{name} triton fp32 vs oracle fp64")
    compare(chunk32, triton32, FP32_RMS_RATIO, f"{name} triton fp32 vs chunk fp32")


def test_triton_one_head_and_a_one_row_state():
    """H = 1 and h = 1: size-1 dimensions may carry any stride (the gradients' do)."""
    variant = CATALOG["lact_v2"]
    case = inputs(variant, 24, 6, 8, heads=1, h=1, seed=1)
    truth = run_form(variant, None, case, torch.float64, 8)
    compare(truth, run_form(variant, import_generated("lact_v2").FORMS["triton"], case, torch.float32, 8),
             FP32_RMS_RATIO, "H=1, h=1")


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors: refused with or without a GPU
    q = torch.randn(1, 4, 1, 3)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        import_generated("lact_v6").FORMS["triton"](q, q, q)


@pytest.mark.parametrize("name", ["lact_v2", "linear_attention", "delta_rule", "gated_delta_rule"])
def test_triton_exact_in_fp64(name):
    """fp64 through the kernels (fp64 accumulators) is the exactness check: ≤ 1e-9 relative."""
    variant = CATALOG[name]
    case = inputs(variant, 37, 8, 16)
    truth = run_form(variant, None, case, torch.float64, 16)
    got = run_form(variant, import_generated(name).FORMS["triton"], case, torch.float64, 16)
    for ref, out in zip([truth[0], truth[1], *truth[2].values()], [got[0], got[1], *got[2].values()]):
        assert relative_error(ref, out, "max_rel") <= 1e-9


@pytest.mark.parametrize("name", ["delta_rule", "gated_delta_rule"])
def test_delta_scan_split_over_value_blocks_is_exact(name):
    """dv = 70 runs the block-state kernel as three programs per (batch, head) (value columns
    0–31, 32–63, 64–69: value_block splits a small grid), the backward summing their partial
    dW, dQ, dK, dP and dg: fp64 against the oracle, ≤ 1e-9 relative."""
    variant = CATALOG[name]
    assert triton_runtime.value_block(4, 70) == 32
    case = make_case(variant, batch=2, seq_len=11, heads=2, sizes={"d": 8, "dv": 70}, chunk_size=4,
                     requires_grad=True, generator=torch.Generator().manual_seed(3))
    truth = run_form(variant, None, case, torch.float64, 4)
    got = run_form(variant, import_generated(name).FORMS["triton"], case, torch.float64, 4)
    for ref, out in zip([truth[0], truth[1], *truth[2].values()], [got[0], got[1], *got[2].values()]):
        assert relative_error(ref, out, "max_rel") <= 1e-9


@pytest.mark.parametrize("name", ["lact_v5", "lact_v6"])
def test_triton_fp16_within_twice_plain_torch(name):
    """fp16 operands on the kernels (fp32 accumulators and state): at most 2x as far from the fp64
    oracle as the layer executed literally in fp16, forward and backward."""
    variant = CATALOG[name]
    fn = import_generated(name).FORMS["triton"]
    case = inputs(variant, 37, 16, 16)
    truth = run_form(variant, None, case, torch.float64, 16)
    plain = run_form(variant, None, case, torch.float16, 16)
    o, final, grads = got = run_form(variant, fn, case, torch.float16, 16)
    assert o.dtype == torch.float16 and final.dtype == torch.float32
    assert_within_plain_torch(truth, plain, got, f"{name} fp16")


def test_compute_chunk_does_not_change_linear_attention():
    """A token-level schedule: the Triton and chunk forms take any compute chunk_size."""
    variant = CATALOG["linear_attention"]
    mod = import_generated("linear_attention")
    case = inputs(variant, 37, 8, None)
    truth = run_form(variant, None, case, torch.float64, None)
    for chunk in (1, 7, 64):
        compare(truth, run_form(variant, mod.FORMS["triton"], case, torch.float32, chunk), FP32_RMS_RATIO,
                 f"chunk_size={chunk}")


def test_nan_fill_catches_an_unwritten_tile(monkeypatch):
    """Launch the output kernel with one token block fewer: the NaN-filled buffer shows it."""
    variant = CATALOG["lact_v5"]  # on the two-kernel pipeline (Newton–Schulz between its kernels)
    mod = import_generated("lact_v5").triton_chunk
    case = inputs(variant, 37, 8, 16)
    truth = run_form(variant, None, case, torch.float64, 16)
    real_grid = triton_runtime._read_grid
    monkeypatch.setattr(triton_runtime, "_read_grid", lambda *a: (lambda g: (g[0], g[1] - 1, g[2]))(real_grid(*a)))
    o, final, grads = run_form(variant, mod.triton_lact_v5, case, torch.float32, 16)
    assert torch.isnan(o[:, -1]).all() and not torch.isnan(o[:, 0]).any()
    with pytest.raises(AssertionError, match="RMS ratio"):
        compare(truth, (o, final, grads), FP32_RMS_RATIO, "skipped tile")


USER_VARIANT = '''
from derivations import bidirectional, chunked, dot, momentum, per_token, tanh, variant


@variant(
    fast={"W0": ("d", "h"), "W1": ("h", "d")},
    update=["W1"],
    loss=lambda y, v: -dot(y, v),
    lr=per_token(),
    momentum=MOMENTUM,
    schedule=SCHEDULE,
)
def my_rule(x, W0, W1):
    """A user's rule: tanh features, SCHEDULE."""
    return tanh(x @ W0) @ W1
'''


@pytest.mark.parametrize("schedule,momentum", [
    ('chunked(order="block_inclusive", size=8)', 'momentum(per="chunk")'),
    ('chunked(order="update_then_apply", size=8)', "None"),
    ("bidirectional()", "None"),
])
def test_user_variant_gets_a_triton_form(tmp_path, schedule, momentum):
    from derivations.loading import load_variant
    from tttla.cli import main

    path = tmp_path / "my_rule.py"
    path.write_text(textwrap.dedent(USER_VARIANT).replace("SCHEDULE", schedule).replace("MOMENTUM", momentum))
    out = tmp_path / "kernels"
    assert main(["generate", str(path), "--out", str(out)]) == 0
    assert (out / "my_rule" / "triton_chunk.py").is_file()
    variant = load_variant(str(path))
    forms = import_generated("my_rule", out).FORMS
    case = inputs(variant, 21, 5, 8)
    truth = run_form(variant, None, case, torch.float64, 8)
    chunk = None if variant.schedule.order == "bidirectional" else 8
    got = run_form(variant, forms["triton"], case, torch.float32, chunk)
    compare(truth, got, FP32_RMS_RATIO, f"my_rule {schedule}")


def test_non_parallel_variant_gets_no_triton_form():

    assert "triton_chunk.py" not in render_variant("ttt_linear")
    assert not (PACKAGE_ROOT / "lact_v1" / "triton_chunk.py").exists()
    assert "triton" not in import_generated("lact_v1").FORMS


def test_generate_prints_why_there_is_no_triton_form(tmp_path, capsys):
    from tttla.cli import main

    assert main(["generate", "titans", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no Triton form for 'titans'" in out and "values depend on the state" in out


def test_triton_form_regenerated_in_a_folder_registers_fresh_ops(tmp_path):
    """Custom-op names are global: a second copy of a generated module must not clash."""
    generate("lact_v6", tmp_path)
    copy = import_generated("lact_v6", tmp_path)
    variant = CATALOG["lact_v6"]
    case = inputs(variant, 5, 3, 8)
    truth = run_form(variant, None, case, torch.float64, 8)
    compare(truth, run_form(variant, copy.FORMS["triton"], case, torch.float32, 8), FP32_RMS_RATIO, "copy")


def test_torch_compile_of_a_module_calling_the_op():
    from tttla_kernels.linear_attention import triton_linear_attention

    class Layer(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.proj = torch.nn.Linear(d, 3 * d, bias=False)

        def forward(self, x):  # x [B, T, H, d]
            q, k, v = self.proj(x).chunk(3, dim=-1)
            o, _ = triton_linear_attention(q, k, v, chunk_size=16)
            return o

    torch.manual_seed(0)
    layer = Layer(8).to(DEVICE)
    x = torch.randn(2, 37, 2, 8, device=DEVICE)
    eager = layer(x)
    (g_eager,) = torch.autograd.grad(eager.pow(2).sum(), layer.proj.weight)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    (g_compiled,) = torch.autograd.grad(out.pow(2).sum(), layer.proj.weight)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_compiled, g_eager)
