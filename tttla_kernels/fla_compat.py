"""flash-linear-attention's (fla's) chunk ops with fla's names, arguments and defaults, run by tttla's
generated forms: a drop-in for code written against fla 0.6.0.

=========================  ================================================================
fla                        tttla form (``tttla_kernels.<variant>``)
=========================  ================================================================
``chunk_linear_attn``      ``linear_attention``; ``normalize=True`` (fla's default) divides by
                           scale · q_t · (z_0 + Σ_{s≤t} k_s), computed as one more value column
``chunk_simple_gla``       ``simple_gla`` (``g`` [B, T, H]) or ``retention``-like constant
                           decays (``g_gamma`` [H]), ``linear_attention`` with neither
``chunk_gla``              ``gla`` (``g`` = fla's gk, [B, T, H, K])
``chunk_delta_rule``       ``delta_rule`` (``beta`` → ``lr``)
``chunk_gated_delta_rule`` ``gated_delta_rule`` (``beta`` → ``lr``, ``g`` → ``log_decay``)
=========================  ================================================================

Each takes fla's arguments in fla's order, ``scale=None`` meaning Dk^-½ as in fla, ``cu_seqlens``
(``cu_seqlens_cpu`` and ``chunk_indices``, fla's precomputed hints, are accepted and not needed),
``use_qk_l2norm_in_kernel`` (q and k L2-normalised over their last dimension, differentiably) and
``use_beta_sigmoid_in_kernel`` (β = sigmoid(beta)) where fla has them, and returns fla's
``(o, final_state)``. The Triton form runs on a GPU, the torch chunk form elsewhere (``form=`` picks
one). fla options that change the layer in ways tttla does not implement (``allow_neg_eigval``,
``state_v_first``, a gate computed in the kernel, context parallelism through ``cp_context``) are
refused by name rather than ignored.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["chunk_linear_attn", "chunk_simple_gla", "chunk_gla", "chunk_delta_rule", "chunk_gated_delta_rule"]


def _form(variant: str, q: torch.Tensor, form: str | None):
    """The generated form to run: ``form`` if given, else Triton on a GPU and the torch chunk form elsewhere."""
    forms = importlib.import_module(f"tttla_kernels.{variant}").FORMS
    name = form or ("triton" if q.is_cuda and "triton" in forms else "chunk")
    if name not in forms:
        raise ValueError(f"form: {variant} has the forms {sorted(forms)}, got {name!r}")
    return forms[name]


def _scale(scale, q: torch.Tensor) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def _refuse(op: str, **options) -> None:
    """fla options tttla does not implement: an error naming each one set away from its default."""
    for name, (value, default) in options.items():
        if value is not default and value != default:
            raise ValueError(f"{op}: {name}={value!r} is not supported by tttla (only {name}={default!r})")


def _l2(x: torch.Tensor) -> torch.Tensor:
    """fla's in-kernel L2 normalisation of q or k over the last dimension: x / √(Σ x² + 1e-6), computed
    in fp32 (fp64 for fp64 inputs) and returned in x's dtype."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return (wide * torch.rsqrt((wide * wide).sum(-1, keepdim=True) + 1e-6)).to(x.dtype)


