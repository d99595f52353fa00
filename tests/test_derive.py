"""derive(): classification of the catalog, errors naming the sub-expression, effective values."""

from __future__ import annotations

import re
import time

import pytest
import sympy
import torch

from derivations import ReductionError, derive, dot, silu, variant
from derivations.catalog import CATALOG
from derivations.functions import ElementwiseFunction
from derivations.numeric import evaluate
from derivations.printing import to_text
from derivations.reasons import sentence
from derivations.spec import chunked, per_token
from tttla.reporting import formulas

EXPECTED = {
    "lact": ("dynamic", "state_independent", False),
    "lact_ga": ("dynamic", "state_independent", False),
    "lact_no_query": ("dynamic", "state_independent", False),
    "lact_v1": ("static", "state_independent", False),
    "lact_v2": ("static", "state_independent", True),
    "lact_v3": ("static", "state_independent", True),
    "lact_v4": ("static", "state_independent", True),
    "lact_v5": ("static", "state_independent", True),
    "lact_v6": ("static", "state_independent", True),
    "lact_mse": ("dynamic", "state_dependent", False),
    "delta_rule": ("static", "state_dependent", False),
    "gated_delta_rule": ("static", "state_dependent", False),
    "titans": ("static", "state_dependent", False),
    "linear_attention": ("static", "state_independent", True),
    "ttt_linear": ("static", "state_dependent", False),
    "ttt_mlp": ("dynamic", "state_dependent", False),
    "vittt_glu": ("static", "state_dependent", True),
    "vittt_glu_noclip": ("static", "state_dependent", True),
    "vittt_dwconv": ("static", "state_independent", True),
    "vittt_dwconv_noclip": ("static", "state_independent", True),
    "simple_gla": ("static", "state_independent", True),
    "retention": ("static", "state_independent", True),
    "gla": ("static", "state_independent", True),
    "mamba2": ("static", "state_independent", True),
}

#: the chunked parallel form of every catalog variant (prefix_scan exactly when parallel)
PARALLEL_FORM = {
    "lact": "sequential",
    "lact_ga": "sequential",
    "lact_no_query": "sequential",
    "lact_v1": "sequential",
    "lact_v2": "prefix_scan",
    "lact_v3": "prefix_scan",
    "lact_v4": "prefix_scan",
    "lact_v5": "prefix_scan",
    "lact_v6": "prefix_scan",
    "lact_mse": "sequential",
    "delta_rule": "delta_chunk",
    "gated_delta_rule": "delta_chunk",
    "titans": "sequential",
    "linear_attention": "prefix_scan",
    "ttt_linear": "sequential",
    "ttt_mlp": "sequential",
    "vittt_glu": "prefix_scan",
    "vittt_glu_noclip": "prefix_scan",
    "vittt_dwconv": "prefix_scan",
    "vittt_dwconv_noclip": "prefix_scan",
    "simple_gla": "prefix_scan",
    "retention": "prefix_scan",
    "gla": "prefix_scan",
    "mamba2": "prefix_scan",
}


#: each variant's reason codes; "not_parallel" and "parallel_form.sequential" as code.blocker, per blocker
_MOMENTUM_CHUNKS = ("parallel_form.sequential.momentum", "parallel_form.sequential.not_token_steps")
_LACT_SEQUENTIAL = ("parallel_form.sequential.weight_norm", "parallel_form.sequential.newton_schulz",
                    *_MOMENTUM_CHUNKS)
_PREFIX_SCAN = ("reducible.plain", "kernel.static", "values.state_independent", "parallel.prefix_scan")
_DYNAMIC_LACT = ("reducible.plain", "kernel.dynamic", "not_parallel.dynamic_kernel", "not_parallel.weight_norm",
                 "parallel_form.sequential.dynamic_kernel", *_LACT_SEQUENTIAL)
_DELTA = ("reducible.plain", "kernel.static", "values.state_dependent", "not_parallel.state_dependent_values",
          "parallel_form.delta_chunk")
_ONE_STEP_DWCONV = ("lowered.depthwise", "reducible.plain", "kernel.static", "values.state_independent",
                    "parallel.one_step")
