"""Measure the two CPU target configurations and write benchmarks/results/cpu.json.

    .venv/bin/python benchmarks/run_cpu.py

Targets (printed by `tttla bench`, never asserted): lact_v2 at B·H = 4, T = 8192,
d = h = 128, chunk 512, fp32 — the faster generated form at >= 60% of the same-run matmul
FLOP/s; delta_rule at T = 4096, d = 64 — the generated forms >= 20x the oracle.
"""

from __future__ import annotations

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
}


def main() -> None:
    out = {"machine": machine(), "results": {}}
    for name, (config, figure, target) in CONFIGS.items():
        with generated_forms(name) as (variant, forms):
            result = run_bench(variant, usable_forms(forms)[0], config, progress=True).to_json()
        value = result[figure]
        result["target"] = {"figure": figure, "at_least": target, "value": value, "met": value >= target}
        out["results"][name] = result
        print(f"{name}: {figure} = {value:.3f} (target >= {target}: {'met' if value >= target else 'missed'})")
    path = ROOT / "benchmarks" / "results" / "cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
