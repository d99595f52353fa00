"""CPU benchmark: the oracle and every generated form of a variant, timed in one run.

Each measurement is the median of ``repeats`` calls after one warm-up call. Throughput is in
tokens/s, counting every (batch, head, token) once: with B·H = ``batch_heads`` sequences of T
tokens, a call processes B·H·T tokens. The generated forms' achieved FLOP/s (matmul FLOPs of
:mod:`verify.flops`) is set against a ``torch.matmul`` of ``[BH, T, D] × [BH, D, D]`` in the
same dtype, timed in the same run. The oracle is timed forward only (its inputs do not
require grad, so it builds no double-backward graph); its forward+backward row is n/a.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from derivations.variant import Variant
from verify.flops import form_flops, model_flops
from verify.forms import call_form, cast_case
from verify.inputs import default_sizes, make_case
from verify.oracle import run_direct

__all__ = ["BenchConfig", "Row", "BenchResult", "median_time", "run_bench", "machine"]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape: B·H sequences of ``seq_len`` tokens, every named dim = ``dim``."""

    seq_len: int = 2048
    dim: int = 64
    chunk: int | None = 64
    dtype: str = "float32"
    batch_heads: int = 4
    repeats: int = 3


@dataclass
class Row:
    """One timed line: ``seconds`` is the median; FLOP fields are None where not modelled."""

    name: str
    pass_: str
    seconds: float | None
    tokens_per_s: float | None = None
    flops: float | None = None
    flops_per_s: float | None = None
    fraction_of_matmul: float | None = None
    speedup_vs_oracle: float | None = None


@dataclass
class BenchResult:
    variant: str
    config: BenchConfig
    rows: list = field(default_factory=list)
    matmul_flops_per_s: float = 0.0
    machine: dict = field(default_factory=dict)

    def row(self, name: str, pass_: str) -> Row | None:
        return next((r for r in self.rows if r.name == name and r.pass_ == pass_), None)

    def form_rows(self, pass_: str = "forward") -> list[Row]:
        """The rows of the generated forms (not the oracle or the matmul) for one pass."""
        return [r for r in self.rows if r.pass_ == pass_ and r.name not in ("oracle", "matmul")]

    def best_fraction_of_matmul(self) -> float:
        """The highest fraction of matmul FLOP/s reached by a generated form's forward."""
        return max((r.fraction_of_matmul or 0.0 for r in self.form_rows()), default=0.0)

    def min_speedup_vs_oracle(self) -> float | None:
        """The smallest forward speedup of a generated form over the oracle."""
        values = [r.speedup_vs_oracle for r in self.form_rows() if r.speedup_vs_oracle]
        return min(values) if values else None

    def to_json(self) -> dict:
        return {
            "variant": self.variant,
            "config": asdict(self.config),
            "matmul_flops_per_s": self.matmul_flops_per_s,
            "rows": [{**asdict(r), "pass": r.pass_} for r in self.rows],
            "best_fraction_of_matmul": self.best_fraction_of_matmul(),
            "min_speedup_vs_oracle": self.min_speedup_vs_oracle(),
            "machine": self.machine,
        }


def machine() -> dict:
    """Where the figures were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward_backward(variant, fn, case):
    def run():
        o, final = call_form(variant, fn, case)
        loss = o.float().sum() + sum(t.float().sum() for t in final.values())
        loss.backward()
        for t in case.leaves().values():
            t.grad = None

    return run


def run_bench(variant: Variant, forms: dict, config: BenchConfig, progress: bool = False) -> BenchResult:
    """Time the oracle (forward), every form (forward and forward+backward) and the matmul."""
    dtype = getattr(torch, config.dtype)
    chunk = variant.schedule.chunk_size if variant.schedule.fixed else config.chunk
    sizes = default_sizes(variant, config.dim)
    case = make_case(variant, batch=1, seq_len=config.seq_len, heads=config.batch_heads, sizes=sizes,
                     chunk_size=chunk, dtype=dtype, generator=torch.Generator().manual_seed(0))
    grad_case = cast_case(case, dtype, requires_grad=True)
    tokens = config.batch_heads * config.seq_len
    per_token = model_flops(variant, sizes)
    result = BenchResult(variant.name, config, machine=machine())

    a = torch.randn(config.batch_heads, config.seq_len, config.dim, dtype=dtype)
    b = torch.randn(config.batch_heads, config.dim, config.dim, dtype=dtype)
    jobs = [("matmul", "forward", lambda: torch.matmul(a, b))]
    jobs.append(("oracle", "forward", lambda: run_direct(variant, **case.kwargs())))
    for name, fn in forms.items():
        jobs.append((name, "forward", lambda fn=fn: call_form(variant, fn, case)))
        jobs.append((name, "forward+backward", _forward_backward(variant, fn, grad_case)))
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"bench {variant.name}", unit="timing", leave=False)
    timings = {}
    for name, pass_, fn in jobs:
        timings[name, pass_] = median_time(fn, config.repeats)

    mm_flops = 2.0 * config.batch_heads * config.seq_len * config.dim**2
    result.matmul_flops_per_s = mm_flops / timings["matmul", "forward"]
    oracle_s = timings["oracle", "forward"]
    result.rows.append(Row("oracle", "forward", oracle_s, tokens / oracle_s, speedup_vs_oracle=1.0))
    result.rows.append(Row("oracle", "forward+backward", None))
    for name in forms:
        for pass_ in ("forward", "forward+backward"):
            s = timings[name, pass_]
            flops = form_flops(variant, name, batch_heads=config.batch_heads, seq_len=config.seq_len, sizes=sizes,
                               chunk_size=chunk, backward=pass_ != "forward", per_token=per_token)
            rate = flops / s
            result.rows.append(Row(name, pass_, s, tokens / s, flops, rate, rate / result.matmul_flops_per_s,
                                   oracle_s / s if pass_ == "forward" else None))
    result.rows.append(Row("matmul", "forward", timings["matmul", "forward"], None, mm_flops,
                           result.matmul_flops_per_s, 1.0))
    return result
