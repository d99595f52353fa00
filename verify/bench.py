"""CPU benchmark: the oracle and every generated form of a variant, timed in one run.

Each measurement times calls after one warm-up call until it has at least ``repeats`` of them
and at least ``min_seconds`` of timed calls (at most ``MAX_REPEATS``), so a 0.1 ms call is timed
thousands of times, not three; a row records their median (``seconds``), their spread
(``seconds_min``, ``seconds_max``) and how many (``repeats``), and ``noise`` says why it is not
to be trusted, if it is not: a spread (max − min) / median over ``NOISY_SPREAD`` (a busy machine),
or a median below the resolution of ``time.perf_counter`` (JSON: ``noisy`` true and ``noise``).

Throughput is counted two ways: ``tokens_per_s`` counts head-tokens, every (batch, head, token)
once — B·H·T per call, as the LaCT paper's Table 2 does (its b = B·H) — and
``sequence_tokens_per_s`` counts the tokens of the caller's sequences, B·T per call. The CPU
benchmark runs ``batch`` = B = 1 by default, H = ``batch_heads``, so there B·T = T.
Forward+backward is one forward and ``torch.autograd.grad`` of the output and every final state
to every input, with random output gradients made once outside the timed region (no loss, no
``.grad`` accumulation). The oracle is timed forward only (its inputs do not require grad, so it
builds no double-backward graph); its forward+backward row is n/a.

The generated forms' achieved FLOP/s (matmul FLOPs of :mod:`verify.flops`) is set against a
``torch.matmul`` of ``[BH, T, k] × [BH, k, D]`` in the same dtype, timed in the same run ("%
matmul"). k is the inner dimension of the largest matrix product the forms run: of each form,
its product with the most FLOPs in one untimed forward call (:func:`verify.flops.largest_product`),
and of those the widest k; D when no form runs one. A matmul's FLOP/s grows with its inner
dimension, so a reference narrower than the forms' own products (the earlier fixed
``[BH, T, D] × [BH, D, D]``, for a chunk form whose largest product contracts over the chunk)
flatters the forms.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from derivations.variant import Variant
from verify.flops import form_flops, largest_product, model_flops
from verify.forms import call_form, cast_case
from verify.inputs import default_sizes, make_case
from verify.oracle import run_direct

__all__ = ["BenchConfig", "Row", "BenchResult", "Timing", "time_repeats", "time_cuda", "forward_backward",
           "timed_row", "spread_ms", "run_bench", "machine", "reference_inner_dim", "NOISY_SPREAD",
           "TIMER_RESOLUTION", "MIN_SECONDS", "MAX_REPEATS"]

#: a timing whose spread (max − min) / median is above this is flagged noisy
NOISY_SPREAD = 0.20
#: seconds per tick of ``time.perf_counter``, the CPU timer: a median below it is flagged
TIMER_RESOLUTION = time.get_clock_info("perf_counter").resolution
#: the least total time of one CPU timing's timed calls, and the most calls it makes to get there
MIN_SECONDS = 0.2
MAX_REPEATS = 10_000


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
    min_seconds: float = MIN_SECONDS

    def __post_init__(self):
        if self.batch < 1 or self.batch_heads % self.batch:
            raise ValueError(f"batch must be >= 1 and divide batch_heads: batch = {self.batch}, "
                             f"batch_heads = {self.batch_heads}")


@dataclass(frozen=True)
class Timing:
    """Seconds of the timed repeats of one call: the fastest, the median and the slowest, and how
    many there were (None where not known)."""

    min: float
    median: float
    max: float
    repeats: int | None = field(default=None, compare=False)
    #: the first and third quartiles (None with fewer than 4 repeats)
    quartiles: tuple[float, float] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        if not seconds:
            raise ValueError("Timing.of needs at least one time, got none")
        quartiles = None
        if len(seconds) >= 4:
            q1, _, q3 = statistics.quantiles(seconds, n=4)
            quartiles = (q1, q3)
        return cls(min(seconds), statistics.median(seconds), max(seconds), len(seconds), quartiles)

    @property
    def spread(self) -> float:
        """(max − min) / median: 0 for identical repeats."""
        return (self.max - self.min) / self.median if self.median > 0 else float("inf")

    @property
    def middle_spread(self) -> float:
        """How far the middle half of the calls spread, (q3 − q1) / median; the whole spread with fewer
        than 4 repeats. One slow call among thousands (a context switch) moves max, not this."""
        if self.quartiles is None:
            return self.spread
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median if self.median > 0 else float("inf")

    def noise(self, resolution: float = TIMER_RESOLUTION) -> str | None:
        """Why this timing is not to be trusted, or None: its median is below the timer's
        ``resolution`` or its middle half spreads over :data:`NOISY_SPREAD` of it."""
        reasons = []
        if self.median < resolution:
            reasons.append(f"median {self.median * 1e9:.3g} ns < timer resolution {resolution * 1e9:.3g} ns")
        if self.middle_spread > NOISY_SPREAD:
            middle = "middle half" if self.quartiles is not None else "spread"
            reasons.append(f"{middle} {100 * self.middle_spread:.0f}% > {100 * NOISY_SPREAD:.0f}%")
        return "; ".join(reasons) or None


@dataclass
class Row:
    """One timed line. ``seconds`` is the median of the repeats, ``seconds_min`` / ``seconds_max``
    their spread and ``repeats`` their number (None in results written before they were recorded);
    ``noise`` why the timing is not to be trusted (:meth:`Timing.noise`; None: steady);
    ``tokens_per_s`` counts
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
    repeats: int | None = None
    noise: str | None = None

    @property
    def noisy(self) -> bool:
        return self.noise is not None


