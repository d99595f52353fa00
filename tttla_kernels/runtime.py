"""Helpers shared by generated modules and the oracle: argument checks that name the
offending argument, the expected and the given shape, dtype or device."""

from __future__ import annotations

import math

import torch

from tttla_kernels.varlen import block_log_decay, check_cu_seqlens, each_sequence, packed_initial_states

__all__ = [
    "each_sequence", "check_cu_seqlens", "packed_initial_states", "block_log_decay",
    "check_qkv", "grouped_heads", "check_per_token", "scaled_queries", "check_state", "check_chunk_size",
    "state_dtype", "work_dtype", "heads_first", "per_head", "token_coefficient", "channel_coefficient",
    "newton_schulz", "renormalize_columns", "chunk_means", "linear_scan", "causal_product", "split_chunks",
    "chunk_log_decay", "chunk_log_decay_totals", "chunk_decay", "decayed_scores", "last_position_factors",
    "token_momentum_weights",
    "scan_block", "TokenRows", "token_rows",
    "resolve_sizes", "shape_in", "check_grid", "grid_patches", "lower_depthwise", "raise_depthwise", "check_position",
]


def _fail(msg: str):
    raise ValueError(msg)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Check time-first ``q, k: [B, T, H, Dk]`` and ``v: [B, T, H, Dv]``; return (B, T, H, Dk, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must have shape [B, T, H, D] (4 dims), got {tuple(t.shape)}")
        if not t.is_floating_point():
            _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, T, H, Dk = q.shape
    if T < 1:
        _fail(f"q must hold at least one token (T >= 1), got shape {tuple(q.shape)}")
    if tuple(k.shape) != (B, T, H, Dk):
        _fail(f"k must have the shape of q, [B, T, H, Dk] = {[B, T, H, Dk]}, got {list(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        _fail(f"v must have shape [B, T, H, Dv] with [B, T, H] = {[B, T, H]}, got {list(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            _fail(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            _fail(f"{name} must be on the device of q ({q.device}), got {t.device}")
    return B, T, H, Dk, v.shape[-1]


def grouped_heads(q, k, v) -> tuple:
    """Grouped value heads (fla's GVA): with ``v: [B, T, Hv, Dv]`` and ``q, k: [B, T, H, Dk]``, Hv a
    multiple G of H, value head j reads query/key head j // G, so q and k are repeated per value head
    (a copy, G× their size; the gradients of the repeats add up). Equal head counts pass unchanged, and
    inputs that are not 4-D tensors are left to :func:`check_qkv`."""
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)) or v.shape[2] == q.shape[2]:
        return q, k
    H, Hv = q.shape[2], v.shape[2]
    if k.shape[2] != H:
        _fail(f"k must have as many heads as q ({H}), got {k.shape[2]}")
    if Hv % H:
        _fail(f"v has {Hv} heads and q and k have {H}: grouped value heads need a multiple of {H}")
    return q.repeat_interleave(Hv // H, dim=2), k.repeat_interleave(Hv // H, dim=2)


def check_per_token(name: str, t, q: torch.Tensor) -> None:
    """Check a per-token coefficient (learning rate, momentum) ``[B, T, H]`` against q."""
    B, T, H = q.shape[:3]
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape [B, T, H] = {[B, T, H]}, got {type(t).__name__}")
    if tuple(t.shape) != (B, T, H):
        _fail(f"{name} must have shape [B, T, H] = {[B, T, H]}, got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        _fail(f"{name} must be on the device of q ({q.device}), got {t.device}")


def check_state(name: str, t, batch: int, heads: int, shape: tuple[int, int], device) -> None:
    """Check a state or fast weight ``[B, H, rows, cols]`` (or ``[H, rows, cols]``, shared by the batch)."""
    want = [batch, heads, *shape]
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}")
    if tuple(t.shape) not in (tuple(want), tuple(want[1:])):
        _fail(f"{name} must have shape [B, H, rows, cols] = {want} (or {want[1:]}), got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != device:
        _fail(f"{name} must be on the device of q ({device}), got {t.device}")


def context_shard(process_group, q: torch.Tensor, v: torch.Tensor, chunk_size: int, aligned: bool):
    """This rank's place in the context-parallel ``process_group`` (None: one process), after checking that
    every rank holds a slice of the same layer (``tttla_kernels.context_parallel``)."""
    if process_group is None:
        return None
    from tttla_kernels.context_parallel import shard_of

    B, T, H, DK = q.shape
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    dtype = dtypes.index(q.dtype) if q.dtype in dtypes else -1
    return shard_of(process_group, tokens=T, chunk_size=chunk_size, aligned=aligned,
                    signature=(B, H, DK, v.shape[-1], dtype, chunk_size))


def delta_slice_start(U: torch.Tensor, W: torch.Tensor, k_tail: torch.Tensor, block_decay: torch.Tensor | None,
                      initial: torch.Tensor, shard) -> torch.Tensor:
    """The state a rank's slice of a WY/UT-block form starts from (context parallelism): each block maps
    the state S ↦ M_n S + B_n with M_n = Γ_n I − K̂_nᵀ W_n and B_n = K̂_nᵀ U_n (the blocks of ``wy_blocks``),
    so the slice is one affine map, exchanged with the other ranks (``context_parallel.affine_slice_start``)."""
    from tttla_kernels.context_parallel import affine_slice_start

    transitions = -(k_tail.mT @ W)  # −K̂ᵀW: [B, H, N, Dk, Dk]
    eye = torch.eye(transitions.shape[-1], dtype=transitions.dtype, device=transitions.device)
    transitions = transitions + (eye if block_decay is None else block_decay * eye)
    return affine_slice_start(transitions, k_tail.mT @ U, initial, shard)


def single_process(process_group, why: str) -> None:
    """Refuse a ``process_group`` where a form runs in one process, saying why."""
    if process_group is not None:
        raise ValueError(f"process_group: {why}")


def scaled_queries(q: torch.Tensor, scale) -> torch.Tensor:
    """q multiplied by ``scale`` (fla's ``scale``: a real number; 1 leaves q as it is)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        _fail(f"scale must be a finite real number (fla's default is Dk ** -0.5), got {scale!r}")
    return q if scale == 1 else q * scale


def check_chunk_size(chunk_size) -> int:
    """A chunk size must be an integer >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        _fail(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return chunk_size


# --- numerics shared by generated forms ---------------------------------------------------


def state_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype of states and accumulators: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(q.dtype, torch.float32)


def work_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype of the parallel forms' token-level work (feature maps, effective values, the
    chunk products, Newton–Schulz): q's own for fp16/bf16, so the matrix products run on tensor
    cores with fp32 accumulation; else the state dtype. States stay in ``state_dtype``."""
    return q.dtype if q.dtype in (torch.float16, torch.bfloat16) else state_dtype(q)


def heads_first(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, D]`` → ``[B, H, T, D]`` in ``dtype`` (one matrix of token rows per head)."""
    return x.transpose(1, 2).to(dtype)


def per_head(name: str, w, batch: int, heads: int, shape: tuple, device, dtype, copy: bool = False) -> torch.Tensor:
    """A fast weight ``[H, r, c]`` or ``[B, H, r, c]`` as ``[B, H, r, c]`` in ``dtype``; with ``copy``, never
    the caller's storage (one copy, converting the dtype on the way)."""
    check_state(name, w, batch, heads, shape, device)
    w = w.to(dtype, copy=copy)
    return w.unsqueeze(0).expand(batch, *w.shape) if w.dim() == 3 else w


def token_coefficient(name: str, t, q: torch.Tensor, dtype) -> torch.Tensor:
    """A per-token coefficient ``[B, T, H]`` as ``[B, H, T, 1]`` in ``dtype``."""
    check_per_token(name, t, q)
    return t.transpose(1, 2).unsqueeze(-1).to(dtype)


def channel_coefficient(name: str, t, q: torch.Tensor, dtype) -> torch.Tensor:
    """A per-token, per-key-channel coefficient ``[B, T, H, Dk]`` (a per-channel gate) as
    ``[B, H, T, Dk]`` in ``dtype``."""
    B, T, H, Dk = q.shape
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor of shape [B, T, H, Dk] = {[B, T, H, Dk]}, got {type(t).__name__}")
    if tuple(t.shape) != (B, T, H, Dk):
        _fail(f"{name} must have shape [B, T, H, Dk] = {[B, T, H, Dk]} (one per key channel), got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        _fail(f"{name} must be on the device of q ({q.device}), got {t.device}")
    return t.transpose(1, 2).to(dtype)


def newton_schulz(X: torch.Tensor, coefficients, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Muon's 𝓜 on a batch of matrices ``[..., m, n]``: normalise by the Frobenius norm,
    then :func:`newton_schulz_steps`. The steps run in ``dtype`` (default X's; Muon runs them in
    bf16) and the result is returned in X's."""
    out_dtype = X.dtype
    if dtype is not None and dtype != out_dtype:
        return newton_schulz(X.to(dtype), coefficients, eps).to(out_dtype)
    return newton_schulz_steps(X / (torch.linalg.matrix_norm(X, keepdim=True) + eps), coefficients)


def newton_schulz_steps(X: torch.Tensor, coefficients) -> torch.Tensor:
    """The steps X ← a X + (b A + c A²) X, A = X Xᵀ, of a Frobenius-normalised batch ``[..., m, n]``, on
    its wide orientation (m ≤ n; a tall batch is transposed there and back, as views). Three batched
    matrix products per step, b A + c A² and a X + B X each one ``baddbmm`` (the scaled sum in the
    product's epilogue), so no element-wise pass runs between them."""
    if X.shape[-2] > X.shape[-1]:
        return newton_schulz_steps(X.mT, coefficients).mT
    batch = X.shape[:-2]
    X = _NewtonSchulzSteps.apply(X.reshape(-1, *X.shape[-2:]), tuple(map(tuple, coefficients)))
    return X.reshape(*batch, *X.shape[-2:])


class _NewtonSchulzSteps(torch.autograd.Function):
    """The steps on a ``[batch, m, n]`` stack with an explicit backward. With B = b A + c A² (symmetric)
    and G = ∂L/∂X' of X' = a X + B X, a step's backward is

        P = G Xᵀ + X Gᵀ  (∂L/∂B, symmetrised),
        ∂L/∂X = a G + B G + (b P + c (P A + A P)) X,

    six launches (a product, a sum, four ``baddbmm``) where autograd's generic backward of the three
    products takes about twenty; the forward's X, A and B of every step are kept for it."""

    @staticmethod
    def forward(ctx, X, coefficients):
        saved = []
        for a, b, c in coefficients:
            A = torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A²
            saved += [X, A, B]
            X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
        ctx.coefficients = coefficients
        ctx.save_for_backward(*saved)
        return X

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        saved = ctx.saved_tensors
        for i in reversed(range(len(ctx.coefficients))):
            a, b, c = ctx.coefficients[i]
            X, A, B = saved[3 * i: 3 * i + 3]
            dB = torch.bmm(G, X.mT)
            P = dB + dB.mT
            dA = torch.baddbmm(P, P, A, beta=b, alpha=c)  # b P + c P A
            dA = torch.baddbmm(dA, A, P, alpha=c)  # … + c A P
            G = torch.baddbmm(torch.baddbmm(G, B, G, beta=a), dA, X)  # a G + B G + (…) X
        return G, None


def renormalize_columns(W: torch.Tensor, target_norms: torch.Tensor, eps: float) -> torch.Tensor:
    """Weight norm: every output channel (column) of W back to its target norm."""
    return W / (W.norm(dim=-2, keepdim=True) + eps) * target_norms


def chunk_means(alpha: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-chunk means of a per-token coefficient ``[B, H, T, 1]`` → ``[B, H, N]``; a
    partial last chunk averages over its real tokens only."""
    T = alpha.shape[2]
    N = -(-T // chunk_size)
    padded = torch.nn.functional.pad(alpha[..., 0], (0, N * chunk_size - T))
    counts = torch.full((N,), float(chunk_size), dtype=alpha.dtype, device=alpha.device)
    counts[-1] = T - (N - 1) * chunk_size
    return padded.unflatten(-1, (N, chunk_size)).sum(-1) / counts


def scan_states(b: torch.Tensor, initial: torch.Tensor | None, a: torch.Tensor | None = None, shard=None
                ) -> torch.Tensor:
    """h_in, h_0, …, h_{N−1} of h_n = a_n h_{n−1} + b_n along dim 2 (``[B, H, N + 1, …]``): h_in is
    ``initial`` (zero when None) or, on a rank of a context-parallel ``shard``
    (``tttla_kernels.context_parallel``), the value this rank's slice starts from; a ≡ 1 when None
    (one cumulative sum)."""
    if shard is None:
        start = initial if initial is not None else torch.zeros_like(b[:, :, 0])
        if a is None:
            return torch.cat([start.unsqueeze(2), b], dim=2).cumsum(dim=2)
        return torch.cat([start.unsqueeze(2), linear_scan(a, b, start)], dim=2)
    from tttla_kernels.context_parallel import sharded_scan

    h, h_in = sharded_scan(a, b.cumsum(dim=2) if a is None else linear_scan(a, b), initial, shard)
    return torch.cat([h_in.unsqueeze(2), h], dim=2)


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, shard=None) -> torch.Tensor:
    """h_n = a_n ⊙ h_{n−1} + b_n for n = 0 … N−1 along dim 2, from h_{−1} = ``initial`` (zero when None).

    ``b`` is ``[B, H, N, …]``; ``a`` ``[·, ·, N, …]`` (N along dim 2) broadcasts against it (a scalar per chunk as
    ``[B, H, N, 1, 1]``, one factor per state row as ``[B, H, N, r, 1]``); ``initial`` is ``[B, H, …]``.
    Returns every h_n (inclusive), ``b``'s shape. Momentum (M_n = ᾱ_n M_{n−1} + ΔS_n) and a decay
    across chunks (S_n = Γ_n S_{n−1} + ΔS_n) are such scans. On a rank of a context-parallel ``shard``
    the scan continues the slices of the ranks before it (:func:`scan_states`).

    Time and memory grow linearly with N: the scan pairs neighbours, (a_{2m+1} a_{2m},
    a_{2m+1} b_{2m} + b_{2m+1}), solves the half-length scan for the odd positions, and fills in
    each even one from the odd one before it (2 log₂ N rounds of batched products, no N×N
    coefficients, no host sync). An h_n reads only a_j, b_j with j ≤ n, so a non-finite input at
    chunk j reaches only h_j, h_{j+1}, ….
    """
    if shard is not None:
        return scan_states(b, initial, a, shard)[:, :, 1:]
    if initial is not None:
        first = a.narrow(2, 0, 1) * initial.unsqueeze(2) + b.narrow(2, 0, 1)
        b = torch.cat([first, b.narrow(2, 1, b.shape[2] - 1)], dim=2)
    return _pair_scan(a.movedim(2, 0), b.movedim(2, 0)).movedim(0, 2)


def _pair_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`linear_scan` along dim 0 from a zero h_{−1}."""
    n = b.shape[0]
    if n == 1:
        return b
    pairs = n // 2
    a_even, a_odd = a[0:2 * pairs:2], a[1:2 * pairs:2]
    odd = _pair_scan(a_odd * a_even, a_odd * b[0:2 * pairs:2] + b[1:2 * pairs:2])  # h_1, h_3, …
    even = torch.cat([b[:1], a[2::2] * odd[:(n - 1) // 2] + b[2::2]])  # h_0, h_2, …
    woven = torch.stack([even[:pairs], odd], dim=1).flatten(0, 1)
    return woven if n % 2 == 0 else torch.cat([woven, even[pairs:]])


def causal_product(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ_{s ≤ t} weights[..., t, s] · values[..., s, :]: ``[..., L, L]`` times ``[..., L, D]`` →
    ``[..., L, D]``, reading only the lower triangle of ``weights``, causal for non-finite values
    and, backwards, for non-finite gradients.

    ``tril(weights) @ values`` would multiply the zeros above the diagonal into every value, and
    0·NaN = NaN carries a NaN or inf at s back to the rows t < s. Here the product runs on the
    finite values, and an entry (t, c) with a non-finite value at some s ≤ t in column c is NaN,
    as the sum over s ≤ t is then non-finite too. Its backward has the same hazard (the zeros above
    the diagonal meet the gradient of every row t > s), so it is written out: the values' gradient
    is the same product on the reversed sequence, the weights' a selection of the lower triangle.
    """
    return _CausalProduct.apply(weights, values)


def _lower_triangle(L: int, device) -> torch.Tensor:
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


def _causal_product(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    causal = _lower_triangle(weights.shape[-1], weights.device)
    finite = torch.isfinite(values)
    out = torch.where(causal, weights, 0.0) @ torch.where(finite, values, 0.0)
    reached = (~finite).to(values.dtype).cumsum(dim=-2) > 0  # a non-finite value at some s ≤ t
    return torch.where(reached, float("nan"), out)


class _CausalProduct(torch.autograd.Function):
    """:func:`causal_product` with a backward that is causal too (twice differentiable: the backward
    is built from this product and selections)."""

    @staticmethod
    def forward(ctx, weights, values):
        ctx.save_for_backward(weights, values)
        return _causal_product(weights, values)

    @staticmethod
    def backward(ctx, grad):
        weights, values = ctx.saved_tensors
        d_weights = d_values = None
        if ctx.needs_input_grad[0]:  # ∂weights[t, s] = grad[t] · values[s] for s ≤ t
            causal = _lower_triangle(weights.shape[-1], weights.device)
            d_weights = torch.where(causal, grad @ values.mT, 0.0).sum_to_size(weights.shape)
        if ctx.needs_input_grad[1]:  # ∂values[s] = Σ_{t ≥ s} weights[t, s] grad[t]
            d_values = causal_product(weights.mT.flip(-2, -1), grad.flip(-2)).flip(-2).sum_to_size(values.shape)
        return d_weights, d_values


def chunk_log_decay(log_gamma: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """G_t = Σ_(s ≤ t, s in t's chunk) g_s: the cumulative log decay inside each chunk, ``[B, H, T, c]``
    → ``[B, H, N, L, c]`` (c = 1 for one factor per token, Dk per key channel). The padded tail
    has g = 0, so it keeps G of the last real token."""
    return split_chunks(log_gamma, chunk_size).cumsum(dim=3)


def chunk_log_decay_totals(log_gamma: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """log Γ_n = Σ_(t ∈ chunk n) g_t: ``[B, H, T, c]`` → ``[B, H, N, c]``."""
    return split_chunks(log_gamma, chunk_size).sum(dim=3)


def chunk_decay(log_gamma: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Γ_n = exp(Σ_(t ∈ chunk n) g_t) as a factor of the states' rows: ``[B, H, T, c]`` →
    ``[B, H, N, c, 1]`` (c = 1: one factor per chunk; c = Dk: one per key channel)."""
    return chunk_log_decay_totals(log_gamma, chunk_size).unsqueeze(-1).exp()


def decayed_scores(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The intra-chunk scores of a decayed scan, Σ_c q_tc k_ic exp(G_tc − G_ic) for i ≤ t, else 0:
    q, k ``[B, H, N, L, Dk]``, G ``[B, H, N, L, c]`` from :func:`chunk_log_decay` → ``[B, H, N, L, L]``.

    The ratio Γ_t/Γ_i is taken in log space under the mask, exp(G_t − G_i) with −inf above the
    diagonal, so a strong decay underflows to 0 instead of overflowing (exp(−G_i) alone would),
    and the mask selects rather than multiplies, so a non-finite key reaches no earlier row.
    """
    L = q.shape[-2]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if G.shape[-1] == 1:  # one factor per token: a [L, L] ratio per chunk
        G = G[..., 0]
        ratio = torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()
        scores = (q @ k.mT) * ratio.to(q.dtype)
    else:  # one factor per key channel: the ratio differs per channel, so the sum over c is explicit
        ratio = torch.where(causal[..., None], G[..., :, None, :] - G[..., None, :, :], float("-inf")).exp()
        scores = (q[..., :, None, :] * k[..., None, :, :] * ratio.to(q.dtype)).sum(dim=-1)
    return torch.where(causal, scores, 0.0)


def token_momentum_weights(alpha: torch.Tensor, chunk_size: int):
    """Per-token momentum inside each chunk, M_t = α_t M_(t−1) + Δ_t and S_t = S_(t−1) + M_t, unrolled
    from the chunk-start buffer M_0 and state S_0:

        M_t = A_t M_0 + Σ_(j≤t) P_tj Δ_j,   S_t = S_0 + c_t M_0 + Σ_(j≤t) C_tj Δ_j,

    with P_tj = Π_(s=j+1)^t α_s, A_t = Π_(s≤t) α_s, C_tj = Σ_(i=j)^t P_ij and c_t = Σ_(i≤t) A_i (s, i
    in the chunk). ``alpha`` ``[B, H, T, 1]`` → ``(C [B, H, N, L, L], c [B, H, N, L, 1], P_last
    [B, H, N, L], A_last [B, H, N])``, the last two at the chunk's last position. Products are
    cumulative products down masked columns (no division: α = 0 is exact); the padded tail has
    α = 0 and Δ = 0, so it adds nothing to the last chunk's state.
    """
    a = split_chunks(alpha, chunk_size)[..., 0]  # [B, H, N, L]
    L = a.shape[-1]
    rows = torch.arange(L, device=a.device)
    below = rows[:, None] > rows[None, :]  # t > j
    factors = torch.where(below, a[..., :, None], torch.ones_like(a[..., :, None]))  # α_t below the diagonal
    P = torch.where(below | (rows[:, None] == rows[None, :]), torch.cumprod(factors, dim=-2), 0.0)
    C = P.cumsum(dim=-2)  # Σ_(i ≤ t) P_ij, and P_ij = 0 for i < j
    A = torch.cumprod(a, dim=-1)
    return C, A.cumsum(dim=-1).unsqueeze(-1), P[..., -1, :], A[..., -1]


def scan_block(chunk_size: int) -> int:
    """The fused scan's block: the power of two ≥ 16 covering ``chunk_size``, at most 64 (a token-level
    schedule's result does not depend on it)."""
    return min(64, max(16, 1 << (max(chunk_size, 1) - 1).bit_length()))


def last_position_factors(position: torch.Tensor, T: int) -> torch.Tensor:
    """a at each chunk's last token: a rank-1 learning rate's chunk n leaves W_0 + a_last Σ_j ΔW_j.
    ``position`` a ``[L]`` → ``[N, 1, 1]``; a partial last chunk ends at its own last position."""
    L = position.shape[0]
    N = -(-T // L)
    last = torch.full((N,), L - 1, device=position.device)
    last[-1] = T - (N - 1) * L - 1
    return position[last][:, None, None]


class TokenRows:
    """A ``[B, H, T, ·]`` tensor split once along T into pieces of ``size`` tokens; ``rows[s:e]`` is
    ``x[:, :, s:e]`` for a span inside one piece.

    A recurrence that sliced ``x[:, :, s:e]`` once per step would make autograd write a gradient of
    x's full length per slice (O(T²) memory traffic over a sequence); the pieces of one ``split``
    share a single backward that assembles their gradients once.
    """

    def __init__(self, x: torch.Tensor, size: int):
        self.size, self.pieces = size, x.split(size, dim=2)

    def __getitem__(self, span: slice) -> torch.Tensor:
        piece = self.pieces[span.start // self.size]
        offset = span.start % self.size
        if offset == 0 and span.stop - span.start == piece.shape[2]:
            return piece
        return piece[:, :, offset:offset + span.stop - span.start]


class _Named:
    """Attributes by name (a SimpleNamespace that torch.compile traces)."""

    def __init__(self, values: dict):
        for name, value in values.items():
            setattr(self, name, value)


def token_rows(size: int, **tensors):
    """Each ``[B, H, T, ·]`` tensor (or dict of them) as :class:`TokenRows` of ``size`` tokens, by name."""
    def rows(x):
        return {n: TokenRows(t, size) for n, t in x.items()} if isinstance(x, dict) else TokenRows(x, size)

    return _Named({name: rows(x) for name, x in tensors.items()})


def split_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[B, H, T, D]`` → ``[B, H, N, L, D]``, zero-padding the last chunk."""
    T = x.shape[2]
    N = -(-T // chunk_size)
    x = torch.nn.functional.pad(x, (0, 0, 0, N * chunk_size - T))
    return x.unflatten(2, (N, chunk_size))


def resolve_sizes(known: list[tuple[str, str, int]], tensors: list[tuple[str, tuple, object]]) -> dict[str, int]:
    """Sizes of a variant's named dimensions.

    ``known``: ``(argument, dimension, size)`` triples read off q and v; ``tensors``:
    ``(argument, declared shape, tensor or None)`` for the weights, whose last two axes fill
    in the remaining dimensions. Two arguments that disagree on a dimension are named.
    """
    sizes: dict[str, int] = {}
    first: dict[str, str] = {}
    entries = [(arg, dim, n, None) for arg, dim, n in known]
    for arg, shape, t in tensors:
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            named = [(dim, n) for dim, n in zip(shape, t.shape[-2:]) if isinstance(dim, str)]
            entries += [(arg, dim, int(n), list(t.shape)) for dim, n in named]
    for arg, dim, n, full in entries:
        if dim in sizes and sizes[dim] != n:
            where = f" (shape {full})" if full is not None else ""
            _fail(f"{arg} has size {n} along {dim!r}{where}, but {first[dim]} has {sizes[dim]}")
        sizes.setdefault(dim, n)
        first.setdefault(dim, arg)
    return sizes


def shape_in(sizes: dict[str, int], shape: tuple, what: str) -> tuple[int, int]:
    """A declared shape with named dimensions replaced by their sizes."""
    try:
        return tuple(sizes[d] if isinstance(d, str) else int(d) for d in shape)
    except KeyError as e:
        _fail(f"cannot tell the size of dimension {e.args[0]!r} of {what}: pass {what} explicitly")


# --- spatial (depthwise) layers: one head per channel -------------------------------------


def check_grid(grid, T: int) -> tuple[int, int]:
    """A token grid ``(h, w)`` of integers >= 1 with h·w = T."""
    ok = isinstance(grid, (tuple, list)) and len(grid) == 2
    if not ok or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid):
        _fail(f"grid must be a pair (h, w) of integers >= 1, got {grid!r}")
    h, w = grid
    if h * w != T:
        _fail(f"grid {tuple(grid)} holds h·w = {h * w} tokens, but q has T = {T}")
    return h, w


def grid_patches(x: torch.Tensor, grid: tuple[int, int], kernel: int) -> torch.Tensor:
    """Tokens ``[B, T, H, C]`` on the row-major grid → every channel's ``kernel × kernel`` patch
    (zero-padded, taps row-major), one head per (head, channel): ``[B, T, H·C, kernel²]``."""
    B, T, H, C = x.shape
    h, w = grid
    r = kernel // 2
    image = torch.nn.functional.pad(x.permute(0, 2, 3, 1).reshape(B, H * C, h, w), (r, r, r, r))
    # the k² shifted windows, one contiguous plane per tap (a tap-major layout copies fastest)
    taps = [image[..., dy:dy + h, dx:dx + w] for dy in range(kernel) for dx in range(kernel)]
    return torch.stack(taps, dim=2).reshape(B, H * C, kernel * kernel, T).permute(0, 3, 1, 2)


def lower_depthwise(q, k, v, grid, kernel: int, lr=None, initial_state=None):
    """A depthwise layer's inputs as per-channel linear attention (see derivations.structured).

    q, k ``[B, T, H, C]`` become patches ``[B, T, H·C, k²]``, v ``[B, T, H·C, 1]``, a learning
    rate ``[B, T, H]`` (or a dict of them) ``[B, T, H·C]`` and every kernel ``[B, H, k², C]`` (or
    ``[H, k², C]``) a state ``[B, H·C, k², 1]`` (or ``[H·C, k², 1]``). Returns
    ``(q, k, v, lr, initial_state, H)``; :func:`raise_depthwise` maps the results back.
    """
    B, T, H, C, Cv = check_qkv(q, k, v)
    if Cv != C:
        _fail(f"v must have the channels of q (a depthwise layer maps each channel to itself): Dv = {C}, got {Cv}")
    check_grid(grid, T)
    taps = kernel * kernel

    def kernels(name, w):
        check_state(name, w, B, H, (taps, C), q.device)
        return w.transpose(-1, -2).reshape(*w.shape[:-3], H * C, taps, 1)

    def rates(name, t):
        check_per_token(name, t, q)
        return t.unsqueeze(-1).expand(B, T, H, C).reshape(B, T, H * C)

    if isinstance(initial_state, dict):
        initial_state = {n: kernels(f"initial_state[{n!r}]", w) for n, w in initial_state.items()}
    elif initial_state is not None:
        initial_state = kernels("initial_state", initial_state)
    if isinstance(lr, dict):
        lr = {n: rates(f"lr[{n!r}]", t) for n, t in lr.items()}
    elif lr is not None:
        lr = rates("lr", lr)
    patches_q, patches_k = grid_patches(q, grid, kernel), grid_patches(k, grid, kernel)
    return patches_q, patches_k, v.reshape(B, T, H * C, 1), lr, initial_state, H


def raise_depthwise(o: torch.Tensor, final_state, heads: int):
    """Per-channel results back in the layer's layout: o ``[B, T, H·C, 1]`` → ``[B, T, H, C]``,
    every final state ``[B, H·C, k², 1]`` → ``[B, H, k², C]`` (a dict, a tensor or None)."""
    B, T, HC, _ = o.shape
    C = HC // heads

    def kernels(S):
        return S[..., 0].reshape(B, heads, C, S.shape[-2]).transpose(-1, -2)

    if isinstance(final_state, dict):
        final_state = {n: kernels(S) for n, S in final_state.items()}
    elif final_state is not None:
        final_state = kernels(final_state)
    return o.reshape(B, T, heads, C), final_state


def check_position(t, chunk_size: int, q: torch.Tensor) -> None:
    """Check a per-position learning-rate factor ``lr_position`` a ``[L]`` (L = chunk_size)."""
    if not isinstance(t, torch.Tensor):
        _fail(f"lr_position must be a torch.Tensor of shape [L] = [{chunk_size}], got {type(t).__name__}")
    if tuple(t.shape) != (chunk_size,):
        _fail(f"lr_position must have shape [L] = [{chunk_size}] (one factor per mini-batch position), "
              f"got {list(t.shape)}")
    if not t.is_floating_point():
        _fail(f"lr_position must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        _fail(f"lr_position must be on the device of q ({q.device}), got {t.device}")
