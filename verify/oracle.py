"""The direct-TTT oracle: a declared inner loop, executed literally.

Every generated form is checked against this. It is slow by design and meant to be read: the
schedule is :func:`derivations.inner_loop.run_inner_loop` (clip → momentum → 𝓜 → decay → add →
weight norm per step, reads in the declared order), run here on torch tensors batched over
``[B, H, tokens]``; each increment asks ``torch.autograd`` for the gradient of the inner loss at
the current fast weights. It never uses a derived gradient. With ``create_graph=True`` (chosen
automatically when an input requires grad), gradients of an outer loss flow back to q, k,
v, the learning rates, the momentum coefficients and the initial fast weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from derivations.inner_loop import run_inner_loop
from derivations.loading import load_variant
from derivations.mat import Mat
from derivations.spec import Orthogonalize
from derivations.variant import Variant
from verify.checks import check_chunk_size, check_qkv, check_scale, check_tensor
from verify.signature import check_given, input_leaves

__all__ = ["run_direct", "newton_schulz", "read_model", "increments"]


def newton_schulz(X: torch.Tensor, ortho: Orthogonalize) -> torch.Tensor:
    """Muon's 𝓜 on a batch of matrices ``[..., m, n]``, in X's dtype, as defined: a tall matrix
    (m > n) is transposed first and back at the end; X ← X / (‖X‖_F + ε); then per step (a, b, c),
    A = X Xᵀ and X ← a X + (b A + c A²) X."""
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + ortho.eps)
    for a, b, c in ortho.coefficients:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def _column_norms(W: torch.Tensor) -> torch.Tensor:
    """‖W[:, c]‖ for every output channel c (the norm over the input dimension)."""
    return W.norm(dim=-2, keepdim=True)


def read_model(variant: Variant, W: Mapping[str, torch.Tensor], rows: torch.Tensor, grid=None) -> torch.Tensor:
    """f(rows; W): the model applied to token rows ``[B, H, n, D]`` (on the ``grid`` of a spatial layer)."""
    weights = {name: Mat.weight(w, name) for name, w in W.items()}
    return variant.model(Mat.rows(rows, grid=grid), **weights).value


def _token_losses(variant: Variant, W, K: torch.Tensor, V: torch.Tensor, grid=None) -> torch.Tensor:
    """ℓ_i = L(f(k_i; W), v_i) for each token row: ``[B, H, n, 1]``."""
    prediction = read_model(variant, W, K, grid)
    return variant.loss(Mat.rows(prediction, "y"), Mat.rows(V, "v")).value


def increments(variant, W, K, V, eta, create_graph, grid=None) -> dict[str, torch.Tensor]:
    """ΔW_u = ∓ Σ_i η_{u,i} ∇_{W_u} ℓ_i for every updated weight u, all at the weights W.

    ``eta`` maps each updated name to a ``[B, H, n, 1]`` learning rate (or a float).
    The sum over batch and heads is harmless: each (b, h) has its own weights.
    """
    losses = _token_losses(variant, W, K, V, grid)
    sign = 1.0 if variant.ascent else -1.0
    out = {}
    for u in variant.update:
        weighted = (eta[u] * losses).sum()
        (grad,) = torch.autograd.grad(weighted, W[u], create_graph=create_graph, retain_graph=True)
        out[u] = sign * grad
    return out


def _eta_for(variant, lr, B, T, H, dtype, device) -> dict[str, torch.Tensor]:
    """Learning rates per updated weight as ``[B, H, T, 1]`` tensors."""
    if variant.lr.kind == "constant":
        full = torch.full((B, H, T, 1), variant.lr.value, dtype=dtype, device=device)
        return {u: full for u in variant.update}
    per = lr if isinstance(lr, Mapping) else {u: lr for u in variant.update}
    return {u: per[u].transpose(1, 2).unsqueeze(-1) for u in variant.update}


def _check_inputs(variant, q, k, v, initial_weights, lr, momentum, log_decay=None, grid=None):
    """Check every argument of a call but ``lr_position`` and ``chunk_size``; return (B, T, H)."""
    dims = check_qkv(q, k, v)
    check_given(variant, {"lr": lr, "momentum": momentum, "log_decay": log_decay, "grid": grid}, dims, q.device)
    missing = [n for n in variant.fast if n not in initial_weights]
    if missing:
        raise ValueError(f"initial_weights: missing fast weight(s) {missing} of variant {variant.name!r}")
    extra = [n for n in initial_weights if n not in variant.fast]
    if extra:
        raise ValueError(
            f"initial_weights: {extra} are not fast weights of variant {variant.name!r} ({list(variant.fast)})"
        )
    sizes = infer_sizes(variant, initial_weights, dims["Dk"], dims["Dv"])
    for name, w in initial_weights.items():
        rows, cols = variant.shape_of(name, sizes)
        state = {"B": dims["B"], "H": dims["H"], "rows": rows, "cols": cols}
        check_tensor(f"initial_weights[{name!r}]", w, state, q.device, batchless=True)
    return dims["B"], dims["T"], dims["H"]


def _position_factors(variant: Variant, lr_position, chunk_size: int, q: torch.Tensor):
    """a ``[L]`` of a ``per_token(position=True)`` rule (checked), else None (checked absent)."""
    dims = dict(zip(("B", "T", "H", "Dk"), q.shape), L=chunk_size)
    check_given(variant, {"lr_position": lr_position}, dims, q.device)
    return lr_position


def infer_sizes(variant: Variant, initial_weights: Mapping[str, torch.Tensor], Dk: int, Dv: int) -> dict[str, int]:
    """Concrete sizes of the named dimensions, from the key/value widths and the weights."""
    sizes = {variant.key_dim: Dk}
    if variant.value_dim.isidentifier():
        if sizes.setdefault(variant.value_dim, Dv) != Dv:
            raise ValueError(
                f"v must have Dv = {sizes[variant.value_dim]} (variant {variant.name!r} maps "
                f"{variant.key_dim} to {variant.value_dim}), got Dv = {Dv}"
            )
    for name, (r, c) in variant.fast.items():
        w = initial_weights.get(name)
        if w is None:
            continue
        for dim, n in ((r, w.shape[-2]), (c, w.shape[-1])):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(n))
    return sizes


def run_direct(
    variant: Variant | str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    initial_weights: Mapping[str, torch.Tensor],
    lr=None,
    momentum: torch.Tensor | None = None,
    chunk_size: int | None = None,
    log_decay: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
    lr_position: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the declared TTT layer literally.

    Args:
        variant: a :class:`Variant`, a catalog name or ``FILE.py[:ATTR]``.
        q, k: ``[B, T, H, Dk]``; v: ``[B, T, H, Dv]``; any floating dtype, T >= 1.
        initial_weights: every fast weight, ``[B, H, rows, cols]`` or ``[H, rows, cols]``
            (shared across the batch). Non-updated ones are the layer's slow weights.
        lr: per-token learning rates ``[B, T, H]`` (one tensor for all updated weights, or a
            dict name → tensor); only for variants with ``per_token()`` lr.
        momentum: per-token coefficients α ``[B, T, H]``; only for variants with momentum.
        chunk_size: the mini-batch length L (default: the variant's); token-level and
            bidirectional schedules fix it. T need not be a multiple of L.
        log_decay: g = log γ ``[B, T, H]`` (fla's ``g``), or ``[B, T, H, Dk]`` for a per-channel
            gate (fla's ``gk``); only for variants whose decay is passed at call time: a step
            multiplies the updated weights (per channel: their rows) by γ = exp(Σ g) over its
            tokens. A per-head decay is declared in the variant and takes no input.
        grid: ``(h, w)`` with h·w = T, only for spatial (depthwise) variants: the tokens are the
            grid's cells, row-major, and ``depthwise_conv`` runs ``conv2d`` on it.
        lr_position: a ``[L]`` (L = chunk_size), only for ``per_token(position=True)``: token i of
            a mini-batch reads W_0 + a_i Σ_(j≤i) ΔW_j and the mini-batch leaves W_0 + a_last Σ_j ΔW_j
            (TTT-Linear's η_ij = a_i b_j; a partial last mini-batch uses its first positions).
        scale: the queries are multiplied by it before the layer reads them (fla's ``scale``; the layer
            as declared has 1, fla's default is Dk^-½); only for variants that read queries.

    Returns:
        ``(o, final_weights)``: ``o`` is ``[B, T, H, Dv]``; ``final_weights`` maps each updated
        fast weight to its value after the last update performed, ``[B, H, rows, cols]``.
    """
    variant = load_variant(variant)
    B, T, H = _check_inputs(variant, q, k, v, initial_weights, lr, momentum, log_decay, grid)
    check_scale(scale, reads_queries=variant.queries != "key" and variant.spatial is None)
    q = q * scale if scale != 1 else q
    sched = variant.schedule
    if chunk_size is None:
        chunk_size = sched.chunk_size or T
    check_chunk_size(chunk_size)
    if sched.fixed and sched.order != "bidirectional" and chunk_size != sched.chunk_size:
        raise ValueError(
            f"variant {variant.name!r} steps once per token; chunk_size must be {sched.chunk_size}, got {chunk_size}"
        )
    if sched.order == "bidirectional":
        chunk_size = T  # one step on all tokens
    position = _position_factors(variant, lr_position, chunk_size, q)

    optional = dict(lr=lr, momentum=momentum, log_decay=log_decay, lr_position=lr_position)
    inputs = [q, k, v, *initial_weights.values(), *input_leaves(optional).values()]
    create_graph = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)

    # Per (batch, head), a matrix of token rows: [B, H, T, D].
    Q, K, V = (t.transpose(1, 2) for t in (q, k, v))
    W = {n: (w.unsqueeze(0).expand(B, *w.shape) if w.dim() == 3 else w) for n, w in initial_weights.items()}
    backend = _TorchBackend(
        variant, Q=K if variant.queries == "key" else Q, K=K, V=V,
        eta=_eta_for(variant, lr, B, T, H, q.dtype, q.device),
        alpha=momentum.transpose(1, 2)[..., None, None] if momentum is not None else None,  # [B, H, T, 1, 1]
        log_gamma=_log_gamma(variant, log_decay, T, H, q.dtype, q.device),
        position=position, grid=grid, create_graph=create_graph,
        target_norms={u: _column_norms(W[u]) for u in variant.update} if variant.weight_norm else {},
    )
    with torch.enable_grad():
        outputs, W = run_inner_loop(variant, backend, W, T, chunk_size)

    o = torch.cat(outputs, dim=2).transpose(1, 2)
    final = {u: W[u] for u in variant.update}
    if not create_graph:
        o = o.detach()
        final = {u: w.detach() for u, w in final.items()}
    return o, final