def chunk_linear_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | tuple | None = None, output_final_state: bool = False, normalize: bool = True,
    cu_seqlens: torch.Tensor | None = None, *, form: str | None = None,
):
    """fla's ``chunk_linear_attn``: o_t = scale · q_t S_t, S_t = S_{t−1} + k_tᵀ v_t; with ``normalize``
    (fla's default) o_t is divided by scale · q_t · z_t + 1e-10, z_t = z_0 + Σ_{s≤t} k_s, the initial
    state may be ``(S_0, z_0)`` with z_0 ``[B, 1, H, K]`` (``[N, 1, H, K]`` with cu_seqlens) and the
    final state is ``(S, z)``."""
    run = _form("linear_attention", q, form)
    scale = _scale(scale, q)
    if not normalize:
        return run(q, k, v, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens)
    S0, z0 = initial_state if isinstance(initial_state, tuple) else (initial_state, None)
    if S0 is not None or z0 is not None:  # z rides in the state as one more value column
        if S0 is None:
            S0 = z0.new_zeros(z0.shape[0], *q.shape[2:], v.shape[-1], dtype=torch.promote_types(q.dtype, torch.float32))
        z = z0.squeeze(1).to(S0.dtype) if z0 is not None else S0.new_zeros(S0.shape[:-1])
        S0 = torch.cat([S0, z[..., None]], dim=-1)
    ones = v.new_ones(*v.shape[:-1], 1)
    o, final = run(q, k, torch.cat([v, ones], dim=-1), scale=scale, initial_state=S0,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    o = o[..., :-1] / (o[..., -1:] + 1e-10)
    if not output_final_state:
        return o, None
    return o, (final[..., :-1], final[..., -1].unsqueeze(1))


def chunk_simple_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None, scale: float | None = None, initial_state: torch.Tensor | None = None,
    output_final_state: bool = False, state_v_first: bool = False, cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None, *, form: str | None = None,
):
    """fla's ``chunk_simple_gla``: S_t = exp(g_t) S_{t−1} + k_tᵀ v_t, o_t = scale · q_t S_t, with ``g``
    ``[B, T, H]`` per token or ``g_gamma`` ``[H]`` per head (or neither: linear attention)."""
    _refuse("chunk_simple_gla", state_v_first=(state_v_first, False))
    if g is not None and g_gamma is not None:
        raise ValueError("chunk_simple_gla: pass g or g_gamma, not both")
    options = dict(scale=_scale(scale, q), initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens)
    if g is None and g_gamma is None:
        return _form("linear_attention", q, form)(q, k, v, **options)
    if g is None:
        g = g_gamma.to(q.device).view(1, 1, -1).expand(*q.shape[:3])
    return _form("simple_gla", q, form)(q, k, v, log_decay=g, **options)


def chunk_gla(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False, state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None, cu_seqlens_cpu: torch.Tensor | None = None, *, form: str | None = None,
):
    """fla's ``chunk_gla``: S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t, o_t = scale · q_t S_t, ``g``
    ``[B, T, H, K]`` (one log decay per key channel)."""
    _refuse("chunk_gla", state_v_first=(state_v_first, False))
    return _form("gla", q, form)(q, k, v, log_decay=g, scale=_scale(scale, q), initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def chunk_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float | None = None,
    initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False, cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None, *, form: str | None = None,
):
    """fla's ``chunk_delta_rule``: S_t = S_{t−1} + β_t k_tᵀ (v_t − k_t S_{t−1}), o_t = scale · q_t S_t."""
    if use_qk_l2norm_in_kernel:
        q, k = _l2(q), _l2(k)
    return _form("delta_rule", q, form)(q, k, v, lr=beta, scale=_scale(scale, q), initial_state=initial_state,
                                        output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False, use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False, state_v_first: bool = False, cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None, chunk_indices: torch.Tensor | None = None, cp_context=None, *,
    use_gate_in_kernel: bool = False, form: str | None = None,
):
    """fla's ``chunk_gated_delta_rule``: S_t = exp(g_t) (I − β_t k_tᵀk_t) S_{t−1} + β_t k_tᵀ v_t,
    o_t = scale · q_t S_t."""
    _refuse("chunk_gated_delta_rule", allow_neg_eigval=(allow_neg_eigval, False),
            state_v_first=(state_v_first, False), cp_context=(cp_context, None),
            use_gate_in_kernel=(use_gate_in_kernel, False))
    if use_qk_l2norm_in_kernel:
        q, k = _l2(q), _l2(k)
    if use_beta_sigmoid_in_kernel:
        beta = torch.sigmoid(beta)
    return _form("gated_delta_rule", q, form)(q, k, v, lr=beta, log_decay=g, scale=_scale(scale, q),
                                              initial_state=initial_state, output_final_state=output_final_state,
                                              cu_seqlens=cu_seqlens)
