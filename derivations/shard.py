"""What one slice of a sequence hands to the next: the context-parallel summary of a parallel form.

A prefix-scan form carries one or two quantities from chunk to chunk (the state S and, with
momentum, the buffer M), each by a linear scan h_n = a_n h_{n−1} + b_n whose coefficient a_n does
not depend on h (1, the chunk's mean momentum ᾱ_n, a decay Γ_n, or the products of per-token
momentum). A step is the affine map h ↦ a_n h + b_n, so a slice of chunks is one affine map, its
*summary* (A = Π a_n, h = the slice's scan from zero), and summaries compose associatively:

    (A₂, h₂) ∘ (A₁, h₁) = (A₂ A₁, A₂ h₁ + h₂).

A per-chunk map between two scans (Newton–Schulz, the clip) acts on one chunk's value of the first,
so it runs inside the slice once that scan is exact: the carries are exchanged in order, one round
each. A schedule that steps once per chunk needs slices of whole chunks; one that steps per token
can cut anywhere. A delta-rule form (WY/UT blocks) maps the state affinely through a matrix,
S ↦ M_n S + B_n, and its slices compose as (A₂, h₂) ∘ (A₁, h₁) = (A₂ A₁, A₂ h₁ + h₂) with matrix
products. :func:`shard_summary` reads this off the form; ``tttla_kernels.context_parallel``
runs it, and the codegen gives the chunk form a ``process_group`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from derivations.form import LinearAttentionForm
from derivations.reasons import sentence

__all__ = ["Carry", "ShardSummary", "NotShardable", "shard_summary", "COMBINE"]

COMBINE = "(A₂, h₂) ∘ (A₁, h₁) = (A₂·A₁, A₂·h₁ + h₂)"


class NotShardable(ValueError):
    """The form's slices cannot run in parallel; the message says why."""


@dataclass(frozen=True)
class Carry:
    """One quantity a slice hands on: its name, its step across chunks, and what the summary holds."""

    name: str
    step: str
    summary: str


@dataclass(frozen=True)
class ShardSummary:
    """The carries in exchange order, the per-chunk maps between them, and whether slices hold whole chunks."""

    carries: tuple[Carry, ...]
    local: tuple[str, ...]
    whole_chunks: bool

    def describe(self) -> list[str]:
        """Lines for the derivation report and ``tttla derive``."""
        rows = [f"{c.name}: {c.step}; a slice hands on {c.summary}" for c in self.carries]
        if self.local:
            rows.append(f"per chunk, inside a slice: {', '.join(self.local)}")
        rows.append(f"combine: {COMBINE}, in rank order, one exchange per carry")
        rows.append("slices: whole chunks on every rank but the last" if self.whole_chunks
                    else "slices: any lengths (the schedule steps once per token)")
        return rows


def shard_summary(form: LinearAttentionForm) -> ShardSummary:
    """The context-parallel summary of ``form``; :class:`NotShardable` with the reason when it has none."""
    variant = form.variant
    sched = variant.schedule
    if sched.order == "bidirectional":
        raise NotShardable(f"{variant.name} takes one bidirectional step: every token reads the state after all "
                           "tokens, so no slice can be finished before the others")
    if form.classification.parallel_form == "delta_chunk":  # each block maps S affinely (the WY form)
        gamma, decay = ("Γₙ ", " with Γₙ the block's decay") if variant.decay is not None else ("", "")
        step = f"Sₙ = Mₙ Sₙ₋₁ + Bₙ, Mₙ = {gamma}I − K̂ₙᵀ Wₙ, Bₙ = K̂ₙᵀ Uₙ (the WY block){decay}"
        return ShardSummary((Carry("S (the state)", step, "(M_(N−1) ⋯ M₀, a D_k × D_k matrix; its S from zero)"),),
                            (), whole_chunks=not sched.fixed)
    if form.classification.parallel_form != "prefix_scan":
        blocked = form.classification.reason("not_parallel")
        why = (sentence(blocked).rstrip(".").removeprefix("not parallel: ") if blocked
               else f"its parallel form is {form.classification.parallel_form}")
        raise NotShardable(f"{variant.name} is not a prefix scan: {why}")
    decay = variant.decay
    gate = ("" if decay is None else " with Γₙ = Π_(t∈n) γₜ" + (" per key channel" if decay.gate == "channel"
                                                                   else ""))
    carries = []
    if variant.momentum is not None and variant.momentum.per == "token":
        carries.append(Carry("M (the momentum buffer)", "Mₙ = A_L Mₙ₋₁ + ΔMₙ, A_L the chunk's product of α",
                             "(Π A_L, its M from zero)"))
        carries.append(Carry("S (the state)", "Sₙ = Sₙ₋₁ + c_L Mₙ₋₁ + ΔSₙ", "(1, its S from zero)"))
    else:
        if variant.momentum is not None:
            carries.append(Carry("M (the momentum buffer)", "Mₙ = ᾱₙ Mₙ₋₁ + ΔSₙ", "(Π ᾱₙ, its M from zero)"))
        step = "Sₙ = Γₙ Sₙ₋₁ + Uₙ" if decay is not None else "Sₙ = Sₙ₋₁ + Uₙ"
        carries.append(Carry("S (the state)", step + gate, "(Π Γₙ, its S from zero)" if decay is not None
                             else "(1, its S from zero): the sum of its increments"))
    local = tuple(name for name, on in (("the clip", variant.clip is not None),
                                        ("Newton–Schulz", variant.orthogonalize is not None)) if on)
    return ShardSummary(tuple(carries), local, whole_chunks=not sched.fixed)
