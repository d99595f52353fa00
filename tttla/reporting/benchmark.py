"""The CPU benchmark part of a report: head-tokens/s (B·H·T per call) of the oracle and of every
generated form over a few sequence lengths T (small, so a report stays quick), each with the
spread of its timed calls; a noisy timing (:meth:`verify.bench.Timing.noise`) is flagged."""

from __future__ import annotations

from dataclasses import dataclass

from verify.bench import MIN_SECONDS, NOISY_SPREAD, BenchConfig, BenchResult, run_bench, spread_ms
from verify.progress import progress as show_progress

__all__ = ["SweepConfig", "run_sweep", "series", "md_benchmark"]


@dataclass(frozen=True)
class SweepConfig:
    seq_lens: tuple[int, ...] = (64, 128, 256, 512)
    dim: int = 16
    chunk: int = 64
    batch_heads: int = 2
    repeats: int = 3
    dtype: str = "float32"
    min_seconds: float = MIN_SECONDS


def run_sweep(variant, forms: dict, config: SweepConfig, progress: bool = False) -> list[BenchResult]:
    """One :func:`verify.bench.run_bench` per T, all in this run."""
    chunk = None if variant.schedule.fixed else config.chunk
    seq_lens = config.seq_lens
    if progress:
        seq_lens = show_progress(seq_lens, f"bench {variant.name}", unit="T", label=lambda t: f"T={t}")
    return [run_bench(variant, forms, BenchConfig(seq_len=t, dim=config.dim, chunk=chunk, dtype=config.dtype,
                                                  batch_heads=config.batch_heads, repeats=config.repeats,
                                                  min_seconds=config.min_seconds))
            for t in seq_lens]


def series(results: list[BenchResult]) -> dict[str, list[tuple[int, float, float, float]]]:
    """``"form (pass)" → [(T, head-tokens/s, slowest, fastest), …]`` for every timed row but the
    matmul: the median call's rate and those of the slowest and the fastest call (the median's
    where the spread was not recorded)."""
    out: dict[str, list[tuple[int, float, float, float]]] = {}
    for res in results:
        for r in res.rows:
            if r.name == "matmul" or r.tokens_per_s is None:
                continue
            per_call = r.tokens_per_s * r.seconds  # head-tokens of one call
            low = per_call / r.seconds_max if r.seconds_max else r.tokens_per_s
            high = per_call / r.seconds_min if r.seconds_min else r.tokens_per_s
            out.setdefault(f"{r.name} ({r.pass_})", []).append((res.config.seq_len, r.tokens_per_s, low, high))
    return out


def md_benchmark(results: list[BenchResult], image: str | None, note: str | None = None) -> str:
    c = results[0].config
    m = results[0].machine
    lines = ["## CPU benchmark", "",
             f"B·H = {c.batch_heads} (B = {c.batch}, H = {c.batch_heads // c.batch}), every named dimension {c.dim}, "
             f"chunk {c.chunk}, "
             f"{c.dtype}; each figure the median of the calls timed after a warm-up (at least {c.repeats}, and "
             f"more until they took {c.min_seconds:g} s), with their min–max; a row whose spread (max − min) / median "
             f"is over {100 * NOISY_SPREAD:.0f}% or whose median is below the timer's resolution is flagged noisy. "
             "Head-tokens/s counts every (batch·head, token), B·H·T per call, as the LaCT paper does; tokens/s "
             f"counts the caller's tokens, B·T per call. Measured with torch {m['torch']} on {m['threads']} threads "
             f"({m['processor']}). The oracle is timed forward only.", ""]
    if note:
        lines += [note, ""]
    lines += ["| T | form | pass | ms | min–max ms | calls | head-tokens/s (B·H·T) | tokens/s (B·T) | x oracle "
              "| note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res.rows:
            if r.name == "matmul" or r.seconds is None:
                continue
            speed = "-" if r.speedup_vs_oracle is None else f"{r.speedup_vs_oracle:.1f}"
            lines.append(f"| {res.config.seq_len} | {r.name} | {r.pass_} | {r.seconds * 1e3:.2f} | "
                         f"{spread_ms(r.seconds_min, r.seconds_max)} | {r.repeats or '—'} | {r.tokens_per_s:,.0f} | "
                         f"{r.sequence_tokens_per_s:,.0f} | {speed} | {f'noisy: {r.noise}' if r.noisy else ''} |")
    lines.append("")
    timed = [r for res in results for r in res.rows if r.name != "matmul" and r.seconds is not None]
    noisy = sum(r.noisy for r in timed)
    if noisy:
        lines += [f"**{noisy} of {len(timed)} timings are noisy**: the machine was busy, or the call too short for "
                  "the timer; rerun before reading much into them.", ""]
    if image:
        lines += ["Head-tokens/s against sequence length (log-log); the bars span the slowest to the fastest "
                  "timed call:", "", f"![head-tokens per second]({image})", ""]
    return "\n".join(lines)
