"""tttla_kernels/fla_compat.py against flash-linear-attention's own PyTorch references (fla 0.6.0, a
test dependency; skipped where it is not importable): the same arguments give the same outputs, final
states and gradients, packed sequences too, and fla's argument lists are accepted as written.

fla's references compute in fp32, so the comparisons are fp32-tight (a convention error — scale, which
gate, where β acts — is an O(1) difference)."""

from __future__ import annotations

import inspect

import pytest
import torch

fla_ops = pytest.importorskip("fla.ops")
pytest.importorskip("einops")

from fla.ops.delta_rule.naive import delta_rule_recurrence  # noqa: E402
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn  # noqa: E402
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla  # noqa: E402

from tttla_kernels import fla_compat  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # fla warns that it runs on a CPU

B, T, H, K, V = 2, 37, 2, 8, 12
TOL = dict(rtol=2e-4, atol=2e-5)


def _inputs(seed=0, batch=B, T=T, positive=False):
    """Unit-norm q and k rows (positive entries when ``positive``: normalised linear attention divides
    by q · Σ k, which signed features can bring near zero), and the other inputs of every op."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    features = [torch.randn(batch, T, H, K, generator=g) for _ in range(2)]
    q, k = (torch.nn.functional.normalize(f.abs() if positive else f, dim=-1).requires_grad_() for f in features)
    v = randn(batch, T, H, V)
    beta = torch.rand(batch, T, H, generator=g).requires_grad_()
    gate = (-torch.rand(batch, T, H, generator=g) * 0.5).requires_grad_()
    gk = (-torch.rand(batch, T, H, K, generator=g) * 0.5).requires_grad_()
    S0 = (torch.randn(batch, H, K, V, generator=g) * 0.3).requires_grad_()
    return dict(q=q, k=k, v=v, beta=beta, g=gate, gk=gk, S0=S0)


def _same(ours, theirs, leaves, label):
    """Outputs and final states equal, and the gradients of one random loss of them to every leaf."""
    ours, theirs = [x for x in _flat(ours)], [x for x in _flat(theirs)]
    assert len(ours) == len(theirs), label
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(x.shape, generator=gen) for x in theirs]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a.float(), b.float(), **TOL, msg=f"{label}: output {i}")
    grads = [torch.autograd.grad(sum((x.float() * w).sum() for x, w in zip(xs, weights)), leaves, allow_unused=True,
                                 retain_graph=True) for xs in (ours, theirs)]
    for leaf, a, b in zip(range(len(leaves)), *grads):
        if b is None:
            assert a is None or not a.abs().max() > 0, f"{label}: gradient {leaf}"
        else:
            torch.testing.assert_close(a, b, **TOL, msg=f"{label}: gradient of leaf {leaf}")


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in _flat(item)]
    return [] if x is None else [x]


@pytest.mark.parametrize("normalize", [False, True])
def test_chunk_linear_attn(normalize):
    x = _inputs(1, positive=normalize)
    z0 = (torch.rand(B, 1, H, K) + 0.5).requires_grad_()
    state = (x["S0"], z0) if normalize else x["S0"]
    ours = fla_compat.chunk_linear_attn(x["q"], x["k"], x["v"], None, state, True, normalize)
    theirs = naive_recurrent_linear_attn(x["q"], x["k"], x["v"], None, state, True, normalize)
    _same(ours, theirs, [x["q"], x["k"], x["v"], x["S0"], z0], f"linear_attn normalize={normalize}")


@pytest.mark.parametrize("per_head", [False, True], ids=["g", "g_gamma"])
def test_chunk_simple_gla(per_head):
    x = _inputs(2)
    gamma = torch.tensor([-0.1, -0.4])
    g = gamma.view(1, 1, H).expand(B, T, H) if per_head else x["g"]
    ours = fla_compat.chunk_simple_gla(x["q"], x["k"], x["v"], g_gamma=gamma, scale=0.3, initial_state=x["S0"],
                                       output_final_state=True) if per_head else \
        fla_compat.chunk_simple_gla(x["q"], x["k"], x["v"], g, scale=0.3, initial_state=x["S0"],
                                    output_final_state=True)
    theirs = naive_recurrent_simple_gla(x["q"], x["k"], x["v"], g, 0.3, x["S0"], True)
    _same(ours, theirs, [x["q"], x["k"], x["v"], x["S0"], x["g"]], "simple_gla")


def test_chunk_gla():
    x = _inputs(3)
    ours = fla_compat.chunk_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=x["S0"], output_final_state=True)
    theirs = naive_recurrent_gla(x["q"], x["k"], x["v"], x["gk"], x["S0"], True)
    _same(ours, theirs, [x["q"], x["k"], x["v"], x["S0"], x["gk"]], "gla")


def _l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("l2norm", [False, True])
def test_chunk_delta_rule(l2norm):
    x = _inputs(4)
    q, k = (x["q"] * 3, x["k"] * 3) if l2norm else (x["q"], x["k"])  # not unit rows: the option matters
    ours = fla_compat.chunk_delta_rule(q, k, x["v"], x["beta"], initial_state=x["S0"], output_final_state=True,
                                       use_qk_l2norm_in_kernel=l2norm)
    rq, rk = (_l2(q), _l2(k)) if l2norm else (q, k)
    o, S = delta_rule_recurrence(*(t.transpose(1, 2) for t in (rq, rk, x["v"], x["beta"])), x["S0"], True)
    _same(ours, (o.transpose(1, 2), S), [x["q"], x["k"], x["v"], x["beta"], x["S0"]], "delta_rule")


@pytest.mark.parametrize("sigmoid", [False, True])
def test_chunk_gated_delta_rule(sigmoid):
    x = _inputs(5)
    ours = fla_compat.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=0.5,
                                             initial_state=x["S0"], output_final_state=True,
                                             use_beta_sigmoid_in_kernel=sigmoid)
    beta = torch.sigmoid(x["beta"]) if sigmoid else x["beta"]
    theirs = naive_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], beta, x["g"], 0.5, x["S0"], True)
    _same(ours, theirs, [x["q"], x["k"], x["v"], x["g"], x["beta"], x["S0"]], "gated_delta_rule")


def test_packed_sequences_are_fla_on_each_sequence():
    """cu_seqlens with one (S_0, z_0) per sequence: fla's reference on each sequence alone, for the
    normalised linear attention (the z state per sequence) and the gated delta rule."""
    lengths = [5, 1, 20, 11]
    x = _inputs(6, batch=1, T=sum(lengths), positive=True)
    N = len(lengths)
    S0 = (torch.randn(N, H, K, V) * 0.3).requires_grad_()
    z0 = (torch.rand(N, 1, H, K) + 0.5).requires_grad_()
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))

    def each(fn):
        parts = [fn(i, s, e) for i, (s, e) in enumerate(spans)]
        o = torch.cat([p[0] for p in parts], dim=1)
        states = list(zip(*[_flat(p[1]) for p in parts]))
        return o, [torch.cat(s) for s in states]

    ours = fla_compat.chunk_linear_attn(x["q"], x["k"], x["v"], None, (S0, z0), True, True, cu)
    theirs = each(lambda i, s, e: naive_recurrent_linear_attn(
        x["q"][:, s:e], x["k"][:, s:e], x["v"][:, s:e], None, (S0[i:i + 1], z0[i:i + 1]), True, True))
    _same(ours, theirs, [x["q"], x["k"], x["v"], S0, z0], "linear_attn varlen")
    ours = fla_compat.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=S0,
                                             output_final_state=True, cu_seqlens=cu)
    theirs = each(lambda i, s, e: naive_recurrent_gated_delta_rule(
        x["q"][:, s:e], x["k"][:, s:e], x["v"][:, s:e], x["beta"][:, s:e], x["g"][:, s:e], None, S0[i:i + 1],
        True))
    _same(ours, theirs, [x["q"], x["k"], x["v"], x["g"], x["beta"], S0], "gated_delta_rule varlen")


@pytest.mark.parametrize("name", fla_compat.__all__)
def test_fla_argument_lists_are_accepted_as_written(name):
    """Every parameter of fla's op that we take comes in fla's order with fla's default, and fla's
    required parameters are all there (a call written for fla binds the same way)."""
    ours = inspect.signature(getattr(fla_compat, name)).parameters
    theirs = inspect.signature(getattr(fla_ops, name)).parameters
    shared = [p for p in theirs if p in ours]
    assert shared == [p for p in ours if p in theirs], "parameters in fla's order"
    for p in shared:
        assert ours[p].default == theirs[p].default or (ours[p].default is None and theirs[p].default is None), p
    required = [p for p, v in theirs.items() if v.default is inspect.Parameter.empty and v.kind != v.VAR_KEYWORD]
    assert all(p in ours for p in required)
    positional = [p for p, v in theirs.items() if v.kind == v.POSITIONAL_OR_KEYWORD]
    assert [p for p, v in ours.items() if v.kind == v.POSITIONAL_OR_KEYWORD] == positional[:len(
        [p for p, v in ours.items() if v.kind == v.POSITIONAL_OR_KEYWORD])]


def test_options_tttla_does_not_implement_are_refused_by_name():
    x = _inputs(7)
    with pytest.raises(ValueError, match="allow_neg_eigval=True is not supported"):
        fla_compat.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], allow_neg_eigval=True)
    with pytest.raises(ValueError, match="state_v_first=True is not supported"):
        fla_compat.chunk_gla(x["q"], x["k"], x["v"], x["gk"], state_v_first=True)
    with pytest.raises(ValueError, match="pass g or g_gamma, not both"):
        fla_compat.chunk_simple_gla(x["q"], x["k"], x["v"], x["g"], torch.zeros(H))
