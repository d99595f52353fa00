"""One description of a variant's optional per-call inputs.

Besides q, k, v and the initial fast weights, a call of a variant takes the inputs its rule asks
for: per-token learning rates, momentum coefficients, a decay, a spatial layer's token grid, the
position factors of a rank-1 learning rate. :data:`OPTIONAL_INPUTS` lists each once: its name and
shape, which variants take it (a variant that takes it must be given it, the others refuse it), how
a random case draws it, whether it is a differentiable leaf, and how it is checked. The oracle's
checks, :func:`verify.inputs.make_case`, :class:`verify.inputs.Case`, :func:`verify.forms.form_kwargs`
and the fuzzer read this list, so a new input is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from derivations.variant import Variant
from verify.checks import check_grid, check_tensor

__all__ = ["Range", "Draw", "OptionalInput", "OPTIONAL_INPUTS", "INPUT_NAMES", "RANGES", "FUZZED_RANGES",
           "optional_inputs", "check_given", "resolve_ranges", "draw_inputs", "input_leaves", "map_tensors",
           "grid_for"]


@dataclass(frozen=True)
class Range:
    """The interval ``(lo, hi)`` a random case draws an input from, set by ``make_case(keyword=…)``."""

    keyword: str
    default: tuple[float, float]
    #: the ranges the fuzzer picks one of per case (none: it keeps the default)
    fuzzed: tuple[tuple[float, float], ...] = ()
    #: ``(lo, hi)``: a range must lie within (lo, hi]
    within: tuple[float, float] | None = None

    def check(self, bounds: tuple[float, float]) -> None:
        if self.within is not None and not self.within[0] < bounds[0] <= bounds[1] <= self.within[1]:
            raise ValueError(f"{self.keyword} must lie within ({self.within[0]:g}, {self.within[1]:g}], got {bounds}")


LEARNING_RATE = Range("lr_range", (0.0, 1.0), fuzzed=((0.0, 1.0), (-2.0, 4.0), (0.0, 0.1), (1.0, 4.0)))
MOMENTUM = Range("momentum_range", (0.0, 1.0), fuzzed=((0.0, 1.0), (0.0, 0.05), (0.95, 1.0)))
DECAY = Range("decay_range", (0.5, 1.0), within=(0.0, 1.0))  # of γ; the input is log γ


@dataclass(frozen=True)
class Draw:
    """What an input's ``draw`` may use: the call's sizes by name (B, T, H, Dk, Dv, L) and
    ``uniform()``, a fresh tensor of the input's shape uniform in its range."""

    dims: Mapping[str, int]
    uniform: Callable[[], torch.Tensor]


def grid_for(T: int) -> tuple[int, int]:
    """The squarest grid ``(h, w)`` with h·w = T and h ≤ w (``(1, T)`` for a prime T)."""
    h = max(n for n in range(1, int(T**0.5) + 1) if T % n == 0)
    return h, T // h


@dataclass(frozen=True)
class OptionalInput:
    """One optional input of a call.

    ``needs`` and ``refuses`` complete "variant 'name' …" when a variant that takes the input is
    not given it, or one that does not take it is; they are formatted with ``variant`` and the
    sizes (B, T, H, L, …)."""

    name: str
    #: the named sizes of a tensor input (B, T, H, L = chunk size, Dk, Dv); the grid's is (h, w)
    shape: tuple[str, ...]
    takes: Callable[[Variant], bool]
    needs: str
    refuses: str
    #: where a random case draws it from (None: ``draw`` uses no randomness)
    range: Range | None = None
    draw: Callable[[Draw], object] = lambda d: d.uniform()
    #: a differentiable input: its gradient is checked, and cast copies are fresh leaves
    leaf: bool = True
    #: one value for every updated weight, or a dict with one per updated weight
    per_weight: bool = False
    #: follows the expected shape in a shape error
    note: str = ""
    #: the check of a value that is not a floating tensor of ``shape``: ``check(name, value, dims)``
    check: Callable[[str, object, Mapping[str, int]], None] | None = None
    #: a trailing named size that some variants add to ``shape`` (a per-channel decay's Dk)
    channel: Callable[[Variant], str | None] = lambda v: None

    def shape_for(self, variant: Variant) -> tuple[str, ...]:
        """The named sizes of this input in a call of ``variant``."""
        extra = self.channel(variant)
        return self.shape + ((extra,) if extra else ())

    def validate(self, variant: Variant, value, dims: Mapping[str, int], device: torch.device) -> None:
        """Check a given value (not None) of this input for a call of sizes ``dims``."""
        if self.per_weight and isinstance(value, Mapping):
            missing = [u for u in variant.update if u not in value]
            if missing:
                raise ValueError(f"{self.name}: missing {missing} (a dict needs one per updated weight)")
            for u in variant.update:
                self._validate_one(f"{self.name}[{u!r}]", value[u], self.shape, dims, device)
        else:
            self._validate_one(self.name, value, self.shape_for(variant), dims, device)

    def _validate_one(self, name: str, value, shape, dims: Mapping[str, int], device: torch.device) -> None:
        if self.check is not None:
            self.check(name, value, dims)
        else:
            check_tensor(name, value, {d: dims[d] for d in shape}, device, note=self.note)


