"""The cost model (verify/cost.py, benchmarks/cost_model.py): the counter on graphs checked by
hand, generated forms counted on fake tensors, and fla's hand-written row."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from derivations.catalog import CATALOG
from tttla.cli import main
from tttla_kernels import linear_attention
from tttla_kernels.triton_runtime import MASK_CAUSAL, MASK_NONE, chunk_outer, chunk_read
from verify.cost import H100_SXM, OpCost, Tally, causal_pairs, count, count_form, fake_tensors, tensor_bytes

ROOT = Path(__file__).resolve().parents[1]
BF16 = torch.bfloat16


def _cost_model():
    """benchmarks/cost_model.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cost_model", ROOT / "benchmarks" / "cost_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake(*shape, dtype=BF16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_one_matmul():
    m, k, n = 32, 48, 16
    with fake_tensors():
        a, b = _fake(m, k), _fake(k, n)
        tally = count(lambda: a @ b)
    assert tally.bytes == 2 * (m * k + k * n + m * n)
    assert tally.flops == 2 * m * n * k
    assert tally.launches == 1
    op = tally.ops[0]
    assert op.seconds(H100_SXM) == max(tally.bytes / 3.35e12, 2 * m * n * k / 989e12) + 4e-6


def test_views_cost_nothing():
    with fake_tensors():
        x = _fake(4, 8, 16)
        tally = count(lambda: x.view(32, 16).transpose(0, 1).unsqueeze(0).expand(3, 16, 32)[:, 2:5]
                      .detach().reshape(3, 3, 32).as_strided((2, 2), (1, 1)))
    assert (tally.bytes, tally.launches, tally.flops) == (0, 0, 0)


def test_contiguous_of_a_transpose_reads_and_writes():
    with fake_tensors():
        x = _fake(8, 16)
        contiguous = count(lambda: x.contiguous())
        copied = count(lambda: x.t().contiguous())
    assert (contiguous.bytes, contiguous.launches) == (0, 0)
    assert (copied.bytes, copied.launches) == (2 * 8 * 16 * 2, 1)


def test_broadcasts_fills_and_factories():
    """An expanded input is read at its own size; a fill does not read its destination; a
    ``zeros_like`` does not read its template; a bare allocation costs nothing."""
    assert tensor_bytes(_fake(5, 1).expand(5, 7)) == 5 * 2
    with fake_tensors():
        x, row = _fake(5, 7), _fake(1, 7)
        added = count(lambda: x + row)
        filled = count(lambda: torch.empty_like(x).fill_(1.0))
        zeros = count(lambda: torch.zeros_like(x))
    assert added.bytes == 2 * (35 + 7 + 35)
    assert (filled.bytes, filled.launches) == (70, 1)
    assert (zeros.bytes, zeros.launches) == (70, 1)


def test_triton_kernels_are_counted_through_their_fake_implementations():
    """One launch each, inputs read and output written once, the FLOPs of an ideal kernel, the
    state in fp32 (the fake output has the kernel's dtype); a non-contiguous operand adds the
    launcher's copy."""
    B, H, T, D, L = 1, 2, 40, 16, 16
    N = 3
    with fake_tensors():
        k, v = _fake(B, H, T, D), _fake(B, H, T, D)
        outer = count(lambda: chunk_outer(k, v, L))
        states = chunk_outer(k, v, L)
        read = count(lambda: chunk_read(k, k, v, states, L, MASK_CAUSAL, D))
        state_only = count(lambda: chunk_read(k, k, v, states, L, MASK_NONE, D))  # k, v given, not read
        copied = count(lambda: chunk_outer(k.transpose(2, 3).transpose(2, 3).mT.mT, v.mT.contiguous().mT, L))
    assert states.dtype == torch.float32
    tokens = B * H * T * D * 2
    assert (outer.launches, outer.bytes, outer.flops) == (1, 2 * tokens + B * H * N * D * D * 4, 2 * B * H * T * D * D)
    assert read.launches == 1
    assert read.bytes == 3 * tokens + B * H * N * D * D * 4 + tokens
    assert state_only.bytes == tokens + B * H * N * D * D * 4 + tokens
    assert causal_pairs(T, L) == 2 * 16 * 17 // 2 + 8 * 9 // 2
    assert read.flops == 2 * B * H * T * D * D + 2 * B * H * causal_pairs(T, L) * (D + D)
    assert [op.name for op in copied.ops] == ["clone", "tttla::chunk_outer (launcher copy)", "tttla::chunk_outer"]


def test_chunk_outer_fake_has_the_kernels_dtype():
    """The fake implementation the model counts through gives what the kernel returns: the
    fp32 accumulator for fp16 operands (it used to say fp16, and the states' bytes with it)."""
    a = torch.randn(1, 2, 20, 16, dtype=torch.float16)
    torch.library.opcheck(chunk_outer, (a, a.clone(), 16), test_utils=("test_schema", "test_faketensor"))


def test_an_unknown_op_is_refused_by_name():
    @torch.library.custom_op("cost_model_test::double", mutates_args=())
    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @double.register_fake
    def _(x):
        return torch.empty_like(x)

    with fake_tensors(), pytest.raises(NotImplementedError, match="cost_model_test::double"):
        x = _fake(3)
        count(lambda: double(x))


def _shape(T):
    return {"batch": 1, "heads": 2, "seq_len": T, "dim": 16, "chunk": 16}


@pytest.mark.parametrize("form", ["chunk", "triton"])
def test_linear_attention_forms_on_fake_tensors(form):
    """Counted without TRITON_INTERPRET's kernels ever running: launches, bytes affine in T (so the
    bytes per head-token level off), and the backward adding to the forward."""
    variant, fn = CATALOG["linear_attention"], linear_attention.FORMS[form]
    forward = {T: count_form(variant, fn, _shape(T), BF16, "forward") for T in (64, 128, 256)}
    assert all(t.launches > 0 for t in forward.values())
    assert len({t.launches for t in forward.values()}) == 1
    assert forward[256].bytes - forward[128].bytes == 2 * (forward[128].bytes - forward[64].bytes) > 0
    both = count_form(variant, fn, _shape(64), BF16, "forward+backward")
    assert both.bytes > forward[64].bytes and both.launches > forward[64].launches
    assert both.flops >= forward[64].flops > 0
    if form == "triton":  # the fused scan: one kernel forward, one backward
        names = {op.name for op in both.ops}
        assert {"tttla::scan_fused", "tttla::scan_fused_backward"} <= names


def test_fla_row_by_hand():
    """B·H = 2, T = 8, d = 4, chunk 4 (N = 2), bf16."""
    fla = _cost_model().fla_chunk_linear_attn
    shape = {"batch": 1, "heads": 2, "seq_len": 8, "dim": 4, "chunk": 4}
    tokens = 2 * 8 * 4 * 2  # one of q, k, v, o: 128 bytes
    h_bf16, h_fp32 = 2 * 2 * 16 * 2, 2 * 2 * 16 * 4  # the chunk states: 128, 256 bytes
    one_state = 2 * 16 * 4  # h0, final state, their gradients: 128 bytes
    forward = fla(shape, "forward")
    assert forward.launches == 2
    assert forward.bytes == (2 * tokens + one_state + h_bf16 + one_state) + (3 * tokens + h_bf16 + tokens)
    pairs = 2 * 2 * (4 * 5 // 2)  # B·H × chunks × causal pairs per chunk = 40
    assert forward.flops == 2 * (2 * 2 * 8 * 16) + 2 * pairs * 8  # Kᵀ V and q h: 2·BH·T·K·V each; the pairs
    both = fla(shape, "forward+backward")
    assert both.launches == 6
    backward = ((2 * tokens + one_state + h_fp32) + (2 * tokens + one_state + h_fp32 + one_state)
                + (4 * tokens + 2 * h_fp32 + 2 * tokens) + (3 * tokens + h_fp32 + tokens))
    assert both.bytes == forward.bytes + backward
    # at the benchmark shape: about 2.6 KB per head-token forward, as the issue says
    big = _cost_model().fla_rows(_cost_model().SHAPES["linear_attention"])
    assert [r["bytes_per_head_token"] for r in big] == [2576.0, 11304.0]


def test_targets_and_rows():
    model = _cost_model()
    rows = [{"variant": v, "form": "triton", "pass": "forward", "bytes_per_head_token": 1000.0, "launches": 30}
            for v in ("linear_attention", "lact_v2")]
    met = {(t["variant"], t["field"]): t["met"] for t in model.check_targets(rows)}
    assert met == {("linear_attention", "bytes_per_head_token"): True, ("linear_attention", "launches"): False,
                   ("lact_v2", "launches"): False}
    tally = Tally([OpCost("x", 10, 20, 0, 1, BF16)])
    row = model.cost_row("v", "f", "forward", _shape(64), BF16, tally)
    assert (row["bytes"], row["bytes_per_head_token"], row["launches"]) == (30, round(30 / 128, 1), 1)


def test_bench_model_command(capsys):
    assert main(["bench", "linear_attention", "--model", "-T", "64", "-D", "16", "--chunk", "16"]) == 0
    out = capsys.readouterr().out
    assert "predicted ms" in out and "\ntriton  forward+backward" in out and "recurrent" not in out
    assert main(["bench", "linear_attention", "--model", "--dtype", "int8"]) == 2


def test_committed_results_match_the_model():
    """benchmarks/results/cost-model.json (and so the README's table) is what the model counts now:
    after a change to the generated forms, rerun ``benchmarks/cost_model.py`` and
    ``benchmarks/readme_tables.py``."""
    import json

    model = _cost_model()
    committed = json.loads((ROOT / "benchmarks" / "results" / "cost-model.json").read_text())
    now = model.measure()
    assert [(r["variant"], r["form"], r["pass"]) for r in committed["rows"]] == \
        [(r["variant"], r["form"], r["pass"]) for r in now]
    for old, new in zip(committed["rows"], now):
        assert old == {**new, "predicted_seconds": pytest.approx(new["predicted_seconds"])}, \
            f"{new['variant']} {new['form']} {new['pass']}: rerun benchmarks/cost_model.py"
    assert committed["targets"] == model.check_targets(now)


def test_triton_form_is_counted_without_the_interpreter_or_a_gpu():
    """The fake tensors sit on the meta device, which check_device lets through, and the custom
    ops answer with their fake implementations: no Triton kernel, interpreted or compiled, runs
    (delta_rule: its wrapper calls check_device itself)."""
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from derivations.catalog import CATALOG\n"
        "from tttla_kernels import delta_rule\n"
        "from verify.cost import count_form\n"
        "shape = {'batch': 1, 'heads': 2, 'seq_len': 64, 'dim': 16, 'chunk': 16}\n"
        "t = count_form(CATALOG['delta_rule'], delta_rule.FORMS['triton'], shape, torch.bfloat16, 'forward+backward')\n"
        "print(sorted({op.name for op in t.ops if op.name.startswith('tttla')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['tttla::delta_scan', 'tttla::delta_scan_backward']"
