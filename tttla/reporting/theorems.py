"""What the theorems and sections a classification reason rests on say; a reason names them in
its ``basis``, and ``docs/maths.md`` (section 14) says where each is explained in full."""

from __future__ import annotations

__all__ = ["THEOREMS", "cited"]

#: What each reference cited by a classification reason says (explained in ``docs/maths.md``).
THEOREMS = {
    "Theorem 5.1": "one gradient step on a layer f(x) = φ(x)·W that is linear and bias-free in W adds the rank-1 "
    "term φ_t(k)ᵀ g_t(k) with g_t = −η ∂L/∂f, so the read o = φₜ₊₁(q)(W_t + φ_t(k)ᵀ g_t(k)) is linear "
    "attention with q̂ = φₜ₊₁(q), k̂ = φ_t(k), v̂ = g_t(k), S_0 = W_t (single step).",
    "Theorem 5.2": "one step per token unrolls to Wₜ₊₁ = W₀ + Σ_(i≤t) φ_i(k_i)ᵀ g_i(k_i): extended linear "
    "attention, whose kernel φ_i is dynamic (depends on the history) exactly when weights inside φ are updated.",
    "Theorem 5.3": "with momentum α the read is φₜ₊₁(q_t)(W₀ + Σ_i φ_i(k_i)ᵀ m_i), m_i = g_i Σ_(j=i..t) β_i^j, "
    "β_i^j = Π_(s=i+1..j) α_s: momentum only remixes the values.",
    "Section 3": "the effective value g = −η ∂L/∂f: a dot-product loss gives values that do not read the state; a "
    "squared loss gives ∂L/∂f = f − v, which reads the current state (the delta rule).",
    "Section 4": "components: a dynamic kernel, a weight norm (Norm(A + B) ≠ Norm(A) + Norm(B)) or state-dependent "
    "values need the previous state; per-token η, momentum, per-chunk Newton–Schulz and a decay keep a prefix "
    "scan (a decay weighs increment j in the state at t by Γ_t/Γ_j, Theorem 5.2 with decayed increments, and "
    "decayed steps S ↦ ΓS + U compose associatively).",
    "Section 5": "the parallel chunked form: with a static kernel, state-independent values and no weight norm, the "
    "chunk increments φ(K_n)ᵀṼ_n are computed at once and the state is a prefix sum of them.",
    "Section 5.1": "the rewrite needs a last layer that is linear and bias-free in an updated fast weight.",
}


def cited(reasons) -> list[str]:
    """The theorems and sections the reasons rest on, each once, in order."""
    return list(dict.fromkeys(ref for r in reasons for ref in r.basis))
