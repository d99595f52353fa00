"""Generality: random declarations from the grammar are refused or verified, distinct dimensions get
distinct sizes, negative learning rates are drawn, and one bound rule holds for every variant."""

import math

import pytest
import torch
from generality import check, declarations
from hypothesis import HealthCheck, Phase, given, settings

from codegen.generate import import_generated
from derivations import DeclarationError, dot, per_token, relu, variant
from derivations.catalog import CATALOG
from verify.fuzz import check_form, draw, sample_spec
from verify.inputs import make_case
from verify.tolerances import bound


@settings(max_examples=4, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(decl=declarations())
def test_random_declaration_is_refused_or_verified(decl, tmp_path_factory):
    root = tmp_path_factory.mktemp("generality")
    outcome = check(decl, root, cases=1, forms_filter=lambda names: [n for n in names if n != "triton"], limit_s=60)
    assert not outcome.traceback, f"{decl.source()}\n{outcome.message}"  # an unexpected exception is a bug
    assert outcome.status in ("refused", "verified"), f"{decl.source()}\n{outcome.message}"
    if outcome.status == "refused":
        assert f"variant {decl.name!r}" in outcome.message or "sub-expression" in outcome.message, outcome.message


@variant(fast={"W0": ("d", "h"), "W1": ("h", "h")}, update=["W1"], loss=lambda y, v: -dot(y, v), lr=per_token())
def narrow(x, W0, W1):
    return relu(x @ W0) @ W1


def test_value_dimension_is_the_predictions_named_dimension():
    assert narrow.value_dim == "h"
    with pytest.raises(DeclarationError, match=r"in \(relu\(\(x @ W0\)\) @ W1\).*\(h vs d\)"):
        variant(fast={"W0": ("d", "h"), "W1": ("d", "h")}, update="W1", loss=lambda y, v: -dot(y, v))(
            lambda x, W0, W1: relu(x @ W0) @ W1)


@pytest.mark.parametrize("name", ["lact_v2", "ttt_mlp", "linear_attention"])
def test_fuzzer_draws_distinct_sizes_for_distinct_dimensions(name):
    v = CATALOG[name]
    for seed in range(40):
        sizes = sample_spec(v, seed).sizes
        assert set(sizes) == {d for d in (*v.dims, v.value_dim) if d.isidentifier()}
        assert len(set(sizes.values())) == len(sizes), sizes


def test_narrow_prediction_verifies_with_d_unlike_h(tmp_path):
    from codegen.generate import generate

    generate(narrow, tmp_path)
    forms = import_generated("narrow", tmp_path).FORMS
    for seed in range(3):
        spec, ref = draw(narrow, seed)
        assert spec.sizes["d"] != spec.sizes["h"]
        for name in ("recurrent", "chunk"):
            assert check_form(narrow, name, forms[name], ref, torch.float64).passed
    case = make_case(narrow, sizes={"d": 4, "dv": 5, "h": 6}, seq_len=5, chunk_size=2)
    with pytest.raises(ValueError, match="'h'"):  # v as wide as the key, not the prediction
        forms["recurrent"](case.q, case.k, case.k, W0=case.initial_weights["W0"], lr=case.lr,
                           initial_state=case.initial_weights["W1"], chunk_size=2)


def test_negative_learning_rates_are_drawn():
    v = CATALOG["lact_v2"]
    lows = [sample_spec(v, seed).ranges["lr_range"][0] for seed in range(40)]
    assert min(lows) < 0
    seed = next(s for s, lo in enumerate(lows) if lo < 0)
    _, ref = draw(v, seed)
    assert (ref.case.lr < 0).any()


@pytest.mark.parametrize("name", ["linear_attention", "lact_v6", "lact_v1", "ttt_linear", "lact"])
def test_one_bound_rule_for_every_variant(name):
    v = CATALOG[name]
    factor = 2.0 if len(v.update) == 1 else 10.0
    assert bound(v, torch.float32, 1e-6) == 1e-4
    assert math.isclose(bound(v, torch.float32, 1e-3), factor * 1e-3)
    assert math.isclose(bound(v, torch.float64, 1e-3), max(1e-9, 16 * 2.0**-29 * 1e-3))


def test_a_form_off_by_more_than_plain_torch_fails_on_a_plain_variant():
    v = CATALOG["linear_attention"]
    recurrent = import_generated(v.name).FORMS["recurrent"]
    noise = {}

    def off(q, k, v_, **kw):
        o, final = recurrent(q, k, v_, **kw)
        if "o" not in noise:
            noise["o"] = torch.randn(o.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        scale = 1.5e-4 * o.detach().double().pow(2).mean().sqrt()
        return o + (scale * noise["o"] / noise["o"].pow(2).mean().sqrt()).to(o.dtype), final

    _, ref = draw(v, 0)
    assert check_form(v, "recurrent", recurrent, ref, torch.float32).passed
    result = check_form(v, "off", off, ref, torch.float32)
    assert not result.passed and result.bounds["o"] == pytest.approx(1e-4)

