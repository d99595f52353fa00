"""Causality of every generated form for non-finite values (issue 13): the checks shared by
``tests/test_nonfinite.py``, ``tests/test_nonfinite_backward.py`` and the generality campaign.

What may depend on what is read off the oracle, the inner loop run literally, plus what the oracle
itself makes non-finite (it may multiply a zero into the bad value, e.g. momentum's zero initial
buffer):

- **forward** (:func:`check_forward`): a NaN or inf in an input at token t makes non-finite only the
  outputs and final states that change when that token's input is perturbed;
- **backward** (:func:`check_backward`): a NaN or inf in the gradient of one output o_t (or of one final
  state) makes non-finite only the gradients of the inputs that o_t (that final state) depends on, read
  off the oracle's vector–Jacobian product with a finite cotangent in the same place.

Dependences are united over the entries of a batch of random cases, and forwards taken per token
(every per-token input of the token moves): on one entry a unit may be dead (a relu below zero) and
hide a dependence the structure has, which a form that multiplies by the relu's zero derivative, rather
than selecting as autograd does, shows as 0·NaN.

Both directions also ask the converse of a NaN: where the oracle is non-finite and the quantity really
depends on the bad value, every form is non-finite too (no silent finite answer).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import zlib

import torch

from verify import make_case, run_direct
from verify.forms import call_form, cast_case
from verify.signature import optional_inputs

__all__ = ["NoFiniteCase", "SEQ_LEN", "CHUNK", "PER_TOKEN", "nonfinite_case", "check_forward", "check_causal",
           "Dependences", "check_backward", "backward_targets", "where"]

SEQ_LEN, CHUNK = 20, 8  # a ragged last chunk of 4 tokens
PER_TOKEN = ("lr", "momentum", "log_decay")  # the optional inputs with one value per (b, t, h)
HEADS = 2
#: the batch of a case: its entries are random cases whose dependences are united (a random declaration
#: stacks relus, dead on one entry or another; the catalog's tests take 2, its variants have few)
BATCH = 4
#: the cases that may be non-finite before a variant is declared unfit for the check (a random rule may blow up)
CASE_SEEDS = 8


class NoFiniteCase(ValueError):
    """The oracle is not finite on any of the random cases tried: the rule blows up there."""


def positions(seq_len: int, chunk: int) -> tuple[int, ...]:
    """The first token, one in the middle of the second chunk, the last token."""
    return 0, min(chunk + chunk // 2 - 1, seq_len - 2), seq_len - 1


def _sizes(variant) -> dict[str, int]:
    """A distinct size per named dimension (4, 5, 3, …), so a form that mixes two of them up fails."""
    names = sorted({d for d in (*variant.dims, variant.value_dim) if d.isidentifier()})
    return {d: (4, 5, 3, 6)[i % 4] for i, d in enumerate(names)}


def nonfinite_case(variant, seq_len: int = SEQ_LEN, chunk: int = CHUNK, batch: int = BATCH):
    """Random inputs of ``variant`` (a batch of ``batch``, 2 heads, small distinct sizes, fp64) on which
    the oracle is finite."""
    for seed in range(CASE_SEEDS):
        case = make_case(variant, batch=batch, seq_len=seq_len, heads=HEADS, sizes=_sizes(variant),
                         chunk_size=None if variant.schedule.fixed else chunk,
                         generator=torch.Generator().manual_seed(seed))
        o, final = run_direct(variant, **case.kwargs())
        if _all_finite(o, *final.values()):
            return case
    raise NoFiniteCase(f"variant {variant.name!r}: the oracle is not finite on {CASE_SEEDS} random cases "
                       f"(T = {seq_len}, chunk {chunk}); no causality check possible")


def _over_batch(mask: torch.Tensor) -> torch.Tensor:
    """A dependence seen on some batch entry, for every entry: it is the structure's, not a value's."""
    return mask.any(0, keepdim=True).expand_as(mask)


def _all_finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def where(mask: torch.Tensor) -> list:
    """The indices where ``mask`` holds, as tuples."""
    return [tuple(i) for i in mask.nonzero().tolist()]


def _run(variant, fn, case, block: int = CHUNK):
    """``(o, final)`` of the oracle (``fn`` None) or of a generated form; a token-level form that takes a
    ``chunk_size`` (a block size of its computation) computes in blocks of ``block`` tokens."""
    if fn is None:
        return run_direct(variant, **case.kwargs())
    token_blocks = (variant.schedule.fixed and variant.schedule.order != "bidirectional"
                    and "chunk_size" in inspect.signature(fn).parameters)
    return call_form(variant, fn, case, compute_chunk=block if token_blocks else None)


def _assert_within(label: str, form: str, what: str, value: float, got, may, depends, oracle_bad) -> None:
    """``got`` (a form's non-finite entries) ⊆ ``may``, and, for a NaN, ⊇ where the oracle's depend and are
    non-finite. An inf may saturate (tanh(∞) = 1, exp(−∞) = 0), where two exact formulae of one function
    (the oracle's autograd, a form's derived gradient) differ: the converse is asked of NaN only."""
    assert not (got & ~may).any(), (f"{label}: the {form} form makes {where(got & ~may)} of its {what} "
                                    f"non-finite, which cannot depend on it (may: {where(may)})")
    missing = depends & oracle_bad & ~got if math.isnan(value) else torch.zeros_like(got)
    assert not missing.any(), (f"{label}: the {form} form leaves {where(missing)} of its {what} finite where "
                               f"the oracle's depend on it and are not")


# --- forward: a bad input reaches only the outputs that depend on it ---------------------------------

def _set(case, name: str, t: int, head: int, change, column: int | None = 0):
    """A copy of ``case`` whose input ``name`` at token t, head ``head`` (value column ``column`` of q, k,
    v, every column with None; the first updated weight's entry of a per-weight dict) is ``change(old)``."""

    def edit(x):
        x = x.detach().clone()
        index = (slice(None), t, head) + ((slice(None) if column is None else column,) if x.dim() == 4 else ())
        x[index] = change(x[index])
        return x

    if name in ("q", "k", "v"):
        return dataclasses.replace(case, **{name: edit(getattr(case, name))})
    value = case.optional[name]
    if isinstance(value, dict):
        first = next(iter(value))
        value = {**value, first: edit(value[first])}
    else:
        value = edit(value)
    return dataclasses.replace(case, optional={**case.optional, name: value})


def _nonfinite(o: torch.Tensor, final: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Which outputs ``[B, T, H]`` and which final states ``[B, H]`` hold a NaN or inf."""
    states = torch.stack([~torch.isfinite(w).flatten(2).all(-1) for w in final.values()]).any(0)
    return ~torch.isfinite(o).all(-1), states


def _changed(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Which outputs and final states differ between two finite runs ``(o, final)``."""
    states = torch.stack([(a[1][n] != b[1][n]).flatten(2).any(-1) for n in a[1]]).any(0)
    return (a[0] != b[0]).any(-1), states


def _token_inputs(variant) -> list[str]:
    """The inputs with one entry per (b, t, h): q, k, v and the variant's per-token optional inputs."""
    return ["q", "k", "v"] + [i.name for i in optional_inputs(variant) if i.name in PER_TOKEN]


def injections(variant, seq_len: int = SEQ_LEN, chunk: int = CHUNK) -> list[tuple[str, float, int, int]]:
    """(input, value, token, head) for NaN and inf in every per-token input, at seeded positions: the
    fixed ones of :func:`positions` in turn and one drawn per variant."""
    rng = random.Random(zlib.crc32(variant.name.encode()))
    pairs = [(name, value) for name in _token_inputs(variant) for value in (float("nan"), float("inf"))]
    rng.shuffle(pairs)
    at = [*positions(seq_len, chunk), rng.randrange(seq_len)]
    return [(name, value, at[i % len(at)], rng.randrange(HEADS)) for i, (name, value) in enumerate(pairs)]


class Dependences:
    """What depends on what in the oracle on ``case``: the outputs ``[B, T, H]`` and final states ``[B, H]``
    that change on some batch entry when inputs of token t, head ``head`` move (all columns). The batch
    entries are united, and :meth:`on_token` moves every input of the token, both ways, since a unit dead
    on one entry (a relu below zero) hides a dependence the structure has."""

    def __init__(self, variant, case):
        self.variant, self.case = variant, case
        self.clean = _run(variant, None, case)
        self._tokens: dict = {}

    def _moved(self, names: list[str], t: int, head: int, steps: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        depends = None
        for step in steps:
            nudged = self.case
            for name in names:  # a decay γ = exp(g) stays within (0, 1]
                shift = -abs(step) if name == "log_decay" else step
                nudged = _set(nudged, name, t, head, lambda x, shift=shift: x + shift, None)
            changed = _changed(self.clean, _run(self.variant, None, nudged))
            depends = changed if depends is None else tuple(d | c for d, c in zip(depends, changed))
        return tuple(_over_batch(d) for d in depends)

    def on_input(self, name: str, t: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What changes when input ``name`` at (t, head) moves."""
        return self._moved([name], t, head, (0.25,))

    def on_token(self, t: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What changes when every per-token input at (t, head) moves (computed once per token)."""
        if (t, head) not in self._tokens:
            self._tokens[t, head] = self._moved(_token_inputs(self.variant), t, head, (0.25, -0.5))
        return self._tokens[t, head]


def check_causal(variant, forms: dict, dependences: Dependences, name: str, value: float, t: int,
                 head: int) -> None:
    """Every form's non-finite outputs and final states with the bad input ⊆ what may depend on its token
    (:meth:`Dependences.on_token`, asked only where the input's own dependences do not cover them) or the
    oracle makes non-finite, and ⊇ what the oracle makes non-finite where it depends on that input."""
    label = f"{variant.name}: {name}[t={t}, head={head}] = {value}"
    bad_case = _set(dependences.case, name, t, head, lambda x: torch.full_like(x, value))
    oracle_bad = _nonfinite(*_run(variant, None, bad_case))
    on_input = dependences.on_input(name, t, head)
    for form, fn in forms.items():
        got = _nonfinite(*_run(variant, fn, bad_case))
        may = tuple(d | o for d, o in zip(on_input, oracle_bad))
        if any((g & ~m).any() for g, m in zip(got, may)):
            may = tuple(d | m for d, m in zip(dependences.on_token(t, head), may))
        for what, g, m, d, o in zip(("outputs (b, t, h)", "final states (b, h)"), got, may, on_input, oracle_bad):
            _assert_within(label, form, what, value, g, m, d, o)


def check_forward(variant, forms: dict, case=None) -> None:
    """:func:`check_causal` for every injection of :func:`injections` (on :func:`nonfinite_case` by default)."""
    dependences = Dependences(variant, case if case is not None else nonfinite_case(variant))
    for name, value, t, head in injections(variant):
        check_causal(variant, forms, dependences, name, value, t, head)


# --- backward: a bad output gradient reaches only the inputs its output depends on -------------------

def backward_targets(variant, seq_len: int, chunk: int) -> list[tuple[str, int, int, float]]:
    """(quantity, token, head, value) for NaN and inf in the gradient of one output o_t (column 0) at the
    tokens of :func:`positions`, heads drawn per variant, and in the gradient of the first updated
    weight's final state (entry (0, 0); token -1). A final state depends on every token it has seen, so
    a bad gradient there may reach every input of its head, but never an input the update does not read
    (q, where the queries are not the keys) nor another head."""
    rng = random.Random(zlib.crc32(variant.name.encode()))
    out = [("o", t, rng.randrange(HEADS), value)
           for t in positions(seq_len, chunk) for value in (float("nan"), float("inf"))]
    return out + [("final", -1, rng.randrange(HEADS), value) for value in (float("nan"), float("inf"))]


def _cotangents(variant, o: torch.Tensor, final: dict, target, value: float) -> tuple:
    """Gradients of ``(o, *final)``: zero but ``value`` at the target (o[:, t, head, 0], or the first
    updated weight's final state at [:, head, 0, 0])."""
    quantity, t, head, _ = target
    grads = [torch.zeros_like(o), *(torch.zeros_like(w) for w in final.values())]
    if quantity == "o":
        grads[0][:, t, head, 0] = value
    else:
        grads[1][:, head, 0, 0] = value
    return tuple(grads)


def _cells(grad: torch.Tensor | None, leaf: torch.Tensor, batch_tokens_heads: tuple, want) -> torch.Tensor:
    """``want(grad)`` per cell of an input: per (b, t, h) for a per-token input, per leading index of a
    weight ``[B, H, r, c]`` (b, h), one cell for anything else; an input not read is all False."""
    keep = 3 if tuple(leaf.shape[:3]) == batch_tokens_heads else max(0, leaf.dim() - 2)
    if grad is None:
        return torch.zeros(leaf.shape[:keep], dtype=torch.bool)
    return want(grad).flatten(keep).any(-1) if keep < grad.dim() else want(grad)


class _Graph:
    """One forward run of the oracle or a form on fresh fp64 leaves, kept for several backward passes."""

    def __init__(self, variant, fn, case, block: int):
        self.case = cast_case(case, torch.float64)
        self.leaves = self.case.leaves()
        self.o, self.final = _run(variant, fn, self.case, block)
        self.cell_shape = tuple(self.case.q.shape[:3])

    def cells(self, variant, target, value: float, want) -> dict[str, torch.Tensor]:
        """Per input, the cells where ``want`` holds of its gradient for the cotangent of ``target``."""
        grads = torch.autograd.grad((self.o, *self.final.values()),
                                    list(self.leaves.values()), _cotangents(variant, self.o, self.final, target, value),
                                    retain_graph=True, allow_unused=True)
        return {n: _cells(g, leaf, self.cell_shape, want) for (n, leaf), g in zip(self.leaves.items(), grads)}


def check_backward(variant, forms: dict, case, block: int = CHUNK) -> None:
    """For every target of :func:`backward_targets`: every form's non-finite input gradients (per cell, see
    :func:`_cells`) ⊆ the cells whose gradient the oracle's finite vector–Jacobian product makes non-zero
    on some batch entry or its own backward makes non-finite, and, for a NaN, ⊇ those where both hold.
    Per input, not per token: q_s reaches o_s alone and no final state, k_s both. A token-level form that
    takes a ``chunk_size`` computes in blocks of ``block`` tokens."""
    oracle = _Graph(variant, None, case, block)
    graphs = {form: _Graph(variant, fn, case, block) for form, fn in forms.items()}
    for target in backward_targets(variant, case.q.shape[1], case.chunk_size or block):
        quantity, t, head, value = target
        label = f"{variant.name}: ∂{quantity}[t={t}, head={head}] = {value}" if quantity == "o" else (
            f"{variant.name}: ∂final[{variant.update[0]}][head={head}, 0, 0] = {value}")
        depends = oracle.cells(variant, target, 1.0, lambda g: g != 0)
        oracle_bad = oracle.cells(variant, target, value, lambda g: ~torch.isfinite(g))
        for form, graph in graphs.items():
            got = graph.cells(variant, target, value, lambda g: ~torch.isfinite(g))
            for name, d in depends.items():
                may = (_over_batch(d) if d.dim() else d) | oracle_bad[name]
                _assert_within(label, form, f"gradients ∂{name}", value, got[name], may, d, oracle_bad[name])
