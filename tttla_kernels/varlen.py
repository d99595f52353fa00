"""Variable-length batches: flash-linear-attention's ``cu_seqlens`` convention for every generated form.

N sequences of lengths T_1 … T_N are packed along the time axis of a batch of one,
``q, k, v: [1, T_1 + … + T_N, H, ·]``, and ``cu_seqlens = [0, T_1, T_1 + T_2, …, T]`` (int32 or
int64, on q's device) marks where each begins (a sequence may be empty: its final state is its
initial state). Each sequence is its own layer call: the state
starts from its own initial state (``initial_state: [N, H, ·, ·]``, or ``[H, ·, ·]`` shared by all)
and a chunked schedule's chunks restart at its first token; the final states come back one per
sequence, ``[N, H, ·, ·]``.

:func:`each_sequence` runs that exactly for any variant and any form: the sequences of equal
length are gathered into one batch and run as one call, and the outputs are scattered back to
their packed positions. Autograd carries every gradient (q, k, v, the per-token inputs, the slow
weights and each sequence's initial state) through the gathers. It makes one call per distinct
length, so it is exact rather than fast for many sequences of distinct lengths.

The Triton forms that run the fused token scan (linear attention, simple_gla, retention, Mamba-2)
take the packed row as it is instead: one program per (sequence, head) walks its own tokens
(``triton_scan.fused_scan(..., cu_seqlens=...)``), with :func:`packed_initial_states` and
:func:`block_log_decay` laying out what it reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["check_cu_seqlens", "each_sequence", "packed_initial_states", "block_offsets", "blocks_bound",
           "block_log_decay"]


def check_cu_seqlens(cu_seqlens, q: torch.Tensor) -> list[tuple[int, int]]:
    """The ``(start, end)`` token span of every sequence, after checking ``cu_seqlens`` against the
    packed ``q: [1, T, H, D]``; each error names the argument and what was expected."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor of sequence offsets [N + 1], "
                        f"got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [N + 1] with N >= 1 sequences, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens must be on the device of q ({q.device}), got {cu_seqlens.device}")
    B, T = q.shape[:2]
    if B != 1:
        raise ValueError(f"q: with cu_seqlens the sequences are packed along T in a batch of one, so B must be 1, "
                         f"got B = {B}")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    if bounds[-1] != T:
        raise ValueError(f"cu_seqlens must end at T = {T} (the packed tokens of q), got {bounds[-1]}")
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end < start:
            raise ValueError(f"cu_seqlens must not decrease: sequence {i} would span [{start}, {end})")
    return list(zip(bounds[:-1], bounds[1:]))


def each_sequence(
    form: Callable, cu_seqlens: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    tokens: dict, slow: dict, initial_state=None, output_final_state: bool = False, **options,
):
    """``form(q, k, v, …)`` run on every packed sequence of ``cu_seqlens`` alone, as ``(o, final)``
    with o ``[1, T, H, Dv]`` packed as q and the final states one per sequence (``[N, H, ·, ·]``, or a
    dict of them for a variant with several updated weights).

    ``tokens`` are the per-token inputs (``[1, T, H]`` or ``[1, T, H, ·]``, or a dict of them, or
    None), sliced like q; ``slow`` the slow weights (``[H, ·, ·]`` shared, or ``[1, H, ·, ·]``);
    ``options`` go to every call unchanged (chunk_size, lr_position, …).
    """
    spans = check_cu_seqlens(cu_seqlens, q)
    if options.get("process_group") is not None:
        raise ValueError("process_group: must be None with cu_seqlens (packed sequences run in one process)")
    initial = _per_sequence(initial_state, len(spans))
    by_length: dict[int, list[int]] = {}
    for i, (start, end) in enumerate(spans):
        by_length.setdefault(end - start, []).append(i)
    empty = by_length.pop(0, [])  # no token: no output, and the state stays as it was given
    outputs: list = [None] * len(spans)
    finals: list = [None] * len(spans)
    for ids in by_length.values():
        index = torch.tensor(ids, device=q.device)

        def gather(x, ids=ids):
            return torch.stack([x[0, spans[i][0]:spans[i][1]] for i in ids])  # [n, L, ...]

        kwargs = {name: _map(t, gather) for name, t in tokens.items() if t is not None}
        kwargs.update({name: _batch_of(w, len(ids), name) for name, w in slow.items()})
        first = _map(initial, lambda s, index=index: s[index])  # [n, H, ·, ·]
        o, final = form(gather(q), gather(k), gather(v), **kwargs, initial_state=first,
                        output_final_state=output_final_state, **options)
        for j, i in enumerate(ids):
            outputs[i] = o[j]
            finals[i] = _map(final, lambda s, j=j: s[j])
    o = torch.cat([x for x in outputs if x is not None]).unsqueeze(0)
    if not output_final_state:
        return o, None
    ran = next(f for f in finals if f is not None)  # a final state of a sequence that ran: its shape and dtype
    for i in empty:
        finals[i] = _untouched(initial, i, ran)
    if isinstance(finals[0], dict):
        return o, {name: torch.stack([f[name] for f in finals]) for name in finals[0]}
    return o, torch.stack(finals)


