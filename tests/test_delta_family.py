"""The delta family: the decay component (language, oracle, errors), gated_delta_rule and titans
against their explicit recurrences, the parallel_form classification, and the WY/UT chunk form
(delta_chunk template) against the oracle for any compute chunk size, forward and backward."""

from __future__ import annotations

import json

import pytest
import sympy
import torch
from oracle_checks import check_against_oracle

from codegen.generate import generate, import_generated
from derivations import (
    DeclarationError,
    bidirectional,
    chunked,
    constant,
    decay,
    derive,
    dot,
    per_token,
    sq_norm,
    token_level,
    variant,
)
from derivations.catalog import CATALOG
from derivations.spec import momentum
from tttla.cli import main
from verify import make_case, run_direct
from verify.forms import form_kwargs


def _rows(case):
    """q, k, v as [B, H, T, D] and the per-token coefficients as [B, H, T]."""
    q, k, v = (t.detach().transpose(1, 2) for t in (case.q, case.k, case.v))
    per = {n: t.detach().transpose(1, 2) for n, t in (("lr", case.lr), ("momentum", case.momentum),
                                                      ("log_decay", case.log_decay)) if t is not None}
    return q, k, v, per


def test_gated_delta_oracle_is_the_gated_delta_recurrence():
    """S_t = e^{g_t}(I − β_t k_tᵀk_t) S_{t−1} + β_t k_tᵀ v_t, o_t = q_t S_t (fla's gated delta rule)."""
    variant_ = CATALOG["gated_delta_rule"]
    case = make_case(variant_, batch=2, seq_len=13, heads=2, sizes={"d": 4, "dv": 5},
                     generator=torch.Generator().manual_seed(1))
    o, final = run_direct(variant_, **case.kwargs())
    q, k, v, per = _rows(case)
    S = case.initial_weights["W"].clone()
    eye = torch.eye(4, dtype=torch.float64)
    outs = []
    for t in range(13):
        kt, vt, qt = k[..., t:t + 1, :], v[..., t:t + 1, :], q[..., t:t + 1, :]
        beta, gamma = per["lr"][..., t, None, None], per["log_decay"][..., t, None, None].exp()
        S = gamma * (eye - beta * kt.mT @ kt) @ S + beta * kt.mT @ vt
        outs.append(qt @ S)
    torch.testing.assert_close(o, torch.cat(outs, dim=2).transpose(1, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["W"], S, rtol=1e-12, atol=1e-12)


def test_titans_oracle_is_the_section_7_7_recurrence():
    """S_t = η_t S_{t−1} − θ_t ∇ℓ_t(M_chunk start), M_t = (1 − α_t) M_{t−1} + S_t, o_t = q_t M_t."""
    variant_ = CATALOG["titans"]
    L, T = 4, 11
    case = make_case(variant_, batch=2, seq_len=T, heads=2, sizes={"d": 3, "dv": 4}, chunk_size=L,
                     generator=torch.Generator().manual_seed(2))
    o, final = run_direct(variant_, **case.kwargs())
    q, k, v, per = _rows(case)
    theta, eta, alpha = per["lr"], per["momentum"], 1 - per["log_decay"].exp()
    M = case.initial_weights["M"].clone()
    S = torch.zeros_like(M)
    outs = []
    for start in range(0, T, L):
        M_start = M
        for t in range(start, min(start + L, T)):
            kt, vt = k[..., t:t + 1, :], v[..., t:t + 1, :]
            grad = kt.mT @ (kt @ M_start - vt)  # ∇_M ½‖k M − v‖² at the chunk-start memory
            S = eta[..., t, None, None] * S - theta[..., t, None, None] * grad
            M = (1 - alpha[..., t, None, None]) * M + S
            outs.append(q[..., t:t + 1, :] @ M)
    torch.testing.assert_close(o, torch.cat(outs, dim=2).transpose(1, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["M"], M, rtol=1e-12, atol=1e-12)


def _declare(**kw):
    spec = dict(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(),
                schedule=token_level())
    spec.update(kw)
    return variant(**spec)(lambda x, W: x @ W)


def test_decay_declaration_errors():
    with pytest.raises(DeclarationError, match="the bidirectional order takes one step"):
        _declare(decay=decay(), schedule=bidirectional())
    with pytest.raises(DeclarationError, match="needs token_level"):
        _declare(decay=decay(), schedule=chunked("update_then_apply", 4))
    with pytest.raises(DeclarationError, match=r"decay\(order='sideways'\)"):
        decay("sideways")
    with pytest.raises(DeclarationError, match="decay must be None, decay"):
        _declare(decay=0.9)
    assert _declare(decay=per_token()).decay == decay("decay_then_gradient")


def test_decay_argument_errors():
    gated = CATALOG["gated_delta_rule"]
    case = make_case(gated, seq_len=5, sizes={"d": 3, "dv": 4})
    kwargs = case.kwargs()
    with pytest.raises(ValueError, match="pass log_decay g = log γ of shape"):
        run_direct(gated, **{**kwargs, "log_decay": None})
    with pytest.raises(ValueError, match=r"log_decay must have shape \[B, T, H\] = \[1, 5, 1\], got \[1, 4, 1\]"):
        run_direct(gated, **{**kwargs, "log_decay": case.log_decay[:, :4]})
    plain = CATALOG["delta_rule"]
    with pytest.raises(ValueError, match=r"takes no log_decay \(decay: none\); do not pass log_decay"):
        plain_case = make_case(plain, seq_len=5, sizes={"d": 3, "dv": 4})
        run_direct(plain, **{**plain_case.kwargs(), "log_decay": case.log_decay})
    fn = import_generated("gated_delta_rule").FORMS["chunk"]
    with pytest.raises(ValueError, match=r"log_decay must have shape \[B, T, H\]"):
        fn(case.q, case.k, case.v, **{**form_kwargs(gated, case), "log_decay": case.log_decay[..., None]})
    with pytest.raises(ValueError, match="decay_range must lie within"):
        make_case(gated, decay_range=(0.0, 1.0))


def test_classification_reasons():
    dr = derive("delta_rule", certify=False).classification
    assert dr.parallel_form == "delta_chunk" and not dr.parallel
    why = dr.reasons[-1]
    assert why.code == "parallel_form.delta_chunk" and why.basis == ("Section 3",)
    assert why.facts["c"] == 1 and why.facts["beta"] == sympy.Symbol("η_t") and not why.facts["gated"]
    gated = derive("gated_delta_rule").classification
    assert gated.parallel_form == "delta_chunk" and gated.reasons[-1].facts["gated"]
    titans = derive("titans")
    why = titans.classification.reasons[-1]
    assert titans.classification.parallel_form == "sequential" and why.code == "parallel_form.sequential"
    assert why.facts["blockers"] == ("momentum", "not_token_steps") and why.facts["within_chunk"]
    assert titans.certificate.certified and derive("gated_delta_rule").certificate.certified
    # MSE without ½ is affine too (Jacobian 2·I), but a chunked schedule is not per-token steps
    mse = _declare(loss=lambda y, v: sq_norm(y - v))
    assert derive(mse, certify=False).classification.parallel_form == "delta_chunk"
    chunked_mse = _declare(schedule=chunked("update_then_apply", 4))
    assert derive(chunked_mse, certify=False).classification.parallel_form == "sequential"
    # decay with a dot-product loss stays a prefix scan (simple_gla)
    sgla = _declare(loss=lambda y, v: -dot(y, v), decay=decay(), lr=constant(1.0))
    assert derive(sgla, certify=False).classification.parallel_form == "prefix_scan"


def test_derive_json_has_parallel_form(capsys):
    assert main(["derive", "gated_delta_rule", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parallel_form"] == "delta_chunk" and out["parallelism"] == "chunk_parallel"
    assert out["parallel"] is True and out["prefix_scan"] is False
    assert main(["derive", "titans"]) == 0
    assert "parallel: no (a scan over the inner steps)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["delta_rule", "gated_delta_rule"])
@pytest.mark.parametrize(("T", "chunk"), [(1, 64), (5, 8), (12, 4), (13, 4), (20, 3), (7, 1)],
                         ids=["T=1", "T<chunk", "multiple", "ragged", "ragged3", "chunk1"])
def test_wy_chunk_form_equals_the_oracle(name, T, chunk):
    variant_ = CATALOG[name]
    module = import_generated(name)
    assert module.chunk.__doc__.startswith(f"Chunked parallel form of {name!r}: DeltaNet's WY/UT")
    case = make_case(variant_, batch=2, seq_len=T, heads=2, sizes={"d": 5, "dv": 6}, requires_grad=True,
                     generator=torch.Generator().manual_seed(T * 10 + chunk), lr_range=(0.0, 1.5))
    check_against_oracle(variant_, module.FORMS["chunk"], case, chunk_size=chunk)


def test_wy_chunk_form_is_generic_over_the_derived_terms(tmp_path):
    """c·‖f − v‖² with a constant rate, gradient ascent and key reads: the same template."""
    @variant(fast={"W": ("d", "e")}, update="W", loss=lambda y, v: 0.75 * sq_norm(y - v), lr=constant(0.2),
             ascent=True, queries="key", schedule=token_level())
    def scaled_delta(x, W):
        """c·‖f − v‖², ascent, key reads."""
        return x @ W

    assert derive(scaled_delta, certify=False).classification.parallel_form == "delta_chunk"
    generate(scaled_delta, tmp_path)
    module = import_generated("scaled_delta", tmp_path)
    source = (tmp_path / "scaled_delta" / "_common.py").read_text()
    assert "beta = torch.full_like(v[..., :1], -0.30000000000000004)" in source  # β = −(2·0.75)·0.2
    case = make_case(scaled_delta, batch=1, seq_len=11, heads=2, sizes={"d": 4, "dv": 5, "e": 3}, requires_grad=True)
    for chunk in (1, 4, 64):
        check_against_oracle(scaled_delta, module.FORMS["chunk"], case, chunk_size=chunk)


def test_titans_forms_equal_the_oracle():
    variant_ = CATALOG["titans"]
    module = import_generated("titans")
    case = make_case(variant_, batch=2, seq_len=10, heads=2, sizes={"d": 4, "dv": 5}, chunk_size=3, requires_grad=True,
                     generator=torch.Generator().manual_seed(5))
    for form in ("recurrent", "chunk"):
        check_against_oracle(variant_, module.FORMS[form], case)


def test_gradient_then_decay_with_momentum_is_not_decay_first():
    """The two decay orders differ for a state-dependent loss (Titans vs gated DeltaNet)."""
    spec = dict(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(),
                schedule=token_level())
    first = variant(**spec, decay=decay("decay_then_gradient"), name="first")(lambda x, W: x @ W)
    after = variant(**spec, decay=decay("gradient_then_decay"), name="after")(lambda x, W: x @ W)
    case = make_case(first, seq_len=6, sizes={"d": 3, "dv": 4}, decay_range=(0.3, 0.6))
    assert not torch.allclose(run_direct(first, **case.kwargs())[0], run_direct(after, **case.kwargs())[0])
    with_momentum = variant(**{**spec, "schedule": chunked("update_then_apply", 2)}, momentum=momentum("token"),
                            decay=decay("gradient_then_decay"), name="mom")(lambda x, W: x @ W)
    assert derive(with_momentum).certificate.certified
