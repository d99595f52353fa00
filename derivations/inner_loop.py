"""The inner loop of a declared variant, executed literally: the schedule, written once.

:func:`run_inner_loop` walks the tokens in the variant's schedule — chunks, the order of reads
and updates, momentum, Newton–Schulz 𝓜, the column clip, the decay, weight norm and
TTT-Linear's per-position factors a_p — and leaves every piece of arithmetic that depends on
what a weight *is* to a :class:`Backend`. Two backends exist: the oracle's (torch tensors,
gradients by ``torch.autograd``, in :mod:`verify.oracle`) and the certificate's (SymPy
matrices, gradients by SymPy's element-wise differentiation, in
:mod:`derivations.certificate`). So the ground truth and the exact check read one schedule.

The order inside a step is fixed: clip → momentum → 𝓜 → decay → add → weight norm. Per order:

* ``apply_then_update``: read a chunk at the current weights, then take one step on it; the
  last chunk is only read;
* ``block_inclusive``: one step on the chunk, then read it at the updated weights;
* ``bidirectional``: one step on all tokens, then read them all;
* ``update_then_apply``: one step per token, every gradient of a chunk taken at the
  chunk-start weights, each token read right after its own step; with per-position factors
  a_p there are no steps: token p of a chunk reads W_0 + a_p Σ_(j≤p) ΔW_j.

Momentum mixes the buffer with α (the mean α of a chunk's tokens, or α_t per token); a decay
scales the updated weights before the gradient (``decay_then_gradient``) or before the
increment is added (``gradient_then_decay``), by γ_t per token step or, for a step on a chunk,
by the product of its tokens' factors.
"""

from __future__ import annotations

from typing import Any, Protocol

from derivations.variant import Variant

__all__ = ["Backend", "run_inner_loop"]


class Backend(Protocol):
    """What the inner loop needs to know about weights, tokens and coefficients.

    ``weights`` maps names to the backend's matrices (at least the weights it updates);
    ``version`` counts the steps taken so far (a backend with abstract feature maps uses it
    to tell φ_t from φ_{t+1}); ``tokens`` is a ``range`` of token indices.
    """

    def read(self, weights: dict, version: int, tokens: range) -> Any:
        """The model's outputs for ``tokens`` at ``weights``."""

    def increments(self, weights: dict, version: int, tokens: range) -> dict:
        """ΔU = ∓Σ_(i ∈ tokens) η_i ∇_U ℓ_i at ``weights``, for every weight U it updates."""

    def trainable(self, weights: dict) -> dict:
        """``weights`` made ready to differentiate at (the identity where gradients are symbolic)."""

    def settle(self, weight):
        """A newly computed weight as the loop keeps it (torch: detached unless the graph is kept)."""

    def clip(self, name: str, increment):
        """The column clip of one step's increment of weight ``name``."""

    def orthogonalize(self, name: str, increment):
        """Newton–Schulz 𝓜 of one step's (momentum-mixed) increment of ``name``."""

    def renorm(self, name: str, weight):
        """Weight norm: ``weight``'s columns rescaled to the initial weight's column norms."""

    def momentum(self, tokens: range):
        """α of a step over ``tokens`` (their mean: α_t for one token)."""

    def decay(self, tokens: range):
        """The decay of a step over ``tokens``: Π_(t ∈ tokens) γ_t (a number, or a diagonal of key
        channels that multiplies a weight's rows)."""

    def position(self, p: int):
        """a_p, the factor of position ``p`` in its mini-batch."""


def run_inner_loop(variant: Variant, backend: Backend, weights: dict, n_tokens: int, chunk_size: int):
    """Run ``variant``'s schedule on ``n_tokens`` tokens from ``weights``.

    Returns ``(reads, weights)``: the backend's :meth:`Backend.read` results in token order
    (each token read exactly once) and the weights after the last step.
    """
    return _InnerLoop(variant, backend, weights).run(n_tokens, chunk_size)


