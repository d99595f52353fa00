"""``derive(variant)``: the linear-attention form of a declared variant, derived symbolically.

Steps: trace the model and loss (the IR), split it into linear layers ``z_j = φ_j(x; Θ)·W_j
(+ b_j)`` under an output head (:mod:`derivations.split`; a plain φ(x)·W is one layer under
the identity head), differentiate the inner loss with our reverse-mode rules
(:mod:`derivations.autodiff`), build q̂, k̂, v̂ and S_0 per layer (Theorems 5.1–5.3), classify
with reasons, and certify the rewrite exactly at tiny sizes (:mod:`derivations.certificate`).
"""

from __future__ import annotations

import time

import sympy

from derivations.autodiff import canonicalize, grad, rationalize, vjp
from derivations.classify import classify
from derivations.form import LayerForm, LinearAttentionForm
from derivations.loading import load_variant
from derivations.split import split_model
from derivations.variant import Variant

__all__ = ["derive", "MASKS"]

#: the read mask C_ti (which steps token t reads) of each schedule order, by name
MASKS = {"update_then_apply": "token-inclusive", "apply_then_update": "block-exclusive",
         "block_inclusive": "block-inclusive", "bidirectional": "bidirectional"}


def _eta(variant: Variant):
    if variant.lr.kind == "per_token":
        return sympy.Symbol("eta_t", positive=True)
    return sympy.nsimplify(variant.lr.value, rational=True)


def derive(variant: Variant | str, *, certify: bool = True) -> LinearAttentionForm:
    """Derive the linear-attention form of ``variant`` (a Variant, catalog name or file).

    Raises:
        ReductionError: an updated fast weight is not in a linear layer φ(x)·W (+ b) under the
            output head, or the model uses an operation or function the engine cannot
            differentiate; the message names the sub-expression.
    """
    start = time.perf_counter()
    variant = load_variant(variant)
    tr = variant.trace()
    layers, head = split_model(variant, tr)
    form = _form(variant, tr, layers, rationalize(head))
    if certify:
        from derivations.certificate import certify as run_certificate

        object.__setattr__(form, "certificate", run_certificate(form))
    object.__setattr__(form, "seconds", time.perf_counter() - start)
    return form


def _form(variant: Variant, tr, layers, head) -> LinearAttentionForm:
    """The form of ``f = head(z_1, …; x)`` with linear layers ``z_j = φ_j(x)·W_j (+ b_j)``.

    The head is absorbed into the effective loss ℓ(z) = L(head(z), v): each layer is linear
    attention with key φ_j(k) (and a constant 1 for its bias) and value v̂_j = ∓η ∂ℓ/∂z_j at the
    current state, derived with our reverse-mode rules.
    """
    loss = rationalize(tr.loss)
    dloss = grad(loss, tr.y)
    states = {lay.state for lay in layers} | {lay.bias for lay in layers if lay.bias}
    feature_weights = tuple(n for n, w in tr.weights.items()
                            if n not in states and any(rationalize(lay.feature).has(w) for lay in layers))
    dloss_z = {lay.state: canonicalize(vjp(head, lay.z, dloss.xreplace({tr.y: head}))) for lay in layers}
    cls = classify(variant, layers, head, feature_weights, dloss_z, dloss, tr.y)
    dynamic = cls.kernel == "dynamic"

    d = tr.x.shape[1]
    q, k = sympy.MatrixSymbol("q", 1, d), sympy.MatrixSymbol("k", 1, d)
    eta = _eta(variant)
    sign = 1 if variant.ascent else -1
    theta_t = {n: tr.weights[n] for n in feature_weights}
    theta_next = dict(theta_t)
    if dynamic:
        theta_t = {n: sympy.MatrixSymbol(f"{n}_{{t}}", *tr.weights[n].shape) for n in feature_weights}
        theta_next = {n: sympy.MatrixSymbol(f"{n}_{{t+1}}", *tr.weights[n].shape) for n in feature_weights}
    plain_t = {tr.weights[n]: s for n, s in theta_t.items()}
    plain_next = {tr.weights[n]: s for n, s in theta_next.items()}

    at_state, pieces = {}, []
    for lay in layers:
        phi = rationalize(lay.feature)
        key = canonicalize(phi.xreplace({tr.x: k, **plain_t}))
        query = canonicalize(phi.xreplace({tr.x: k if variant.queries == "key" else q, **plain_next}))
        state_t = sympy.MatrixSymbol(f"{lay.state}_{{t}}", *tr.weights[lay.state].shape)
        bias_t = sympy.MatrixSymbol(f"{lay.bias}_{{t}}", *tr.weights[lay.bias].shape) if lay.bias else None
        z_t = sympy.MatMul(key, state_t) if bias_t is None else sympy.MatAdd(sympy.MatMul(key, state_t), bias_t)
        at_state[lay.z] = z_t
        pieces.append((lay, phi, key, query, state_t, bias_t))
    out = []
    for lay, phi, key, query, state_t, bias_t in pieces:
        value = canonicalize(sympy.MatMul(sign * eta, dloss_z[lay.state].xreplace({**at_state, tr.x: k})))
        out.append(LayerForm(lay.state, lay.bias, lay.z, rationalize(lay.layer), canonicalize(phi), key, query,
                             dloss_z[lay.state], value, state_t, bias_t))
    main = out[0]
    W = main.state
    Wsym = tr.weights[W]
    pred_k = rationalize(tr.prediction).xreplace({tr.x: k})
    ell = loss.xreplace({tr.y: pred_k})
    gradients = {u: grad(ell, tr.weights[u]) for u in variant.update}
    return LinearAttentionForm(
        variant=variant, state=W, x=tr.x, feature=main.feature, feature_weights=feature_weights,
        q=q, k=k, v=tr.v, eta=eta, y=tr.y, dloss=dloss, query=main.query, key=main.key, value=main.value,
        state_t=main.state_t, theta_t=theta_t, theta_next=theta_next,
        state0=sympy.MatrixSymbol(f"{W}_{{0}}", *Wsym.shape), gradients=gradients,
        mask=MASKS[variant.schedule.order], classification=cls, weights=dict(tr.weights), head=head, layers=tuple(out),
    )