@dataclass
class BenchResult:
    """One benchmark run; ``matmul_inner_dim`` is k of its reference ``[BH, T, k] × [BH, k, D]``."""

    variant: str
    config: BenchConfig
    rows: list = field(default_factory=list)
    matmul_flops_per_s: float = 0.0
    machine: dict = field(default_factory=dict)
    matmul_inner_dim: int | None = None

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
            "matmul_inner_dim": self.matmul_inner_dim,
            "rows": [{**asdict(r), "pass": r.pass_, "noisy": r.noisy} for r in self.rows],
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


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1, min_seconds: float = MIN_SECONDS,
                 max_repeats: int = MAX_REPEATS) -> Timing:
    """Wall-clock seconds of ``fn()``, after ``warmup`` calls, over calls timed one by one until there
    are at least ``repeats`` and they took ``min_seconds`` together, or ``max(repeats, max_repeats)``
    were timed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_repeats):
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
    ``peak_flops_per_s``; the timing's repeats and its noise."""
    s = timing.median
    rate = None if flops is None else flops / s
    return Row(name, pass_, s, tokens_per_s=config.batch_heads * config.seq_len / s, flops=flops, flops_per_s=rate,
               fraction_of_matmul=None if rate is None or not peak_flops_per_s else rate / peak_flops_per_s,
               speedup_vs_oracle=None if oracle_seconds is None else oracle_seconds / s,
               seconds_min=timing.min, seconds_max=timing.max, sequence_tokens_per_s=config.batch * config.seq_len / s,
               repeats=timing.repeats, noise=timing.noise())


def spread_ms(seconds_min: float | None, seconds_max: float | None, fmt: str = ".2f", missing: str = "—") -> str:
    """The timed repeats' fastest–slowest in ms, or ``missing`` where they were not recorded."""
    if seconds_min is None or seconds_max is None:
        return missing
    return f"{format(1e3 * seconds_min, fmt)}–{format(1e3 * seconds_max, fmt)}"


def reference_inner_dim(variant: Variant, forms: dict, case, default: int) -> int:
    """k of the "% matmul" reference: the widest inner dimension of the forms' largest products
    (one untimed forward call of each), ``default`` when no form runs a matrix product."""
    largest = [largest_product(lambda fn=fn: call_form(variant, fn, case)) for fn in forms.values()]
    return max((p.k for p in largest if p is not None), default=default)


def run_bench(variant: Variant, forms: dict, config: BenchConfig, progress: bool = False) -> BenchResult:
    """Time the oracle (forward), every form (forward and forward+backward) and the reference matmul."""
    dtype = getattr(torch, config.dtype)
    chunk = variant.schedule.chunk_size if variant.schedule.fixed else config.chunk
    sizes = default_sizes(variant, config.dim)
    case = make_case(variant, batch=config.batch, seq_len=config.seq_len, heads=config.batch_heads // config.batch,
                     sizes=sizes, chunk_size=chunk, dtype=dtype, generator=torch.Generator().manual_seed(0))
    grad_case = cast_case(case, dtype, requires_grad=True)
    per_token = model_flops(variant, sizes)
    inner = reference_inner_dim(variant, forms, case, config.dim)
    result = BenchResult(variant.name, config, machine=machine(), matmul_inner_dim=inner)

    a = torch.randn(config.batch_heads, config.seq_len, inner, dtype=dtype)
    b = torch.randn(config.batch_heads, inner, config.dim, dtype=dtype)
    jobs = [("matmul", "forward", lambda: torch.matmul(a, b))]
    jobs.append(("oracle", "forward", lambda: run_direct(variant, **case.kwargs())))
    for name, fn in forms.items():
        jobs.append((name, "forward", lambda fn=fn: call_form(variant, fn, case)))
        jobs.append((name, "forward+backward", forward_backward(variant, fn, grad_case)))
    if progress:
        from verify.progress import progress as show_progress

        jobs = show_progress(jobs, f"bench {variant.name}", unit="timing", label=lambda job: f"{job[0]} {job[1]}")
    timings = {}
    for name, pass_, fn in jobs:
        timings[name, pass_] = time_repeats(fn, config.repeats, min_seconds=config.min_seconds)

    matmul = timings["matmul", "forward"]
    mm_flops = 2.0 * config.batch_heads * config.seq_len * inner * config.dim
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
                           fraction_of_matmul=1.0, seconds_min=matmul.min, seconds_max=matmul.max,
                           repeats=matmul.repeats, noise=matmul.noise()))
    return result
