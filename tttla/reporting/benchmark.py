"""The CPU benchmark part of a report: head-tokens/s (B·H·T per call) of the oracle and of every
generated form over a few sequence lengths T (small, so a report stays quick)."""

from __future__ import annotations

from dataclasses import dataclass

from verify.bench import BenchConfig, BenchResult, run_bench, spread_ms

__all__ = ["SweepConfig", "run_sweep", "series", "md_benchmark"]


@dataclass(frozen=True)
class SweepConfig:
    seq_lens: tuple[int, ...] = (64, 128, 256, 512)
    dim: int = 16
    chunk: int = 64
    batch_heads: int = 2
    repeats: int = 3
    dtype: str = "float32"


def run_sweep(variant, forms: dict, config: SweepConfig, progress: bool = False) -> list[BenchResult]:
    """One :func:`verify.bench.run_bench` per T, all in this run."""
    chunk = None if variant.schedule.fixed else config.chunk
    seq_lens = config.seq_lens
    if progress:
        from tqdm import tqdm

        seq_lens = tqdm(seq_lens, desc=f"bench {variant.name}", unit="T", leave=False)
    return [run_bench(variant, forms, BenchConfig(seq_len=t, dim=config.dim, chunk=chunk, dtype=config.dtype,
                                                  batch_heads=config.batch_heads, repeats=config.repeats))
            for t in seq_lens]


def series(results: list[BenchResult]) -> dict[str, list[tuple[int, float]]]:
    """``"form (pass)" → [(T, head-tokens/s), …]`` for every timed row but the matmul."""
    out: dict[str, list[tuple[int, float]]] = {}
    for res in results:
        for r in res.rows:
            if r.name == "matmul" or r.tokens_per_s is None:
                continue
            out.setdefault(f"{r.name} ({r.pass_})", []).append((res.config.seq_len, r.tokens_per_s))
    return out


def md_benchmark(results: list[BenchResult], image: str | None, note: str | None = None) -> str:
    c = results[0].config
    m = results[0].machine
    lines = ["## CPU benchmark", "",
             f"B·H = {c.batch_heads} (B = {c.batch}, H = {c.batch_heads // c.batch}), every named dimension {c.dim}, "
             f"chunk {c.chunk}, "
             f"{c.dtype}; each figure the median of {c.repeats} calls after a warm-up, with their min–max. "
             "Head-tokens/s counts every (batch·head, token), B·H·T per call, as the LaCT paper does; tokens/s "
             f"counts the caller's tokens, B·T per call. Measured with torch {m['torch']} on {m['threads']} threads "
             f"({m['processor']}). The oracle is timed forward only.", ""]
    if note:
        lines += [note, ""]
    lines += ["| T | form | pass | ms | min–max ms | head-tokens/s (B·H·T) | tokens/s (B·T) | x oracle |",
              "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res.rows:
            if r.name == "matmul" or r.seconds is None:
                continue
            speed = "-" if r.speedup_vs_oracle is None else f"{r.speedup_vs_oracle:.1f}"
            lines.append(f"| {res.config.seq_len} | {r.name} | {r.pass_} | {r.seconds * 1e3:.2f} | "
                         f"{spread_ms(r.seconds_min, r.seconds_max)} | {r.tokens_per_s:,.0f} | "
                         f"{r.sequence_tokens_per_s:,.0f} | {speed} |")
    lines.append("")
    if image:
        lines += ["Head-tokens/s against sequence length (log-log):", "", f"![head-tokens per second]({image})", ""]
    return "\n".join(lines)
