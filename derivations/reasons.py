"""The sentence a person reads for each classification :class:`~derivations.form.Reason`.

:mod:`derivations.classify` decides and records each decision as a code with its facts (weight
names, SymPy expressions, flags) and no English; this module is the one table code → sentence.
A sentence is ``"<decision>: <explanation>"`` (``"kernel static: only W is updated …"``):
:func:`decision` and :func:`explanation` give the two parts (the report's table has a column
for each), :func:`sentence` the whole, which ``tttla derive``, the reports, ``derive --json``,
the code plan and the generated packages' docstrings print.

Why here, in ``derivations/``, and not in ``tttla/reporting``: the generated docstrings and the
code plan's reasons are written by ``codegen/``, which may not import ``tttla/`` (imports point
down: tttla → verify → codegen → derivations). This is the lowest layer every consumer can
import; it only reads reasons, so the decisions stay testable by code, apart from their wording.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

from derivations.form import Reason
from derivations.printing import to_text

__all__ = ["CODES", "decision", "explanation", "sentence", "sentences"]


def _lowered_depthwise(kernel: int) -> str:
    return (
        f"every fast weight is a depthwise {kernel}×{kernel} kernel, the model reads the input only through "
        "depthwise_conv and the loss is a sum over channels, so the channels are independent layers; in channel c "
        f"the key is the {kernel}×{kernel} patch ψ_c(K, p) = (K_(c, p+Δ))_Δ, a 1 × {kernel * kernel} row, and the "
        f"state is the channel's kernel, {kernel * kernel} × 1: sliding-window linear attention, one head per "
        "channel (Section 7.5, App. G)"
    )


def _reducible_plain(state: str) -> str:
    return (f"the model is φ(x)·{state} with {state} an updated fast weight and no bias, so a gradient step on "
            f"{state} adds the rank-1 term φ_t(k)ᵀ g_t(k) (Theorem 5.1)")


def _reducible_layer(z, layer, state: str, bias: str | None = None) -> str:
    with_bias = (f" + {bias}, the bias being a key constantly 1 (state [{state}; {bias}], key [φ(x), 1])"
                 if bias else "")
    return (f"{to_text(z)} = {to_text(layer)} is a linear layer φ(x)·{state}{with_bias} in updated fast weights, "
            "so a gradient step on it adds the rank-1 term k̂ᵀ v̂ with v̂ = −η ∂ℓ/∂z (Theorem 5.1)")


def _structure_gated(head, outputs) -> str:
    return (f"the output {to_text(head)} combines {len(outputs)} linear-attention reads "
            f"({', '.join(to_text(z) for z in outputs)}), each linear in its own updated weight; the combination "
            "is element-wise (a GLU of linear attentions, Section 7.4 set form)")


def _minus_eta_times(expr) -> str:
    """``−η·expr`` as text, a leading minus of a product folded (``−η·(−v ⊙ s)`` reads ``η·v ⊙ s``)."""
    text = to_text(expr)
    if isinstance(expr, sympy.MatMul) and text.startswith("−"):
        return "η·" + text[1:]
    return "−η·" + (f"({text})" if isinstance(expr, sympy.MatAdd) else text)


def _structure_head(head, z, dloss_z) -> str:
    return (f"f = {to_text(head)} with {to_text(z)} the last linear layer; the head is absorbed into the effective "
            f"loss ℓ(z) = L(head(z), v), so v̂ = −η ∂ℓ/∂z = {_minus_eta_times(dloss_z)}; a query reads "
            f"o = {to_text(head)} at {to_text(z)} = q̂ S, not o = q̂ S (Section 3, LN-MSE)")


def _kernel_static(updated_state: str | None, slow_weights: tuple[str, ...]) -> str:
    detail = f"only {updated_state} is updated" if updated_state else "no updated weight inside φ"
    if slow_weights:
        slow = f" ({', '.join(slow_weights)} stay slow weights)"
    else:
        slow = " (φ is the identity)" if updated_state else ""
    return f"{detail}{slow}, so q̂ = φ(q) and k̂ = φ(k) (Theorem 5.2)"


def _kernel_dynamic(updated: tuple[str, ...]) -> str:
    return (f"the inner loop also updates {', '.join(updated)} inside φ, so k̂_i = φ_i(k_i) and q̂_t = φ_{{t+1}}(q_t) "
            "change with the history (Theorem 5.2)")


def _values_independent(dloss=None) -> str:
    if dloss is None:
        return "∂ℓ/∂z does not involve the layers' outputs (Section 3)"
    return (f"∂L/∂f = {to_text(dloss)} does not involve the prediction, so v̂_i = g_i(k_i) depends only on "
            "(k_i, v_i, η_i) (Section 3)")


def _values_dependent(dloss=None, reads=(), through_head: bool = False) -> str:
    if dloss is not None:
        return (f"∂L/∂f = {to_text(dloss)} involves the prediction f_t(k) = φ_t(k)W_t, so v̂ reads the state "
                "(Section 3; for ½‖f − v‖² this is the delta rule)")
    which = "; ".join(f"∂ℓ/∂{to_text(z)} reads {', '.join(to_text(r) for r in read)}" for z, read in reads)
    through = ", nonlinearly through the head" if through_head else ""
    return f"{which}, i.e. the prediction at the current state{through} (Section 3)"


def _clip_clause(clip) -> str:
    if clip is None:
        return ""
    return (f"; the {clip.describe()} rescales each step's increment by factors reduced over that step's whole "
            "update set (a diagonal rescale, Section 4), so it applies to whole chunk increments, not to tokens")


#: what keeps a plain prefix scan a prefix scan (``parallel.prefix_scan``'s ``kept``)
_KEPT = {
    "per_token_lr": "per-token η",
    "lr_position": "per-position a_i (a rank-1 mask inside the chunk)",
    "momentum": "momentum (a cumulative-product scan)",
    "decay": "a decay (a scan of decayed sums, as simple_gla)",
    "channel_decay": "a per-channel decay (diag(γ_t) on the state's rows, as GLA)",
    "newton_schulz": "Newton–Schulz per chunk",
}


def _prefix_scan(plain: bool, kept: tuple[str, ...] = (), clip=None) -> str:
    if not plain:
        return ("static kernel and state-independent values, so chunk increments are precomputable and the state "
                "is an associative prefix sum (Section 5)")
    verb = "keeps" if len(kept) == 1 else "keep"
    extra = f"; {', '.join(_KEPT[k] for k in kept)} {verb} it so (Section 4)" if kept else ""
    return ("static kernel, state-independent values and no weight norm, so chunk increments φ(K_n)ᵀṼ_n are "
            f"precomputable and the state is an associative prefix sum (Section 5){extra}{_clip_clause(clip)}")


def _one_step(clip=None) -> str:
    return ("one bidirectional step, so every value is taken at the initial state S_0 and the increments k̂ᵀv̂ of "
            f"all tokens are one batched sum (a prefix scan of length one){_clip_clause(clip)}")


def _not_parallel(blockers: tuple[str, ...], plain: bool) -> str:
    values = ("values depend on the state, so each increment needs the previous state (Section 3)" if plain else
              "values depend on the state, so each chunk's increment needs the previous chunk's state (exact linear "
              "attention within a chunk, whose gradients are all taken at the chunk-start state; sequential across "
              "chunks, Section 3)")
    clauses = {
        "dynamic_kernel": "the kernel is dynamic (φ_t depends on the whole history, Section 4)",
        "state_dependent_values": values,
        "weight_norm": "weight norm wraps every step, and Norm(A + B) ≠ Norm(A) + Norm(B) (Section 4)",
    }
    return "; ".join(clauses[b] for b in blockers) + "."


def _delta_chunk(dloss, c, beta, gated: bool) -> str:
    return (
        f"∂L/∂f = {to_text(dloss)} is affine in the prediction with Jacobian {c}·I and there is one step per token, "
        f"so each step is the affine map S ↦ {'γ_t' if gated else ''}(I − β_t k̂_tᵀk̂_t)S + k̂_tᵀb_t with "
        f"β_t = {to_text(beta)} (Section 3, the delta rule); such maps compose in DeltaNet's WY/UT representation, "
        "so a chunk's steps become one triangular solve (I + A)⁻¹ and matrix products"
        + (" with cumulative log-decays inside the chunk (gated DeltaNet)" if gated else "")
        + ", and only the chunk states are sequential"
    )


def _sequential(blockers: tuple[str, ...], dloss, within_chunk: bool) -> str:
    clauses = {
        "dynamic_kernel": "the kernel is dynamic",
        "not_affine_values": f"∂L/∂f = {to_text(dloss)} is not affine in the prediction with Jacobian c·I",
        "weight_norm": "weight norm is not affine in the state",
        "newton_schulz": "Newton–Schulz is not affine in the state",
        "momentum": "momentum carries a second state (the momentum buffer)",
        "not_token_steps": "the steps are not one per token",
        "channel_gate": "the WY/UT form derived here takes one decay factor per token; a per-channel diag(γ_t) "
                        "inside it is not derived yet",
    }
    within = ("; within a chunk every gradient is taken at the chunk-start state, so each chunk is exact linear "
              "attention (Section 3), and the chunks run as a scan" if within_chunk else "")
    return f"no chunked parallel form, because {'; '.join(clauses[b] for b in blockers)}{within}."


#: every reason code: (the decision as a person reads it, the explanation of its facts)
CODES = {
    "lowered.depthwise": ("lowered per channel", _lowered_depthwise),
    "reducible.plain": ("reducible", _reducible_plain),
    "reducible.linear_layer": ("reducible", _reducible_layer),
    "reducible.bias_key": ("reducible", _reducible_layer),
    "structure.gated": ("gated", _structure_gated),
    "structure.head": ("output head", _structure_head),
    "kernel.static": ("kernel static", _kernel_static),
    "kernel.dynamic": ("kernel dynamic", _kernel_dynamic),
    "values.state_independent": ("values state-independent", _values_independent),
    "values.state_dependent": ("values state-dependent", _values_dependent),
    "parallel.prefix_scan": ("parallel", _prefix_scan),
    "parallel.one_step": ("parallel", _one_step),
    "not_parallel": ("not parallel", _not_parallel),
    "parallel_form.delta_chunk": ("chunk-parallel (delta_chunk)", _delta_chunk),
    "parallel_form.sequential": ("sequential", _sequential),
}


def _entry(reason: Reason):
    try:
        return CODES[reason.code]
    except KeyError:
        raise ValueError(f"unknown reason code {reason.code!r}; the codes are {', '.join(CODES)}") from None


def decision(reason: Reason) -> str:
    """The decision a reason records, as a person reads it (``"kernel static"``)."""
    return _entry(reason)[0]


def explanation(reason: Reason) -> str:
    """Why, in words: the reason's facts printed into its sentence (the part after the decision)."""
    return _entry(reason)[1](**reason.facts)


def sentence(reason: Reason) -> str:
    """``"<decision>: <explanation>"``, the line ``tttla derive`` prints."""
    return f"{decision(reason)}: {explanation(reason)}"


def sentences(reasons: Iterable[Reason]) -> tuple[str, ...]:
    return tuple(sentence(r) for r in reasons)
