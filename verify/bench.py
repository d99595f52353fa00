"""CPU benchmark: the oracle and every generated form of a variant, timed in one run.

Each measurement is ``repeats`` calls after one warm-up call; a row records their median
(``seconds``) and their spread (``seconds_min``, ``seconds_max``). Throughput is counted two ways:
``tokens_per_s`` counts head-tokens, every (batch, head, token) once — B·H·T per call, as the
LaCT paper's Table 2 does (its b = B·H) — and ``sequence_tokens_per_s`` counts the tokens of the
caller's sequences, B·T per call. The CPU benchmark runs ``batch`` = B = 1 by default, H =
``batch_heads``, so there B·T = T. Forward+backward is one forward and ``torch.autograd.grad`` of
the output and every final state to every input, with random output gradients made once outside
the timed region (no loss, no ``.grad`` accumulation). The generated forms' achieved FLOP/s
(matmul FLOPs of :mod:`verify.flops`) is set against a ``torch.matmul`` of
``[BH, T, D] × [BH, D, D]`` in the same dtype, timed in the same run. The oracle is timed forward
only (its inputs do not require grad, so it builds no double-backward graph); its
forward+backward row is n/a.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from derivations.variant import Variant
from verify.flops import form_flops, model_flops
from verify.forms import call_form, cast_case
from verify.inputs import default_sizes, make_case
from verify.oracle import run_direct

__all__ = ["BenchConfig", "Row", "BenchResult", "Timing", "time_repeats", "time_cuda", "forward_backward",
           "timed_row", "spread_ms", "run_bench", "machine"]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape: ``batch_heads`` = B·H sequences of ``seq_len`` tokens, ``batch`` = B of
    them the caller's own (H = ``batch_heads / batch`` heads each), every named dim = ``dim``."""

    seq_len: int = 2048
    dim: int = 64
    chunk: int | None = 64
    dtype: str = "float32"
    batch_heads: int = 4
    repeats: int = 3
    batch: int = 1

    def __post_init__(self):
        if self.batch < 1 or self.batch_heads % self.batch:
            raise ValueError(f"batch must be >= 1 and divide batch_heads: batch = {self.batch}, "
                             f"batch_heads = {self.batch_heads}")


@dataclass(frozen=True)
class Timing:
    """Seconds of the timed repeats of one call: the fastest, the median and the slowest."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        if not seconds:
            raise ValueError("Timing.of needs at least one time, got none")
        return cls(min(seconds), statistics.median(seconds), max(seconds))


@dataclass
class Row:
    """One timed line. ``seconds`` is the median of the repeats, ``seconds_min`` / ``seconds_max``
    their spread (None in results written before they were recorded); ``tokens_per_s`` counts
    head-tokens (B·H·T per call), ``sequence_tokens_per_s`` the caller's tokens (B·T per call).
    FLOP fields are None where not modelled."""

    name: str
    pass_: str
    seconds: float | None
    tokens_per_s: float | None = None
    flops: float | None = None
    flops_per_s: float | None = None
    fraction_of_matmul: float | None = None
    speedup_vs_oracle: float | None = None
    seconds_min: float | None = None
    seconds_max: float | None = None
    sequence_tokens_per_s: float | None = None


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


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing.of(times)


def time_cuda(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> Timing:
    """Seconds of ``fn()`` on a GPU: every repeat of ``triton.testing.do_bench`` (CUDA events, L2
    flushed before each call), not only its summary."""
    import triton.testing

    return Timing.of([ms / 1e3 for ms in triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms,
                                                                 return_mode="all")])


def forward_backward(variant: Variant, fn: Callable, case, compute_chunk: int | None = None,
                     seed: int = 1) -> Callable[[], None]:
    """One forward of ``fn`` on ``case`` (whose inputs require grad) and the gradients of its
    output and every final state to every input, as a call to time.

    The outputs' gradients are random, drawn once here (one untimed call gives their shapes) and
    passed as ``grad_outputs``: the timed call adds no loss and no reduction of its own, and it
    accumulates no ``.grad``."""
    leaves = list(case.leaves().values())
    o, final = call_form(variant, fn, case, compute_chunk)
    g = torch.Generator(device=o.device).manual_seed(seed)
    grads = [torch.randn(t.shape, generator=g, device=t.device).to(t.dtype) for t in (o, *final.values())]
    del o, final

    def run():
        o, final = call_form(variant, fn, case, compute_chunk)
        pairs = [(t, d) for t, d in zip((o, *final.values()), grads, strict=True) if t.requires_grad]
        torch.autograd.grad([t for t, _ in pairs], leaves, grad_outputs=[d for _, d in pairs], allow_unused=True)

    return run


def timed_row(name: str, pass_: str, timing: Timing, config: BenchConfig, flops: float | None = None,
              peak_flops_per_s: float | None = None, oracle_seconds: float | None = None) -> Row:
    """The row of one timed call at ``config``'s shape: median and spread, head-tokens/s (B·H·T)
    and sequence tokens/s (B·T), and, where ``flops`` is modelled, FLOP/s and its fraction of
    ``peak_flops_per_s``."""
    s = timing.median
    rate = None if flops is None else flops / s
    return Row(name, pass_, s, tokens_per_s=config.batch_heads * config.seq_len / s, flops=flops, flops_per_s=rate,
               fraction_of_matmul=None if rate is None or not peak_flops_per_s else rate / peak_flops_per_s,
               speedup_vs_oracle=None if oracle_seconds is None else oracle_seconds / s,
               seconds_min=timing.min, seconds_max=timing.max, sequence_tokens_per_s=config.batch * config.seq_len / s)


def spread_ms(seconds_min: float | None, seconds_max: float | None, fmt: str = ".2f", missing: str = "—") -> str:
    """The timed repeats' fastest–slowest in ms, or ``missing`` where they were not recorded."""
    if seconds_min is None or seconds_max is None:
        return missing
    return f"{format(1e3 * seconds_min, fmt)}–{format(1e3 * seconds_max, fmt)}"


