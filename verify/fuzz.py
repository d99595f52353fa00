"""Fuzz campaigns: every generated form against the fp64 oracle on random cases.

Case ``i`` of a campaign started with ``seed`` uses the case seed ``seed + i``; everything
about it (shapes, chunk size, the ranges of the optional inputs, tensors, the outer loss)
follows from that number alone, so ``--seed S --cases 1`` reproduces case seed S. A case
whose oracle is not finite (a learning rate that makes the recurrence blow up) is redrawn
from the same seed, deterministically, rather than loosening a tolerance.

Per case the oracle runs once in fp64 with ``create_graph``; the outer loss is
``Σ o·R + Σ_u Σ final_u·R_u`` with random R, and its gradients with respect to every input
(q, k, v, every initial fast weight, every differentiable optional input) are compared per tensor.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace

import torch

from derivations.variant import Variant
from verify.forms import call_form, cast_case
from verify.inputs import Case, make_case
from verify.oracle import run_direct
from verify.signature import FUZZED_RANGES, OPTIONAL_INPUTS
from verify.tolerances import (
    PLAIN_DTYPE,
    bound,
    default_tolerance,
    normalises_rows,
    quantity_kind,
    relative_error,
)

__all__ = ["CaseSpec", "sample_spec", "build_case", "Reference", "reference", "draw", "check_form", "FormResult",
           "Campaign", "run_campaign"]

MAX_ATTEMPTS = 32


@dataclass(frozen=True)
class CaseSpec:
    """The shape of one random case; ``attempt`` counts redraws after a non-finite oracle."""

    seed: int
    batch: int
    seq_len: int
    heads: int
    sizes: dict = field(hash=False)
    chunk_size: int | None
    #: ``make_case``'s range keyword → (lo, hi), one per :data:`~verify.signature.FUZZED_RANGES`
    ranges: dict = field(hash=False)
    attempt: int = 0
    #: the token grid (h, w) of a spatial variant, h·w = seq_len; else None
    grid: tuple | None = None

    def describe(self, variant: Variant | None = None) -> str:
        parts = [f"B={self.batch}", f"T={self.seq_len}", f"H={self.heads}"]
        if self.grid is not None:
            parts.append(f"grid={self.grid[0]}×{self.grid[1]}")
        parts += [f"{d}={n}" for d, n in self.sizes.items()]
        parts.append(f"chunk={self.chunk_size}")
        used = {i.range.keyword for i in OPTIONAL_INPUTS if i.range and (variant is None or i.takes(variant))}
        for keyword, (lo, hi) in self.ranges.items():
            if keyword in used:
                parts.append(f"{keyword.removesuffix('_range')}~U[{lo:g},{hi:g}]")
        if self.attempt:
            parts.append(f"redraw {self.attempt}")
        return " ".join(parts)


def _seq_len(rng: random.Random, chunk: int) -> int:
    """T = 1, T < chunk, a multiple of the chunk, or a ragged length (T % chunk ≠ 0)."""
    kind = rng.choices(["one", "short", "multiple", "ragged"], weights=[1, 2, 3, 4])[0]
    if kind == "one":
        return 1
    if chunk == 1:
        return rng.randint(2, 16)
    if kind == "short":
        return rng.randint(1, chunk - 1)
    if kind == "multiple":
        return chunk * rng.randint(1, 3)
    return chunk * rng.randint(1, 3) + rng.randint(1, chunk - 1)


def _min_dim(variant: Variant) -> int:
    """The smallest named dimension worth sampling: 1, or 3 when the model normalises rows.

    LayerNorm over 1 or 2 entries is degenerate (the constant β, or ±1), so its gradients are
    pure cancellation in any implementation; no TTT layer uses such widths, so those shapes are
    left out of the sample rather than met with looser tolerances.
    """
    return 3 if normalises_rows(variant) else 1


#: the largest size a named dimension is drawn with (more, if a variant names more dimensions than sizes fit)
MAX_DIM = 9


def _distinct_sizes(rng: random.Random, variant: Variant) -> dict[str, int]:
    """One size per named dimension, distinct dimensions getting distinct sizes.

    Equal sizes would hide a generated form that confuses two dimensions (reads the value width as
    the key width, say): the shapes would still agree. So the sizes are drawn without replacement
    from ``_min_dim … MAX_DIM`` (widened when a variant names more dimensions than that holds).
    """
    names = list(dict.fromkeys(d for d in (*variant.dims, variant.value_dim) if d.isidentifier()))
    lo = _min_dim(variant)
    return dict(zip(names, rng.sample(range(lo, max(MAX_DIM, lo + len(names) - 1) + 1), len(names))))


def sample_spec(variant: Variant, seed: int, attempt: int = 0, **overrides) -> CaseSpec:
    """A random case shape for ``variant``, a pure function of ``(seed, attempt)``.

    B ∈ 1–2, H ∈ 1–3, named dimensions as in :func:`_distinct_sizes`, chunk 1–8 (the variant's own when its
    schedule is fixed), T as in :func:`_seq_len`, and for a spatial variant a grid h × w = T with h drawn among
    T's divisors (1 × T and T × 1 included); ``overrides`` replace any field.
    """
    rng = random.Random(f"tttla-case:{seed}:{attempt}")
    sched = variant.schedule
    chunk = sched.chunk_size if sched.fixed else rng.randint(1, 8)
    sizes = _distinct_sizes(rng, variant)
    spec = CaseSpec(
        seed=seed,
        batch=rng.randint(1, 2),
        seq_len=_seq_len(rng, chunk or 4),
        heads=rng.randint(1, 3),
        sizes=sizes,
        chunk_size=chunk,
        ranges={r.keyword: rng.choice(r.fuzzed) for r in FUZZED_RANGES},
        attempt=attempt,
    )
    spec = replace(spec, **overrides)
    if variant.spatial is not None and (spec.grid is None or spec.grid[0] * spec.grid[1] != spec.seq_len):
        T = spec.seq_len
        h = rng.choice([n for n in range(1, T + 1) if T % n == 0])
        spec = replace(spec, grid=(h, T // h))
    return spec


def build_case(variant: Variant, spec: CaseSpec) -> tuple[Case, torch.Generator]:
    """The fp64 inputs of ``spec`` (leaves with ``requires_grad``) and the generator, which
    goes on to draw the outer-loss weights."""
    g = torch.Generator().manual_seed(random.Random(f"tttla-tensors:{spec.seed}:{spec.attempt}").getrandbits(62))
    case = make_case(
        variant,
        batch=spec.batch,
        seq_len=spec.seq_len,
        heads=spec.heads,
        sizes=spec.sizes,
        chunk_size=spec.chunk_size,
        dtype=torch.float64,
        generator=g,
        requires_grad=True,
        grid=spec.grid,
        **spec.ranges,
    )
    return case, g


@dataclass
class Reference:
    """The oracle's answer for one case, all fp64: output, final state, outer-loss weights
    and the gradient of the outer loss per input (``None`` where an input is not read)."""

    case: Case
    o: torch.Tensor
    final: dict
    weights: dict
    grads: dict
    _plain: dict = field(default_factory=dict, repr=False)

    def quantities(self) -> dict[str, torch.Tensor | None]:
        return _named(self.o, self.final, self.grads)

    def plain_errors(self, variant: Variant, metric: str) -> dict[str, float]:
        """Errors of the oracle itself run in fp32 (plain torch) on this case, per quantity: the
        conditioning of the case (computed once, on demand).

        One fp32 run is one draw of the rounding: on an ill-conditioned case (Newton–Schulz of a
        rank-1 update, say) it may land close to the truth by luck. So the oracle also runs on
        :data:`PLAIN_PERTURBATIONS` copies of the inputs perturbed by one ulp (deterministically),
        and each quantity keeps the largest error: the spread plain torch itself shows here.
        """
        if metric not in self._plain:
            worst: dict[str, float] = {}
            g = torch.Generator().manual_seed(PLAIN_PERTURBATION_SEED)
            for k in range(1 + PLAIN_PERTURBATIONS):
                case = cast_case(self.case, PLAIN_DTYPE)
                if k:
                    _perturb_one_ulp(case, g)
                o, final = run_direct(variant, **case.kwargs())
                got = _named(o, final, _gradients(_outer_loss(o, final, self.weights), case))
                for name, err in _errors(self.quantities(), got, metric).items():
                    worst[name] = max(worst.get(name, 0.0), err)
            self._plain[metric] = worst
        return self._plain[metric]


#: fp32 oracle runs on 1-ulp-perturbed inputs that measure a case's conditioning (besides the plain one)
PLAIN_PERTURBATIONS = 3
PLAIN_PERTURBATION_SEED = 20261122


def _perturb_one_ulp(case, g: torch.Generator) -> None:
    """Multiply every input of an fp32 case by 1 + u·ε₃₂ with u ∈ {−1, 0, 1} drawn per entry."""
    eps = torch.finfo(PLAIN_DTYPE).eps
    with torch.no_grad():
        for t in case.leaves().values():
            t.mul_(1 + eps * torch.randint(-1, 2, t.shape, generator=g).to(t.dtype))


def _named(o, final: dict, grads: dict) -> dict[str, torch.Tensor | None]:
    """Every compared quantity by name: "o", "state[W]" per updated weight, "∂x" per input."""
    out = {"o": o}
    out.update({f"state[{n}]": t for n, t in final.items()})
    out.update({f"∂{n}": t for n, t in grads.items()})
    return out


def _errors(want: dict, got: dict, metric: str) -> dict[str, float]:
    """Per quantity, the error of ``got`` against ``want``; a gradient that one side does not
    have (an input that is never read) counts as zeros, and is skipped when neither has it."""
    out = {}
    for quantity, ref in want.items():
        have = got[quantity]
        if ref is None and have is None:
            continue
        ref = torch.zeros(have.shape, dtype=torch.float64) if ref is None else ref
        have = torch.zeros_like(ref) if have is None else have
        out[quantity] = relative_error(ref, have, metric)
    return out


def _outer_loss(o, final, weights):
    loss = (o * weights["o"].to(o.dtype)).sum()
    for n, t in final.items():
        loss = loss + (t * weights[n].to(t.dtype)).sum()
    return loss


def _gradients(loss, case: Case) -> dict[str, torch.Tensor | None]:
    leaves = case.leaves()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads))


def reference(variant: Variant, case: Case, g: torch.Generator) -> Reference:
    """Run the oracle on ``case`` and differentiate a random outer loss."""
    o, final = run_direct(variant, **case.kwargs())
    weights = {"o": torch.randn(o.shape, generator=g, dtype=torch.float64)}
    weights.update({n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in final.items()})
    grads = _gradients(_outer_loss(o, final, weights), case)
    return Reference(case, o.detach(), {n: t.detach() for n, t in final.items()}, weights, grads)


def _finite(ref: Reference) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in ref.quantities().values())


def draw(variant: Variant, seed: int, **overrides) -> tuple[CaseSpec, Reference]:
    """Case seed ``seed``: its spec and oracle answer, redrawn while the oracle is not finite."""
    for attempt in range(MAX_ATTEMPTS):
        spec = sample_spec(variant, seed, attempt, **overrides)
        case, g = build_case(variant, spec)
        ref = reference(variant, case, g)
        if _finite(ref):
            return spec, ref
    raise RuntimeError(f"case seed {seed}: the oracle was not finite in {MAX_ATTEMPTS} draws")


@dataclass
class FormResult:
    """One form on one case: error and bound per quantity, or the exception it raised."""

    form: str
    errors: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)
    exception: str | None = None

    @property
    def passed(self) -> bool:
        return self.exception is None and all(self.errors[q] <= self.bounds[q] for q in self.errors)

    def failures(self) -> list[str]:
        if self.exception is not None:
            return [f"raised {self.exception}"]
        return [f"{q}: error {e:.3e} > {self.bounds[q]:.0e}" for q, e in self.errors.items() if not e <= self.bounds[q]]


def check_form(variant: Variant, name: str, fn, ref: Reference, dtype: torch.dtype) -> FormResult:
    """Run form ``fn`` on the case of ``ref`` in ``dtype`` and compare every quantity."""
    result = FormResult(name)
    case = cast_case(ref.case, dtype)
    try:
        o, final = call_form(variant, fn, case)
        final = {n: final[n] for n in ref.final}
        got = _named(o, final, _gradients(_outer_loss(o, final, ref.weights), case))
    except Exception as e:  # a form that raises fails the case, with the reason
        result.exception = f"{type(e).__name__}: {e}"
        return result
    tol = default_tolerance(dtype)
    result.errors = _errors(ref.quantities(), got, tol.metric)
    result.bounds = {q: tol.bound for q in result.errors}
    if not result.passed:  # no stricter than plain torch on this case: verify/tolerances.py
        plain = ref.plain_errors(variant, tol.metric)
        result.bounds = {q: bound(variant, dtype, plain.get(q, 0.0)) for q in result.errors}
    return result


@dataclass
class Campaign:
    """The outcome of a fuzz campaign: per case seed, its spec and every form's result."""

    variant: Variant
    dtype: torch.dtype
    seed: int
    forms: list
    cases: list = field(default_factory=list)  # (spec, [FormResult])

    @property
    def passed(self) -> bool:
        return all(r.passed for _, results in self.cases for r in results)

    def form_summary(self, form: str) -> dict:
        """Cases, passed, the worst error per quantity kind and per quantity, for one form."""
        results = [r for _, rs in self.cases for r in rs if r.form == form]
        per_quantity: dict[str, float] = {}
        for r in results:
            for q, e in r.errors.items():
                per_quantity[q] = max(per_quantity.get(q, 0.0), e)
        per_kind: dict[str, float] = {}
        for q, e in per_quantity.items():
            k = quantity_kind(q)
            per_kind[k] = max(per_kind.get(k, 0.0), e)
        return {
            "cases": len(results),
            "passed": sum(r.passed for r in results),
            "max_rel_error": max(per_quantity.values(), default=0.0),
            "max_error_by_kind": per_kind,
            "max_error_by_quantity": per_quantity,
            "errors": [r.exception for r in results if r.exception],
        }

    def failures(self) -> list[tuple[CaseSpec, FormResult]]:
        return [(spec, r) for spec, rs in self.cases for r in rs if not r.passed]

    def to_json(self) -> dict:
        return {
            "variant": self.variant.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "seed": self.seed,
            "cases": len(self.cases),
            "passed": self.passed,
            "forms": {f: {**self.form_summary(f), "passed": self.form_summary(f)["passed"] == len(self.cases)}
                      for f in self.forms},
            "failures": [
                {"case_seed": spec.seed, "form": r.form, "spec": asdict(spec), "problems": r.failures()}
                for spec, r in self.failures()
            ],
        }


def run_campaign(
    variant: Variant,
    forms: dict,
    *,
    cases: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    progress: bool = False,
    **overrides,
) -> Campaign:
    """Check every form of ``forms`` (name → fn) on case seeds ``seed … seed + cases − 1``."""
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    campaign = Campaign(variant, dtype, seed, list(forms))
    seeds = range(seed, seed + cases)
    if progress:
        from verify.progress import progress as show_progress

        seeds = show_progress(seeds, f"verify {variant.name} {str(dtype).removeprefix('torch.')}", unit="case",
                              label=lambda s: f"seed {s}")
    for s in seeds:
        spec, ref = draw(variant, s, **overrides)
        campaign.cases.append((spec, [check_form(variant, n, fn, ref, dtype) for n, fn in forms.items()]))
    return campaign
