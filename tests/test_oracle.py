"""The direct-TTT oracle against closed forms written independently here (fp64, 1e-12),
gradient flow to every input, and argument errors."""

import ast
import itertools
from pathlib import Path

import pytest
import torch

from derivations import chunked, column_clip, constant, dot, momentum, per_token, token_level, variant
from derivations.catalog import CATALOG
from derivations.spec import newton_schulz as ns_rule
from tttla_kernels import runtime
from verify import make_case, newton_schulz, run_direct

TOL = dict(rtol=1e-12, atol=1e-12)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def chunk_index(T, L):
    return torch.arange(T) // L


def muon(X, coeffs, eps=1e-7):
    """Newton–Schulz written out per matrix (2-D), independent of the oracle's batched one."""
    out = torch.empty_like(X)
    for idx in itertools.product(*(range(n) for n in X.shape[:-2])):
        M = X[idx]
        flip = M.shape[0] > M.shape[1]
        if flip:
            M = M.T
        M = M / (torch.sqrt((M * M).sum()) + eps)
        for a, b, c in coeffs:
            A = M @ M.T
            M = a * M + b * (A @ M) + c * (A @ (A @ M))
        out[idx] = M.T if flip else M
    return out


def linear_variant(order, size, **kw):
    @variant(
        fast={"W": ("d", "d")},
        update=["W"],
        loss=lambda y, v: -dot(y, v),
        schedule=chunked(order, size) if order != "token" else token_level(),
        **kw,
    )
    def lin(x, W):
        return x @ W

    return lin


def masked_attention(q, k, v, W0, mask):
    """o = q W0 + ((q kᵀ) ⊙ C) v per (batch, head): the linear-attention closed form."""
    Q, K, V = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
    o = Q @ W0 + ((Q @ K.mT) * mask) @ V
    return o.transpose(1, 2)


@pytest.mark.parametrize("T,L", [(37, 8), (5, 8), (1, 4), (32, 8)])
def test_lact_v6_is_block_exclusive_linear_attention(T, L):
    case = make_case(CATALOG["lact_v6"], batch=2, seq_len=T, heads=3, chunk_size=L, generator=_gen(T))
    o, final = run_direct(CATALOG["lact_v6"], **case.kwargs())
    c = chunk_index(T, L)
    mask = (c[None, :] < c[:, None]).double()  # C_ti = 1[c(i) < c(t)]
    W0 = case.initial_weights["W"]
    torch.testing.assert_close(o, masked_attention(case.q, case.k, case.v, W0, mask), **TOL)
    # the last chunk is apply-only: the final state holds every chunk but the last
    K, V = case.k.transpose(1, 2), case.v.transpose(1, 2)
    keep = c < c[-1]
    torch.testing.assert_close(final["W"], W0 + K[..., keep, :].mT @ V[..., keep, :], **TOL)


@pytest.mark.parametrize(
    "order,rule",
    [
        ("block_inclusive", lambda ci, ct: ci <= ct),
        ("update_then_apply", None),  # token-inclusive: C_ti = 1[i <= t], also for L > 1
    ],
)
def test_other_read_orders(order, rule):
    T, L = 23, 5
    lin = linear_variant(order, L)
    case = make_case(lin, seq_len=T, heads=2, chunk_size=L, generator=_gen(1))
    o, _ = run_direct(lin, **case.kwargs())
    c = chunk_index(T, L)
    t = torch.arange(T)
    mask = (rule(c[None, :], c[:, None]) if rule else t[None, :] <= t[:, None]).double()
    torch.testing.assert_close(o, masked_attention(case.q, case.k, case.v, case.initial_weights["W"], mask), **TOL)


def test_bidirectional_reads_one_update_on_all_tokens():
    from derivations import bidirectional

    @variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: -dot(y, v), schedule=bidirectional())
    def bi(x, W):
        return x @ W

    case = make_case(bi, seq_len=11, heads=2, generator=_gen(2))
    o, _ = run_direct(bi, **case.kwargs())
    mask = torch.ones(11, 11, dtype=torch.float64)
    torch.testing.assert_close(o, masked_attention(case.q, case.k, case.v, case.initial_weights["W"], mask), **TOL)


