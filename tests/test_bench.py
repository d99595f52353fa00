"""The CPU benchmark: a smoke run of the command (no timed assertions), what forward+backward
times, the repeats' spread, the two token counts and the FLOP model."""

import json
import re
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from derivations.catalog import CATALOG
from tttla.cli import main
from tttla.reporting.gpu import md_gpu
from tttla_kernels import lact_v6
from verify.bench import (
    NOISY_SPREAD,
    BenchConfig,
    Row,
    Timing,
    forward_backward,
    run_bench,
    spread_ms,
    time_cuda,
    time_repeats,
)
from verify.flops import Product, form_flops, largest_product, model_flops
from verify.forms import call_form, cast_case
from verify.inputs import default_sizes, make_case


def test_bench_smoke_table(capsys):
    assert main(["bench", "lact_v6", "--seq-len", "64", "--dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("form"))
    assert header.split() == ["form", "pass", "ms", "min-max", "ms", "head-tok/s", "tok/s", "GFLOP", "GFLOP/s", "%",
                              "matmul", "x", "oracle", "calls", "note"]
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


def test_noise_flags_a_wide_spread_and_a_time_below_the_timer():
    steady = Timing(1.00, 1.05, 1.10)
    assert steady.spread == pytest.approx(0.1 / 1.05) and steady.noise() is None
    noisy = Timing(1.0, 1.0, 1.0 + 2 * NOISY_SPREAD)
    assert noisy.noise() == "spread 40% > 20%"
    tiny = Timing(1e-9, 1e-9, 1e-9)
    assert tiny.noise(resolution=1e-6) == "median 1 ns < timer resolution 1e+03 ns"
    both = Timing(1e-9, 2e-9, 4e-9).noise(resolution=1e-6)
    assert "resolution" in both and "spread 150%" in both


def test_one_slow_call_among_many_does_not_flag_a_timing():
    """With many repeats the flag reads the middle half: a context switch moves max, not the quartiles."""
    calls = [1.0 + 0.01 * (i % 5) for i in range(1000)] + [3.0]
    timing = Timing.of(calls)
    assert timing.spread > 1 and timing.middle_spread < 0.05 and timing.noise() is None
    wide = Timing.of([1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 1.2, 1.8])
    assert wide.noise().startswith("middle half")


def test_repeats_adapt_to_the_minimum_total_time():
    def short():
        time.sleep(0.001)

    t = time_repeats(short, repeats=3, min_seconds=0.05)
    assert t.repeats > 3 and t.repeats * t.max >= 0.05  # kept timing until the calls took 0.05 s
    assert time_repeats(short, repeats=3, min_seconds=10.0, max_repeats=7).repeats == 7  # bounded
    assert time_repeats(lambda: time.sleep(0.02), repeats=3, min_seconds=0.01).repeats == 3  # slow: repeats only


def test_largest_product_and_the_matmul_reference():
    a, b, c = torch.randn(3, 5, 7), torch.randn(3, 7, 2), torch.randn(40, 9)
    # c.T @ c and the addmm's c @ [9, 9] both take 2·9·40·9 FLOPs: the wider inner dimension (40) wins
    assert largest_product(lambda: (a @ b, c.T @ c, torch.addmm(c, c, c.T @ c))) == Product(1, 9, 40, 9)
    assert largest_product(lambda: (a @ b, c @ c.T)) == Product(1, 40, 9, 40)
    assert largest_product(lambda: a + 1) is None
    # lact_v6's chunk form contracts over the chunk (16) in its largest product, not over D = 4
    variant = CATALOG["lact_v6"]
    config = BenchConfig(seq_len=64, dim=4, chunk=16, batch_heads=2, repeats=1, min_seconds=0.0)
    result = run_bench(variant, {"chunk": lact_v6.FORMS["chunk"]}, config)
    assert result.matmul_inner_dim == 16
    assert result.row("matmul", "forward").flops == 2 * 2 * 64 * 16 * 4
    assert result.to_json()["matmul_inner_dim"] == 16


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


def test_report_table_and_plot_show_the_spread_and_the_noise():
    from tttla.reporting.benchmark import md_benchmark, series
    from tttla.reporting.plots import throughput_png
    from verify.bench import BenchResult, timed_row

    config = BenchConfig(seq_len=64, batch_heads=2)
    result = BenchResult("v", config, machine={"torch": "x", "threads": 1, "processor": "cpu"})
    result.rows = [timed_row("chunk", "forward", Timing(0.001, 0.001, 0.0011, repeats=200), config),
                   timed_row("recurrent", "forward", Timing(0.001, 0.002, 0.004, repeats=3), config)]
    md = md_benchmark([result], "plot.png")
    chunk, recurrent = (next(line for line in md.splitlines() if f"| {n} |" in line) for n in ("chunk", "recurrent"))
    assert chunk.endswith("| 200 | 128,000 | 64,000 | - |  |")
    assert recurrent.endswith("| noisy: spread 150% > 20% |") and "| 1.00–4.00 | 3 |" in recurrent
    assert "**1 of 2 timings are noisy**" in md
    # the plot's points: median rate, and the rates of the slowest and the fastest call
    assert series([result])["recurrent (forward)"] == [(64, 64_000.0, 32_000.0, 128_000.0)]
    assert throughput_png(series([result])).startswith(b"\x89PNG")
    old = BenchResult("v", config, rows=[Row("chunk", "forward", 0.001, tokens_per_s=128_000.0)])
    assert series([old])["chunk (forward)"] == [(64, 128_000.0, 128_000.0, 128_000.0)]  # no spread recorded


def test_catalog_counts_the_noisy_timings(tmp_path, capsys, monkeypatch):
    import verify.bench

    monkeypatch.setattr(verify.bench, "NOISY_SPREAD", -1.0)  # every timing's spread is over it
    assert main(["catalog", "--only", "lact_v6", "--cases", "1", "--seq-lens", "16", "--dim", "4", "--chunk", "8",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^(\d+) of \1 CPU timings noisy, flagged in the reports", out, re.MULTILINE)
    assert re.search(r"noisy: (spread|middle half)", (tmp_path / "reports" / "lact_v6" / "report.md").read_text())