def _log_gamma(variant, log_decay, tokens: int, heads: int, dtype, device) -> torch.Tensor | None:
    """log γ of every token ``[B, H, T, 1, 1]`` (a factor of the whole state), ``[B, H, T, Dk, 1]``
    (one per row: a per-channel gate) or ``[1, H, T, 1, 1]`` (a constant per head), or None."""
    decay = variant.decay
    if decay is None:
        return None
    if decay.gate == "head":
        gamma = torch.tensor(decay.gamma_of_head(heads), dtype=dtype, device=device)
        return gamma.log().view(1, heads, 1, 1, 1).expand(1, heads, tokens, 1, 1)
    g = log_decay.transpose(1, 2)  # [B, H, T] or [B, H, T, Dk]
    return g[..., None] if decay.gate == "channel" else g[..., None, None]


class _TorchBackend:
    """The inner loop's torch interpretation (see :class:`derivations.inner_loop.Backend`):
    tensors ``[B, H, ...]`` batched over batch and heads, gradients from ``torch.autograd``."""

    def __init__(self, variant, *, Q, K, V, eta, alpha, log_gamma, position, grid, create_graph, target_norms):
        self.variant, self.Q, self.K, self.V, self.eta = variant, Q, K, V, eta
        self.alpha, self.log_gamma, self.a, self.grid = alpha, log_gamma, position, grid
        self.create_graph, self.target_norms = create_graph, target_norms

    def read(self, W, version, tokens):
        return read_model(self.variant, W, self.Q[..., tokens.start:tokens.stop, :], self.grid)

    def increments(self, W, version, tokens):
        s, e = tokens.start, tokens.stop
        eta = {u: self.eta[u][..., s:e, :] for u in self.variant.update}
        return increments(self.variant, W, self.K[..., s:e, :], self.V[..., s:e, :], eta, self.create_graph, self.grid)

    def trainable(self, W):
        return {n: (w if (w.requires_grad or n not in self.variant.update) else w.detach().requires_grad_())
                for n, w in W.items()}

    def settle(self, w):
        return w if self.create_graph else w.detach()

    def clip(self, name, inc):  # ViTTT: G[:, c] / (‖G[:, c]‖ + 1), literally
        return inc / (_column_norms(inc) + 1.0)

    def orthogonalize(self, name, inc):
        return newton_schulz(inc, self.variant.orthogonalize)

    def renorm(self, name, w):
        return w / (_column_norms(w) + self.variant.weight_norm.eps) * self.target_norms[name]

    def momentum(self, tokens):
        return self.alpha[:, :, tokens.start:tokens.stop].mean(dim=2)

    def decay(self, tokens):
        return self.log_gamma[:, :, tokens.start:tokens.stop].sum(dim=2).exp()

    def position(self, p):
        return self.a[p]