OPTIONAL_INPUTS: tuple[OptionalInput, ...] = (
    OptionalInput(
        "lr", ("B", "T", "H"), takes=lambda v: v.lr.kind == "per_token",
        needs="has a per-token learning rate: pass lr ([B, T, H], or a dict with one per updated weight)",
        refuses="has a constant learning rate ({variant.lr.value:g}); do not pass lr",
        range=LEARNING_RATE, per_weight=True),
    OptionalInput(
        "momentum", ("B", "T", "H"), takes=lambda v: v.momentum is not None,
        needs="uses momentum: pass momentum coefficients α of shape [B, T, H]",
        refuses="has no momentum; do not pass momentum", range=MOMENTUM),
    OptionalInput(
        "log_decay", ("B", "T", "H"), takes=lambda v: v.decay is not None and v.decay.takes_input,
        needs="decays its state: pass log_decay g = log γ of shape {shape}",
        refuses="takes no log_decay (decay: {decay}); do not pass log_decay", range=DECAY,
        draw=lambda d: d.uniform().log(),
        channel=lambda v: "Dk" if v.decay is not None and v.decay.gate == "channel" else None),
    OptionalInput(
        "grid", ("h", "w"), takes=lambda v: v.spatial is not None,
        needs="convolves the token grid: pass grid=(h, w) with h·w = T = {T}",
        refuses="has no spatial structure; do not pass grid",
        draw=lambda d: grid_for(d.dims["T"]), leaf=False,
        check=lambda name, grid, dims: check_grid(name, grid, dims["T"])),
    OptionalInput(
        "lr_position", ("L",), takes=lambda v: v.lr.position,
        needs="has a rank-1 learning rate η_ij = a_i η_j: pass lr_position a of shape [L] = [{L}] "
              "(one factor per mini-batch position)",
        refuses="has no per-position learning rate; do not pass lr_position",
        range=LEARNING_RATE, note=" (one factor per mini-batch position)"),
)
INPUT_NAMES = frozenset(i.name for i in OPTIONAL_INPUTS)
#: every range by its ``make_case`` keyword
RANGES = {i.range.keyword: i.range for i in OPTIONAL_INPUTS if i.range is not None}
#: the ranges a fuzz case draws, in a fixed order
FUZZED_RANGES = tuple(r for r in RANGES.values() if r.fuzzed)


def optional_inputs(variant: Variant) -> tuple[OptionalInput, ...]:
    """The optional inputs ``variant`` takes (each required in a call)."""
    return tuple(i for i in OPTIONAL_INPUTS if i.takes(variant))


def check_given(variant: Variant, given: Mapping[str, object], dims: Mapping[str, int], device) -> None:
    """Check the optional inputs of a call named in ``given`` (value None: not passed): each one
    the variant takes is there and valid, each one it does not take is absent."""
    for entry in OPTIONAL_INPUTS:
        if entry.name not in given:
            continue
        value = given[entry.name]
        fields = dict(dims, variant=variant, shape=f"[{', '.join(entry.shape_for(variant))}]",
                      decay=variant.decay.describe() if variant.decay else "none")
        if not entry.takes(variant):
            if value is not None:
                raise ValueError(f"variant {variant.name!r} " + entry.refuses.format(**fields))
        elif value is None:
            raise ValueError(f"variant {variant.name!r} " + entry.needs.format(**fields))
        else:
            entry.validate(variant, value, dims, device)


def resolve_ranges(ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Every range by keyword: the ones given (checked), the defaults for the others."""
    unknown = sorted(set(ranges) - set(RANGES))
    if unknown:
        raise TypeError(f"unknown range keyword(s) {unknown}; the ranges are {sorted(RANGES)}")
    for keyword, bounds in ranges.items():
        RANGES[keyword].check(bounds)
    return {keyword: tuple(ranges.get(keyword, r.default)) for keyword, r in RANGES.items()}


def draw_inputs(variant: Variant, dims: Mapping[str, int], uniform: Callable[..., torch.Tensor],
                ranges: Mapping[str, tuple[float, float]], given: Mapping[str, object]) -> dict[str, object]:
    """The optional inputs of a random case of ``variant``, in :data:`OPTIONAL_INPUTS` order.

    ``uniform(lo, hi, *shape)`` draws a tensor; ``ranges`` are by keyword (see :func:`resolve_ranges`);
    ``given`` are values fixed by the caller, already checked with :func:`check_given`.
    """
    out = {}
    for entry in optional_inputs(variant):
        if entry.name in given:
            out[entry.name] = given[entry.name]
            continue
        bounds = ranges[entry.range.keyword] if entry.range is not None else None
        shape = entry.shape_for(variant)
        sample = Draw(dims, lambda s=shape, b=bounds: uniform(*b, *(dims[d] for d in s)))
        if entry.per_weight:
            value = {u: entry.draw(sample) for u in variant.update}
            out[entry.name] = value if len(value) > 1 else value[variant.update[0]]
        else:
            out[entry.name] = entry.draw(sample)
    return out


def map_tensors(optional: Mapping[str, object], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, object]:
    """``optional`` with ``fn`` applied to every leaf tensor (each of a per-weight dict); the rest kept."""
    leaves = {i.name for i in OPTIONAL_INPUTS if i.leaf}
    out = {}
    for name, value in optional.items():
        if name in leaves and isinstance(value, Mapping):
            value = {u: fn(t) for u, t in value.items()}
        elif name in leaves and value is not None:
            value = fn(value)
        out[name] = value
    return out


def input_leaves(optional: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The differentiable optional inputs by label: ``name``, or ``name[weight]`` per entry of a dict."""
    out = {}
    for entry in OPTIONAL_INPUTS:
        value = optional.get(entry.name)
        if not entry.leaf or value is None:
            continue
        if isinstance(value, Mapping):
            out.update({f"{entry.name}[{u}]": t for u, t in value.items()})
        else:
            out[entry.name] = value
    return out
