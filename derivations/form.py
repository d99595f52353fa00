"""The derived linear-attention form of a variant (the output of :func:`derivations.derive`).

Conventions (per head, rows act on the right, as in ``docs/maths.md`` section 1):

* the model splits as ``f(x) = head(z_1, …; x)`` with linear layers ``z_j = φ_j(x; Θ) · W_j
  (+ b_j)``: ``x`` a ``1 × D_k`` row, ``φ(x; Θ)`` a ``1 × D_h`` row (the *feature*), and ``W``
  the ``D_h × D_v`` *state* (a fast weight the inner loop updates); a plain ``φ(x)·W`` is one
  layer under the identity head ``z``;
* each layer then reads ``q̂_t (S_0 + Σ_i C_{ti} k̂_iᵀ v̂_i)`` (Theorems 5.1–5.3), with the
  mask ``C`` given by the schedule and momentum, an optional per-chunk transform 𝓜
  (Newton–Schulz) and an optional weight norm wrapped around each state update.

Every expression is a SymPy matrix expression of the IR (symbolic shapes). The code
generator consumes ``feature`` (with ``x`` and ``feature_weights``), ``value`` (with ``k``,
``v``, ``eta`` and, for state-dependent values, ``state_t``), ``state`` and
``classification``; the printers in :mod:`derivations.printing` turn any of them into
text or LaTeX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from derivations.variant import Variant

__all__ = ["Reason", "Classification", "Certificate", "LayerForm", "LinearAttentionForm"]


@dataclass(frozen=True)
class Reason:
    """One decision of the classifier, as data: a stable ``code`` (``"kernel.static"``,
    ``"parallel_form.delta_chunk"``, …), the theorems and sections it rests on (``basis``, named
    as in ``docs/maths.md``) and its ``facts`` (weight names, SymPy expressions, flags).
    :mod:`derivations.reasons` lists the codes and turns a reason into the sentence a person reads.
    """

    code: str
    basis: tuple[str, ...] = ()
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Classification:
    """What the rewrite says about running the layer in parallel.

    ``kernel`` is ``"static"`` or ``"dynamic"``; ``values`` is ``"state_independent"`` or
    ``"state_dependent"``; ``parallel`` is true iff the state is an associative prefix sum
    of precomputable chunk increments. ``reasons`` has one :class:`Reason` per decision, citing
    the theorem, section or component it rests on (``codes`` lists their codes).

    ``parallel_form`` names the chunked parallel form the layer has: ``"prefix_scan"``
    (``parallel``: chunk increments and a prefix sum), ``"delta_chunk"`` (per-token steps whose
    ∂L/∂f is affine in the prediction with Jacobian c·I: DeltaNet's WY/UT chunk form, the
    chunk states sequential) or ``"sequential"`` (a scan over inner steps only).
    """

    reducible: bool
    kernel: str
    values: str
    parallel: bool
    reasons: tuple[Reason, ...]
    parallel_form: str = "sequential"
    #: ``"linear"`` (f = φ(x)·W), ``"headed"`` (f = head(φ(x)·W + b; x), e.g. x + LN(z)) or
    #: ``"gated"`` (an element-wise combination of several linear layers, e.g. a GLU)
    structure: str = "linear"

    @property
    def codes(self) -> tuple[str, ...]:
        """The codes of the reasons, in order (``("reducible.plain", "kernel.static", …)``)."""
        return tuple(r.code for r in self.reasons)

    def reason(self, code: str) -> Reason | None:
        """The reason with this code, or None when the classifier did not give it."""
        return next((r for r in self.reasons if r.code == code), None)


@dataclass(frozen=True)
class Certificate:
    """A floating-point-free check of the rewrite at tiny sizes.

    ``certified`` is true iff ``simplify(LA output − literal inner-loop output) == 0`` for
    every token; ``checked`` says what was compared, ``abstract`` what was kept abstract
    (feature maps, Newton–Schulz, weight norm), ``sizes`` the sizes used.
    """

    certified: bool
    checked: str
    abstract: tuple[str, ...]
    sizes: dict
    seconds: float
    failure: str | None = None


@dataclass(frozen=True)
class LayerForm:
    """One linear layer ``z = φ(x)·W (+ b)`` of the model, as linear attention.

    ``key``/``query`` are φ_t(k) and φ_{t+1}(q); ``bias`` (an updated ``1 × n`` weight) extends
    them by a constant 1 and the state ``W`` by the row ``b``; ``dloss_z`` is ∂ℓ/∂z of the
    effective loss ℓ = L(head(z_1, …), v) (an expression of the ``z`` symbols, ``x`` and ``v``);
    ``value`` is v̂ = ∓η ∂ℓ/∂z at z_j = k̂ W_{j,t} + b_{j,t} (it reads ``state_t``/``bias_t``).
    """

    state: str
    bias: str | None
    z: sympy.MatrixSymbol
    layer: sympy.MatrixExpr
    feature: sympy.MatrixExpr
    key: sympy.MatrixExpr
    query: sympy.MatrixExpr
    dloss_z: sympy.MatrixExpr
    value: sympy.MatrixExpr
    state_t: sympy.MatrixSymbol
    bias_t: sympy.MatrixSymbol | None


@dataclass(frozen=True, eq=False)
class LinearAttentionForm:
    """A variant rewritten as (extended) linear attention: ``layers`` (at least one) under ``head``.

    The attributes ``feature`` … ``value`` and ``state_t`` describe the first layer (the only one
    of f = φ(x)·W, the last linear layer under a head).

    Attributes:
        variant: the declared variant.
        state: the name of the state W (the model's last-layer fast weight), ``D_h × D_v``.
        x: the ``1 × D_k`` input-row symbol that ``feature`` is written in.
        feature: φ(x; Θ), a ``1 × D_h`` expression of ``x`` and ``feature_weights`` (just
            ``x`` when the last layer is the whole model).
        feature_weights: the fast weights inside φ (Θ), updated or not.
        q, k, v: ``1 × D_k``, ``1 × D_k``, ``1 × D_v`` symbols of a query, key and value row.
        eta: the learning rate η_t (a symbol) or a constant (a number).
        y: the prediction symbol ``1 × D_v`` that ``dloss`` is written in.
        dloss: ∂L/∂f as an expression of ``y`` and ``v`` (``1 × D_v``).
        query: q̂ = φ_{t+1}(q) (φ at the updated Θ when the kernel is dynamic; ``k`` replaces
            ``q`` when the variant reads with its keys), ``1 × D_h``.
        key: k̂ = φ_t(k), ``1 × D_h``.
        value: v̂ = g_t(k) = ∓η ∂L/∂f at f_t(k) = φ_t(k) W_t, ``1 × D_v`` (− for descent,
            + for ascent); contains ``state_t`` only when values are state-dependent.
        state_t: the symbol of the state W_t that ``value`` may read.
        theta_t, theta_next: feature weights at steps t and t+1 (name → symbol; equal to
            the plain symbols when the kernel is static).
        state0: S_0 = W_0, the initial state (a symbol).
        gradients: ∇_U ℓ for each updated fast weight U, at the current weights, for
            ℓ = L(f(k), v) (derived with :mod:`derivations.autodiff`).
        mask: the read mask C_ti the schedule implies, by name (``"token-inclusive"``,
            ``"block-exclusive"``, ``"block-inclusive"`` or ``"bidirectional"``);
            :mod:`tttla.reporting.formulas` typesets it with the unrolled state, the momentum
            coefficients and the dynamic kernel's recurrence.
        classification: reducible/kernel/values/parallel with reasons.
        certificate: the exact symbolic check, or None when skipped.
        seconds: wall time of the derivation (certificate included).
    """

    variant: Variant
    state: str
    x: sympy.MatrixSymbol
    feature: sympy.MatrixExpr
    feature_weights: tuple[str, ...]
    q: sympy.MatrixSymbol
    k: sympy.MatrixSymbol
    v: sympy.MatrixSymbol
    eta: sympy.Expr
    y: sympy.MatrixSymbol
    dloss: sympy.MatrixExpr
    query: sympy.MatrixExpr
    key: sympy.MatrixExpr
    value: sympy.MatrixExpr
    state_t: sympy.MatrixSymbol
    theta_t: dict
    theta_next: dict
    state0: sympy.MatrixSymbol
    gradients: dict
    mask: str
    classification: Classification
    certificate: Certificate | None = None
    seconds: float = 0.0
    weights: dict = field(default_factory=dict)
    #: the head ``f = head(z_1, …; x)`` (an expression of the layers' ``z`` symbols and ``x``;
    #: ``z`` itself, the identity head, for f = φ(x)·W) and one :class:`LayerForm` per linear layer
    head: sympy.MatrixExpr | None = None
    layers: tuple = ()

    @property
    def is_linear(self) -> bool:
        """True iff the model is one bias-free linear layer read directly, f(x) = φ(x)·W
        (the identity head): the read is o = q̂ S, not head(q̂ S + b; x)."""
        return self.classification.structure == "linear" and not any(lay.bias for lay in self.layers)

    @property
    def reducible(self) -> bool:
        return self.classification.reducible

    @property
    def parallel(self) -> bool:
        return self.classification.parallel
