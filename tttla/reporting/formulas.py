"""The derived form's displayed equations, as LaTeX and as Unicode text: the mask, the unrolled
state and the read, the momentum coefficients, the chunk transform, the learning rate's placement
and the dynamic kernel's recurrence (Theorems 5.2–5.3; ``docs/maths.md`` sections 4, 6–8).

The engine keeps the data (the variant's schedule, the state's name, the kernel kind, the
gradients as SymPy expressions); this module words and typesets them for ``tttla derive`` and
the reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from derivations.form import LinearAttentionForm
from derivations.printing import to_latex, to_text

__all__ = ["Formula", "mask_formula", "lr_placement", "chunk_transform", "unrolled", "momentum_coefficients",
           "kernel_recurrence"]


@dataclass(frozen=True)
class Formula:
    """One displayed equation, as LaTeX and as one line of Unicode text."""

    latex: str
    text: str


#: the read mask C of each mask kind (``LinearAttentionForm.mask``), as LaTeX and text
MASKS = {
    "token-inclusive": (r"C_{ti} = \mathbb{1}[i \le t]", "C_ti = 1[i ≤ t]"),
    "block-exclusive": (r"C_{ti} = \mathbb{1}[c(i) < c(t)]", "C_ti = 1[c(i) < c(t)]"),
    "block-inclusive": (r"C_{ti} = \mathbb{1}[c(i) \le c(t)]", "C_ti = 1[c(i) ≤ c(t)]"),
    "bidirectional": (r"C_{ti} = 1", "C_ti = 1"),
}


def mask_formula(form: LinearAttentionForm) -> Formula:
    """The read mask implied by the schedule (without momentum)."""
    return Formula(*MASKS[form.mask])


def lr_placement(form: LinearAttentionForm) -> str:
    variant = form.variant
    if variant.lr.position:
        return ("rank-1 η_ij = a_i η_j (TTT-Linear): η_j scales token j's gradient, v̂_j = η_j·g_j, and token i of a "
                "mini-batch reads S_0 + a_i Σ_(j≤i) k̂_jᵀ v̂_j, so C_ij = a_(p(i)) within the mini-batch and the "
                "mini-batch leaves S_0 + a_last Σ_j k̂_jᵀ v̂_j")
    if variant.lr.kind == "per_token":
        return ("per-token η_i scales token i's gradient inside the outer product (LaCT): v̂_i = η_i·g_i, "
                "so momentum mixes m_i = v̂_i Σ_j β_i^j")
    return f"constant η = {variant.lr.value:g}, folded into the value v̂_i"


def chunk_transform(form: LinearAttentionForm) -> str | None:
    variant = form.variant
    o = variant.orthogonalize
    if o is None:
        return None
    per = "step" if variant.schedule.order == "update_then_apply" else "chunk"
    return (f"𝓜 = {o.describe()} applied to each {per}'s momentum-accumulated increment "
            "(not to each outer product; pitfall 3)")


def _wrap(variant, inner_latex, inner_text):
    if variant.orthogonalize is not None:
        inner_latex, inner_text = rf"\mathcal{{M}}\!\left({inner_latex}\right)", f"𝓜({inner_text})"
    return inner_latex, inner_text


def unrolled(form: LinearAttentionForm) -> tuple[Formula, ...]:
    """The state after n steps and the read, in the schedule's order (through the head, unless
    the model is φ(x)·W read directly)."""
    return _unrolled_state(form.variant, form.state, form.classification.kernel == "dynamic") + (
        () if form.is_linear else _head_read(form.layers))


def _unrolled_state(variant, state: str, dynamic: bool) -> tuple[Formula, ...]:
    order = variant.schedule.order
    token = order == "update_then_apply"
    i, n = ("i", "t") if token else ("m", "n")
    kq = r"\hat{k}_i^{\top} \hat{v}_i"
    kt = "k̂_iᵀ v̂_i"
    if token:
        inc_l, inc_t = kq.replace("_i", "_j"), kt.replace("_i", "_j")
        d_l, d_t = rf"\Delta_j = {inc_l}", f"Δ_j = {inc_t}"
    else:
        d_l, d_t = rf"\Delta^{{(j)}} = \sum_{{i \in C_j}} {kq}", f"Δ⁽ʲ⁾ = Σ_(i∈C_j) {kt}"
    out = [Formula(d_l, d_t)]
    J = "j" if token else "(j)"
    m_l, m_t = (r"\Delta_{j}" if token else r"\Delta^{(j)}"), ("Δ_j" if token else "Δ⁽ʲ⁾")
    if variant.momentum is not None:
        coef = r"\beta_m^{j}" if token else r"B_m^{j}"
        ms = r"\Delta_m" if token else r"\Delta^{(m)}"
        letter = "β" if token else "B"
        out.append(Formula(rf"M_{{{J}}} = \sum_{{m \le j}} {coef} {ms}", f"M_{J} = Σ_(m≤j) {letter}_m^j Δ_m"))
        m_l, m_t = rf"M_{{{J}}}", f"M_{J}"
    u_l, u_t = _wrap(variant, m_l, m_t)
    s_prev = r"S_{j-1}" if token else r"S^{(j-1)}"
    if variant.weight_norm is not None:
        s = "S_j" if token else "S^{(j)}"
        out.append(Formula(rf"{s} = \operatorname{{Norm}}\left({s_prev} + {u_l}\right),\quad S_0 = {state}_0",
                           f"S_j = Norm(S_(j−1) + {u_t}), S_0 = {state}₀ (column norms reset to ‖{state}₀[:, c]‖)"))
    elif variant.decay is not None:
        out += _decay_formulas(variant.decay, token, u_l, u_t, state)
    else:
        s = "S_n" if token else "S^{(n)}"
        lt = s.replace("n", "t") if token else s
        out.append(Formula(rf"{lt} = S_0 + \sum_{{j \le {n}}} {u_l},\quad S_0 = {state}_0",
                           f"S_{n} = S_0 + Σ_(j≤{n}) {u_t}, S_0 = {state}₀"))
    qh = r"\hat{q}_t" if token else r"\hat{Q}_n"
    if order == "update_then_apply":
        read = (rf"o_t = {qh} S_t", "o_t = q̂_t S_t  (read after the token's own step)")
    elif order == "apply_then_update":
        read = (rf"O_n = {qh} S^{{(n-1)}}", "O_n = Q̂_n S⁽ⁿ⁻¹⁾  (the last chunk is apply-only)")
    elif order == "block_inclusive":
        read = (rf"O_n = {qh} S^{{(n)}}", "O_n = Q̂_n S⁽ⁿ⁾")
    else:
        read = (r"O = \hat{Q} S^{(1)}", "O = Q̂ S⁽¹⁾  (one step on all tokens)")
    out.append(Formula(*read))
    if variant.spatial is not None:
        k = variant.spatial.kernel
        window = r"\sum_{\Delta} Q_{c,p+\Delta} K_{c,p'+\Delta}"
        clip = "  (without the clip, which divides channel c's increment by ‖G[:, c]‖ + 1)" if variant.clip else ""
        out.append(Formula(
            rf"O_{{c,p}} = \sum_{{\Delta}} Q_{{c,p+\Delta}}\, {state}_{{0}}[\Delta, c] "
            rf"+ \sum_{{p'}} \Big({window}\Big) \hat{{v}}_{{c,p'}},\quad \Delta \in \{{-{k // 2},\dots,{k // 2}\}}^2",
            f"per channel c (a {k}×{k} patch ψ_c(X, p) = (X_(c, p+Δ))_Δ as q̂ and k̂): "
            f"O_(c,p) = ψ_c(Q, p)·{state}₀[:, c] + Σ_p' ⟨ψ_c(Q, p), ψ_c(K, p')⟩ v̂_(c,p'){clip}",
        ))
    if dynamic:
        out.append(Formula(r"\hat{q}_t = \phi_{t+1}(q_t),\ \hat{k}_i = \phi_i(k_i)",
                           "q̂_t = φₜ₊₁(q_t), k̂_i = φ_i(k_i): the kernel at the step's Θ (Theorem 5.2)"))
    return tuple(out)


def momentum_coefficients(form: LinearAttentionForm) -> tuple[Formula, ...] | None:
    """β (per token, Theorem 5.3) or B (per chunk, Section 5) coefficients, or None without momentum."""
    variant = form.variant
    m = variant.momentum
    if m is None:
        return None
    if m.per == "token":
        return (
            Formula(r"\beta_i^{j} = \prod_{s=i+1}^{j} \alpha_s,\quad \beta_i^{i} = 1",
                    "β_i^j = Π_(s=i+1..j) α_s, β_i^i = 1"),
            Formula(r"m_i = \hat{v}_i \sum_{j=i}^{t} \beta_i^{j}",
                    "m_i = v̂_i Σ_(j=i..t) β_i^j  (depends on the read position t; Theorem 5.3)"),
        )
    r = {"apply_then_update": "n-1", "block_inclusive": "n"}.get(variant.schedule.order, "n")
    return (
        Formula(r"\bar{\alpha}_n = \operatorname{mean}_{t \in C_n} \alpha_t,\quad "
                r"B_m^{j} = \prod_{s=m+1}^{j} \bar{\alpha}_s,\quad B_m^{m} = 1",
                "ᾱ_n = mean_(t∈C_n) α_t, B_m^j = Π_(s=m+1..j) ᾱ_s, B_m^m = 1"),
        Formula(rf"\mathcal{{C}}_{{nm}} = \sum_{{j=m}}^{{{r}}} B_m^{{j}}",
                f"𝒞_nm = Σ_(j=m..{r}) B_m^j  (the chunk mask C = 𝒞 ⊗ 1_(L×L) without Muon)"),
    )


def kernel_recurrence(form: LinearAttentionForm) -> tuple[Formula, ...] | None:
    """Θ_{t+1} in terms of Θ_t for each updated weight inside φ (a dynamic kernel), else None."""
    if form.classification.kernel != "dynamic":
        return None
    variant, eta, theta_t, theta_next = form.variant, form.eta, form.theta_t, form.theta_next
    sign = 1 if variant.ascent else -1
    # the gradients are written at the plain weights; show them at step t
    plain_t = {**{form.weights[n]: s for n, s in theta_t.items()}, form.weights[form.state]: form.state_t}
    out = []
    at_l = r",\ ".join(f"{to_latex(plain)} = {to_latex(step)}" for plain, step in plain_t.items())
    at_t = ", ".join(f"{to_text(plain)} = {to_text(step)}" for plain, step in plain_t.items())
    for name in variant.update:
        if name not in theta_t:
            continue
        step_l = f"{'+' if sign > 0 else '-'} {to_latex(eta)} \\nabla_{{{name}}} \\ell_t"
        step_t = f"{'+' if sign > 0 else '−'} {to_text(eta)}·∇_{name} ℓ_t"
        if variant.momentum or variant.orthogonalize or variant.weight_norm:
            step_l = r"\text{ (through the same momentum / }\mathcal{M}\text{ / Norm as the state) }" + step_l
            step_t += "  (through the same momentum / 𝓜 / Norm as the state)"
        # the gradient is the one derived above, taken at step t's weights (not printed again)
        out.append(Formula(
            f"{theta_next[name].name} = {theta_t[name].name} {step_l},\\quad \\nabla_{{{name}}} \\ell_t = "
            f"\\nabla_{{{name}}} \\ell\\,\\big|_{{{at_l}}}",
            f"{to_text(theta_next[name])} = {to_text(theta_t[name])} {step_t},  ∇_{name} ℓ_t = ∇_{name} ℓ (above) "
            f"at {at_t}",
        ))
    return tuple(out)


def _head_read(layers) -> tuple[Formula, ...]:
    """The output read through the head, and how a bias joins the state (headed, gated, biased forms)."""
    reads = ", ".join(f"{to_text(lay.z)} = q̂ S_{lay.state}" for lay in layers)
    out = (Formula(  # f, the head, is displayed with the model's split
        r"o_t = f\big|_{z = \hat{q}_t S_t,\ x = q_t}",
        f"o_t = f at {reads} (the read state of each layer; x = q_t)",
    ),)
    if any(lay.bias for lay in layers):
        out += (Formula(
            r"\hat{k} = [\phi(k),\ 1],\quad S = [W;\ b]",
            "a bias b is a key constantly 1: k̂ = [φ(k), 1] and S = [W; b], so b ← b + Σ_i v̂_i",
        ),)
    return out


def _decay_formulas(decay, token: bool, u_l: str, u_t: str, state: str) -> list[Formula]:
    """The decayed state, per token step (Γ_t) or per chunk step (Γ^(n), the product over the chunk),
    with the gate of the declaration: a factor per token, per key channel (diagonal) or per head."""
    gamma_l, gamma_t = {
        "token": (r"\gamma_s = e^{g_s}", "γ_s = exp(g_s)"),
        "channel": (r"\gamma_s = \operatorname{diag}(e^{g_s})", "γ_s = diag(exp(g_s)), one factor per key channel"),
        "head": (rf"\gamma_s = \gamma_h = {sympy.latex(decay.per_head)}", f"γ_s = γ_h = {decay.per_head}"),
    }[decay.gate]
    if token:
        out = [Formula(
            rf"S_t = \Gamma_t S_0 + \sum_{{j \le t}} \frac{{\Gamma_t}}{{\Gamma_j}} {u_l},\quad "
            rf"\Gamma_t = \prod_{{s \le t}} \gamma_s,\ {gamma_l},\quad S_0 = {state}_0",
            f"S_t = Γ_t S_0 + Σ_(j≤t) (Γ_t/Γ_j) {u_t}, Γ_t = Π_(s≤t) γ_s, {gamma_t}, S_0 = {state}₀")]
    else:
        out = [Formula(
            rf"S^{{(n)}} = \Gamma^{{(n)}} S^{{(n-1)}} + {u_l},\quad \Gamma^{{(n)}} = \prod_{{s \in n}} \gamma_s,"
            rf"\ {gamma_l},\quad S^{{(0)}} = {state}_0",
            f"S^(n) = Γ^(n) S^(n−1) + {u_t}, Γ^(n) = Π_(s ∈ chunk n) γ_s, {gamma_t}, S^(0) = {state}₀")]
    step = "S_{t-1}" if token else "S^{(n-1)}"
    if decay.order == "decay_then_gradient":
        out.append(Formula(rf"\hat{{v}} \text{{ at the decayed state }} \Gamma {step}",
                           "v̂ at the decayed state (S ← γ S, then the step's gradient)"))
    else:
        out.append(Formula(r"\hat{v} \text{ at the step's start state, then the decay}",
                           "v̂ at the step's start state; the decay multiplies the state before the increment "
                           "is added"))
    return out
