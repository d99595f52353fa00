"""The results a classification reason rests on: which theorems and sections it cites, and what
they say; ``docs/maths.md`` (section 14) says where each is explained in full."""

from __future__ import annotations

import re

__all__ = ["THEOREMS", "cited", "split_decision"]

#: What each reference cited by a classification reason says (explained in ``docs/maths.md``).
THEOREMS = {
    "Theorem 5.1": "one gradient step on a layer f(x) = φ(x)·W that is linear and bias-free in W adds the rank-1 "
    "term φ_t(k)ᵀ g_t(k) with g_t = −η ∂L/∂f, so the read o = φ_{t+1}(q)(W_t + φ_t(k)ᵀ g_t(k)) is linear "
    "attention with q̂ = φ_{t+1}(q), k̂ = φ_t(k), v̂ = g_t(k), S_0 = W_t (single step).",
    "Theorem 5.2": "one step per token unrolls to W_{t+1} = W_0 + Σ_{i≤t} φ_i(k_i)ᵀ g_i(k_i): extended linear "
    "attention, whose kernel φ_i is dynamic (depends on the history) exactly when weights inside φ are updated.",
    "Theorem 5.3": "with momentum α the read is φ_{t+1}(q_t)(W_0 + Σ_i φ_i(k_i)ᵀ m_i), m_i = g_i Σ_{j=i}^{t} β_i^j, "
    "β_i^j = Π_{s=i+1}^{j} α_s: momentum only remixes the values.",
    "Section 3": "the effective value g = −η ∂L/∂f: a dot-product loss gives values that do not read the state; a "
    "squared loss gives ∂L/∂f = f − v, which reads the current state (the delta rule).",
    "Section 4": "components: a dynamic kernel, a weight norm (Norm(A + B) ≠ Norm(A) + Norm(B)) or state-dependent "
    "values need the previous state; per-token η, momentum and per-chunk Newton–Schulz keep a prefix sum.",
    "Section 5": "the parallel chunked form: with a static kernel, state-independent values and no weight norm, the "
    "chunk increments φ(K_n)ᵀṼ_n are computed at once and the state is a prefix sum of them.",
    "Section 5.1": "the rewrite needs a last layer that is linear and bias-free in an updated fast weight.",
}

_REF = re.compile(r"(Theorems? 5\.\d(?:[–-]5\.\d)?|Section \d(?:\.\d)?)")


def cited(reason: str) -> list[str]:
    """The theorems and sections a reason cites, in order (``Theorems 5.1–5.3`` expands)."""
    out = []
    for ref in _REF.findall(reason):
        if ref.startswith("Theorems"):
            lo, hi = (int(x[-1]) for x in re.split(r"[–-]", ref.split()[1]))
            refs = [f"Theorem 5.{i}" for i in range(lo, hi + 1)]
        else:
            refs = [ref]
        out += [r for r in refs if r not in out]
    return out


def split_decision(reason: str) -> tuple[str, str]:
    """``("kernel static", "only W is updated …")`` from ``"kernel static: only W …"``."""
    head, sep, rest = reason.partition(": ")
    return (head, rest) if sep and len(head) < 40 else ("", reason)
