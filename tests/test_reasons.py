"""derivations.reasons: a classification Reason (code + facts) worded as the sentence a person reads."""

from __future__ import annotations

import pytest
import sympy

from derivations.form import Classification, Reason
from derivations.reasons import CODES, decision, explanation, sentence, sentences
from derivations.spec import column_clip


def test_sentence_is_decision_then_explanation():
    r = Reason("kernel.static", ("Theorem 5.2",), {"updated_state": "W", "slow_weights": ()})
    assert decision(r) == "kernel static"
    assert explanation(r) == "only W is updated (φ is the identity), so q̂ = φ(q) and k̂ = φ(k) (Theorem 5.2)"
    assert sentence(r) == f"{decision(r)}: {explanation(r)}"
    layered = Reason("kernel.static", ("Theorem 5.2",), {"updated_state": None, "slow_weights": ("W0", "W2")})
    assert explanation(layered).startswith("no updated weight inside φ (W0, W2 stay slow weights), so")


def test_facts_are_printed_into_the_sentence():
    y, v = sympy.MatrixSymbol("y", 1, 3), sympy.MatrixSymbol("v", 1, 3)
    delta = Reason("parallel_form.delta_chunk", ("Section 3",),
                   {"dloss": y - v, "c": sympy.Integer(2), "beta": 2 * sympy.Symbol("η_t"), "gated": True})
    text = sentence(delta)
    assert text.startswith("chunk-parallel (delta_chunk): ∂L/∂f = ")
    assert "Jacobian 2·I" in text and "β_t = 2*η_t" in text and "S ↦ γ_t(I − β_t" in text
    assert "cumulative log-decays" in text
    seq = Reason("parallel_form.sequential", (), {"blockers": ("momentum", "not_token_steps"), "dloss": y - v,
                                                  "within_chunk": False})
    assert sentence(seq) == ("sequential: no chunked parallel form, because momentum carries a second state (the "
                             "momentum buffer); the steps are not one per token.")


def test_not_parallel_joins_its_blockers_in_order():
    r = Reason("not_parallel", ("Section 4", "Section 3"),
               {"blockers": ("dynamic_kernel", "state_dependent_values"), "plain": True})
    assert sentence(r) == ("not parallel: the kernel is dynamic (φ_t depends on the whole history, Section 4); "
                           "values depend on the state, so each increment needs the previous state (Section 3).")


def test_clip_clause_follows_a_parallel_reason():
    clip = column_clip()
    with_clip = sentence(Reason("parallel.one_step", ("Section 4",), {"clip": clip}))
    assert with_clip.startswith("parallel: one bidirectional step") and f"the {clip.describe()} rescales" in with_clip
    assert "rescales" not in sentence(Reason("parallel.one_step", (), {"clip": None}))


def test_every_code_has_a_decision_and_unknown_codes_are_named():
    assert all(label and callable(words) for label, words in CODES.values())
    with pytest.raises(ValueError, match=r"unknown reason code 'kernel\.wobbly'; the codes are lowered\.depthwise"):
        sentence(Reason("kernel.wobbly"))
    c = Classification(True, "static", "state_independent", True,
                       (Reason("reducible.plain", ("Theorem 5.1",), {"state": "W"}),), "prefix_scan")
    assert c.codes == ("reducible.plain",) and c.reason("reducible.plain").facts == {"state": "W"}
    assert c.reason("not_parallel") is None
    assert sentences(c.reasons) == ("reducible: the model is φ(x)·W with W an updated fast weight and no bias, so a "
                                    "gradient step on W adds the rank-1 term φ_t(k)ᵀ g_t(k) (Theorem 5.1)",)
