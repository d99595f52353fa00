"""The gated ``chunk_read`` (decayed linear attention: simple_gla, GLA, RetNet retention) against a
plain torch fp64 reference of its formula, forward and backward, and its non-finite causality.

The gate operand is the cumulative log gate G_t = Σ_{s ∈ c(t), s ≤ t} g_s within each chunk (the
caller's cumsum), one per token (scalar) or per channel (of the keys, or of the values with
``gate_values``). The reference takes each pair's exponent under the mask before exp, as the kernel
must; the kernel is run with 16-token tiles in the interpreter, so a chunk of 64 has off-diagonal
source blocks (the path through the reference token) besides the diagonal one.
"""

from __future__ import annotations

import pytest
import torch
from triton_cases import DEVICE

from tttla_kernels import triton_runtime
from tttla_kernels.triton_runtime import MASK_ANTICAUSAL, MASK_CAUSAL, MASK_NONE, chunk_read
from verify.tolerances import relative_error

pytestmark = [pytest.mark.usefixtures("nan_fill", "reversed_grid", "small_tiles"),
              # Triton's interpreter computes in numpy, which warns on every NaN it makes
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

GATES = ["scalar", "keys", "values"]  # one per token; per key channel; per value channel (gate_values)
DK, DV = 5, 7  # a non-square state: a transposed operand cannot pass


@pytest.fixture
def small_tiles(monkeypatch):
    """16-token tiles in the interpreter (as on a GPU), so a chunk of 64 spans four row blocks."""
    if triton_runtime._interpreting():
        for table in ("read", "read_channel_gate"):
            monkeypatch.setitem(triton_runtime._CANDIDATES[table], "interpreter", [((16, 16, 16), 4, 1)])


def chunk_cumsum(g: torch.Tensor, L: int) -> torch.Tensor:
    """The cumulative sum of g ``[B, H, T, ...]`` over the tokens of each chunk of L."""
    return torch.cat([part.cumsum(2) for part in g.split(L, dim=2)], dim=2)


def reference_read(q, k, v, S, G, L, mask, gate_values):
    """The gated read, plainly: with the gate on channel c (every channel for a scalar G),

        key gate:   o_t = (q_t ⊙ e^{G_t}) S_{c(t)} + Σ_{s, mask} Σ_c q_tc k_sc e^{G_tc − G_sc} v_s
        value gate: o_tj = e^{G_tj} (q_t S_{c(t)})_j + Σ_{s, mask} (q_t · k_s) v_sj e^{G_tj − G_sj}

    each pair's exponent taken only where the mask keeps it (−inf elsewhere, then exp)."""
    T = q.shape[2]
    t = torch.arange(T, device=q.device)
    chunk = t // L
    keep = chunk[:, None] == chunk[None, :]  # [t, s]
    if mask == MASK_CAUSAL:
        keep = keep & (t[None, :] <= t[:, None])
    elif mask == MASK_ANTICAUSAL:
        keep = keep & (t[None, :] >= t[:, None])
    else:
        keep = torch.zeros_like(keep)
    channels = v.shape[-1] if gate_values else q.shape[-1]
    gate = G if G.dim() == 4 else G[..., None].expand(*G.shape, channels)
    exponent = gate[:, :, :, None, :] - gate[:, :, None, :, :]  # [B, H, t, s, c]
    decay = torch.exp(torch.where(keep[..., None], exponent, float("-inf")))
    state = 0 if S is None else S[:, :, chunk]  # [B, H, T, Dk, Dv]
    if gate_values:
        o = 0 if S is None else torch.einsum("bhtc,bhtcj->bhtj", q, state) * gate.exp()
        return o + torch.einsum("bhts,bhsj,bhtsj->bhtj", q @ k.mT, v, decay)
    o = 0 if S is None else torch.einsum("bhtc,bhtcj->bhtj", q * gate.exp(), state)
    return o + torch.einsum("bhtc,bhsc,bhtsc->bhts", q, k, decay) @ v


def operands(gate, T, L, mask, with_state, dtype, magnitude=1.0, seed=0):
    """q, k ``[1, 2, T, DK]``, v ``[1, 2, T, DV]``, S or None, and the gate operand: G of per-token
    log gates −magnitude·(1 + U[0, 1)) — −G under the anticausal mask, as the backward passes it."""
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q, k = (torch.randn(1, 2, T, DK, generator=gen) for _ in range(2))
    v = torch.randn(1, 2, T, DV, generator=gen)
    S = torch.randn(1, 2, -(-T // L), DK, DV, generator=gen) if with_state else None
    per_channel = {"scalar": (), "keys": (DK,), "values": (DV,)}[gate]
    G = chunk_cumsum(-magnitude * (1 + torch.rand(1, 2, T, *per_channel, generator=gen)), L)
    if mask == MASK_ANTICAUSAL:
        G = -G
    move = {"device": DEVICE}
    return ([x.to(dtype=dtype, **move) for x in (q, k, v)] + [None if S is None else S.to(dtype=acc, **move)]
            + [G.to(dtype=acc, **move)])


def outputs_and_gradients(fn, args, L, mask, gate_values):
    """o, the gradients of Σ w ⊙ o with respect to every operand given (None where absent), and w."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in args]
    q, k, v, S, G = leaves
    o = fn(q, k, v, S, G, L, mask, gate_values)
    weights = torch.randn(o.shape, generator=torch.Generator().manual_seed(7)).to(o.device)
    given = [x for x in leaves if x is not None]
    grads = iter(torch.autograd.grad((o.double() * weights.double()).sum(), given, allow_unused=True))
    grads = [None if x is None else next(grads) for x in leaves]
    # k and v reach no output without an intra-chunk mask: the op gives them no gradient
    grads = [grad if x is None or grad is not None else torch.zeros_like(x) for x, grad in zip(leaves, grads)]
    return o, grads, weights


def kernel_read(q, k, v, S, G, L, mask, gate_values):
    return chunk_read(q, k, v, S, L, mask, q.shape[-1] if v is None else v.shape[-1], G, gate_values)


def check_against_reference(gate, T, L, mask, with_state, dtype, tolerance, magnitude=1.0):
    """The kernel's o and its gradients (q, k, v, S, G) within ``tolerance`` of the fp64 reference:
    max-relative per tensor; the gate's gradient, a difference of terms q ⊙ dq and k ⊙ dk (dO ⊙ o
    and v ⊙ dv for a value gate) whose pairs s = t cancel exactly, relative to those terms."""
    gate_values = gate == "values"
    args = operands(gate, T, L, mask, with_state, dtype, magnitude)
    o, grads, weights = outputs_and_gradients(kernel_read, args, L, mask, gate_values)
    ref, ref_grads, _ = outputs_and_gradients(reference_read, [None if x is None else x.double() for x in args],
                                              L, mask, gate_values)
    q, k, v = (x.double() for x in args[:3])
    label = f"{gate} gate, T={T}, L={L}, mask={mask}, state={with_state}, {dtype}, gates ~ -{magnitude}"
    assert o.dtype == dtype and grads[4].dtype == args[4].dtype, label
    errors = {"o": relative_error(ref, o, "max_rel")}
    for name, want, got in zip(("dq", "dk", "dv", "dS"), ref_grads[:4], grads[:4]):
        if want is not None:
            errors[name] = relative_error(want, got, "max_rel")
    dq, dk, dv = ref_grads[:3]
    terms = (weights.double() * ref, v * dv) if gate_values else (q * dq, k * dk)
    scale = sum(float(term.detach().abs().max()) for term in terms)
    diff = (grads[4].double() - ref_grads[4]).abs().max()
    errors["dG"] = float(diff) / scale if torch.isfinite(grads[4]).all() else float("inf")
    assert max(errors.values()) <= tolerance, f"{label}: {errors}"


#: (T, chunk, mask, with a state): one token; a partial chunk; ragged tails; an exact chunk; the
#: backward's anticausal reads (no state, −G; with off-diagonal blocks in the backward of T = 150,
#: chunk 64); a state-only read
CASES = [
    (1, 16, MASK_CAUSAL, True), (7, 16, MASK_CAUSAL, False), (20, 16, MASK_CAUSAL, True),
    (64, 64, MASK_CAUSAL, True), (150, 64, MASK_CAUSAL, True), (20, 16, MASK_ANTICAUSAL, False),
    (150, 16, MASK_ANTICAUSAL, False), (20, 16, MASK_NONE, True),
]


@pytest.mark.parametrize("T,L,mask,with_state", CASES)
@pytest.mark.parametrize("gate", GATES)
def test_gated_read_exact_in_fp64(gate, T, L, mask, with_state):
    check_against_reference(gate, T, L, mask, with_state, torch.float64, 1e-10)


@pytest.mark.parametrize("magnitude", [1e-3, 20.0])
@pytest.mark.parametrize("gate", GATES)
def test_gated_read_fp32_near_zero_and_very_negative_gates(gate, magnitude):
    """Gates near 0, and of −20 per token (G reaches −1280 in a chunk of 64: the masked exponents
    G_t − G_s reach +1280): fp32 within 1e-4 of the fp64 reference, nothing non-finite anywhere,
    the backward's anticausal reads with −G included."""
    check_against_reference(gate, 70, 64, MASK_CAUSAL, True, torch.float32, 1e-4, magnitude)


@pytest.mark.parametrize("gate", GATES)
def test_very_negative_gates_under_the_anticausal_mask_stay_finite(gate):
    check_against_reference(gate, 70, 64, MASK_ANTICAUSAL, False, torch.float32, 1e-4, 20.0)


def _nonfinite_rows(o: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(o[0]).all(-1)  # [H, T]


@pytest.mark.parametrize("gate", GATES)
def test_nonfinite_input_reaches_only_the_rows_that_read_it(gate):
    """A causal read with a state, T = 100 in chunks of 64 (four row blocks of 16, then a ragged chunk
    of three). A NaN in the per-token gate g_s (channel 1) makes G non-finite at s and after it in s's
    chunk: rows t ≥ s of that chunk may turn non-finite, row s must, every other row is as without
    it. A NaN in k_s or an inf in v_s: the rows t ≥ s of its chunk, and no other, are non-finite."""
    T, L = 100, 64
    gate_values = gate == "values"
    q, k, v, S, G = operands(gate, T, L, MASK_CAUSAL, True, torch.float32, seed=1)
    g = -(1 + torch.rand(G.shape, generator=torch.Generator().manual_seed(2))).to(G.device)  # per token
    clean = kernel_read(q, k, v, S, chunk_cumsum(g, L), L, MASK_CAUSAL, gate_values)
    t = torch.arange(T)
    # in the first and the third row block of chunk 0 and in the ragged chunk 1
    for name, s in (("g", 5), ("g", 40), ("g", 90), ("k", 40), ("v", 5)):
        later = (t // L == s // L) & (t >= s)
        bad = {"g": g.clone(), "k": k.clone(), "v": v.clone()}
        index = (0, 1, s) if name == "g" and gate == "scalar" else (0, 1, s, 1)
        bad[name][index] = float("inf") if name == "v" else float("nan")
        o = kernel_read(q, bad["k"], bad["v"], S, chunk_cumsum(bad["g"], L), L, MASK_CAUSAL, gate_values)
        rows = _nonfinite_rows(o)
        label = f"{gate} gate, {name}[{s}]"
        assert not rows[0].any(), f"{label}: head 0 has non-finite rows {rows[0].nonzero().flatten().tolist()}"
        assert not (rows[1] & ~later).any(), f"{label}: rows {(rows[1] & ~later).nonzero().flatten().tolist()}"
        if name == "g":
            assert rows[1, s], f"{label}: row {s} reads the NaN but is finite"
        else:
            assert torch.equal(rows[1], later), f"{label}: non-finite rows {rows[1].nonzero().flatten().tolist()}"
        unaffected = torch.ones(o.shape[1:], dtype=torch.bool)
        unaffected[1] = ~later[:, None]
        torch.testing.assert_close(o[0][unaffected], clean[0][unaffected], rtol=0, atol=0)


@pytest.mark.parametrize("shape,dtype,match", [
    ((1, 2, 7, 3), torch.float32, r"g must have shape \[B, H, T\] = \[1, 2, 7\].*\[B, H, T, Dk\] = \[1, 2, 7, 5\]"),
    ((1, 2, 7), torch.float64, "g must be in the accumulator dtype torch.float32"),
])
def test_a_bad_gate_is_named(shape, dtype, match):
    q = torch.randn(1, 2, 7, DK, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        chunk_read(q, q, q, None, 16, MASK_CAUSAL, DK, torch.zeros(shape, dtype=dtype, device=DEVICE))


def test_gated_op_passes_opcheck():
    """The schema with its optional gate, the fake (meta) implementation and the autograd registration."""
    q, k, v, S, G = operands("keys", 7, 16, MASK_CAUSAL, True, torch.float32)
    args = [x.requires_grad_() for x in (q, k, v, S)]
    torch.library.opcheck(chunk_read, (*args, 16, MASK_CAUSAL, DV, G.requires_grad_(), False))
