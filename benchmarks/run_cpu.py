"""Measure the CPU target configurations and write benchmarks/results/cpu.json.

    .venv/bin/python benchmarks/run_cpu.py [--only simple_gla,gla]

Targets (printed, never asserted): lact_v2 at B·H = 4, T = 8192, d = h = 128, chunk 512, fp32 —
the faster generated form at >= 60% of the same-run matmul FLOP/s; delta_rule at T = 4096,
d = 64 — the generated forms >= 20x the oracle; simple_gla and gla at T = 8192, d = 64, H = 4 —
the parallel chunk form faster than the recurrence (forward and forward+backward), each ratio
measured in one run. ``--only`` re-measures some configurations and keeps the others' results.

Every row records the median of its repeats and their min–max (verify/bench.py), head-tokens/s
(B·H·T per call, the LaCT paper's count) and sequence tokens/s (B·T): these configurations run
B = 1 sequence of H = ``batch_heads`` heads, so B·T = T.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from verify.bench import BenchConfig, machine, run_bench  # noqa: E402
from verify.forms import generated_forms, usable_forms  # noqa: E402

CONFIGS = {
    "lact_v2": (BenchConfig(seq_len=8192, dim=128, chunk=512, dtype="float32", batch_heads=4, repeats=3),
                "best_fraction_of_matmul", 0.60),
    "delta_rule": (BenchConfig(seq_len=4096, dim=64, chunk=None, dtype="float32", batch_heads=4, repeats=3),
                   "min_speedup_vs_oracle", 20.0),
    **{name: (BenchConfig(seq_len=8192, dim=64, chunk=None, dtype="float32", batch_heads=4, repeats=1),
              "chunk_over_recurrent", 1.0) for name in ("simple_gla", "gla")},
}


def chunk_over_recurrent(result: dict) -> float:
    """The chunk form's speed over the recurrence's, the slower of forward and forward+backward."""
    seconds = {(r["name"], r["pass"]): r["seconds"] for r in result["rows"]}
    return min(seconds["recurrent", p] / seconds["chunk", p] for p in ("forward", "forward+backward"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated configurations (default all)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONFIGS)
    path = ROOT / "benchmarks" / "results" / "cpu.json"
    out = json.loads(path.read_text()) if args.only and path.exists() else {"results": {}}
    out["machine"] = machine()
    for name in names:
        config, figure, target = CONFIGS[name]
        with generated_forms(name) as (variant, forms):
            result = run_bench(variant, usable_forms(forms)[0], config, progress=True).to_json()
        if figure == "chunk_over_recurrent":
            result[figure] = chunk_over_recurrent(result)
        value = result[figure]
        result["target"] = {"figure": figure, "at_least": target, "value": value, "met": value >= target}
        out["results"][name] = result
        print(f"{name}: {figure} = {value:.3f} (target >= {target}: {'met' if value >= target else 'missed'})")
    out["results"] = {n: out["results"][n] for n in CONFIGS if n in out["results"]}  # in CONFIGS order
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