_GLU = ("reducible.linear_layer", "structure.gated", "kernel.static", "values.state_dependent", "parallel.one_step")
CODES = {
    **{name: {*_DYNAMIC_LACT, "values.state_independent"} for name in ("lact", "lact_ga", "lact_no_query")},
    "lact_mse": {*_DYNAMIC_LACT, "values.state_dependent", "not_parallel.state_dependent_values"},
    "lact_v1": {"reducible.plain", "kernel.static", "values.state_independent", "not_parallel.weight_norm",
                *_LACT_SEQUENTIAL},
    **{name: {*_PREFIX_SCAN} for name in ("lact_v2", "lact_v3", "lact_v4", "lact_v5", "lact_v6", "linear_attention",
                                          "simple_gla", "retention", "gla", "mamba2")},
    "delta_rule": {*_DELTA},
    "gated_delta_rule": {*_DELTA},
    "titans": {"reducible.plain", "kernel.static", "values.state_dependent", "not_parallel.state_dependent_values",
               *_MOMENTUM_CHUNKS},
    "ttt_linear": {"reducible.bias_key", "structure.head", "kernel.static", "values.state_dependent",
                   "not_parallel.state_dependent_values"},
    "ttt_mlp": {"reducible.bias_key", "structure.head", "kernel.dynamic", "values.state_dependent",
                "not_parallel.dynamic_kernel", "not_parallel.state_dependent_values"},
    "vittt_dwconv": {*_ONE_STEP_DWCONV},
    "vittt_dwconv_noclip": {*_ONE_STEP_DWCONV},
    "vittt_glu": {*_GLU},
    "vittt_glu_noclip": {*_GLU},
}

#: a theorem or section cited in a sentence
_REF = re.compile(r"Theorem 5\.\d|Section \d(?:\.\d)?")


def _codes(c) -> set[str]:
    """The classification's codes, a reason with blockers written as ``code.blocker`` for each."""
    return {name for r in c.reasons
            for name in ([f"{r.code}.{b}" for b in r.facts["blockers"]] if "blockers" in r.facts else [r.code])}