@pytest.mark.parametrize("T", [1, 2, 19])
def test_delta_rule_is_the_explicit_recurrence(T):
    v = CATALOG["delta_rule"]
    case = make_case(v, batch=2, seq_len=T, heads=2, generator=_gen(3))
    o, final = run_direct(v, **case.kwargs())
    S = case.initial_weights["W"].clone()
    expected = torch.empty_like(o)
    for t in range(T):
        k, vv, q = case.k[:, t, :, None, :], case.v[:, t, :, None, :], case.q[:, t, :, None, :]  # [B, H, 1, D]
        beta = case.lr[:, t, :, None, None]
        S = S + beta * k.mT @ (vv - k @ S)  # S_t = S_{t-1} + β_t k_tᵀ (v_t − k_t S_{t-1})
        expected[:, t] = (q @ S)[..., 0, :]
    torch.testing.assert_close(o, expected, **TOL)
    torch.testing.assert_close(final["W"], S, **TOL)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (2, 3, 1, 6), (2, 7, 2)])
@pytest.mark.parametrize("rule", [ns_rule(5, "lact"), ns_rule(3, "fixed"), ns_rule(1)])
def test_newton_schulz_is_the_per_matrix_definition(shape, rule):
    """The oracle's batched 𝓜 (wide, tall and square matrices, K = 0 included) against ``muon``, and the
    generated forms' runtime 𝓜 agreeing with it to rounding."""
    X = torch.randn(*shape, generator=_gen(sum(shape)), dtype=torch.float64)
    got = newton_schulz(X, rule)
    torch.testing.assert_close(got, muon(X, rule.coefficients, rule.eps), **TOL)
    torch.testing.assert_close(runtime.newton_schulz(X, rule.coefficients, rule.eps), got, **TOL)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_oracle_imports_nothing_it_checks():
    """verify/oracle.py and the verify modules it reads import nothing from tttla_kernels."""
    root = Path(__file__).resolve().parents[1]
    todo, seen = ["verify.oracle"], set()
    while todo:
        module = todo.pop()
        seen.add(module)
        imports = _imported_modules(root / (module.replace(".", "/") + ".py"))
        assert not [m for m in imports if m.split(".")[0] == "tttla_kernels"], f"{module} imports tttla_kernels"
        todo += [m for m in imports if m.startswith("verify.") and m not in seen]
    assert {"verify.checks", "verify.signature"} <= seen


def test_lact_v5_is_lact_v6_with_muon_on_each_chunk_update():
    T, L = 30, 7
    v5 = CATALOG["lact_v5"]
    case = make_case(v5, seq_len=T, heads=2, chunk_size=L, generator=_gen(4))
    o, _ = run_direct(v5, **case.kwargs())
    Q, K, V = (t.transpose(1, 2) for t in (case.q, case.k, case.v))
    S = case.initial_weights["W"].clone()
    expected = []
    for s in range(0, T, L):
        expected.append(Q[..., s : s + L, :] @ S)
        S = S + muon(K[..., s : s + L, :].mT @ V[..., s : s + L, :], v5.orthogonalize.coefficients)
    torch.testing.assert_close(o, torch.cat(expected, 2).transpose(1, 2), **TOL)


def test_lact_v2_is_chunk_momentum_then_muon_on_swiglu_features():
    """LaCT V2 (reference, "LaCT ablations"), chunk by chunk: φ(x) = silu(x W0) ⊙ (x W2), read
    O_n = φ(Q_n) W1 before the step, then M_n = φ(K_n)ᵀ (η ⊙ V)_n + ᾱ_n M_(n−1) (the chunk's mean α)
    and W1 ← W1 + 𝓜(M_n): momentum first, Newton–Schulz on the momentum-mixed update."""
    T, L = 23, 6
    v2 = CATALOG["lact_v2"]
    case = make_case(v2, seq_len=T, heads=2, chunk_size=L, sizes={"d": 4, "dv": 5, "h": 3}, generator=_gen(6))
    o, final = run_direct(v2, **case.kwargs())
    Q, K, V = (t.transpose(1, 2) for t in (case.q, case.k, case.v))  # [B, H, T, D]
    eta, alpha = case.lr.transpose(1, 2)[..., None], case.momentum.transpose(1, 2)  # [B, H, T, 1], [B, H, T]
    W0, W1, W2 = (case.initial_weights[n] for n in ("W0", "W1", "W2"))

    def phi(x):
        return torch.nn.functional.silu(x @ W0) * (x @ W2)

    M, expected = torch.zeros_like(W1), []
    for s in range(0, T, L):
        chunk = slice(s, s + L)
        expected.append(phi(Q[..., chunk, :]) @ W1)
        M = phi(K[..., chunk, :]).mT @ (eta[..., chunk, :] * V[..., chunk, :]) + alpha[..., chunk].mean(-1)[
            ..., None, None] * M
        W1 = W1 + muon(M, v2.orthogonalize.coefficients)
    torch.testing.assert_close(o, torch.cat(expected, 2).transpose(1, 2), **TOL)


