"""Every form stays causal for non-finite input (issue 13, item 4): a NaN or inf at token t reaches
only the outputs that may depend on t.

What may depend on t is read off the oracle, the inner loop run literally: the outputs (and final
states) that change when the inputs of token t are perturbed, on any entry of a batch of random cases,
plus those the oracle itself makes non-finite (it may multiply a zero into the bad value, e.g.
momentum's zero initial buffer). Per variant, NaN and inf go into every per-token input it takes (q, k,
v and the optional ones of ``optional_inputs``) at seeded positions, among them the first token, one in
the middle of a chunk and the last; every form (recurrent, chunk, Triton) must be non-finite only where
the oracle allows it, and, for a NaN, non-finite wherever the oracle is and the output really depends on
that input (no silent finite answer). The checks are ``tests/causality.py``'s; they also run on random
declarations (a slice here, many in ``benchmarks/generality.py --nonfinite``).
"""

from __future__ import annotations

import pytest
import torch
from causality import check_forward, nonfinite_case, where
from generality import check, declarations
from hypothesis import HealthCheck, Phase, assume, given, seed, settings

from derivations.catalog import CATALOG
from tttla_kernels.delta_rule import FORMS as DELTA_RULE_FORMS
from tttla_kernels.lact_v2 import FORMS as LACT_V2_FORMS
from verify import make_case, run_direct
from verify.forms import call_form, generated_forms, usable_forms

# Triton's interpreter computes in numpy, which warns on every NaN it makes
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.parametrize("ref", list(CATALOG))
def test_nonfinite_input_stays_causal_in_every_form(ref):
    with generated_forms(ref) as (variant, forms):
        forms, _ = usable_forms(forms)
        check_forward(variant, forms, nonfinite_case(variant, batch=2))


@seed(1)  # four declarations that derive and certify in seconds (some take minutes: left to the campaign)
@settings(max_examples=4, derandomize=False, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(decl=declarations())
def test_nonfinite_input_stays_causal_for_random_declarations(decl, tmp_path_factory):
    """The same check on declarations from the grammar (``tests/generality.py``) that are not refused,
    every generated form, Triton's included (the campaign runs many more: ``--nonfinite``)."""
    outcome = check(decl, tmp_path_factory.mktemp("nonfinite"), cases=0, nonfinite=True, limit_s=60)
    assume(outcome.status != "refused")
    assert outcome.status == "verified", f"{decl.source()}\n{outcome.message}"


def _nan_at_last_key(variant):
    """The issue's input: T = 20, chunk 8, ``k[:, 19, 0, 0] = nan``."""
    case = make_case(variant, seq_len=20, chunk_size=None if variant.schedule.fixed else 8)
    case.k[:, 19, 0, 0] = float("nan")
    return case


def _nonfinite_tokens(o: torch.Tensor) -> list[int]:
    return sorted({t for _, t, _ in where(~torch.isfinite(o).all(-1))})


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
        assert torch.equal(~torch.isfinite(o), expected), f"{name}[{s}]: {where(~torch.isfinite(o) != expected)}"
        torch.testing.assert_close(o[~expected], clean[0, 0].cpu()[~expected])
