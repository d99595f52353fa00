"""fla's ``scale`` of the queries in every generated form of every variant that reads queries: the form
equals the oracle given the same scale (fp64, forward and backward), linear attention's output scales
with it as fla's does, it passes through packed sequences, and a scale that is not a finite real
number is refused by name."""

from __future__ import annotations

import pytest
import torch
from sequence_forms import SEQUENCE_VARIANTS, SIZES, usable_form, variant_forms

from codegen.generate import import_generated
from derivations.catalog import CATALOG
from verify.forms import form_kwargs
from verify.inputs import make_case
from verify.oracle import run_direct

SCALE = 0.37
SCALED_VARIANTS = [n for n in SEQUENCE_VARIANTS if CATALOG[n].queries != "key"]


def _case(variant, T=11):
    chunk = None if variant.schedule.fixed else 4
    return make_case(variant, batch=2, seq_len=T, heads=2, sizes=SIZES,
                     chunk_size=chunk, requires_grad=True, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(("name", "form"), variant_forms(SCALED_VARIANTS))
def test_a_scaled_form_is_the_scaled_oracle_fp64(name, form):
    variant = CATALOG[name]
    fn = usable_form(name, form)
    case = _case(variant)
    o, final = fn(case.q, case.k, case.v, scale=SCALE, **form_kwargs(variant, case))
    o_ref, final_ref = run_direct(variant, scale=SCALE, **case.kwargs())
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    final = final if isinstance(final, dict) else {variant.update[0]: final}
    for n in variant.update:
        torch.testing.assert_close(final[n], final_ref[n], rtol=1e-10, atol=1e-10)
    w = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad((o * w).sum(), case.q)[0]
    want = torch.autograd.grad((o_ref * w).sum(), case.q)[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    unscaled, _ = run_direct(variant, **case.kwargs())
    assert not torch.allclose(o_ref, unscaled)  # the scale reached the output


@pytest.mark.parametrize("form", ["recurrent", "chunk", "triton"])
def test_linear_attention_output_scales_as_in_fla(form):
    """fla's o = scale · q S: for a layer linear in q, scaling q scales o."""
    variant = CATALOG["linear_attention"]
    fn = import_generated("linear_attention").FORMS[form]
    case = _case(variant)
    kwargs = form_kwargs(variant, case)
    o_scaled, final_scaled = fn(case.q, case.k, case.v, scale=SCALE, **kwargs)
    o, final = fn(case.q, case.k, case.v, **kwargs)
    torch.testing.assert_close(o_scaled, SCALE * o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final_scaled, final, rtol=0, atol=0)  # the state does not read q


def test_scale_reaches_every_packed_sequence():
    variant = CATALOG["simple_gla"]
    fn = import_generated("simple_gla").FORMS["chunk"]
    case = make_case(variant, batch=1, seq_len=12, heads=2, sizes={"d": 3, "dv": 4},
                     generator=torch.Generator().manual_seed(2))
    cu = torch.tensor([0, 5, 12])
    kwargs = {n: x for n, x in form_kwargs(variant, case).items() if n != "initial_state"}
    o, _ = fn(case.q, case.k, case.v, scale=SCALE, cu_seqlens=cu, **kwargs)
    o_plain, _ = fn(case.q, case.k, case.v, cu_seqlens=cu, **kwargs)
    torch.testing.assert_close(o, SCALE * o_plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", ["0.5", float("nan"), float("inf"), True, None, torch.tensor(0.5)])
def test_a_scale_that_is_not_a_finite_real_number_is_refused(scale):
    fn = import_generated("delta_rule").FORMS["chunk"]
    case = _case(CATALOG["delta_rule"])
    with pytest.raises(ValueError, match="scale must be a finite real number"):
        fn(case.q, case.k, case.v, scale=scale, **form_kwargs(CATALOG["delta_rule"], case))
    with pytest.raises(ValueError, match="scale must be a finite real number"):
        run_direct("delta_rule", scale=scale, **case.kwargs())


def test_a_layer_that_reads_no_queries_takes_no_scale():
    reads_keys = next(n for n, v in CATALOG.items() if v.queries == "key")
    case = _case(CATALOG[reads_keys])
    with pytest.raises(ValueError, match="does not read"):
        run_direct(reads_keys, scale=SCALE, **case.kwargs())
    with pytest.raises(TypeError, match="scale"):
        import_generated(reads_keys).FORMS["chunk"](case.q, case.k, case.v, scale=SCALE,
                                                    **form_kwargs(CATALOG[reads_keys], case))
