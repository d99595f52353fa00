"""The literal inner loop (derivations.inner_loop), on a backend of hand-checkable symbols.

The backend's weight is one SymPy scalar W; the increment of token t taken at W is the
undefined function g(t, W), and clip, 𝓜 and weight norm are undefined functions too, so
each expected result below is the schedule written out by hand: which state every gradient
is taken at, which state every token reads, and in which order the pieces of a step apply.
"""

from __future__ import annotations

import pytest
import sympy

from derivations import column_clip, dot, momentum, newton_schulz, variant, weight_norm
from derivations.inner_loop import run_inner_loop
from derivations.spec import bidirectional, chunked, decay, per_token, token_level

W0 = sympy.Symbol("W0")
g, Clip, M, Norm = (sympy.Function(n) for n in ("g", "Clip", "M", "Norm"))
alpha = sympy.symbols("alpha0:4")
gamma = sympy.symbols("gamma0:4")
a = sympy.symbols("a0:4")


class Recorder:
    """Reads are ``(token, version, W)``; increments are Σ_t g(t, W) over the step's tokens."""

    def read(self, weights, version, tokens):
        return [(t, version, weights["W"]) for t in tokens]

    def increments(self, weights, version, tokens):
        return {"W": sum(g(t, weights["W"]) for t in tokens)}

    def trainable(self, weights):
        return weights

    def settle(self, weight):
        return weight

    def clip(self, name, inc):
        return Clip(inc)

    def orthogonalize(self, name, inc):
        return M(inc)

    def renorm(self, name, weight):
        return Norm(weight)

    def momentum(self, tokens):
        return sum(alpha[t] for t in tokens) / len(tokens)

    def decay(self, tokens):
        return sympy.Mul(*(gamma[t] for t in tokens))

    def position(self, p):
        return a[p]


def _variant(schedule, **rule):
    @variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(), schedule=schedule,
             **rule)
    def rule_under_test(x, W):
        return x @ W

    return rule_under_test


def _run(schedule, n_tokens=3, chunk_size=2, **rule):
    reads, final = run_inner_loop(_variant(schedule, **rule), Recorder(), {"W": W0}, n_tokens, chunk_size)
    return [r for piece in reads for r in piece], final["W"]


def test_apply_then_update_reads_before_the_step_and_only_reads_the_last_chunk():
    reads, final = _run(chunked("apply_then_update", 2))
    W1 = W0 + g(0, W0) + g(1, W0)
    assert reads == [(0, 0, W0), (1, 0, W0), (2, 1, W1)]
    assert final == W1  # the last chunk takes no step


def test_block_inclusive_reads_after_the_step():
    reads, final = _run(chunked("block_inclusive", 2))
    W1 = W0 + g(0, W0) + g(1, W0)
    W2 = W1 + g(2, W1)
    assert reads == [(0, 1, W1), (1, 1, W1), (2, 2, W2)] and final == W2


def test_bidirectional_is_one_step_on_all_tokens():
    reads, final = _run(bidirectional(), chunk_size=1)  # the chunk size is ignored: one chunk of all tokens
    W1 = W0 + g(0, W0) + g(1, W0) + g(2, W0)
    assert reads == [(0, 1, W1), (1, 1, W1), (2, 1, W1)] and final == W1


def test_update_then_apply_steps_per_token_with_gradients_at_the_chunk_start():
    reads, final = _run(chunked("update_then_apply", 2))
    W1 = W0 + g(0, W0)
    W2 = W1 + g(1, W0)  # token 1's gradient is taken at the chunk start W0, not at W1
    W3 = W2 + g(2, W2)
    assert reads == [(0, 1, W1), (1, 2, W2), (2, 3, W3)] and final == W3


def test_a_step_is_clip_then_momentum_then_newton_schulz_then_add():
    v = _variant(chunked("block_inclusive", 2), momentum=momentum("chunk"), orthogonalize=newton_schulz(2),
                 clip=column_clip())
    _, final = run_inner_loop(v, Recorder(), {"W": W0}, 3, 2)
    buf1 = Clip(g(0, W0) + g(1, W0))  # the buffer starts at zero: (α_0 + α_1)/2 · 0 vanishes
    W1 = W0 + M(buf1)
    buf2 = Clip(g(2, W1)) + alpha[2] * buf1  # the second chunk's mean α is α_2 (one token)
    assert final["W"] == W1 + M(buf2)


def test_momentum_per_token_mixes_each_token_step():
    _, final = _run(token_level(), n_tokens=2, chunk_size=1, momentum=momentum("token"))
    W1 = W0 + g(0, W0)
    assert final == W1 + g(1, W1) + alpha[1] * g(0, W0)


def test_weight_norm_wraps_the_updated_weight():
    reads, final = _run(chunked("block_inclusive", 3), chunk_size=3, weight_norm=weight_norm())
    W1 = Norm(W0 + g(0, W0) + g(1, W0) + g(2, W0))
    assert reads == [(0, 1, W1), (1, 1, W1), (2, 1, W1)] and final == W1


@pytest.mark.parametrize("order", ["gradient_then_decay", "decay_then_gradient"])
def test_decay_orders(order):
    _, final = _run(token_level(), n_tokens=2, chunk_size=1, decay=decay(order))
    if order == "gradient_then_decay":  # Titans: the gradient at S_{t−1}, then S_t = γ_t S_{t−1} + Δ
        W1 = gamma[0] * W0 + g(0, W0)
        assert final == gamma[1] * W1 + g(1, W1)
    else:  # gated DeltaNet: S ← γ_t S first, the gradient at the decayed state
        W1 = gamma[0] * W0 + g(0, gamma[0] * W0)
        assert final == gamma[1] * W1 + g(1, gamma[1] * W1)


@pytest.mark.parametrize("order", ["gradient_then_decay", "decay_then_gradient"])
def test_a_chunk_step_decays_by_the_product_of_its_tokens_factors(order):
    """A schedule that steps once per chunk decays once per chunk, by Γ = Π_(t ∈ chunk) γ_t."""
    reads, final = _run(chunked("apply_then_update", 2), n_tokens=4, chunk_size=2, decay=decay(order))
    G = gamma[0] * gamma[1]
    W1 = G * W0 + g(0, W0) + g(1, W0) if order == "gradient_then_decay" else G * W0 + g(0, G * W0) + g(1, G * W0)
    assert reads[2:] == [(2, 1, W1), (3, 1, W1)] and final == W1  # the last chunk is only read


def test_position_factors_read_the_chunk_start_plus_a_scaled_prefix_sum():
    @variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(position=True),
             schedule=chunked("update_then_apply", 2))
    def positioned(x, W):
        return x @ W

    reads, final = run_inner_loop(positioned, Recorder(), {"W": W0}, 3, 2)
    reads = [r for piece in reads for r in piece]
    S1 = W0 + a[1] * (g(0, W0) + g(1, W0))  # the mini-batch leaves W_0 + a_last Σ ΔW_j
    assert reads == [(0, 1, W0 + a[0] * g(0, W0)), (1, 2, S1), (2, 3, S1 + a[0] * g(2, S1))]
    assert final["W"] == S1 + a[0] * g(2, S1)  # a partial last mini-batch uses its first positions
