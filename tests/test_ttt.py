"""TTT-Linear/MLP and ViTTT GLU: LayerNorm in the language, linear layers under a head, gated
forms, the column clip; oracles against independent closed forms (docs/maths.md sections 5–6)."""

from __future__ import annotations

import dataclasses

import pytest
import sympy
import torch
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from codegen.generate import generate, import_generated
from codegen.printer import ROW, WEIGHT, TorchEmitter
from derivations import (
    DeclarationError,
    ReductionError,
    bidirectional,
    chunked,
    derive,
    dot,
    layer_norm,
    momentum,
    per_token,
    row_mean,
    row_var,
    silu,
    sq_norm,
    token_level,
    variant,
)
from derivations.autodiff import vjp
from derivations.catalog import CATALOG
from derivations.certificate import certify
from derivations.mat import Mat
from derivations.printing import to_text
from tttla.reporting.formulas import lr_placement
from verify.fuzz import run_campaign
from verify.inputs import make_case
from verify.oracle import run_direct

D = 3


def _ln_expr():
    z = Mat.symbol("z", 1, D)
    g, b = Mat.symbol("g", 1, D), Mat.symbol("bb", 1, D)
    return z, g, b, layer_norm(z, g, b)


def _explicit(name, r, c):
    return sympy.Matrix(r, c, sympy.symbols(f"{name}0:{r * c}"))


