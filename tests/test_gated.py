"""Decayed and gated prefix scans (simple_gla, retention, gla and declared ones): the declaration,
and every generated form against the oracle, forward and backward, in fp64 and fp32, on odd
shapes, with gates near 0 and very negative, on per-token and per-chunk schedules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from oracle_checks import check_against_oracle

from codegen.generate import import_generated
from derivations import (
    DeclarationError,
    chunked,
    constant,
    decay,
    derive,
    dot,
    momentum,
    per_token,
    token_level,
    variant,
)
from derivations.catalog import CATALOG
from verify import make_case, run_direct
from verify.forms import cast_case, generated_forms, usable_forms

GATED = ("simple_gla", "retention", "gla", "mamba2")


def _case(v, T, seed=0, **ranges):
    return make_case(v, batch=2, seq_len=T, heads=3, sizes={"d": 5, "dv": 6, "e": 4}, requires_grad=True,
                     generator=torch.Generator().manual_seed(seed), **ranges)


def _with_log_decay(case, value: float):
    """``case`` with every gate g = log γ set to ``value``."""
    g = torch.full_like(case.log_decay, value).requires_grad_()
    return dataclasses.replace(case, optional={**case.optional, "log_decay": g})


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize(("T", "chunk"), [(1, 8), (5, 8), (13, 4), (24, 8), (21, 64)],
                         ids=["T=1", "T<chunk", "ragged", "multiple", "one-chunk"])
def test_gated_forms_equal_the_oracle_fp64(name, T, chunk):
    v = CATALOG[name]
    forms = import_generated(name).FORMS
    case = _case(v, T, seed=T + chunk)
    for _form, fn in usable_forms(forms)[0].items():
        check_against_oracle(v, fn, case, chunk_size=chunk)


@pytest.mark.parametrize("name", ("simple_gla", "gla"))
@pytest.mark.parametrize("gate", [-1e-3, -20.0], ids=["near-0", "very-negative"])
def test_gates_near_zero_and_very_negative(name, gate):
    """g = −20 per token: Γ over a chunk of 16 is e^(−320), which underflows to 0 in fp32 and is
    tiny in fp64; the log-space ratios never form e^(+320), so nothing is inf or NaN."""
    v = CATALOG[name]
    case = _with_log_decay(_case(v, 37), gate)
    for form, fn in usable_forms(import_generated(name).FORMS)[0].items():
        check_against_oracle(v, fn, case, chunk_size=16)
        o, final = fn(**{"q": case.q.float(), "k": case.k.float(), "v": case.v.float()},
                      log_decay=case.log_decay.float(), output_final_state=True, chunk_size=16)
        assert torch.isfinite(o).all() and torch.isfinite(final).all(), form


@pytest.mark.parametrize("name", GATED)
def test_gated_forms_in_fp32(name):
    """fp32 against the fp64 oracle: outputs, final state and every gradient to 1e-4 (relative to
    each quantity's largest entry)."""
    v = CATALOG[name]
    case = _case(v, 29, seed=3)
    o_ref, final_ref = run_direct(v, **case.kwargs())
    want_grads = torch.autograd.grad(o_ref.sum() + final_ref["W"].sum(), list(case.leaves().values()))
    for form, fn in usable_forms(import_generated(name).FORMS)[0].items():
        c32 = cast_case(case, torch.float32)
        kwargs = {n: t for n, t in c32.optional.items() if t is not None}
        o, final = fn(c32.q, c32.k, c32.v, **kwargs, initial_state=c32.initial_weights["W"],
                      output_final_state=True, chunk_size=8)
        for what, got, want in (("o", o, o_ref), ("final", final, final_ref["W"])):
            err = (got.double() - want).abs().max() / want.abs().max()
            assert err < 1e-4, f"{name} {form} {what}: {err:.2e}"
        grads = torch.autograd.grad(o.sum() + final.sum(), list(c32.leaves().values()))
        for label, g32, g64 in zip(c32.leaves(), grads, want_grads):
            err = (g32.double() - g64).abs().max() / g64.abs().max().clamp_min(1e-30)
            assert err < 1e-4, f"{name} {form} gradient of {label}: {err:.2e}"


def _declared(schedule, gate="token", order="gradient_then_decay", **kw):
    @variant(fast={"W": ("d", "e")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(), schedule=schedule,
             decay=decay(order, gate=gate), **kw)
    def decayed_chunks(x, W):
        """A dot-product layer decayed once per chunk."""
        return x @ W

    return decayed_chunks


@pytest.mark.parametrize("order", ["apply_then_update", "block_inclusive"])
@pytest.mark.parametrize("gate", ["token", "channel"])
@pytest.mark.parametrize("mix", [None, "momentum"])
def test_per_chunk_decay_forms_equal_the_oracle(order, gate, mix):
    """A schedule that steps once per chunk decays by Γ_n = exp(Σ_(t ∈ n) g_t) (with momentum too)."""
    extra = {"momentum": momentum("chunk")} if mix else {}
    v = _declared(chunked(order, 4), gate=gate, **extra)
    assert derive(v).classification.parallel_form == "prefix_scan"
    case = make_case(v, batch=2, seq_len=11, heads=2, sizes={"d": 3, "dv": 4, "e": 4}, chunk_size=4, requires_grad=True,
                     generator=torch.Generator().manual_seed(1))
    with generated_forms(v) as (_, forms):
        forms, _ = usable_forms(forms)
        assert set(forms) == {"recurrent", "chunk", "triton"}
        for _form, fn in forms.items():
            check_against_oracle(v, fn, case, chunk_size=4)


def test_retention_decays_by_its_declared_constant():
    """retention takes no log_decay: γ_h = 1 − 2^(−5−h) per head, from the declaration."""
    v = CATALOG["retention"]
    assert v.decay.gamma_of_head(3) == [1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7]
    case = make_case(v, seq_len=3, heads=2, sizes={"d": 2, "dv": 3})
    assert "log_decay" not in case.optional
    with pytest.raises(ValueError, match=r"takes no log_decay \(decay: constant per-head decay"):
        run_direct(v, **case.kwargs(), log_decay=torch.zeros(1, 3, 2, dtype=torch.float64))
    # one head, one token, zero initial state: S_1 = k_1ᵀv_1, then S_2 = γ_0 S_1 + k_2ᵀv_2
    q = k = torch.eye(2, dtype=torch.float64).view(1, 2, 1, 2)
    vals = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 2, 1, 2)
    o, _ = import_generated("retention").FORMS["chunk"](q, k, vals, chunk_size=2)
    assert torch.allclose(o[0, :, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    _, final = import_generated("retention").FORMS["recurrent"](q, k, vals, output_final_state=True)
    torch.testing.assert_close(final[0, 0], torch.tensor([[31 / 32, 62 / 32], [3.0, 4.0]], dtype=torch.float64))


def test_gate_declaration_errors():
    with pytest.raises(DeclarationError, match=r"decay\(gate='diagonal'\): expected 'token' or 'channel'"):
        decay(gate="diagonal")
    with pytest.raises(DeclarationError, match=r"gives γ_0 = 2 at head 0; expected a number in \(0, 1\]"):
        decay(per_head=lambda h: 2 + h)
    with pytest.raises(DeclarationError, match="cannot evaluate it at a symbolic head index"):
        decay(per_head=lambda h: [0.5][h])
    with pytest.raises(DeclarationError, match="a per-head decay is its own gate"):
        decay(gate="channel", per_head=lambda h: 0.5)
    with pytest.raises(DeclarationError, match="their rows must be the key dimension 'd'; W has rows 'h'"):
        variant(fast={"W": ("h", "d"), "A": ("d", "h")}, update="W", loss=lambda y, v: -dot(y, v),
                lr=constant(1.0), schedule=token_level(), decay=decay(gate="channel"))(lambda x, A, W: x @ A @ W)


def test_gla_gate_shape_is_checked_by_name():
    v = CATALOG["gla"]
    case = make_case(v, batch=1, seq_len=4, heads=2, sizes={"d": 3, "dv": 4})
    assert tuple(case.log_decay.shape) == (1, 4, 2, 3)
    fn = import_generated("gla").FORMS["chunk"]
    with pytest.raises(ValueError, match=r"log_decay must have shape \[B, T, H, Dk\] = \[1, 4, 2, 3\] "
                                         r"\(one per key channel\), got \[1, 4, 2\]"):
        fn(case.q, case.k, case.v, log_decay=case.log_decay[..., 0])
    with pytest.raises(ValueError, match=r"log_decay must have shape \[B, T, H, Dk\]"):
        run_direct(v, **{**case.kwargs(), "log_decay": case.log_decay[..., 0]})