class _InnerLoop:
    def __init__(self, variant: Variant, backend: Backend, weights: dict):
        self.variant, self.backend = variant, backend
        self.weights, self.version = dict(weights), 0
        # the momentum buffer starts at zero (0·W keeps the backend's type and shape)
        momentum = variant.momentum is not None
        self.buffers = {n: 0 * w for n, w in weights.items() if n in variant.update} if momentum else {}

    def run(self, n_tokens: int, chunk_size: int):
        order = self.variant.schedule.order
        size = n_tokens if order == "bidirectional" else chunk_size
        chunks = [range(s, min(s + size, n_tokens)) for s in range(0, n_tokens, size)]
        reads = []
        for n, chunk in enumerate(chunks):
            if order == "update_then_apply":
                reads += self._token_steps(chunk)
                continue
            if order == "apply_then_update":
                reads.append(self._read(chunk))
                if n == len(chunks) - 1:
                    break  # the last chunk is only read
            gamma = self.backend.decay(chunk) if self.variant.decay is not None else None
            if gamma is not None and self.variant.decay.order == "decay_then_gradient":
                self._decay(gamma)
                gamma = None
            self.weights = self.backend.trainable(self.weights)
            alpha = self.backend.momentum(chunk) if self.variant.momentum is not None else None
            self._step(self.backend.increments(self.weights, self.version, chunk), alpha, gamma)
            if order != "apply_then_update":  # block_inclusive, bidirectional
                reads.append(self._read(chunk))
        return reads, self.weights

    def _read(self, tokens: range):
        return self.backend.read(self.weights, self.version, tokens)

    def _token_steps(self, chunk: range) -> list:
        """One step per token of ``chunk``, all gradients at the chunk-start weights."""
        decay = self.variant.decay
        if decay is not None and decay.order == "decay_then_gradient":
            # gated DeltaNet (one token per chunk): S ← γ_t S, then the gradient at the decayed state
            self._decay(self.backend.decay(chunk))
        self.weights = self.backend.trainable(self.weights)
        increments = [self.backend.increments(self.weights, self.version, range(t, t + 1)) for t in chunk]
        if self.variant.lr.position:
            return self._positioned(chunk, increments)
        reads = []
        for t, inc in zip(chunk, increments):
            alpha = self.backend.momentum(range(t, t + 1)) if self.variant.momentum is not None else None
            gamma = self.backend.decay(range(t, t + 1)) if decay is not None and decay.order == "gradient_then_decay" \
                else None
            self._step(inc, alpha, gamma)
            reads.append(self._read(range(t, t + 1)))
        return reads

    def _positioned(self, chunk: range, increments: list) -> list:
        """TTT-Linear's a_p: token p reads W_0 + a_p Σ_(j≤p) ΔW_j (no steps in between)."""
        start, total, reads = self.weights, {}, []
        for p, (t, inc) in enumerate(zip(chunk, increments)):
            total = {n: total[n] + g if n in total else g for n, g in inc.items()}
            a = self.backend.position(p)
            self.weights = {n: start[n] + a * total[n] if n in total else w for n, w in start.items()}
            self.version += 1
            reads.append(self._read(range(t, t + 1)))
        self.weights = {n: self.backend.settle(w) for n, w in self.weights.items()}
        return reads

    def _decay(self, gamma) -> None:
        """W ← γ W for every updated weight (before the step's gradient)."""
        self.weights = {n: gamma * w if n in self.variant.update else w for n, w in self.weights.items()}

    def _step(self, increments: dict, alpha=None, gamma=None) -> None:
        """One update: clip → momentum → 𝓜 → decay → add → weight norm, per updated weight."""
        v, b = self.variant, self.backend
        new = dict(self.weights)
        for name, inc in increments.items():
            if v.clip is not None:
                inc = b.clip(name, inc)
            if v.momentum is not None:
                self.buffers[name] = inc + alpha * self.buffers[name]
                inc = self.buffers[name]
            if v.orthogonalize is not None:
                inc = b.orthogonalize(name, inc)
            w = self.weights[name] if gamma is None else gamma * self.weights[name]
            w = w + inc
            if v.weight_norm is not None:
                w = b.renorm(name, w)
            new[name] = b.settle(w)
        self.weights = new
        self.version += 1
