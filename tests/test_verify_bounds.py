"""The verifier's bounds are tight: a form wrong by just more than the bound in any one quantity
(the output, the final state or any gradient), in fp64 or fp32, is rejected; just under, accepted.

The wrong form is the generated recurrent form compared against a reference whose one quantity
was divided by 1 + ε: the form's relative error in that quantity (max-relative and RMS-ratio
alike) is ε, up to the form's own rounding, and every other quantity is untouched.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tttla_kernels.delta_rule as delta_rule
from derivations.catalog import CATALOG
from verify.fuzz import check_form, draw
from verify.tolerances import DEFAULTS, relative_error

VARIANT = CATALOG["delta_rule"]
FORM = delta_rule.FORMS["recurrent"]
#: DESIGN.md, "Tolerances": fp64 max-relative error ≤ 1e-9 (the exactness check), fp32 RMS ratio ≤ 1e-4
DOCUMENTED = {torch.float64: ("max_rel", 1e-9), torch.float32: ("rms_ratio", 1e-4)}
DTYPES = list(DOCUMENTED)
QUANTITIES = ["o", "state[W]", "∂q", "∂k", "∂v", "∂W[W]", "∂lr"]


def _reference():
    _, ref = draw(VARIANT, 1, seq_len=6, batch=1, heads=1)
    return ref


def _off_by(ref, quantity: str, eps: float):
    """``ref`` with ``quantity`` divided by 1 + ε (so the right answer is off by ε relative)."""
    scale = 1 / (1 + eps)
    if quantity == "o":
        return dataclasses.replace(ref, o=ref.o * scale, _plain={})
    if quantity.startswith("state["):
        name = quantity[len("state["):-1]
        return dataclasses.replace(ref, final={**ref.final, name: ref.final[name] * scale}, _plain={})
    name = quantity.removeprefix("∂")
    return dataclasses.replace(ref, grads={**ref.grads, name: ref.grads[name] * scale}, _plain={})


def test_every_quantity_is_compared():
    ref = _reference()
    assert set(ref.quantities()) == set(QUANTITIES)
    for dtype in DTYPES:
        result = check_form(VARIANT, "recurrent", FORM, ref, dtype)
        assert set(result.errors) == set(QUANTITIES) and result.passed, result.failures()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_a_form_just_above_the_bound_is_rejected_just_below_accepted(quantity, dtype):
    ref, bound = _reference(), DOCUMENTED[dtype][1]
    above = check_form(VARIANT, "recurrent", FORM, _off_by(ref, quantity, 1.5 * bound), dtype)
    assert not above.passed and [f.split(":")[0] for f in above.failures()] == [quantity], above.failures()
    assert 1.4 * bound < above.errors[quantity] < 1.6 * bound
    below = check_form(VARIANT, "recurrent", FORM, _off_by(ref, quantity, 0.5 * bound), dtype)
    assert below.passed, below.failures()


def test_the_bounds_are_the_documented_ones():
    assert {dtype: (t.metric, t.bound) for dtype, t in DEFAULTS.items()} == DOCUMENTED


def test_a_form_that_raises_fails():
    def raising(*args, **kwargs):
        raise RuntimeError("boom")

    result = check_form(VARIANT, "broken", raising, _reference(), torch.float64)
    assert not result.passed and result.failures() == ["raised RuntimeError: boom"]


def test_a_reference_of_zeros_is_compared_in_absolute_terms_and_non_finite_is_infinitely_wrong():
    zeros, small = torch.zeros(3, dtype=torch.float64), torch.full((3,), 2e-9, dtype=torch.float64)
    for metric in ("max_rel", "rms_ratio"):
        assert relative_error(zeros, small, metric) == pytest.approx(2e-9)
        assert relative_error(small, torch.tensor([2e-9, float("nan"), 2e-9]), metric) == float("inf")


def test_a_form_whose_final_state_has_a_wrong_backward_fails():
    """The final state's value is right but its gradient leaks into ∂k: the outer loss must read
    the final state, or no gradient through it is ever checked."""
    def leaky(q, k, v, **kwargs):
        o, state = FORM(q, k, v, **kwargs)
        return o, state + (k.sum() - k.sum().detach())  # + 0, with ∂/∂k = 1 per entry

    result = check_form(VARIANT, "leaky", leaky, _reference(), torch.float64)
    assert [f.split(":")[0] for f in result.failures()] == ["∂k"], result.failures()