def test_every_catalog_variant_is_classified():
    assert set(EXPECTED) == set(CATALOG) == set(CODES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classification(name):
    start = time.perf_counter()
    form = derive(name)
    elapsed = time.perf_counter() - start
    print(f"derive({name}): {elapsed:.3f} s")  # reported, never asserted
    c = form.classification
    assert c.reducible
    assert (c.kernel, c.values, c.parallel) == EXPECTED[name]
    assert c.parallel_form == PARALLEL_FORM[name]
    assert (c.parallel_form == "prefix_scan") == c.parallel
    assert _codes(c) == CODES[name]
    for reason in c.reasons:  # each sentence cites exactly the theorems and sections its reason rests on
        assert list(dict.fromkeys(_REF.findall(sentence(reason)))) == list(reason.basis), reason.code
    if name == "lact_v1":
        assert c.reason("not_parallel").facts["blockers"] == ("weight_norm",)


def test_lact_form_pieces():
    form = derive("lact", certify=False)
    assert form.state == "W1" and form.feature_weights == ("W0", "W2")
    assert form.query.has(form.theta_next["W0"]) and form.key.has(form.theta_t["W0"])
    assert set(form.gradients) == {"W0", "W1", "W2"}
    assert formulas.kernel_recurrence(form) and formulas.momentum_coefficients(form) and formulas.chunk_transform(form)
    recurrence = formulas.kernel_recurrence(form)[0].latex
    assert recurrence.startswith("W0_{t+1} = W0_{t} ") and r"\nabla_{W0} \ell_t = " in recurrence
    assert form.mask == "block-exclusive"
    nq = derive("lact_no_query", certify=False)
    assert not nq.query.has(nq.q) and nq.query.has(nq.k)
    ga = derive("lact_ga", certify=False)
    # ascent flips v̂
    assert ga.value == sympy.MatMul(-form.eta, form.v) and form.value == sympy.MatMul(form.eta, form.v)


def test_identity_feature_and_state_dependent_value():
    v6 = derive("lact_v6", certify=False)
    assert v6.feature == v6.x and v6.query == v6.q and v6.key == v6.k and v6.value == v6.v
    dr = derive("delta_rule", certify=False)
    assert dr.value.has(dr.state_t) and dr.mask == "token-inclusive"


def _declare(model, fast, update, loss=lambda y, v: -dot(y, v)):
    return variant(fast=fast, update=update, loss=loss, schedule=chunked("apply_then_update", 4))(model)


def test_nonlinear_last_layer_is_a_head():
    """silu(x·W) is not φ(x)·W: the linear layer z = x·W is taken out and silu becomes the output
    head, absorbed into the effective loss (values then read the state through silu′)."""

    def nonlinear(x, W):
        return silu(x @ W)

    v = _declare(nonlinear, {"W": ("d", "d")}, ["W"])
    form = derive(v)
    c = form.classification
    assert c.structure == "headed" and c.values == "state_dependent" and not c.parallel
    head = c.reason("structure.head").facts
    assert to_text(head["head"]) == "silu(z_W)" and head["z"].name == "z_W"
    assert form.certificate.certified, form.certificate.failure


def test_biased_last_layer_is_a_constant_one_feature():
    def biased(x, W, b):
        return x @ W + b

    v = _declare(biased, {"W": ("d", "d"), "b": (1, "d")}, ["W", "b"])
    form = derive(v)
    assert form.layers[0].bias == "b" and form.classification.values == "state_independent"
    assert form.classification.reason("reducible.bias_key").facts["bias"] == "b"
    assert form.certificate.certified, form.certificate.failure


def test_static_last_layer_becomes_the_head():
    def two(x, W0, W1):
        return silu(x @ W0) @ W1

    v = _declare(two, {"W0": ("d", "d"), "W1": ("d", "d")}, ["W0"])
    form = derive(v, certify=False)
    head = form.classification.reason("structure.head").facts["head"]
    assert form.state == "W0" and to_text(head) == "silu(z_W0)·W1"


def test_weight_outside_its_linear_layer_is_named():
    def squared(x, W):
        return (x @ W) @ W

    v = _declare(squared, {"W": ("d", "d")}, ["W"])
    with pytest.raises(ReductionError, match=r"the updated fast weight W enters it through z_W·W"):
        derive(v)


def test_unsupported_function_is_named():
    mysin = ElementwiseFunction("mysin", torch.sin, sympy.Function("mysin"), "torch.sin({})")

    def odd(x, W0, W1):
        return mysin(x @ W0) @ W1

    v = _declare(odd, {"W0": ("d", "d"), "W1": ("d", "d")}, ["W1"])
    with pytest.raises(ReductionError, match=r"unsupported function mysin in mysin\(x·W0\)"):
        derive(v)


def test_feature_times_state_is_the_model():
    form = derive("lact", certify=False)
    g = torch.Generator().manual_seed(1)
    env = {n: torch.randn(4, 4, dtype=torch.float64, generator=g) for n in ("W0", "W1", "W2")}
    env["x"] = torch.randn(1, 4, dtype=torch.float64, generator=g)
    trace = form.variant.trace()
    torch.testing.assert_close(evaluate(form.feature, env) @ env["W1"], evaluate(trace.prediction, env))


def test_lact_v2_effective_value_gives_the_oracle_increment():
    """Σ_i k̂_iᵀ v̂_i over a chunk equals the oracle's ΔW1 (autograd) for that chunk."""
    from verify.inputs import make_case
    from verify.oracle import increments

    v2 = CATALOG["lact_v2"]
    form = derive(v2, certify=False)
    case = make_case(v2, seq_len=5, sizes={"d": 4, "dv": 5, "h": 3}, generator=torch.Generator().manual_seed(3))
    W = {n: w[0, 0].clone().requires_grad_(n in v2.update) for n, w in case.initial_weights.items()}
    K, V, eta = case.k[0, :, 0], case.v[0, :, 0], case.lr[0, :, 0]
    want = increments(v2, W, K, V, {"W1": eta[:, None]}, False)["W1"]
    got = torch.zeros_like(want)
    for i in range(K.shape[0]):
        env = {**{n: w.detach() for n, w in W.items()}, "k": K[i:i + 1], "v": V[i:i + 1], "eta_t": eta[i]}
        got += evaluate(form.key, env).T @ evaluate(form.value, env)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)


def test_derived_gradients_match_autograd_for_lact():
    form = derive("lact", certify=False)
    g = torch.Generator().manual_seed(2)
    env = {n: torch.randn(3, 3, dtype=torch.float64, generator=g).requires_grad_() for n in ("W0", "W1", "W2")}
    env["k"] = torch.randn(1, 3, dtype=torch.float64, generator=g)
    env["v"] = torch.randn(1, 3, dtype=torch.float64, generator=g)
    pred = evaluate(form.feature.xreplace({form.x: form.k}), env) @ env["W1"]
    ell = -(pred * env["v"]).sum()
    for name, want in zip(("W0", "W1", "W2"), torch.autograd.grad(ell, [env[n] for n in ("W0", "W1", "W2")])):
        torch.testing.assert_close(evaluate(form.gradients[name], env), want)


def test_per_token_user_variant_derives():
    @variant(fast={"W": ("d", "e")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(),
             schedule=chunked("block_inclusive", 8))
    def wide(x, W):
        return x @ W

    form = derive(wide)
    assert form.classification.parallel and form.mask == "block-inclusive" and form.certificate.certified
