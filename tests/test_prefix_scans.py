"""Parallel code behind prefix-scan verdicts beyond plain φ(x)·W sums: per-token momentum and
TTT-Linear's rank-1 learning rate as chunked forms (torch, and Triton where it exists), against
the oracle forward and backward in fp64 on odd shapes; and the honest refusals that remain."""

from __future__ import annotations

import pytest
import torch
from oracle_checks import check_against_oracle

from codegen.plan import plan
from derivations import chunked, derive, dot, momentum, newton_schulz, per_token, token_level, variant
from verify import make_case
from verify.forms import generated_forms, usable_forms


def _declare(schedule, **rule):
    @variant(fast={"W": ("d", "e")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(**rule.pop("lr", {})),
             schedule=schedule, **rule)
    def scan(x, W):
        """A dot-product layer."""
        return x @ W

    return scan


CASES = [(1, 4), (3, 4), (13, 4), (16, 4), (9, 1)]
IDS = ["T=1", "T<chunk", "ragged", "multiple", "chunk1"]


@pytest.mark.parametrize(("T", "chunk"), CASES, ids=IDS)
@pytest.mark.parametrize("schedule", ["token_level", "chunked"])
def test_per_token_momentum_chunk_form(T, chunk, schedule):
    """M_t = α_t M_(t−1) + Δ_t, S_t = S_(t−1) + M_t per token, chunked with the weights C_tj."""
    sched = token_level() if schedule == "token_level" else chunked("update_then_apply", chunk)
    v = _declare(sched, momentum=momentum("token"))
    p = plan(derive(v, certify=False))
    assert p.forms["chunk"].kind == "parallel" and "per-token momentum" in p.no_triton
    case = make_case(v, batch=2, seq_len=T, heads=2, sizes={"d": 3, "dv": 4, "e": 4}, requires_grad=True,
                     chunk_size=None if schedule == "token_level" else chunk,
                     generator=torch.Generator().manual_seed(T), momentum_range=(0.0, 1.0))
    with generated_forms(v) as (_, forms):
        check_against_oracle(v, forms["chunk"], case, chunk_size=chunk)


def test_per_token_momentum_with_zero_and_unit_coefficients():
    """α = 0 restarts the buffer and α = 1 keeps it whole: no division anywhere."""
    v = _declare(token_level(), momentum=momentum("token"))
    case = make_case(v, batch=1, seq_len=10, heads=1, sizes={"d": 3, "dv": 4, "e": 3}, requires_grad=True)
    alpha = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    case.optional["momentum"] = alpha.view(1, 10, 1).clone().requires_grad_()
    with generated_forms(v) as (_, forms):
        check_against_oracle(v, forms["chunk"], case, chunk_size=4)


@pytest.mark.parametrize(("T", "chunk"), [(1, 4), (3, 4), (13, 4), (16, 4)], ids=IDS[:4])
def test_rank1_learning_rate_chunk_and_triton_forms(T, chunk):
    """η_ij = a_i η_j: token p of a chunk reads S + a_p Σ_(j≤p) ΔW_j, the chunk leaves S + a_last Σ_j ΔW_j."""
    v = _declare(chunked("update_then_apply", chunk), lr={"position": True})
    case = make_case(v, batch=2, seq_len=T, heads=2, sizes={"d": 3, "dv": 4, "e": 4}, requires_grad=True,
                     chunk_size=chunk,
                     generator=torch.Generator().manual_seed(T), lr_range=(-1.0, 2.0))
    with generated_forms(v) as (_, forms):
        forms, _ = usable_forms(forms)
        assert set(forms) == {"recurrent", "chunk", "triton"}
        for fn in forms.values():
            check_against_oracle(v, fn, case, chunk_size=chunk)


def test_newton_schulz_per_token_is_refused_with_its_reason():
    v = _declare(token_level(), momentum=momentum("token"), orthogonalize=newton_schulz(2))
    p = plan(derive(v, certify=False))
    assert derive(v, certify=False).classification.parallel_form == "prefix_scan"
    assert p.forms["chunk"].kind == "recurrence"
    assert "a d×d matrix per token" in p.forms["chunk"].reason and p.no_triton == p.forms["chunk"].reason


def _biased(schedule, **rule):
    @variant(fast={"W": ("d", "e"), "b": (1, "e")}, update=["W", "b"], loss=lambda y, v: -dot(y, v), schedule=schedule,
             **rule)
    def biased(x, W, b):
        """A linear layer with an updated bias."""
        return x @ W + b

    return biased


@pytest.mark.parametrize(("T", "chunk"), CASES[:4], ids=IDS[:4])
@pytest.mark.parametrize("rule", ["constant", "per_token+momentum"])
def test_biased_layer_chunk_and_triton_forms(T, chunk, rule):
    """φ(x)·W + b scans the stacked state [W; b] with keys [η_W φ(k), η_b] (distinct rates per weight)."""
    if rule == "constant":
        v = _biased(token_level(), lr=0.5)
    else:
        v = _biased(chunked("apply_then_update", chunk), lr=per_token(), momentum=momentum("chunk"))
    p = plan(derive(v, certify=False))
    assert p.forms["chunk"].kind == "parallel" and "triton" in p.forms
    case = make_case(v, batch=2, seq_len=T, heads=2, sizes={"d": 3, "dv": 4, "e": 4}, requires_grad=True,
                     chunk_size=None if rule == "constant" else chunk, generator=torch.Generator().manual_seed(T))
    if rule != "constant":
        assert isinstance(case.optional["lr"], dict) and not torch.equal(*case.optional["lr"].values())
    with generated_forms(v) as (_, forms):
        forms, _ = usable_forms(forms)
        for fn in forms.values():
            check_against_oracle(v, fn, case, chunk_size=chunk)


def test_biased_layer_with_newton_schulz_is_refused_with_its_reason():
    v = _biased(chunked("apply_then_update", 4), lr=1.0, orthogonalize=newton_schulz(2))
    reason = plan(derive(v, certify=False)).forms["chunk"].reason
    assert "act on W and its bias b apart" in reason
