"""Hypothesis properties of the case generators and the verifier, driven by the same
generators `tttla verify` uses (deterministic under CI=true, see conftest.py)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derivations.catalog import CATALOG
from tttla_kernels import delta_rule, lact_v6
from verify.forms import cast_case, form_kwargs, usable_forms
from verify.fuzz import build_case, draw, run_campaign, sample_spec

seeds = st.integers(min_value=0, max_value=2**31)
names = st.sampled_from(sorted(CATALOG))


@given(name=names, seed=seeds, attempt=st.integers(0, 3))
def test_specs_are_pure_and_in_range(name, seed, attempt):
    variant = CATALOG[name]
    spec = sample_spec(variant, seed, attempt)
    assert spec == sample_spec(variant, seed, attempt)
    assert 1 <= spec.batch <= 2 and 1 <= spec.heads <= 3 and spec.seq_len >= 1
    assert all(1 <= n <= 9 for n in spec.sizes.values())
    if variant.schedule.fixed:
        assert spec.chunk_size == variant.schedule.chunk_size
    else:
        assert 1 <= spec.chunk_size <= 8


@given(name=names, seed=seeds)
@settings(max_examples=10)
def test_cases_match_their_spec(name, seed):
    variant = CATALOG[name]
    spec = sample_spec(variant, seed)
    case, _ = build_case(variant, spec)
    assert case.q.shape[:3] == (spec.batch, spec.seq_len, spec.heads)
    assert all(t.requires_grad and t.dtype == torch.float64 for t in case.leaves().values())
    kwargs = form_kwargs(variant, cast_case(case, torch.float32))
    assert ("chunk_size" in kwargs) == (not variant.schedule.fixed)
    again, _ = build_case(variant, spec)
    assert torch.equal(case.v, again.v)


@given(seed=seeds, module=st.sampled_from([lact_v6, delta_rule]), dtype=st.sampled_from(["float64", "float32"]))
@settings(max_examples=8)
def test_forms_agree_with_the_oracle(seed, module, dtype):
    variant = CATALOG[module.VARIANT]
    forms, _ = usable_forms(dict(module.FORMS))  # the Triton form in the interpreter, or on the GPU
    campaign = run_campaign(variant, forms, cases=1, seed=seed, dtype=getattr(torch, dtype))
    assert campaign.passed, [r.failures() for _, r in campaign.failures()]


@given(seed=seeds)
@settings(max_examples=5)
def test_oracle_answers_are_finite(seed):
    _, ref = draw(CATALOG["lact_v3"], seed)
    assert all(t is None or torch.isfinite(t).all() for t in ref.quantities().values())