def test_column_clip_divides_each_column_of_the_update_by_its_norm_plus_one():
    """ViTTT's clip, block-inclusive: G_n = K_nᵀ (η ⊙ V)_n, W ← W + G_n[:, c] / (‖G_n[:, c]‖ + 1) per
    column c, then O_n = Q_n W."""
    T, L = 11, 4
    clipped = linear_variant("block_inclusive", L, lr=per_token(), clip=column_clip())
    case = make_case(clipped, seq_len=T, heads=2, chunk_size=L, generator=_gen(7))
    o, _ = run_direct(clipped, **case.kwargs())
    Q, K, V = (t.transpose(1, 2) for t in (case.q, case.k, case.v))
    eta = case.lr.transpose(1, 2)[..., None]
    W, expected = case.initial_weights["W"], []
    for s in range(0, T, L):
        G = K[..., s:s + L, :].mT @ (eta[..., s:s + L, :] * V[..., s:s + L, :])
        W = W + G / (torch.sqrt((G * G).sum(-2, keepdim=True)) + 1)
        expected.append(Q[..., s:s + L, :] @ W)
    torch.testing.assert_close(o, torch.cat(expected, 2).transpose(1, 2), **TOL)


def test_chunk_momentum_matches_the_hand_unrolled_coefficients():
    """Momentum without Muon, block-exclusive: O_n = Q_n W0 + Σ_m 𝒞_nm Q_n K_mᵀ (η ⊙ V)_m with
    𝒞_nm = Σ_{j=m}^{n-1} Π_{s=m+1}^{j} ᾱ_s (Theorem 5.3 at chunk level)."""
    T, L = 26, 6
    mv = linear_variant("apply_then_update", L, lr=per_token(), momentum=momentum("chunk"))
    case = make_case(mv, seq_len=T, heads=2, chunk_size=L, generator=_gen(5))
    o, _ = run_direct(mv, **case.kwargs())
    N = -(-T // L)
    c = chunk_index(T, L)
    abar = torch.stack([case.momentum[:, c == n].mean(1) for n in range(N)], -1)  # [B, H, N]
    coeff = torch.zeros(*abar.shape[:2], N, N, dtype=torch.float64)
    for n in range(N):
        for m in range(n):
            for j in range(m, n):
                coeff[..., n, m] += torch.prod(abar[..., m + 1 : j + 1], dim=-1)
    mask = coeff[..., c[:, None], c[None, :]]  # C_ti = 𝒞_{c(t), c(i)}, [B, H, T, T]
    ev = case.v * case.lr[..., None]
    torch.testing.assert_close(o, masked_attention(case.q, case.k, ev, case.initial_weights["W"], mask), **TOL)


def test_weight_norm_keeps_initial_column_norms():
    wv = linear_variant("apply_then_update", 4, weight_norm=__import__("derivations").weight_norm())
    case = make_case(wv, seq_len=16, heads=2, chunk_size=4, generator=_gen(6))
    _, final = run_direct(wv, **case.kwargs())
    W0 = case.initial_weights["W"]
    # ‖W[:, c]‖ / (‖W[:, c]‖ + eps) · ρ_c: the norms match up to the eps of the denominator
    torch.testing.assert_close(final["W"].norm(dim=-2), W0.norm(dim=-2), rtol=1e-4, atol=0)


def test_ascent_flips_every_update():
    base, ga = CATALOG["lact"], CATALOG["lact_ga"]
    case = make_case(base, seq_len=20, heads=1, chunk_size=5, generator=_gen(7))
    neg = dict(case.kwargs(), v=-case.v)
    # For the dot-product loss, ascent on v is descent on -v (Table 1's remark).
    torch.testing.assert_close(run_direct(ga, **case.kwargs())[0], run_direct(base, **neg)[0], **TOL)


def test_no_query_reads_with_keys():
    nq, base = CATALOG["lact_no_query"], CATALOG["lact"]
    case = make_case(nq, seq_len=12, heads=1, chunk_size=4, generator=_gen(8))
    with_keys = dict(case.kwargs(), q=case.k)
    torch.testing.assert_close(run_direct(nq, **case.kwargs())[0], run_direct(base, **with_keys)[0], **TOL)


@pytest.mark.parametrize("name", ["lact", "lact_v2", "lact_mse", "delta_rule"])
def test_gradcheck_every_input(name):
    """Outer-loss gradients flow to q, k, v, learning rates, momentum and initial weights."""
    v = CATALOG[name]
    case = make_case(
        v,
        seq_len=5,
        heads=1,
        sizes={"d": 3, "dv": 4, "h": 2},
        chunk_size=None if v.schedule.fixed else 2,
        generator=_gen(9),
        momentum_range=(0.2, 0.8),
        lr_range=(0.1, 1.0),
    )
    leaves = case.leaves()
    names = list(leaves)
    if v.queries == "key":
        names.remove("q")

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        c = case.kwargs()
        c.update({k: kw[k] for k in ("q", "k", "v") if k in kw})
        c["initial_weights"] = {n: kw[f"W[{n}]"] for n in v.fast}
        if isinstance(case.lr, dict):
            c["lr"] = {n: kw[f"lr[{n}]"] for n in case.lr}
        elif case.lr is not None:
            c["lr"] = kw["lr"]
        if case.momentum is not None:
            c["momentum"] = kw["momentum"]
        o, final = run_direct(v, **c)
        return o, *final.values()

    inputs = tuple(leaves[n].detach().requires_grad_() for n in names)
    # Newton–Schulz is strongly curved: central differences need a small step (error ∝ eps²).
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_variant_runs_forward_and_backward(name):
    v = CATALOG[name]
    case = make_case(
        v,
        batch=2,
        seq_len=13,
        heads=2,
        sizes={"d": 5, "dv": 6, "h": 3, "e": 4},
        chunk_size=None if v.schedule.fixed else 4,
        requires_grad=True,
        generator=_gen(10),
    )
    o, final = run_direct(v, **case.kwargs())
    assert o.shape == (2, 13, 2, case.v.shape[-1])  # the value width: d, or e where it is its own
    assert set(final) == set(v.update)
    (o.square().sum() + sum(w.sum() for w in final.values())).backward()
    for label, t in case.leaves().items():
        if label == "q" and v.queries == "key":
            assert t.grad is None
            continue
        assert t.grad is not None and torch.isfinite(t.grad).all(), label
        assert t.grad.abs().sum() > 0, f"no gradient reached {label}"


def test_float32_runs_in_float32():
    v = CATALOG["lact_v2"]
    case = make_case(v, seq_len=9, chunk_size=4, dtype=torch.float32)
    o, final = run_direct(v, **case.kwargs())
    assert o.dtype == torch.float32 and final["W1"].dtype == torch.float32


class TestArgumentErrors:
    def setup_method(self):
        self.v = CATALOG["lact_v2"]
        self.case = make_case(self.v, batch=2, seq_len=6, heads=2, chunk_size=4)

    def call(self, **override):
        kw = self.case.kwargs()
        kw.update(override)
        return run_direct(self.v, **kw)

    def test_wrong_shape_of_k(self):
        with pytest.raises(ValueError, match=r"k must have the shape of q"):
            self.call(k=self.case.k[:, :3])

    def test_wrong_ndim(self):
        with pytest.raises(ValueError, match=r"q must have shape \[B, T, H, D\] \(4 dims\), got \(6, 2, 8\)"):
            self.call(q=self.case.q[0])

    def test_dtype_mismatch(self):
        with pytest.raises(ValueError, match=r"v must have the dtype of q \(torch.float64\), got torch.float32"):
            self.call(v=self.case.v.float())

    def test_missing_lr(self):
        with pytest.raises(ValueError, match=r"per-token learning rate: pass lr"):
            self.call(lr=None)

    def test_lr_shape(self):
        with pytest.raises(ValueError, match=r"lr must have shape \[B, T, H\] = \[2, 6, 2\], got \[2, 6\]"):
            self.call(lr=self.case.lr[..., 0])

    def test_missing_momentum(self):
        with pytest.raises(ValueError, match=r"uses momentum: pass momentum"):
            self.call(momentum=None)

    def test_weight_shape(self):
        W = dict(self.case.initial_weights, W1=torch.zeros(2, 2, 3, 3, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"initial_weights\['W1'\] must have shape"):
            self.call(initial_weights=W)

    def test_chunk_size_zero(self):
        with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1, got 0"):
            self.call(chunk_size=0)

    def test_token_level_fixes_chunk(self):
        v = CATALOG["delta_rule"]
        case = make_case(v, seq_len=4)
        with pytest.raises(ValueError, match=r"steps once per token; chunk_size must be 1, got 2"):
            run_direct(v, **dict(case.kwargs(), chunk_size=2))

    def test_weights_missing_and_extra(self):
        W = dict(self.case.initial_weights)
        with pytest.raises(ValueError, match=r"initial_weights: missing fast weight\(s\) \['W1'\]"):
            self.call(initial_weights={n: w for n, w in W.items() if n != "W1"})
        with pytest.raises(ValueError, match=r"initial_weights: \['U'\] are not fast weights"):
            self.call(initial_weights=dict(W, U=W["W1"]))

    def test_constant_lr_rejects_lr(self):
        v = CATALOG["lact_v6"]
        case = make_case(v, seq_len=4, chunk_size=2)
        with pytest.raises(ValueError, match=r"constant learning rate \(1\); do not pass lr"):
            run_direct(v, **dict(case.kwargs(), lr=torch.ones(1, 4, 1, dtype=torch.float64)))


def test_constant_lr_scales_values():
    lin = linear_variant("apply_then_update", 3, lr=constant(0.25))
    base = linear_variant("apply_then_update", 3)
    case = make_case(lin, seq_len=10, chunk_size=3, generator=_gen(11))
    torch.testing.assert_close(
        run_direct(lin, **case.kwargs())[0], run_direct(base, **dict(case.kwargs(), v=0.25 * case.v))[0], **TOL
    )


def _bad_call(name, **kw):
    """A call of catalog variant ``name`` on a small case, with ``kw`` replacing its arguments."""
    case = make_case(CATALOG[name], batch=2, seq_len=6, heads=2, sizes={"d": 4, "dv": 5, "h": 3},
                     chunk_size=None if CATALOG[name].schedule.fixed else 3)
    return run_direct(CATALOG[name], **{**case.kwargs(), **{k: f(case) for k, f in kw.items()}})


@pytest.mark.parametrize("name, argument, bad, match", [
    ("lact_v2", "q", lambda c: c.q.int(), r"q must be a floating-point tensor, got torch.int32"),
    ("lact_v2", "k", lambda c: c.k.to("meta"), r"k must be on the device of q \(cpu\), got meta"),
    ("lact_v2", "v", lambda c: c.v[:, :5], r"v must have shape \[B, T, H, Dv\] with \[B, T, H\] = \[2, 6, 2\]"),
    ("lact_v2", "lr", lambda c: c.lr.int(), r"lr must be a floating-point tensor, got torch.int32"),
    ("lact_v2", "lr", lambda c: c.lr.tolist(),
     r"lr must be a torch.Tensor of shape \[B, T, H\] = \[2, 6, 2\], got list"),
    ("lact", "lr", lambda c: {n: t for n, t in c.lr.items() if n != "W2"}, r"lr: missing \['W2'\] \(a dict needs one"),
    ("lact", "lr", lambda c: dict(c.lr, W0=c.lr["W0"][:, :2]), r"lr\['W0'\] must have shape \[B, T, H\] = \[2, 6, 2\]"),
    ("lact_v2", "momentum", lambda c: c.momentum.to("meta"), r"momentum must be on the device of q \(cpu\), got meta"),
    ("lact_v6", "momentum", lambda c: c.q[..., 0], r"variant 'lact_v6' has no momentum; do not pass momentum"),
    ("titans", "log_decay", lambda c: c.log_decay[0],
     r"log_decay must have shape \[B, T, H\] = \[2, 6, 2\], got \[6, 2\]"),
    ("titans", "log_decay", lambda c: None, r"variant 'titans' decays its state: pass log_decay"),
    ("ttt_linear", "lr_position", lambda c: [1.0] * 3,
     r"lr_position must be a torch.Tensor of shape \[L\] = \[3\] \(one factor per mini-batch position\), got list"),
    ("vittt_dwconv", "grid", lambda c: (3, 3), r"grid \(3, 3\) holds h·w = 9 tokens, but q has T = 6"),
    ("vittt_dwconv", "grid", lambda c: (2, -3), r"grid must be a pair \(h, w\) of integers >= 1, got \(2, -3\)"),
    ("lact_v2", "initial_weights", lambda c: dict(c.initial_weights, W0=c.initial_weights["W0"].int()),
     r"initial_weights\['W0'\] must be a floating-point tensor, got torch.int32"),
])
def test_errors_name_the_argument(name, argument, bad, match):
    with pytest.raises(ValueError, match=match):
        _bad_call(name, **{argument: bad})
