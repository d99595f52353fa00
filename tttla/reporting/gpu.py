"""GPU results already measured: ``benchmarks/results/<device>.json`` files (any name but
``cpu*.json``), each ``{"machine": {...}, "results": {variant: BenchResult.to_json()}}``."""

from __future__ import annotations

import json
from pathlib import Path

from verify.bench import spread_ms

__all__ = ["RESULTS_DIR", "gpu_results", "md_gpu"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def gpu_results(variant: str, directory: Path | str | None = None) -> list[tuple[str, dict, dict]]:
    """``(device, machine, result)`` for every GPU results file that has ``variant``."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if path.stem.lower().startswith("cpu"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        result = data.get("results", {}).get(variant) if isinstance(data, dict) else None
        if result:
            machine = data.get("machine", {})
            out.append((machine.get("device") or path.stem, machine, result))
    return out


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def md_gpu(variant: str, found: list[tuple[str, dict, dict]], directory: Path | str | None = None) -> str:
    where = Path(directory) if directory is not None else RESULTS_DIR
    lines = ["## GPU results", ""]
    if not found:
        return "\n".join(lines + [f"No GPU results for `{variant}` in `{where.name}/` (a GPU run writes "
                                  "`benchmarks/results/<device>.json`).", ""])
    for device, machine, result in found:
        c = result.get("config", {})
        lines += [f"### {device}", "",
                  f"T = {c.get('seq_len')}, dims = {c.get('dim')}, chunk = {c.get('chunk')}, {c.get('dtype')}, "
                  f"B·H = {c.get('batch_heads')}; torch {machine.get('torch', '?')}. Head-tokens/s counts B·H·T per "
                  "call, tokens/s B·T; min–max is the spread of the timed repeats (— where the run did not record "
                  "it).", "",
                  "| form | pass | ms | min–max ms | head-tokens/s (B·H·T) | tokens/s (B·T) | GFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in result.get("rows", []):
            if r.get("seconds") is None:
                continue
            spread = spread_ms(r.get("seconds_min"), r.get("seconds_max"), ".3f")
            lines.append(f"| {r['name']} | {r.get('pass', r.get('pass_'))} | {r['seconds'] * 1e3:.3f} | {spread} | "
                         f"{_num(r.get('tokens_per_s'), ',.0f')} | {_num(r.get('sequence_tokens_per_s'), ',.0f')} | "
                         f"{_num(r.get('flops_per_s') and r['flops_per_s'] / 1e9, '.1f')} |")
        lines.append("")
    return "\n".join(lines)
