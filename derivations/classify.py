"""Is a variant linear attention, and can it run as a parallel prefix scan? With reasons.

:func:`classify` decides, for the layers :func:`derivations.split.split_model` took out of the
model, the structure, the kernel (static/dynamic), the values (state-independent/dependent),
parallelism and the parallel form. Each decision is a :class:`~derivations.form.Reason`: a code,
the theorems and sections it rests on, and its facts as data (:mod:`derivations.reasons` words it).
"""

from __future__ import annotations

import sympy

from derivations.form import Classification, Reason
from derivations.variant import Variant

__all__ = ["classify", "delta_coefficient"]


def _lowering(variant) -> list[Reason]:
    """A spatial (depthwise) variant is derived one channel at a time (Section 7.5, App. G)."""
    spatial = getattr(variant, "spatial", None)
    return [] if spatial is None else [Reason("lowered.depthwise", ("Section 7.5",), {"kernel": spatial.kernel})]


def _reducible(layers, head, structure, dloss_z, plain) -> list[Reason]:
    """Each layer is a linear-attention update (Theorem 5.1); how the head combines them."""
    if plain:
        return [Reason("reducible.plain", ("Theorem 5.1",), {"state": layers[0].state})]
    out = [Reason("reducible.bias_key" if lay.bias else "reducible.linear_layer", ("Theorem 5.1",),
                  {"z": lay.z, "layer": lay.layer, "state": lay.state,
                   **({"bias": lay.bias} if lay.bias else {})})
           for lay in layers]
    if structure == "gated":
        outputs = tuple(lay.z for lay in layers)
        out.append(Reason("structure.gated", ("Section 7.4",), {"head": head, "outputs": outputs}))
    elif structure == "headed":
        out.append(Reason("structure.head", ("Section 3",),
                          {"head": head, "z": layers[0].z, "dloss_z": dloss_z[layers[0].state]}))
    return out


def _kernel(variant, feature_weights, plain_state: str | None) -> Reason:
    """Dynamic when the inner loop updates a weight inside φ (Theorem 5.2)."""
    inside = tuple(u for u in variant.update if u in feature_weights)
    if inside:
        return Reason("kernel.dynamic", ("Theorem 5.2",), {"updated": inside})
    return Reason("kernel.static", ("Theorem 5.2",),
                  {"updated_state": plain_state, "slow_weights": tuple(feature_weights)})


def _values(layers, dependent, plain, structure, dloss) -> Reason:
    """Whether v̂ reads the state (Section 3); worded in ∂L/∂f for a plain model, else in ∂ℓ/∂z."""
    indep = not any(dependent.values())
    code = "values.state_independent" if indep else "values.state_dependent"
    if plain:
        return Reason(code, ("Section 3",), {"dloss": dloss})
    if indep:
        return Reason(code, ("Section 3",))
    z_of = {lay.state: lay.z for lay in layers}
    reads = tuple((z_of[u], zs) for u, zs in dependent.items() if zs)
    return Reason(code, ("Section 3",), {"reads": reads, "through_head": structure != "linear"})


def _parallel(variant, kernel, indep, plain) -> Reason:
    """Parallel (a prefix scan, or one bidirectional step) or not, and what blocks it (Sections 3–5)."""
    one_step = variant.schedule.order == "bidirectional"
    blockers = []
    if kernel == "dynamic" and not one_step:
        blockers.append(("dynamic_kernel", "Section 4"))
    if not indep and not one_step:
        blockers.append(("state_dependent_values", "Section 3"))
    if variant.weight_norm is not None:
        blockers.append(("weight_norm", "Section 4"))
    clip = getattr(variant, "clip", None)
    clip_basis = ("Section 4",) if clip is not None else ()
    if blockers:
        return Reason("not_parallel", _unique(s for _, s in blockers),
                      {"blockers": tuple(b for b, _ in blockers), "plain": plain})
    if one_step:
        return Reason("parallel.one_step", clip_basis, {"clip": clip})
    if not plain:
        return Reason("parallel.prefix_scan", ("Section 5",), {"plain": False})
    kept = tuple(k for k, on in (("per_token_lr", variant.lr.kind == "per_token"),
                                 ("lr_position", variant.lr.position),
                                 ("momentum", variant.momentum is not None),
                                 ("decay", variant.decay is not None and variant.decay.gate != "channel"),
                                 ("channel_decay", variant.decay is not None and variant.decay.gate == "channel"),
                                 ("newton_schulz", variant.orthogonalize is not None)) if on)
    return Reason("parallel.prefix_scan", _unique(("Section 5",) + (("Section 4",) if kept else ()) + clip_basis),
                  {"plain": True, "kept": kept, "clip": clip})


