"""The certificate rejects what is wrong on every path it takes: plain (attention and chunk-state
forms), layered (headed, normalising or not), gated, depthwise and delta_chunk (WY/UT) forms.

A wrong form here is a derived form whose ∂L/∂f (or first layer's ∂ℓ/∂z) is off by 1 in its last
entry only, so every entry before it agrees; a form that raises while being evaluated is rejected
too, never certified.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy

import derivations.certificate as certificate
from derivations import derive, dot, momentum, sq_norm, variant, weight_norm
from derivations.certificate import certify
from derivations.normalization import layer_norm
from derivations.spec import bidirectional, chunked, per_token, token_level

# polynomial heads: a rejected form costs one simplify, fast without exp/sigmoid in the entries


def _headed():
    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(),
             schedule=chunked("block_inclusive", 2))
    def squared(x, W):
        return (x @ W) * (x @ W)

    return squared


def _gated():
    @variant(fast={"W1": ("d", "h"), "W2": ("d", "h")}, update=["W1", "W2"], loss=lambda y, v: -dot(y, v),
             lr=per_token(), schedule=bidirectional())
    def bilinear_glu(x, W1, W2):
        return (x @ W1) * (x @ W2)

    return bilinear_glu


#: path → variant (a catalog name or a declared variant)
PATHS = {
    "plain attention form": "lact_v6",
    "plain chunk-state form": "lact_v2",
    "headed": _headed(),
    "headed, normalising (stepwise)": "ttt_linear",
    "gated": _gated(),
    "depthwise": "vittt_dwconv_noclip",
    "delta_chunk": "delta_rule",
    "gated delta_chunk": "gated_delta_rule",
}


def _last_entry(shape):
    """A 1 × n matrix (n symbolic or not) that is 1 in its last entry and 0 elsewhere."""
    i, j = sympy.symbols("i j", integer=True)
    n = shape[1]
    return sympy.FunctionMatrix(shape[0], n, sympy.Lambda((i, j), sympy.KroneckerDelta(j, n - 1)))


def _wrong_in_the_last_entry(form):
    if form.is_linear:
        return dataclasses.replace(form, dloss=sympy.MatAdd(form.dloss, _last_entry(form.dloss.shape)))
    lay = form.layers[0]
    lay = dataclasses.replace(lay, dloss_z=sympy.MatAdd(lay.dloss_z, _last_entry(lay.dloss_z.shape)))
    return dataclasses.replace(form, layers=(lay, *form.layers[1:]))


@pytest.fixture(scope="module", params=sorted(PATHS), ids=str)
def form(request):
    return derive(PATHS[request.param], certify=False)


def _path(form) -> str:
    """The path the certificate takes for ``form``, named as in :data:`PATHS`."""
    c, v = form.classification, form.variant
    if c.parallel_form == "delta_chunk":
        return "gated delta_chunk" if v.decay is not None else "delta_chunk"
    if v.spatial is not None:
        return "depthwise"
    if c.structure == "headed":
        return "headed, normalising (stepwise)" if certificate._Problem(form).normalising else "headed"
    if c.structure == "gated":
        return "gated"
    return "plain attention form" if certify(form).checked.startswith("attention form") else "plain chunk-state form"


def test_the_form_itself_is_certified_on_its_path(form):
    cert = certify(form)
    assert cert.certified, cert.failure
    assert PATHS[_path(form)] in (form.variant.name, form.variant)


def test_a_form_wrong_in_its_last_entry_only_is_rejected(form):
    cert = certify(_wrong_in_the_last_entry(form))
    assert not cert.certified and cert.failure.startswith("token "), cert.failure


def test_a_form_that_raises_while_evaluated_is_rejected(form, monkeypatch):
    def raising(self, *args):
        raise ZeroDivisionError("the derived value cannot be evaluated")

    monkeypatch.setattr(certificate._Problem, "values", raising)
    cert = certify(form)
    assert not cert.certified
    assert cert.failure == "could not be computed: ZeroDivisionError: the derived value cannot be evaluated"


@pytest.mark.parametrize("name", ["delta_rule", "gated_delta_rule"])
def test_delta_chunk_form_with_a_wrong_beta_is_rejected(name, monkeypatch):
    """β_t = ±η_t c reaches only the WY/UT block form: doubling c must fail the delta_chunk check."""
    form = derive(name, certify=False)
    assert form.classification.parallel_form == "delta_chunk"
    assert "WY/UT block form" in certify(form).checked
    right = certificate.delta_coefficient
    monkeypatch.setattr(certificate, "delta_coefficient", lambda dloss, y: 2 * right(dloss, y))
    cert = certify(form)
    assert not cert.certified and "delta_chunk (WY/UT) − literal" in cert.failure, cert.failure


def test_weight_norm_keeps_a_token_level_mse_rule_off_the_delta_chunk_form():
    """Weight norm is not affine in the state: an MSE token-level rule with it must stay sequential,
    and the certificate's WY/UT check shows why (the affine composition differs from the literal loop)."""
    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(),
             weight_norm=weight_norm(), schedule=token_level())
    def normed_delta(x, W):
        return x @ W

    form = derive(normed_delta, certify=False)
    cert = certify(form)  # classified delta_chunk, the WY/UT check would fail here
    assert cert.certified, cert.failure
    assert form.classification.parallel_form == "sequential"
    assert "weight_norm" in form.classification.reason("parallel_form.sequential").facts["blockers"]
    as_delta = dataclasses.replace(form, classification=dataclasses.replace(form.classification,
                                                                            parallel_form="delta_chunk"))
    cert = certify(as_delta)
    assert not cert.certified and "delta_chunk (WY/UT) − literal" in cert.failure, cert.failure


def test_a_normalising_head_with_momentum_is_not_covered():
    """The stepwise check (a LayerNorm head) compares single steps: how momentum combines steps is
    not checked there, so such a form is reported as not covered, never certified."""
    @variant(fast={"W": ("d", "d"), "b": (1, "d"), "gamma": (1, "d"), "beta": (1, "d")}, update=["W", "b"],
             loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(), momentum=momentum("token"),
             schedule=token_level())
    def normed_momentum(x, W, b, gamma, beta):
        return x + layer_norm(x @ W + b, gamma, beta)

    cert = certify(derive(normed_momentum, certify=False))
    assert not cert.certified and cert.failure == "not covered: momentum with a normalising head"