def run_bench(variant: Variant, forms: dict, config: BenchConfig, progress: bool = False) -> BenchResult:
    """Time the oracle (forward), every form (forward and forward+backward) and the matmul."""
    dtype = getattr(torch, config.dtype)
    chunk = variant.schedule.chunk_size if variant.schedule.fixed else config.chunk
    sizes = default_sizes(variant, config.dim)
    case = make_case(variant, batch=config.batch, seq_len=config.seq_len, heads=config.batch_heads // config.batch,
                     sizes=sizes, chunk_size=chunk, dtype=dtype, generator=torch.Generator().manual_seed(0))
    grad_case = cast_case(case, dtype, requires_grad=True)
    per_token = model_flops(variant, sizes)
    result = BenchResult(variant.name, config, machine=machine())

    a = torch.randn(config.batch_heads, config.seq_len, config.dim, dtype=dtype)
    b = torch.randn(config.batch_heads, config.dim, config.dim, dtype=dtype)
    jobs = [("matmul", "forward", lambda: torch.matmul(a, b))]
    jobs.append(("oracle", "forward", lambda: run_direct(variant, **case.kwargs())))
    for name, fn in forms.items():
        jobs.append((name, "forward", lambda fn=fn: call_form(variant, fn, case)))
        jobs.append((name, "forward+backward", forward_backward(variant, fn, grad_case)))
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"bench {variant.name}", unit="timing", leave=False)
    timings = {}
    for name, pass_, fn in jobs:
        timings[name, pass_] = time_repeats(fn, config.repeats)

    matmul = timings["matmul", "forward"]
    mm_flops = 2.0 * config.batch_heads * config.seq_len * config.dim**2
    result.matmul_flops_per_s = mm_flops / matmul.median
    oracle_s = timings["oracle", "forward"].median
    result.rows.append(timed_row("oracle", "forward", timings["oracle", "forward"], config, oracle_seconds=oracle_s))
    result.rows.append(Row("oracle", "forward+backward", None))
    for name in forms:
        for pass_ in ("forward", "forward+backward"):
            flops = form_flops(variant, name, batch_heads=config.batch_heads, seq_len=config.seq_len, sizes=sizes,
                               chunk_size=chunk, backward=pass_ != "forward", per_token=per_token)
            result.rows.append(timed_row(name, pass_, timings[name, pass_], config, flops, result.matmul_flops_per_s,
                                         oracle_s if pass_ == "forward" else None))
    result.rows.append(Row("matmul", "forward", matmul.median, flops=mm_flops, flops_per_s=result.matmul_flops_per_s,
                           fraction_of_matmul=1.0, seconds_min=matmul.min, seconds_max=matmul.max))
    return result
