"""The exact symbolic certificate: every reducible catalog variant is certified, wrong forms are not."""

from __future__ import annotations

import dataclasses

import pytest
import sympy

from derivations import derive, dot, momentum, newton_schulz, silu, sq_norm, variant, weight_norm
from derivations.catalog import CATALOG
from derivations.certificate import certify
from derivations.spec import bidirectional, chunked, per_token, token_level


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_is_certified(name):
    form = derive(name)
    cert = form.certificate
    assert cert.certified, cert.failure
    assert cert.sizes["T"] == 3 and cert.sizes["d"] == 2
    assert any("φ" in a for a in cert.abstract)
    v = form.variant
    assert (v.orthogonalize is not None) == any("Newton–Schulz" in a for a in cert.abstract)
    assert (v.weight_norm is not None) == any("weight norm" in a for a in cert.abstract)
    plain_scan = v.orthogonalize is None and v.clip is None and v.decay is None
    if form.classification.parallel and form.is_linear and plain_scan:
        assert cert.checked.startswith("attention form")
    if v.decay is not None:  # the decayed chunk states against the literal loop
        assert cert.checked.startswith("chunk-state form") and "γ_r" in cert.checked
    print(f"derive({name}) with its certificate: {form.seconds:.2f} s")  # reported, never asserted


def test_wrong_value_is_not_certified():
    form = derive("lact_v6", certify=False)
    bad = dataclasses.replace(form, dloss=sympy.MatMul(2, form.dloss))
    assert not certify(bad).certified
    mse = derive("delta_rule", certify=False)
    wrong = dataclasses.replace(mse, dloss=mse.v)  # drops the state dependence
    result = certify(wrong)
    assert not result.certified and "token" in result.failure


def test_clip_is_abstract_and_still_checks_the_value():
    form = derive("vittt_dwconv", certify=False)
    cert = certify(form)
    assert cert.certified and any("clip" in a for a in cert.abstract) and "Clip(Δ_m)" in cert.checked
    assert not certify(dataclasses.replace(form, dloss=sympy.MatMul(2, form.dloss))).certified


def _v(schedule, mom=None, ns=None, wn=None, loss=lambda y, v: -dot(y, v)):
    @variant(fast={"W0": ("d", "h"), "W": ("h", "d")}, update=["W"], loss=loss, lr=per_token(),
             momentum=mom, orthogonalize=ns, weight_norm=wn, schedule=schedule)
    def custom(x, W0, W):
        return (x @ W0) @ W

    return custom


@pytest.mark.parametrize("rule", [
    dict(schedule=chunked("block_inclusive", 2), mom=momentum("chunk")),
    dict(schedule=chunked("apply_then_update", 2), mom=momentum("chunk")),
    dict(schedule=bidirectional(), ns=newton_schulz(2)),
    dict(schedule=token_level(), mom=momentum("token")),
    dict(schedule=chunked("update_then_apply", 2)),
    dict(schedule=token_level(), wn=weight_norm(), loss=lambda y, v: 0.5 * sq_norm(y - v)),
])
def test_schedules_and_components_are_certified(rule):
    form = derive(_v(**rule))
    assert form.certificate.certified, form.certificate.failure


def _headed(**rule):
    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(),
             schedule=chunked("block_inclusive", 2), **rule)
    def headed(x, W):
        return silu(x @ W)

    return headed


def _with_layer(form, **changes):
    """``form`` with its first layer's fields replaced (a frozen dataclass, copied)."""
    layer = dataclasses.replace(form.layers[0], **changes)
    return dataclasses.replace(form, layers=(layer, *form.layers[1:]))


def test_headed_form_with_a_wrong_value_is_not_certified():
    """silu(x·W): the head is absorbed into ∂ℓ/∂z; a value off by the head's derivative is rejected."""
    form = derive(_headed(), certify=False)
    assert form.classification.structure == "headed" and certify(form).certified
    lay = form.layers[0]
    z = lay.z
    without_head = form.dloss.xreplace({form.y: z})  # ∂L/∂f taken for ∂ℓ/∂z: forgets silu′(z)
    assert not certify(_with_layer(form, dloss_z=without_head)).certified


def test_headed_form_with_momentum_is_certified_through_the_chunk_state_form():
    form = derive(_headed(momentum=momentum("chunk")))
    assert form.certificate.certified, form.certificate.failure
    assert "equals the literal inner loop" in form.certificate.checked


def test_a_form_wrong_only_at_a_later_token_is_rejected_there():
    """apply_then_update, chunk 2: tokens 0 and 1 read S_0, so a wrong value shows only at token 2."""
    form = derive("lact_v6", certify=False)
    assert form.variant.schedule.order == "apply_then_update"
    result = certify(dataclasses.replace(form, dloss=sympy.MatMul(2, form.dloss)))
    assert not result.certified and result.failure.startswith("token 2:"), result.failure
