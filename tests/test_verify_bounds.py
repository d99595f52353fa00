"""The verifier's bounds are tight: a form wrong by just more than the bound in any one quantity
(the output, the final state or any gradient), in fp64 or fp32, is rejected; just under, accepted.

The wrong form is the generated recurrent form with one quantity scaled by 1 + ε: its output or
final state (``t + ε·t.detach()``), or one input passed as ``t + ε·(t − t.detach())`` (the same value, its
gradient scaled). Its relative error in that quantity (max-relative and RMS-ratio alike) is ε, up
to the form's own rounding, and every other quantity is untouched. The reference stays the truth,
so the bound tied to plain fp32 torch (verify/tolerances.bound) is measured against the truth too.
"""

from __future__ import annotations

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


def _off_by(quantity: str, eps: float):
    """The recurrent form with ``quantity`` off by a factor 1 + ε, every other quantity exact."""
    inputs = {"∂q": "q", "∂k": "k", "∂v": "v", "∂W[W]": "initial_state", "∂lr": "lr"}

    def form(q, k, v, **kwargs):
        args = {"q": q, "k": k, "v": v, **kwargs}
        if quantity in inputs:
            t = args[inputs[quantity]]
            args[inputs[quantity]] = t + eps * (t - t.detach())  # the value of t, its gradient × (1 + ε)
        o, final = FORM(**args)
        if quantity == "o":
            o = o + eps * o.detach()  # the value × (1 + ε), its gradient untouched
        if quantity == "state[W]":
            final = final + eps * final.detach()
        return o, final

    return form


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
    above = check_form(VARIANT, "recurrent", _off_by(quantity, 1.5 * bound), ref, dtype)
    assert not above.passed and [f.split(":")[0] for f in above.failures()] == [quantity], above.failures()
    assert 1.4 * bound < above.errors[quantity] < 1.6 * bound
    below = check_form(VARIANT, "recurrent", _off_by(quantity, 0.5 * bound), ref, dtype)
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
