"""The CPU benchmark: a smoke run of the command (no timed assertions), what forward+backward
times, the repeats' spread, the two token counts and the FLOP model."""

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from derivations.catalog import CATALOG
from tttla.cli import main
from tttla.reporting.gpu import md_gpu
from tttla_kernels import lact_v6
from verify.bench import BenchConfig, Timing, forward_backward, run_bench, spread_ms, time_cuda, time_repeats
from verify.flops import form_flops, model_flops
from verify.forms import call_form, cast_case
from verify.inputs import default_sizes, make_case


def test_bench_smoke_table(capsys):
    assert main(["bench", "lact_v6", "--seq-len", "64", "--dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("form"))
    assert header.split() == ["form", "pass", "ms", "min-max", "ms", "head-tok/s", "tok/s", "GFLOP", "GFLOP/s", "%",
                              "matmul", "x", "oracle"]
    chunk_forward = next(line for line in out.splitlines() if line.startswith("chunk ") and " forward " in line)
    assert "–" in chunk_forward.split()[3]  # the spread of the timed repeats
    for name in ("oracle", "recurrent", "chunk", "matmul"):
        assert f"\n{name} " in out
    assert "forward+backward" in out and "n/a" in out and "targets" in out


def test_bench_json_and_mistakes(capsys):
    assert main(["bench", "delta_rule", "--seq-len", "16", "--dim", "4", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"variant", "config", "rows", "matmul_flops_per_s", "machine"} <= set(result)
    assert {"platform", "torch", "threads"} <= set(result["machine"])
    assert result["config"]["batch"] == 1
    for row in result["rows"]:
        assert {"seconds_min", "seconds_max", "sequence_tokens_per_s"} <= set(row)
        if row["seconds"] is not None:
            assert row["seconds_min"] <= row["seconds"] <= row["seconds_max"]
        if row["tokens_per_s"] is not None:  # B = 1: the B·H = 4 sequences are heads of one
            assert row["sequence_tokens_per_s"] == pytest.approx(row["tokens_per_s"] / 4)
    assert main(["bench", "delta_rule", "--chunk", "4"]) == 2
    assert main(["bench", "lact_v6", "--dtype", "bfloat16"]) == 2
    assert main(["bench", "lact_v6", "--repeats", "0"]) == 2


def test_flop_model_matches_counted_matmuls():
    """lact_v6 (linear attention): the model counts what the chunk form multiplies."""
    from torch.utils.flop_counter import FlopCounterMode

    variant = CATALOG["lact_v6"]
    sizes = default_sizes(variant, 16)
    assert model_flops(variant, sizes).read == 2 * 16 * 16
    case = make_case(variant, batch=1, seq_len=64, heads=2, sizes=sizes, chunk_size=16)
    counter = FlopCounterMode(display=False)
    with counter:
        call_form(variant, lact_v6.FORMS["chunk"], case)
    modelled = form_flops(variant, "chunk", batch_heads=2, seq_len=64, sizes=sizes, chunk_size=16)
    assert modelled == counter.get_total_flops()


def test_timing_is_min_median_max():
    assert Timing.of([0.3, 0.1, 0.2, 0.5]) == Timing(0.1, 0.25, 0.5)
    with pytest.raises(ValueError, match="at least one time"):
        Timing.of([])
    t = time_repeats(lambda: sum(range(10_000)), repeats=5)
    assert 0 < t.min <= t.median <= t.max
    assert spread_ms(0.001, 0.0025) == "1.00–2.50" and spread_ms(None, None) == "—"
    assert spread_ms(None, 0.1, missing="n/a") == "n/a"


def test_time_cuda_keeps_every_repeat(monkeypatch):
    """On a GPU the spread comes from do_bench's list of times (return_mode="all"), in ms."""
    import triton.testing

    asked = {}

    def do_bench(fn, warmup, rep, return_mode):
        asked.update(return_mode=return_mode)
        fn()
        return [2.0, 1.0, 4.0]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    calls = []
    assert time_cuda(lambda: calls.append(1)) == Timing(0.001, 0.002, 0.004)
    assert asked == {"return_mode": "all"} and calls == [1]


class _Spy(torch.autograd.Function):
    """The identity, recording the gradient that reaches it in the backward."""

    seen: list = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _Spy.seen.append(grad.detach().clone())
        return grad


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_forward_backward_passes_random_grad_outputs():
    """The timed call feeds the output and the final state the gradients drawn once beforehand
    (random, not the ones a summed loss would send back), draws nothing itself and leaves no .grad."""
    variant = CATALOG["lact_v6"]
    case = cast_case(make_case(variant, batch=1, seq_len=32, heads=2, sizes=default_sizes(variant, 8), chunk_size=16),
                     torch.float32, requires_grad=True)

    def spied(q, k, v, **kwargs):
        o, final = lact_v6.FORMS["chunk"](q, k, v, **kwargs)
        return _Spy.apply(o), _Spy.apply(final)

    _Spy.seen.clear()
    run = forward_backward(variant, spied, case)
    assert _Spy.seen == []  # drawing the gradients ran no backward
    ops = _Ops()
    with ops:
        run()
    run()
    assert not [n for n in ops.names if "randn" in n or "normal" in n or "ones" in n], "the timed call draws a gradient"
    o_shape = case.v.shape
    first = {tuple(g.shape): g for g in _Spy.seen[:2]}
    second = {tuple(g.shape): g for g in _Spy.seen[2:]}
    assert len(_Spy.seen) == 4 and tuple(o_shape) in first and len(first) == 2
    for shape, grad in first.items():
        assert torch.equal(grad, second[shape])  # the same gradients every call
        assert grad.std() > 0.5 and not torch.all(grad == grad.flatten()[0])  # random, not a loss's constant
    assert all(t.grad is None for t in case.leaves().values())


def test_sequence_tokens_count_the_callers_sequences():
    """B·H·T head-tokens against B·T sequence tokens, at B = 2 sequences of H = 2 heads."""
    config = BenchConfig(seq_len=16, dim=4, chunk=None, batch_heads=4, batch=2, repeats=1)
    result = run_bench(CATALOG["delta_rule"], {}, config)
    oracle = result.row("oracle", "forward")
    assert oracle.tokens_per_s == pytest.approx(4 * 16 / oracle.seconds)
    assert oracle.sequence_tokens_per_s == pytest.approx(2 * 16 / oracle.seconds)
    with pytest.raises(ValueError, match="divide batch_heads"):
        BenchConfig(batch_heads=4, batch=3)


def test_gpu_report_shows_the_spread_where_recorded():
    rows = [{"name": "triton", "pass": "forward", "seconds": 0.002, "seconds_min": 0.001, "seconds_max": 0.003,
             "tokens_per_s": 1e6, "sequence_tokens_per_s": 2.5e5},
            {"name": "chunk", "pass": "forward", "seconds": 0.004, "tokens_per_s": 5e5}]
    md = md_gpu("lact_v6", [("dev", {}, {"config": {}, "rows": rows})])
    triton, chunk = (next(line for line in md.splitlines() if line.startswith(f"| {n} ")) for n in ("triton", "chunk"))
    assert "| 1.000–3.000 |" in triton and "| 250,000 |" in triton
    assert "| — |" in chunk and "head-tokens/s (B·H·T)" in md
