"""Every form stays causal for non-finite input (issue 13, item 4): a NaN or inf at token t reaches
only the outputs that may depend on t.

What may depend on t is read off the oracle, the inner loop run literally: the outputs (and final
states) that change when the input at t is perturbed, plus those the oracle itself makes non-finite
(it may multiply a zero into the bad value, e.g. momentum's zero initial buffer). Per variant, NaN and
inf go into every per-token input it takes (q, k, v and the optional ones of ``optional_inputs``) at
seeded positions, among them the first token, one in the middle of a chunk and the last; every form
(recurrent, chunk, Triton) must be non-finite only where the oracle allows it, and must be
non-finite wherever the oracle is and the output really depends on t (no silent finite answer).
"""

from __future__ import annotations

import dataclasses
import random
import zlib

import pytest
import torch

from derivations.catalog import CATALOG
from tttla_kernels.delta_rule import FORMS as DELTA_RULE_FORMS
from tttla_kernels.lact_v2 import FORMS as LACT_V2_FORMS
from verify import make_case, run_direct
from verify.forms import call_form, generated_forms, usable_forms
from verify.inputs import default_sizes
from verify.signature import optional_inputs

SEQ_LEN, CHUNK = 20, 8  # a ragged last chunk of 4 tokens
#: the first token, one in the middle of the second chunk, the last token; a fourth is drawn per variant
POSITIONS = (0, CHUNK + CHUNK // 2 - 1, SEQ_LEN - 1)
PER_TOKEN = ("lr", "momentum", "log_decay")  # the optional inputs with one value per (b, t, h)

# Triton's interpreter computes in numpy, which warns on every NaN it makes
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _case(variant, seed: int = 0):
    chunk = None if variant.schedule.fixed else CHUNK
    return make_case(variant, seq_len=SEQ_LEN, heads=2, sizes=default_sizes(variant, 4), chunk_size=chunk,
                     generator=torch.Generator().manual_seed(seed))


def _set(case, name: str, t: int, head: int, change):
    """A copy of ``case`` whose input ``name`` at token t, head ``head`` (value column 0 of q, k, v; the
    first updated weight's entry of a per-weight dict) is ``change(old)``."""

    def edit(x):
        x = x.detach().clone()
        index = (slice(None), t, head, 0) if x.dim() == 4 else (slice(None), t, head)
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


def _run(variant, name: str, fn, case):
    if fn is None:
        o, final = run_direct(variant, **case.kwargs())
        return o, final
    token_blocks = variant.schedule.fixed and variant.schedule.order != "bidirectional" and name != "recurrent"
    return call_form(variant, fn, case, compute_chunk=CHUNK if token_blocks else None)


def _where(mask: torch.Tensor) -> list:
    return [tuple(i) for i in mask.nonzero().tolist()]


def _injections(variant) -> list[tuple[str, float, int, int]]:
    """(input, value, token, head) for NaN and inf in every per-token input, at seeded positions: the
    fixed ones in turn and one drawn per variant."""
    rng = random.Random(zlib.crc32(variant.name.encode()))
    names = ["q", "k", "v"] + [i.name for i in optional_inputs(variant) if i.name in PER_TOKEN]
    pairs = [(name, value) for name in names for value in (float("nan"), float("inf"))]
    rng.shuffle(pairs)
    positions = [*POSITIONS, rng.randrange(SEQ_LEN)]
    return [(name, value, positions[i % len(positions)], rng.randrange(2)) for i, (name, value) in enumerate(pairs)]


def check_causal(variant, forms: dict, case, name: str, value: float, t: int, head: int) -> None:
    """Every form's non-finite outputs and final states ⊆ what may depend on the bad input, and ⊇ what
    the oracle makes non-finite where it really depends on it."""
    label = f"{variant.name}: {name}[t={t}, head={head}] = {value}"
    bad_case = _set(case, name, t, head, lambda x: torch.full_like(x, value))
    oracle_bad = _nonfinite(*_run(variant, "oracle", None, bad_case))
    nudged = _set(case, name, t, head, lambda x: x - 0.25 if name == "log_decay" else x + 0.25)
    depends = _changed(_run(variant, "oracle", None, case), _run(variant, "oracle", None, nudged))
    may = tuple(c | o for c, o in zip(depends, oracle_bad))
    for form, fn in forms.items():
        got = _nonfinite(*_run(variant, form, fn, bad_case))
        for what, g, m, d, o in zip(("outputs (b, t, h)", "final states (b, h)"), got, may, depends, oracle_bad):
            assert not (g & ~m).any(), (f"{label}: the {form} form makes {_where(g & ~m)} of its {what} "
                                        f"non-finite, which cannot depend on it (may: {_where(m)})")
            assert not (d & o & ~g).any(), (f"{label}: the {form} form leaves {_where(d & o & ~g)} of its {what} "
                                            f"finite where the oracle's depend on it and are not")


@pytest.mark.parametrize("ref", list(CATALOG))
def test_nonfinite_input_stays_causal_in_every_form(ref):
    with generated_forms(ref) as (variant, forms):
        forms, _ = usable_forms(forms)
        case = _case(variant)
        for name, value, t, head in _injections(variant):
            check_causal(variant, forms, case, name, value, t, head)


def _nan_at_last_key(variant):
    """The issue's input: T = 20, chunk 8, ``k[:, 19, 0, 0] = nan``."""
    case = make_case(variant, seq_len=20, chunk_size=None if variant.schedule.fixed else 8)
    case.k[:, 19, 0, 0] = float("nan")
    return case


def _nonfinite_tokens(o: torch.Tensor) -> list[int]:
    return sorted({t for _, t, _ in _where(~torch.isfinite(o).all(-1))})


def test_lact_v2_nan_in_the_last_chunk_reaches_no_output():
    """Issue 13: the chunk and Triton forms gave NaN at tokens 8–19, though the last chunk is only read."""
    variant = CATALOG["lact_v2"]
    case = _nan_at_last_key(variant)
    forms, _ = usable_forms(LACT_V2_FORMS)
    assert _nonfinite_tokens(run_direct(variant, **case.kwargs())[0]) == []
    for form, fn in forms.items():
        assert _nonfinite_tokens(call_form(variant, fn, case)[0]) == [], form


def test_delta_rule_nan_at_the_last_token_reaches_only_it():
    """Issue 13: the chunk and Triton forms (blocks of 8) gave NaN at tokens 16–19, the oracle at 19 only."""
    variant = CATALOG["delta_rule"]
    case = _nan_at_last_key(variant)
    forms, _ = usable_forms(DELTA_RULE_FORMS)
    assert _nonfinite_tokens(run_direct(variant, **case.kwargs())[0]) == [19]
    for form, fn in forms.items():
        o, _ = call_form(variant, fn, case, compute_chunk=None if form == "recurrent" else 8)
        assert _nonfinite_tokens(o) == [19], form


@pytest.mark.parametrize("mask", ["causal", "anticausal"])
@pytest.mark.parametrize("name", ["k", "v"])
def test_chunk_read_kernel_drops_what_its_mask_drops(name, mask):
    """``chunk_read``'s intra-chunk term Σ_{s ∈ c(t), mask(s, t)} (q_t · k_s) v_s, with chunks of two
    source blocks (the diagonal block and one beside it) and a ragged last chunk: a non-finite
    k_s or v_s[c] makes non-finite exactly the rows t of s's chunk that read it (all columns for
    k, column c for v), and leaves every other entry as it is without it."""
    from tttla_kernels.triton_runtime import MASK_ANTICAUSAL, MASK_CAUSAL, chunk_read

    T, L, D, column = 150, 128, 4, 1
    g = torch.Generator().manual_seed(3)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs on CPU tensors
    q, k, v = (torch.randn(1, 1, T, D, generator=g).to(device) for _ in range(3))
    flag = MASK_CAUSAL if mask == "causal" else MASK_ANTICAUSAL
    clean = chunk_read(q, k, v, None, L, flag, D)
    t = torch.arange(T)
    for s in (5, 70, 140):  # the first and the second source block of chunk 0; the ragged chunk 1
        inputs = {"k": k.clone(), "v": v.clone()}
        inputs[name][0, 0, s, column] = float("nan") if s % 2 else float("inf")
        o = chunk_read(q, inputs["k"], inputs["v"], None, L, flag, D)[0, 0].cpu()
        reads = (t // L == s // L) & ((t >= s) if mask == "causal" else (t <= s))
        expected = reads[:, None] & (torch.ones(D, dtype=torch.bool) if name == "k" else torch.arange(D) == column)
        assert torch.equal(~torch.isfinite(o), expected), f"{name}[{s}]: {_where(~torch.isfinite(o) != expected)}"
        torch.testing.assert_close(o[~expected], clean[0, 0].cpu()[~expected])