def test_layer_norm_numeric_is_torch_layer_norm():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 4, dtype=torch.float64, generator=g)
    gamma = torch.randn(1, 4, dtype=torch.float64, generator=g)
    beta = torch.randn(1, 4, dtype=torch.float64, generator=g)
    got = layer_norm(Mat.rows(z), Mat.weight(gamma), Mat.weight(beta)).value
    want = torch.nn.functional.layer_norm(z, (4,), gamma[0], beta[0], eps=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(row_mean(Mat.rows(z)).value, z.mean(-1, keepdim=True))
    torch.testing.assert_close(row_var(Mat.rows(z)).value, z.var(-1, unbiased=False, keepdim=True))


def test_layer_norm_vjp_matches_sympy_elementwise():
    """Our reverse-mode rules through row means, broadcasts and rsqrt = SymPy's derivative of
    the explicit 1 × 3 LayerNorm, entry by entry."""
    z, g, b, ln = _ln_expr()
    G = sympy.MatrixSymbol("G", 1, D)
    ours = vjp(ln.value, z.value, G)
    Z, Gm, gm, bm = _explicit("z", 1, D), _explicit("G", 1, D), _explicit("g", 1, D), _explicit("b", 1, D)
    subs = {z.value: sympy.ImmutableMatrix(Z), G: sympy.ImmutableMatrix(Gm), g.value: sympy.ImmutableMatrix(gm),
            b.value: sympy.ImmutableMatrix(bm)}
    ours_e = sympy.Matrix(ours.xreplace(subs).as_explicit())
    ln_e = sympy.Matrix(ln.value.xreplace(subs).as_explicit())
    scalar = sum(Gm[j] * ln_e[j] for j in range(D))
    point = dict(zip(list(Z) + list(Gm) + list(gm), [0.3, -1.2, 0.7, 0.5, 0.1, -0.4, 1.1, 0.9, -0.6]))
    for j in range(D):
        want = sympy.diff(scalar, Z[j]).subs(point).rewrite("closed").evalf()
        got = ours_e[j].subs(point).rewrite("closed").evalf()
        assert abs(float(got - want)) < 1e-12


def test_layer_norm_vjp_matches_torch_autograd():
    """The printed torch code of our LayerNorm gradient = torch.autograd on F.layer_norm (fp64)."""
    z, g, b, ln = _ln_expr()
    G = sympy.MatrixSymbol("G", 1, D)
    grads = {name: vjp(ln.value, sym.value, G) for name, sym in (("z", z), ("g", g), ("bb", b))}
    em = TorchEmitter({z.value: ("z", ROW), G: ("G", ROW), g.value: ("g", WEIGHT), b.value: ("bb", WEIGHT)})
    names = {n: em.assign(f"d_{n}", e) for n, e in grads.items()}
    code = "def f(z, G, g, bb):\n    import torch\n" + em.code() + f"\n    return {', '.join(names.values())}"
    env = {}
    exec(code, env)  # noqa: S102 - the emitter's own output
    gen = torch.Generator().manual_seed(1)
    Z = torch.randn(1, 1, 6, D, dtype=torch.float64, generator=gen).requires_grad_()
    Gt = torch.randn(1, 1, 6, D, dtype=torch.float64, generator=gen)
    gam = torch.randn(1, 1, 1, D, dtype=torch.float64, generator=gen).requires_grad_()
    bet = torch.randn(1, 1, 1, D, dtype=torch.float64, generator=gen).requires_grad_()
    out = torch.nn.functional.layer_norm(Z, (D,), eps=1e-6) * gam + bet
    want = torch.autograd.grad((out * Gt).sum(), [Z, gam, bet])
    dz, dg, db = env["f"](Z.detach(), Gt, gam.detach(), bet.detach())
    torch.testing.assert_close(dz, want[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dg.sum(-2, keepdim=True), want[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(db.sum(-2, keepdim=True), want[2], rtol=1e-10, atol=1e-12)


# --- TTT-Linear: the oracle against the dual form (docs/maths.md section 6) -----------------


def _ln(z, gamma, beta, eps=1e-6):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return gamma * (z - mu) / torch.sqrt(var + eps) + beta, (z - mu) / torch.sqrt(var + eps), torch.sqrt(var + eps)


def _ln_mse_grad(z, y, gamma, beta):
    """∇ = (D ĝ − Σ ĝ − x̂ Σ(ĝ ⊙ x̂)) / (D σ) with ĝ = γ ⊙ (γ x̂ + β − y) (docs/maths.md section 5)."""
    out, xhat, sigma = _ln(z, gamma, beta)
    dim = z.shape[-1]
    gh = gamma * (out - y)
    return (dim * gh - gh.sum(-1, keepdim=True) - xhat * (gh * xhat).sum(-1, keepdim=True)) / (dim * sigma)


def ttt_linear_dual(Q, K, V, W0, b0, gamma, beta, eta_b, eta_a, L):
    """The dual form, one head: per mini-batch Z̄ = QW − (η ⊙ tril(QKᵀ))∇ + b − tril(η)∇ with the
    rank-1 η_ij = a_i b_j, o = q + LN(Z̄); W ← W − Σ_j η_bj k_jᵀ∇_j (written from the dual form, not from the oracle)."""
    W, b, outs = W0.clone(), b0.clone(), []
    for s in range(0, Q.shape[0], L):
        q, k, v = Q[s:s + L], K[s:s + L], V[s:s + L]
        eta = eta_a[s:s + L, None] * eta_b[None, s:s + L]  # [n, n]
        grad = _ln_mse_grad(k @ W + b, v - k, gamma, beta)
        tri = torch.ones(len(q), len(q), dtype=Q.dtype).tril()
        zbar = q @ W - ((eta * tri) * (q @ k.T)) @ grad + b - (eta * tri) @ grad
        outs.append(q + _ln(zbar, gamma, beta)[0])
        last = eta[-1]  # η_{b j}: the last token's row
        W = W - k.T @ (last[:, None] * grad)
        b = b - (last[:, None] * grad).sum(0, keepdim=True)
    return torch.cat(outs), W, b


@pytest.mark.parametrize("T,L", [(16, 16), (37, 8), (5, 16)])
def test_ttt_linear_oracle_equals_the_dual_form(T, L):
    v = CATALOG["ttt_linear"]
    case = make_case(v, seq_len=T, sizes={"d": 6, "dv": 7}, chunk_size=L, generator=torch.Generator().manual_seed(T))
    case.lr = case.lr["W"]  # one η_j for W and b (the key factor b_j of η_ij = a_i b_j)
    eps = 0.3 * torch.randn(L, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
    a = torch.clamp(1.0 / torch.arange(1, L + 1, dtype=torch.float64) + eps, min=0)
    case.lr_position = a  # a_i = max(0, 1/i + ε_i), with ε drawn
    o, final = run_direct(v, **case.kwargs())
    w = case.initial_weights
    eta = case.lr[0, :, 0]
    positions = a.repeat(-(-T // L))[:T]  # a of each token's position in its mini-batch
    want_o, want_W, want_b = ttt_linear_dual(case.q[0, :, 0], case.k[0, :, 0], case.v[0, :, 0], w["W"][0, 0],
                                             w["b"][0, 0], w["gamma"][0, 0], w["beta"][0, 0], eta, positions, L)
    torch.testing.assert_close(o[0, :, 0], want_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["W"][0, 0], want_W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["b"][0, 0], want_b, rtol=1e-12, atol=1e-12)


# --- classification with reasons -----------------------------------------------------------------


def test_ttt_linear_classification_and_reasons():
    form = derive("ttt_linear", certify=False)
    c = form.classification
    assert (c.structure, c.kernel, c.values, c.parallel, c.parallel_form) == (
        "headed", "static", "state_dependent", False, "sequential")
    layer = c.reason("reducible.bias_key").facts
    assert (to_text(layer["z"]), to_text(layer["layer"]), layer["bias"]) == ("z_W", "x·W + b", "b")
    assert "structure.head" in c.codes and c.reason("values.state_dependent").facts["through_head"]
    assert c.reason("not_parallel").facts == {"blockers": ("state_dependent_values",), "plain": False}
    assert form.layers[0].bias == "b" and form.value.has(form.state_t) and form.value.has(form.layers[0].bias_t)


def test_ttt_mlp_is_dynamic_and_not_parallel():
    form = derive("ttt_mlp", certify=False)
    c = form.classification
    assert (c.structure, c.kernel, c.values, c.parallel) == ("headed", "dynamic", "state_dependent", False)
    assert form.state == "W2" and set(form.feature_weights) == {"W1", "b1"}
    assert c.reason("kernel.dynamic").facts["updated"] == ("W1", "b1")


@pytest.mark.parametrize("name", ["vittt_glu", "vittt_glu_noclip"])
def test_vittt_glu_is_a_gate_of_two_linear_attentions(name):
    form = derive(name, certify=False)
    c = form.classification
    assert (c.structure, c.kernel, c.parallel, c.parallel_form) == ("gated", "static", True, "prefix_scan")
    assert [lay.state for lay in form.layers] == ["W1", "W2"]
    gate = c.reason("structure.gated").facts
    assert to_text(gate["head"]) == "z_W1 ⊙ silu(z_W2)" and gate["outputs"] == tuple(lay.z for lay in form.layers)
    assert (c.reason("parallel.one_step").facts["clip"] is not None) == (name == "vittt_glu")
    # ∂ℓ/∂z1 = −(1/3) v ⊙ silu(z2): branch 1's value is gated by the other branch (7.4)
    assert form.layers[0].dloss_z.has(form.layers[1].z) and not form.layers[0].dloss_z.has(form.layers[0].z)


def test_irreducible_model_names_the_sub_expression():
    @variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: -dot(y, v), schedule=chunked("block_inclusive", 4))
    def twice(x, W):
        return silu(x @ W) @ W

    with pytest.raises(ReductionError, match=r"W enters it through silu\(z_W\)·W"):
        derive(twice)


def test_headed_certificate_catches_a_wrong_value():
    form = derive("vittt_glu_noclip", certify=False)
    lay = form.layers[0]
    bad = type(lay)(**{**lay.__dict__, "dloss_z": 2 * lay.dloss_z})
    wrong = type(form).__new__(type(form))
    wrong.__dict__.update(form.__dict__)
    object.__setattr__(wrong, "layers", (bad, *form.layers[1:]))
    assert certify(form).certified and not certify(wrong).certified


def _with_dloss_z(form, dloss_z):
    lay = form.layers[0]
    bad = type(lay)(**{**lay.__dict__, "dloss_z": dloss_z})
    wrong = type(form).__new__(type(form))
    wrong.__dict__.update(form.__dict__)
    object.__setattr__(wrong, "layers", (bad, *form.layers[1:]))
    return wrong


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_layer_norm_certificate_catches_a_wrong_value(name):
    """The LayerNorm branch (per-token steps in the coordinates ζ = z) still rejects near misses:
    a gradient whose ε under the root differs from the model's, and one without the mean's path."""
    form = derive(name, certify=False)
    g = form.layers[0].dloss_z
    eps = sympy.Rational(1, 10**6)
    assert g.has(eps)
    other_eps = _with_dloss_z(form, g.xreplace({eps: 2 * eps}))
    assert not certify(other_eps).certified
    # the centring's backward is G_c − mean(G_c)·𝟙: drop the mean's term
    mean = -1 / form.variant.trace().y.shape[1]
    kept = [t for t in g.args if not (isinstance(t, sympy.MatMul) and t.args[0] == mean)]
    assert isinstance(g, sympy.MatAdd) and len(kept) == len(g.args) - 1
    assert not certify(_with_dloss_z(form, sympy.MatAdd(*kept))).certified


# --- ViTTT GLU: the oracle against the closed form (docs/maths.md section 5) ----------------


def _silu_prime(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


@pytest.mark.parametrize("clip", [True, False])
def test_vittt_glu_oracle_equals_the_closed_form(clip):
    v = CATALOG["vittt_glu" if clip else "vittt_glu_noclip"]
    T = 9
    case = make_case(v, seq_len=T, sizes={"d": 5, "dv": 6}, generator=torch.Generator().manual_seed(4))
    case.lr = torch.full_like(case.lr["W1"], 1.0 / T)  # η = 1/N: the loss −(s/N) Σ ⟨f(k), v⟩ with s = 1/3
    o, final = run_direct(v, **case.kwargs())
    Q, K, V = case.q[0, :, 0], case.k[0, :, 0], case.v[0, :, 0]
    W1, W2 = case.initial_weights["W1"][0, 0], case.initial_weights["W2"][0, 0]
    E = V / (3 * T)
    G1 = -K.T @ (E * torch.nn.functional.silu(K @ W2))  # G₁ of docs/maths.md section 5
    G2 = -K.T @ (E * (K @ W1) * _silu_prime(K @ W2))
    if clip:
        G1, G2 = (G / (G.norm(dim=0, keepdim=True) + 1) for G in (G1, G2))
    W1n, W2n = W1 - G1, W2 - G2
    torch.testing.assert_close(final["W1"][0, 0], W1n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["W2"][0, 0], W2n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o[0, :, 0], (Q @ W1n) * torch.nn.functional.silu(Q @ W2n), rtol=1e-12, atol=1e-12)


def test_rsqrt_is_in_the_function_table():
    from derivations.functions import FUNCTIONS

    assert "rsqrt" in FUNCTIONS
    _, _, _, ln = _ln_expr()
    assert any(isinstance(a, ElementwiseApplyFunction) for a in ln.value.atoms(ElementwiseApplyFunction))


# --- the rank-1 learning rate η_ij = a_i η_j (per_token(position=True)) ---------------------------


@variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: 0.5 * sq_norm(y - v),
         lr=per_token(position=True), schedule=chunked("update_then_apply", 4))
def rank1_delta(x, W):
    """½‖xW − v‖² with TTT-Linear's rank-1 learning rate."""
    return x @ W


def test_rank1_learning_rate_certified_and_generated(tmp_path):
    form = derive(rank1_delta)
    assert form.certificate.certified and "a_p symbolic" in form.certificate.checked
    assert "rank-1 η_ij = a_i η_j" in lr_placement(form)
    wrong = dataclasses.replace(form, dloss=sympy.MatMul(2, form.dloss))
    assert not certify(wrong).certified
    generate(rank1_delta, tmp_path)
    forms = dict(import_generated("rank1_delta", tmp_path).FORMS)
    for dtype in (torch.float64, torch.float32):
        for c in (run_campaign(rank1_delta, forms, cases=3, dtype=dtype, seed=2),
                  run_campaign(rank1_delta, forms, cases=1, dtype=dtype, seed=7, seq_len=7, chunk_size=3)):
            assert c.passed, [(s.describe(), r.form, r.failures()) for s, r in c.failures()]


def test_rank1_learning_rate_needs_its_factors():
    case = make_case(rank1_delta, seq_len=6, chunk_size=3)
    with pytest.raises(ValueError, match=r"pass lr_position a of shape \[L\] = \[3\]"):
        run_direct(rank1_delta, **{**case.kwargs(), "lr_position": None})
    with pytest.raises(ValueError, match=r"lr_position must have shape \[L\] = \[3\]"):
        run_direct(rank1_delta, **{**case.kwargs(), "lr_position": case.lr_position[:2]})
    lin = make_case(CATALOG["lact_v6"], seq_len=6)
    with pytest.raises(ValueError, match="no per-position learning rate"):
        run_direct(CATALOG["lact_v6"], **{**lin.kwargs(), "lr_position": torch.ones(64, dtype=torch.float64)})
    recurrent = import_generated("ttt_linear").recurrent_ttt_linear
    t = make_case(CATALOG["ttt_linear"], seq_len=5)
    kwargs = {"gamma": t.initial_weights["gamma"], "beta": t.initial_weights["beta"], "lr": t.lr,
              "initial_state": {"W": t.initial_weights["W"], "b": t.initial_weights["b"]}}
    with pytest.raises(ValueError, match=r"lr_position must have shape \[L\] = \[16\]"):
        recurrent(t.q, t.k, t.v, lr_position=torch.ones(4, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("schedule, rule, match", [
    (bidirectional(), {}, "needs chunked\\('update_then_apply'"),
    (token_level(), {}, "needs chunked\\('update_then_apply'"),
    (chunked("update_then_apply", 4), {"momentum": momentum(per="token")}, "does not combine with momentum"),
])
def test_rank1_learning_rate_declaration_errors(schedule, rule, match):
    with pytest.raises(DeclarationError, match=match):
        variant(fast={"W": ("d", "d")}, update="W", loss=lambda y, v: -dot(y, v), lr=per_token(position=True),
                schedule=schedule, **rule)(lambda x, W: x @ W)
