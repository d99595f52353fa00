"""Grouped value heads (fla's GVA) in every generated form of every sequence variant: with q and k of
H/G heads and v of H, value head j reads query/key head j // G. Checked in fp64 against the oracle
given q and k repeated per value head, outputs, final states and every gradient (q's and k's summed
over their groups), packed sequences too; head counts that do not divide are refused by name."""

from __future__ import annotations

import pytest
import torch
from sequence_forms import SEQUENCE_VARIANTS, SIZES, usable_form, variant_forms

from codegen.generate import import_generated
from derivations.catalog import CATALOG
from verify.forms import form_kwargs
from verify.inputs import make_case
from verify.oracle import run_direct

HEADS, GROUP = 4, 2  # four value heads, two query/key heads


def _case(variant, T=9):
    chunk = None if variant.schedule.fixed else 4
    case = make_case(variant, batch=2, seq_len=T, heads=HEADS, sizes=SIZES,
                     chunk_size=chunk, requires_grad=True, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.nn.functional.normalize(torch.randn(2, T, HEADS // GROUP, case.q.shape[-1], generator=gen,
                                                      dtype=torch.float64), dim=-1).requires_grad_()
            for _ in range(2))
    return case, q, k


@pytest.mark.parametrize(("name", "form"), variant_forms(SEQUENCE_VARIANTS))
def test_grouped_value_heads_are_the_oracle_on_repeated_queries_and_keys(name, form):
    variant = CATALOG[name]
    fn = usable_form(name, form)
    case, q, k = _case(variant)
    o, final = fn(q, k, case.v, **form_kwargs(variant, case))
    repeated = {n: t.repeat_interleave(GROUP, dim=2) for n, t in (("q", q), ("k", k))}
    o_ref, final_ref = run_direct(variant, **{**case.kwargs(), **repeated})
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    final = final if isinstance(final, dict) else {variant.update[0]: final}
    for n in variant.update:
        torch.testing.assert_close(final[n], final_ref[n], rtol=1e-10, atol=1e-10)
    w = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [q, k, case.v]
    got = torch.autograd.grad((o * w).sum(), leaves, allow_unused=True)  # a variant may read no queries
    want = torch.autograd.grad((o_ref * w).sum(), leaves, allow_unused=True)
    for label, a, b, leaf in zip("qkv", got, want, leaves):
        zero = torch.zeros_like(leaf)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b, rtol=1e-9, atol=1e-10,
                                   msg=f"gradient of {label}")


def test_grouped_heads_in_packed_sequences():
    variant = CATALOG["gated_delta_rule"]
    fn = import_generated("gated_delta_rule").FORMS["chunk"]
    case, q, k = _case(variant, T=12)
    cu = torch.tensor([0, 5, 12])
    one = {n: x[:1] for n, x in case.optional.items()}  # the packed batch of one
    o, _ = fn(q[:1], k[:1], case.v[:1], cu_seqlens=cu, **one)
    o_ref, _ = fn(q[:1].repeat_interleave(GROUP, dim=2), k[:1].repeat_interleave(GROUP, dim=2), case.v[:1],
                  cu_seqlens=cu, **one)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=0)


def test_head_counts_that_do_not_divide_are_refused_by_name():
    variant = CATALOG["linear_attention"]
    fn = import_generated("linear_attention").FORMS["chunk"]
    case, q, k = _case(variant)
    three = torch.randn(2, 9, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="v has 4 heads and q and k have 3: grouped value heads need a multiple of 3"):
        fn(three, three, case.v)
    with pytest.raises(ValueError, match=r"k must have as many heads as q \(2\), got 4"):
        fn(q, case.k, case.v)
