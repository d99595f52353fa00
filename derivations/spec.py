"""The parts of an inner-loop update rule, as small immutable records.

A variant is declared with one of each (see :func:`derivations.variant`): learning rate,
momentum, orthogonalisation, weight normalisation and schedule. Each constructor checks
its own arguments, so a malformed rule fails where it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from derivations.errors import DeclarationError

__all__ = [
    "LearningRate",
    "constant",
    "per_token",
    "Momentum",
    "momentum",
    "Orthogonalize",
    "newton_schulz",
    "LACT_NS5",
    "FIXED_NS",
    "WeightNorm",
    "weight_norm",
    "Decay",
    "decay",
    "ColumnClip",
    "column_clip",
    "DECAY_ORDERS",
    "DECAY_GATES",
    "HEAD",
    "Schedule",
    "chunked",
    "token_level",
    "bidirectional",
    "ORDERS",
]

# --- learning rate --------------------------------------------------------------------


@dataclass(frozen=True)
class LearningRate:
    """``kind="constant"`` with ``value`` η, or ``kind="per_token"``: η_t supplied by the
    caller, one ``[B, T, H]`` tensor per updated fast weight (it scales token t's gradient,
    as in LaCT: the increment of a chunk is −Σ_t η_t ∇ℓ_t).

    ``position``: TTT-Linear's rank-1 η_ij = a_i b_j. Besides η_j = b_j per token, the caller
    passes ``lr_position`` a ``[L]``, one factor per position of the mini-batch: token i reads
    W_0 − a_i Σ_{j≤i} b_j ∇ℓ_j (its chunk's gradients at the chunk start W_0), and the chunk
    leaves W_0 − a_last Σ_j b_j ∇ℓ_j (a at its last token)."""

    kind: str
    value: float = 1.0
    position: bool = field(default=False, repr=False)  # kept out of repr: spec hashes of other rules unchanged

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant η = {self.value:g}"
        if self.position:
            return "rank-1 η_ij = a_i η_j: per-token η_j and per-position a_i of the mini-batch (caller-supplied)"
        return "per-token η_t (caller-supplied)"


def constant(value: float = 1.0) -> LearningRate:
    """A constant inner learning rate η."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DeclarationError(f"constant(): the learning rate must be a number, got {value!r}") from None
    return LearningRate("constant", value)


def per_token(position: bool = False) -> LearningRate:
    """A learning rate per token, head and updated fast weight, supplied at call time; with
    ``position=True`` also a factor a_i per mini-batch position (TTT-Linear, see LearningRate)."""
    return LearningRate("per_token", position=bool(position))


# --- momentum ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Momentum:
    """Heavy-ball momentum M ← ΔW + α M, applied before orthogonalisation.

    ``per="chunk"``: one coefficient per chunk, the mean of the caller's per-token α_t over
    the chunk's tokens (LaCT). ``per="token"``: α_t at every token step (Theorem 5.3).
    """

    per: str

    def describe(self) -> str:
        return "per-chunk ᾱ_n = mean of α_t over chunk n" if self.per == "chunk" else "per-token α_t"


def momentum(per: str = "chunk") -> Momentum:
    """Heavy-ball momentum with caller-supplied coefficients α_t ∈ [0, 1), ``[B, T, H]``."""
    if per not in ("chunk", "token"):
        raise DeclarationError(f"momentum(per={per!r}): expected 'chunk' or 'token'")
    return Momentum(per)


# --- orthogonalisation ------------------------------------------------------------------

#: LaCT's LLM schedule: five Newton–Schulz steps with per-step coefficients (a, b, c).
LACT_NS5 = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
#: LaCT NVS/video: the same fixed coefficients at every step.
FIXED_NS = (3.4445, -4.7750, 2.0315)


@dataclass(frozen=True)
class Orthogonalize:
    """Newton–Schulz orthogonalisation 𝓜 of each update (Muon).

    X ← X / (‖X‖_F + eps); then for each (a, b, c) in ``coefficients``:
    A = X Xᵀ, X ← a X + (b A + c A²) X; computed on the wide orientation (transposed when
    rows > cols, and back at the end).
    """

    coefficients: tuple
    eps: float = 1e-7

    @property
    def steps(self) -> int:
        return len(self.coefficients)

    def describe(self) -> str:
        return f"Newton–Schulz, {self.steps} step{'s' if self.steps != 1 else ''}"


def newton_schulz(steps: int = 5, coefficients="lact") -> Orthogonalize:
    """Muon's Newton–Schulz orthogonalisation.

    ``coefficients``: ``"lact"`` (LaCT's five-step LLM schedule; needs ``steps <= 5``, using
    its first ``steps`` entries), ``"fixed"`` ((3.4445, −4.7750, 2.0315) at every step), or an
    explicit sequence of ``steps`` triples (a, b, c).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DeclarationError(
            f"newton_schulz(steps={steps!r}): expected an integer >= 1 (zero steps would still divide every "
            "increment by its Frobenius norm, which is not 'no orthogonalisation': declare orthogonalize=None)"
        )
    if coefficients == "lact":
        if steps > len(LACT_NS5):
            raise DeclarationError(
                f"newton_schulz(steps={steps}): LaCT's schedule has {len(LACT_NS5)} steps; "
                "pass coefficients='fixed' or an explicit list for more"
            )
        coeffs = LACT_NS5[:steps]
    elif coefficients == "fixed":
        coeffs = (FIXED_NS,) * steps
    else:
        coeffs = tuple(tuple(float(c) for c in abc) for abc in coefficients)
        if len(coeffs) != steps or any(len(abc) != 3 for abc in coeffs):
            raise DeclarationError(
                f"newton_schulz(steps={steps}): expected {steps} (a, b, c) triples, got {coefficients!r}"
            )
    return Orthogonalize(coeffs)


# --- weight normalisation ---------------------------------------------------------------


@dataclass(frozen=True)
class WeightNorm:
    """After each update, rescale every output channel (a column of W, ``[in, out]``) to
    its initial norm: W[:, c] ← W[:, c] / (‖W[:, c]‖ + eps) · ‖W⁽⁰⁾[:, c]‖ (LaCT's post-norm;
    the target norms are not detached)."""

    eps: float = 1e-5

    def describe(self) -> str:
        return "column-wise L2 renormalisation to the initial norms"


def weight_norm(eps: float = 1e-5) -> WeightNorm:
    """LaCT's weight normalisation (per output channel, to the initial norms)."""
    return WeightNorm(float(eps))


# --- state decay ------------------------------------------------------------------------

DECAY_ORDERS = {
    "decay_then_gradient": "S ← γ_t S, then the step's gradient is taken at the decayed state "
    "(gated DeltaNet: S_t = γ_t (I − β_t k_tᵀk_t) S_{t−1} + β_t k_tᵀv_t; simple_gla for a dot-product loss)",
    "gradient_then_decay": "the gradient is taken where the schedule says (the chunk-start weights), "
    "then W ← γ_t W + ΔW_t (Titans: M_t = (1 − α_t) M_{t−1} + S_t)",
}


#: what one decay factor γ scales: the whole state, or each row (key channel) of it
DECAY_GATES = {
    "token": "one γ_t per token and head, scaling the whole state (simple_gla, Mamba-2): "
             "the caller passes log_decay g = log γ of shape [B, T, H]",
    "channel": "one γ_t per token, head and key channel, scaling each row of the state, "
               "S ← diag(γ_t) S (GLA): the caller passes log_decay g of shape [B, T, H, Dk]",
    "head": "a constant γ_h per head, declared in the variant (RetNet's retention): no caller input",
}

#: the head index in a per-head decay's expression
HEAD = sympy.Symbol("h", integer=True, nonnegative=True)


@dataclass(frozen=True, repr=False)
class Decay:
    """A decay γ = exp(g) of the updated fast weights, one factor per step.

    ``gate`` says what one factor scales and where it comes from (see ``DECAY_GATES``): the caller's
    ``log_decay`` per token (``"token"``, fla's ``g``; g ≤ 0 gives γ ∈ (0, 1]) or per token and key
    channel (``"channel"``, fla's ``gk``), or a constant per head written in the declaration
    (``"head"``: ``per_head`` is a SymPy expression of the head index :data:`HEAD`). ``order``
    places the decay relative to the gradient (see ``DECAY_ORDERS``); it multiplies every updated
    weight after momentum and orthogonalisation, before weight norm.

    Per-token steps decay once per token. A schedule that steps once per chunk decays once per
    chunk, by the product of its tokens' factors: Γ_n = Π_{t ∈ chunk n} γ_t = exp(Σ_{t ∈ n} g_t).
    """

    order: str = "decay_then_gradient"
    gate: str = "token"
    per_head: sympy.Expr | None = None

    def __repr__(self) -> str:  # the defaults are left out, so the spec hashes of older rules are unchanged
        extra = "" if self.gate == "token" else f", gate={self.gate!r}, per_head={sympy.srepr(self.per_head)}"
        return f"Decay(order={self.order!r}{extra})"

    @property
    def takes_input(self) -> bool:
        """Whether a call passes ``log_decay`` (a per-head decay is declared, not passed)."""
        return self.gate != "head"

    def gamma_of_head(self, heads: int) -> list[float]:
        """γ_h for h = 0 … heads − 1 (a per-head decay)."""
        return [float(self.per_head.subs(HEAD, h)) for h in range(heads)]

    def describe(self) -> str:
        when = "before the gradient" if self.order == "decay_then_gradient" else "after the gradient"
        what = {"token": "per-token decay γ_t = exp(g_t)",
                "channel": "per-channel decay diag(γ_t) = diag(exp(g_t)) of the state's rows",
                "head": f"constant per-head decay γ_h = {self.per_head}"}[self.gate]
        source = " (caller-supplied log_decay g)" if self.takes_input else ""
        return f"{what} {when}{source}"


def decay(order: str = "decay_then_gradient", *, gate: str = "token", per_head=None) -> Decay:
    """A state decay γ = exp(g) per step.

    ``order``: ``"decay_then_gradient"`` (gated DeltaNet, fla) or ``"gradient_then_decay"``
    (Titans' weight decay). ``gate``: ``"token"`` (caller's g ``[B, T, H]``), ``"channel"``
    (caller's g ``[B, T, H, Dk]``, one factor per key channel) or, implied by ``per_head``,
    ``"head"``: ``per_head`` maps the head index h (0, 1, …) to γ_h ∈ (0, 1], written with
    arithmetic SymPy can follow, e.g. RetNet's ``lambda h: 1 - 2 ** (-5 - h)``.
    """
    if order not in DECAY_ORDERS:
        raise DeclarationError(f"decay(order={order!r}): expected one of {', '.join(DECAY_ORDERS)}")
    if per_head is not None:
        if gate not in ("token", "head"):
            raise DeclarationError(f"decay(gate={gate!r}, per_head=…): a per-head decay is its own gate; "
                                   "leave gate out")
        return Decay(order, "head", _per_head_expression(per_head))
    if gate not in ("token", "channel"):
        raise DeclarationError(f"decay(gate={gate!r}): expected 'token' or 'channel' (or per_head=… for a "
                               "constant per-head decay)")
    return Decay(order, gate)


def _per_head_expression(per_head) -> sympy.Expr:
    """``per_head(h)`` at the symbolic head index, checked to be a number in (0, 1] for h = 0 … 63."""
    try:
        expr = sympy.sympify(per_head(HEAD) if callable(per_head) else per_head)
    except Exception as e:  # noqa: BLE001 — any failure of the user's function is reported with it
        raise DeclarationError(f"decay(per_head=…): cannot evaluate it at a symbolic head index h ({e}); "
                               "write it with + − × / ** on h, e.g. lambda h: 1 - 2 ** (-5 - h)") from e
    if not isinstance(expr, sympy.Expr) or expr.free_symbols - {HEAD}:
        raise DeclarationError(f"decay(per_head=…) must be an expression of the head index h only, got {expr}")
    for h in range(64):
        value = expr.subs(HEAD, h)
        if not value.is_number or not 0 < float(value) <= 1:
            raise DeclarationError(f"decay(per_head=…) gives γ_{h} = {value} at head {h}; expected a number "
                                   "in (0, 1]")
    return expr


# --- gradient clipping ------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnClip:
    """ViTTT's clip of each step's increment, per output column (a column of W, ``[in, out]``):
    G[:, c] ← G[:, c] / (‖G[:, c]‖ + 1), applied to every updated weight's increment before
    momentum, orthogonalisation and the update (``docs/maths.md`` section 10)."""

    def describe(self) -> str:
        return "column-wise gradient clip G[:, c] / (‖G[:, c]‖ + 1)"


def column_clip() -> ColumnClip:
    """ViTTT's column-wise gradient clip G[:, c] ← G[:, c] / (‖G[:, c]‖ + 1)."""
    return ColumnClip()


# --- schedule ---------------------------------------------------------------------------

ORDERS = {
    "update_then_apply": "token-inclusive: token t reads the state after its own step "
    "(steps per token; gradients at the chunk-start weights)",
    "apply_then_update": "block-exclusive: chunk n reads the state after chunk n−1's update; "
    "the last chunk is apply-only",
    "block_inclusive": "block-inclusive: chunk n reads the state after its own update",
    "bidirectional": "one update on all tokens, applied to all tokens",
}


@dataclass(frozen=True)
class Schedule:
    """When the inner loop updates and when it reads.

    ``chunk_size`` is the default mini-batch length L (the caller may override it, unless
    ``fixed``: token-level rules have L = 1 by definition).
    """

    order: str
    chunk_size: int | None
    fixed: bool = False

    def describe(self) -> str:
        size = "the whole sequence" if self.order == "bidirectional" else f"chunks of {self.chunk_size}"
        return f"{self.order} over {size}"


def chunked(order: str = "apply_then_update", size: int = 64) -> Schedule:
    """One mini-batch gradient step per chunk of ``size`` tokens, read in ``order``."""
    if order not in ORDERS:
        raise DeclarationError(f"unknown schedule order {order!r}; expected one of {', '.join(ORDERS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DeclarationError(f"chunk size must be an integer >= 1, got {size!r}")
    return Schedule(order, size)


def token_level(order: str = "update_then_apply") -> Schedule:
    """One step per token (chunk size fixed to 1), e.g. the delta rule."""
    sched = chunked(order, 1)
    return Schedule(sched.order, 1, fixed=True)


def bidirectional() -> Schedule:
    """One step on all tokens, then every token reads the updated weights."""
    return Schedule("bidirectional", None, fixed=True)