def _unique(refs) -> tuple[str, ...]:
    return tuple(dict.fromkeys(refs))


def delta_coefficient(dloss, y):
    """c when ∂L/∂f = c·y + r with r free of the prediction y and c a nonzero number, i.e.
    ∂L/∂f is affine in y with Jacobian c·I (½‖f − v‖²: c = 1; c·‖f − v‖²: 2c); else None."""
    expanded = sympy.expand(dloss)
    c = sympy.Integer(0)
    for term in expanded.args if isinstance(expanded, sympy.MatAdd) else (expanded,):
        if not term.has(y):
            continue
        if term == y:
            c += 1
            continue
        if isinstance(term, sympy.MatMul):
            scalars = [a for a in term.args if not isinstance(a, sympy.MatrixExpr)]
            mats = [a for a in term.args if isinstance(a, sympy.MatrixExpr)]
            if mats == [y] and all(s.is_number for s in scalars):
                c += sympy.Mul(*scalars)
                continue
        return None
    c = sympy.nsimplify(c)
    return c if c != 0 else None


def _parallel_form(variant: Variant, kernel: str, indep: bool, dloss, y) -> Reason:
    """Why a plain layer that is not a prefix scan has DeltaNet's chunk form (``delta_chunk``:
    per-token steps, ∂L/∂f affine in the prediction with Jacobian c·I), or only a scan."""
    c = delta_coefficient(dloss, y)
    sched = variant.schedule
    blockers = [b for b, on in (
        ("dynamic_kernel", kernel == "dynamic"),
        ("not_affine_values", not indep and c is None),
        ("weight_norm", variant.weight_norm is not None),
        ("newton_schulz", variant.orthogonalize is not None),
        ("momentum", variant.momentum is not None),
        ("not_token_steps", not (sched.order == "update_then_apply" and sched.fixed and sched.chunk_size == 1)),
        ("channel_gate", variant.decay is not None and variant.decay.gate == "channel"),
    ) if on]
    if not blockers:
        beta = (-c if variant.ascent else c) * sympy.Symbol("η_t")
        return Reason("parallel_form.delta_chunk", ("Section 3",),
                      {"dloss": dloss, "c": c, "beta": beta, "gated": variant.decay is not None})
    within = kernel == "static" and not indep and sched.order == "update_then_apply" and (sched.chunk_size or 1) > 1
    return Reason("parallel_form.sequential", ("Section 3",) if within else (),
                  {"blockers": tuple(blockers), "dloss": dloss, "within_chunk": within})


def classify(variant: Variant, layers, head, feature_weights, dloss_z, dloss, y) -> Classification:
    """Structure, kernel, values, parallelism and parallel form of ``f = head(z_1, …; x)``.

    ``dloss_z`` maps each layer's state to ∂ℓ/∂z_j of the effective loss ℓ = L(head(z), v);
    ``dloss`` is ∂L/∂f of the declared loss in the prediction ``y``. One bias-free layer read
    directly (structure ``"linear"``, f = φ(x)·W) is reasoned about in terms of ∂L/∂f and may have
    DeltaNet's chunk form; a head or a bias in terms of ∂ℓ/∂z.
    """
    structure = "gated" if len(layers) > 1 else ("linear" if head == layers[0].z else "headed")
    plain = structure == "linear" and layers[0].bias is None
    kernel = _kernel(variant, feature_weights, layers[0].state if plain else None)
    kind = kernel.code.removeprefix("kernel.")
    dependent = {u: sorted((lay.z for lay in layers if g.has(lay.z)), key=str) for u, g in dloss_z.items()}
    indep = not any(dependent.values())
    parallel = _parallel(variant, kind, indep, plain)
    reasons = [*_lowering(variant), *_reducible(layers, head, structure, dloss_z, plain), kernel,
               _values(layers, dependent, plain, structure, dloss), parallel]
    is_parallel = parallel.code != "not_parallel"
    if not plain:  # DeltaNet's chunk form is generated for φ(x)·W only
        parallel_form = "prefix_scan" if is_parallel else "sequential"
    elif is_parallel:
        parallel_form = "prefix_scan"
    else:
        reasons.append(_parallel_form(variant, kind, indep, dloss, y))
        parallel_form = reasons[-1].code.removeprefix("parallel_form.")
    values = "state_independent" if indep else "state_dependent"
    return Classification(True, kind, values, is_parallel, tuple(reasons), parallel_form, structure)