def _untouched(initial, i: int, like):
    """The final state of the empty sequence ``i``: its initial state (zeros without one, or for a weight
    a dict leaves out), shaped and typed like ``like``, the final state of a sequence that ran (a dict
    of them for several weights)."""
    if isinstance(like, dict):
        return {n: _untouched(None if initial is None else initial.get(n), i, f) for n, f in like.items()}
    return torch.zeros_like(like) if initial is None else initial[i].to(like.dtype)


def _map(x, fn):
    """``fn`` applied to a tensor, to every tensor of a dict, or None kept."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {name: fn(t) for name, t in x.items()}
    return fn(x)


def _per_sequence(initial_state, N: int):
    """The initial states as ``[N, H, ·, ·]`` (a dict of them for several weights), one per sequence: a
    state given per sequence is checked to have N rows, one shared ``[H, ·, ·]`` is repeated."""
    def one(name: str, s):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
        if s.dim() == 3:  # [H, ·, ·]: the same state for every sequence
            return s.unsqueeze(0).expand(N, *s.shape)
        if s.dim() != 4 or s.shape[0] != N:
            raise ValueError(f"{name}: with cu_seqlens, one state per sequence [N, H, ·, ·] with N = {N} (or one "
                             f"[H, ·, ·] for all), got shape {list(s.shape)}")
        return s

    if initial_state is None:
        return None
    if isinstance(initial_state, dict):
        return {name: one(f"initial_state[{name!r}]", s) for name, s in initial_state.items()}
    return one("initial_state", initial_state)


def _batch_of(w, n: int, name: str):
    """A slow weight for a batch of n sequences: ``[H, ·, ·]`` as given, ``[1, H, ·, ·]`` repeated."""
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        if w.shape[0] != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch is one packed row, so a per-batch slow weight is "
                             f"[1, H, ·, ·] (or [H, ·, ·]), got shape {list(w.shape)}")
        return w.expand(n, *w.shape[1:])
    return w


def packed_initial_states(initial_state, cu_seqlens: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """The initial states of the packed sequences as ``[N, H, ·, ·]`` in ``like``'s dtype (``like``: the
    ``[1, H, ·, ·]`` state a form would start one sequence from), checked: one per sequence, or one
    ``[H, ·, ·]`` for all; None when none is given (zeros)."""
    N = cu_seqlens.shape[0] - 1
    states = _per_sequence(initial_state, N)
    if states is None:
        return None
    if tuple(states.shape[1:]) != tuple(like.shape[1:]):
        raise ValueError(f"initial_state: with cu_seqlens, [N, H, ·, ·] = {[N, *like.shape[1:]]} (or "
                         f"{list(like.shape[1:])} for all), got shape {list(initial_state.shape)}")
    if states.device != like.device:
        raise ValueError(f"initial_state must be on the device of q ({like.device}), got {states.device}")
    return states.to(like.dtype)


def block_offsets(cu_seqlens: torch.Tensor, block: int) -> torch.Tensor:
    """The blocks of ``block`` tokens before each packed sequence, its blocks counted from its first
    token: ``[N]`` (the first is 0)."""
    blocks = (cu_seqlens[1:] - cu_seqlens[:-1] + block - 1) // block
    return torch.cat([blocks.new_zeros(1), blocks.cumsum(0)[:-1]])


def blocks_bound(T: int, block: int, cu_seqlens: torch.Tensor | None) -> int:
    """A bound on the blocks of a row of T tokens, known without reading the offsets on the host:
    ⌈T / block⌉, plus one per packed sequence (each may end in a partial block)."""
    return -(-T // block) + (0 if cu_seqlens is None else cu_seqlens.shape[0] - 1)


def block_log_decay(log_gamma: torch.Tensor, block: int, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """G_t = Σ g_s over the tokens s ≤ t of t's block, blocks of ``block`` tokens counted from each
    packed sequence's first token: ``[1, H, T, 1]`` → ``[1, H, T]``. Each block's sum is its own cumsum
    (the tokens scattered into a padded ``[blocks, block]`` grid and gathered back), never a
    difference of sums over the whole row."""
    T = log_gamma.shape[2]
    t = torch.arange(T, device=log_gamma.device)
    seq = torch.searchsorted(cu_seqlens[1:].to(t.dtype), t, right=True)  # the sequence of token t
    pos = t - cu_seqlens[:-1].to(t.dtype)[seq]
    first = block_offsets(cu_seqlens, block).to(t.dtype)  # blocks before sequence n
    slot = (first[seq] + pos // block) * block + pos % block
    grid = log_gamma.new_zeros(*log_gamma.shape[:2], blocks_bound(T, block, cu_seqlens) * block)
    grid = grid.index_copy(-1, slot, log_gamma[..., 0])
    G = grid.view(*grid.shape[:2], -1, block).cumsum(-1).flatten(-2)
    return G.index_select(-1, slot)
