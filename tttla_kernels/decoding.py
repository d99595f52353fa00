"""Step-by-step decoding of a generated variant: the cache a layer keeps between calls, and the
recurrence that continues it, exactly.

An inner loop steps once per token (the linear-attention family, the delta rules) or once per
chunk of L tokens (LaCT, TTT-Linear's mini-batches, Titans). A token in the middle of a chunk is
read from the weights at the chunk's start and the chunk's earlier tokens, and the chunk's step is
taken only when its last token has come. So the cache (:class:`DecodingState`) holds

- ``state``: the fast weights at the start of the current step, ``{name: [B, H, ·, ·]}``;
- ``carry``: what the steps carry besides the weights — momentum buffers, the column norms
  weight norm restores (the generated ``recurrent.run`` returns it);
- ``pending``: the current step's tokens so far (every per-token input, caller layout
  ``[B, n, H, ·]``), fewer than L of them;
- ``seen``: the tokens consumed.

:func:`continue_recurrence` runs new tokens: it first completes the pending step (the recurrence
runs again over the pending tokens and the new ones, from ``state``: at most L − 1 tokens twice),
then takes every whole step in one call of the recurrence, and keeps the rest pending. Under
apply-then-update a token reads only the weights at its step's start, so tokens that leave the
step incomplete are read alone (the pending ones run again only when the step completes). Token by
token, or a prompt then tokens, the outputs equal one forward over the whole sequence in exact
arithmetic: the same recurrence runs over the same steps.

A schedule whose tokens read the state after their own chunk's step (``block_inclusive``: a token
reads later tokens of its chunk) or after a step on all tokens (``bidirectional``) has no causal
decoding; :func:`decoding_refusal` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Cache", "DecodingState", "continue_recurrence", "decoding_refusal"]


class Cache(dict):
    """The decoding states of a model's layers, by ``layer_idx`` (fla's ``past_key_values``): pass the
    same Cache to every layer, call after call."""


@dataclass
class DecodingState:
    """One layer's cache between calls (see the module docstring)."""

    state: dict[str, torch.Tensor]
    carry: dict | None = None
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0

    @property
    def pending_tokens(self) -> int:
        return _tokens_in(self.pending)


def _tokens_in(inputs: dict[str, torch.Tensor]) -> int:
    """Tokens in per-token inputs of caller layout ``[B, T, H, ·]`` (none in an empty dict)."""
    return 0 if not inputs else next(iter(inputs.values())).shape[1]


def decoding_refusal(order: str, variant: str) -> str | None:
    """Why ``variant``, whose schedule has ``order``, cannot be decoded token by token; None when it can."""
    if order == "bidirectional":
        return (f"{variant} is bidirectional: every token reads the state updated with all tokens, so no "
                "token's output is final before the last token has come; run it on whole inputs")
    if order == "block_inclusive":
        return (f"{variant}'s chunks read the state after their own step, so a token reads the later tokens "
                "of its chunk; token-by-token decoding cannot reproduce that")
    return None


def continue_recurrence(run_steps, tokens: dict[str, torch.Tensor], cached: DecodingState,
                        tokens_per_step: int, reads_step_start: bool = False) -> tuple[torch.Tensor, DecodingState]:
    """Run the new ``tokens`` (caller layout ``[B, T, H, ·]``, every per-token input by name) after
    ``cached``; returns their outputs ``[B, T, H, ·]`` and the cache after them.

    ``run_steps(tokens, state, carry, last_step_applies)`` runs the recurrence over whole steps of
    ``tokens`` (the last one possibly partial) from ``state`` and ``carry`` and returns ``(o, state,
    carry)``; only a complete step's result is kept. ``reads_step_start``: a token reads only the
    weights at its step's start (apply-then-update), so tokens that do not complete a step are read
    alone, without running the pending ones again or taking a partial step.
    """
    L = tokens_per_step
    T = _tokens_in(tokens)
    state, carry, pending, done = cached.state, cached.carry, cached.pending, 0
    outputs = []
    while done < T:
        waiting = _tokens_in(pending)
        # complete the pending step; then every whole step at once; then the rest, pending
        take = L - waiting if waiting else max(L * ((T - done) // L), min(L, T - done))
        take = min(take, T - done)
        new = {name: t.narrow(1, done, take) for name, t in tokens.items()}
        piece = {name: torch.cat([pending[name], t], dim=1) for name, t in new.items()} if waiting else new
        completes = (waiting + take) % L == 0
        if reads_step_start and not completes:
            o, _, _ = run_steps(new, state, carry, False)  # read from the step's start; no step taken
            outputs.append(o)
        else:
            o, new_state, new_carry = run_steps(piece, state, carry, True)
            outputs.append(o[:, waiting:])
        if completes:
            state, carry, pending = new_state, new_carry, {}
        else:
            pending = piece
        done += take
    return torch.cat(outputs, dim=1), DecodingState(state, carry, pending, cached.seen + T)
