"""The CPU benchmark: a smoke run of the command (no timed assertions) and the FLOP model."""

import json

from derivations.catalog import CATALOG
from tttla.cli import main
from tttla_kernels import lact_v6
from verify.flops import form_flops, model_flops
from verify.forms import call_form
from verify.inputs import default_sizes, make_case


def test_bench_smoke_table(capsys):
    assert main(["bench", "lact_v6", "--seq-len", "64", "--dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("form"))
    assert header.split() == ["form", "pass", "ms", "tokens/s", "GFLOP", "GFLOP/s", "%", "matmul", "x", "oracle"]
    for name in ("oracle", "recurrent", "chunk", "matmul"):
        assert f"\n{name} " in out
    assert "forward+backward" in out and "n/a" in out and "targets" in out


def test_bench_json_and_mistakes(capsys):
    assert main(["bench", "delta_rule", "--seq-len", "16", "--dim", "4", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"variant", "config", "rows", "matmul_flops_per_s", "machine"} <= set(result)
    assert {"platform", "torch", "threads"} <= set(result["machine"])
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
