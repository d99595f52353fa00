"""An exact, floating-point-free check that the derived form equals the literal inner loop.

At tiny sizes (T = 3 tokens, every named dimension 2) every token, value, learning rate,
momentum coefficient, decay and position factor is a SymPy symbol, and each layer's feature
map is kept abstract (undefined functions φ_j(x₀, x₁), a fresh set per step when the kernel is
dynamic), so the check is about the rewrite, not about φ. The output head (a LayerNorm, a GLU
gate; the identity for f = φ(x)·W) is explicit. The outputs are compared entry by entry:

* **literal**: :func:`derivations.inner_loop.run_inner_loop`, the schedule the oracle runs,
  with SymPy matrices; each increment ∓Σ η_i ∇ℓ_i comes from SymPy's element-wise
  differentiation of the explicit loss L(head(φ(k)·W + b), v) — not from our rules;
* **derived**: the linear-attention form, v̂_j = ∓η ∂ℓ/∂z_j from our rules at z_j = k̂ S_j,
  k̂ = φ_i(k_i), q̂ = φ_{r+1}(q), either as the attention form
  ``o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i`` with the mask and momentum coefficients of
  Theorem 5.3 / Section 5 (parallel φ(x)·W without 𝓜, clip, decay or a_p), or as the
  chunk-state form ``S_r = Norm?(γ_r S_{r−1} + 𝓜?(Σ_{m≤r} B_m^r Clip?(Δ_m)))`` otherwise,
  read through the head;
* **delta_chunk** (a form whose parallel form is DeltaNet's WY/UT chunk form): besides, that
  block form itself — per-token affine steps S ↦ γ_t(I − β_t k̂_tᵀk̂_t)S + k̂_tᵀb_t composed by one
  triangular solve per block — against the same literal loop.

A normalising head (LayerNorm) makes the unrolled states nest 1/sqrt(var) beyond what SymPy
expands in reasonable time; there the increments of every token's step are compared at a
symbolic state instead, in the coordinates ζ_j = z_j where both sides expand small.

Newton–Schulz, weight norm and the clip are nonlinear and not exactly computable
symbolically; they are kept abstract (undefined matrix functions of the expanded entries),
so the linear part around them is certified.
"""

from __future__ import annotations

import time

import sympy
from sympy import ImmutableMatrix, Matrix
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from derivations.autodiff import rationalize
from derivations.classify import delta_coefficient
from derivations.form import Certificate
from derivations.inner_loop import run_inner_loop
from derivations.printing import function_name, to_text
from derivations.variant import dim_symbol

__all__ = ["certify"]

T, D = 3, 2


def certify(form) -> Certificate:
    """Certify ``form`` against the literal inner loop, exactly (see the module docstring)."""
    start = time.perf_counter()
    p = _Problem(form)
    checked, abstract = _description(p)
    failure = _not_covered(p)
    if failure is None:
        try:
            failure = _stepwise_failure(p) if p.normalising else _failure(p)
        except Exception as e:  # a certificate that cannot be computed is reported, not raised
            failure = f"could not be computed: {type(e).__name__}: {e}"
    return Certificate(certified=failure is None, checked=checked, abstract=abstract,
                       sizes={"T": T, "d": D, "h": D, "chunk": p.L}, seconds=time.perf_counter() - start,
                       failure=failure)


def _abstract(prefix, X):
    """An undefined matrix function applied to X: entry (r, c) is prefix_rc(expanded X)."""
    args = [sympy.expand(e) for e in X]
    return Matrix(X.rows, X.cols, lambda r, c: sympy.Function(f"{prefix}_{r}{c}")(*args))


def _explicit(expr, memo=None) -> Matrix:
    """An IR expression whose matrix symbols were all replaced by explicit matrices, as an
    explicit ``Matrix``, built node by node with each distinct node once. (``as_explicit``
    goes entry by entry through symbolic sums, re-deriving shared sub-expressions.)"""
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    if isinstance(expr, sympy.MatrixBase):
        out = Matrix(expr)
    elif isinstance(expr, sympy.Transpose):
        out = _explicit(expr.arg, memo).T
    elif isinstance(expr, sympy.MatAdd):
        parts = [_explicit(a, memo) for a in expr.args]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
    elif isinstance(expr, sympy.MatMul):
        scalar = sympy.Mul(*(a for a in expr.args if not isinstance(a, sympy.MatrixExpr)))
        mats = [_explicit(a, memo) for a in expr.args if isinstance(a, sympy.MatrixExpr)]
        out = mats[0]
        for m in mats[1:]:
            out = out * m
        out = scalar * out
    elif isinstance(expr, sympy.HadamardProduct):
        parts = [_explicit(a, memo) for a in expr.args]
        out = parts[0]
        for p in parts[1:]:
            out = out.multiply_elementwise(p)
    elif isinstance(expr, ElementwiseApplyFunction):
        out = _explicit(expr.expr, memo).applyfunc(expr.function)
    else:  # 𝟙, I, 0 of explicit shapes, and anything else SymPy can expand itself
        out = Matrix(expr.as_explicit())
    memo[expr] = out
    return out


class _Problem:
    """The tiny symbolic instance of a form: symbols, abstract φ, the explicit head and ∂ℓ/∂z,
    and both sides' increments (literal: SymPy gradients; derived: our v̂)."""

    def __init__(self, form):
        v = form.variant
        self.form, self.variant, self.layers = form, v, form.layers
        self.order = v.schedule.order
        self.dynamic = form.classification.kernel == "dynamic"
        self.L = T if self.order == "bidirectional" else (v.schedule.chunk_size if v.schedule.fixed else 2)
        self.chunks = [list(range(s, min(s + self.L, T))) for s in range(0, T, self.L)]
        # steps: token-level orders step once per token, the others once per chunk
        self.token_steps = self.order == "update_then_apply"
        self.steps = [[t] for t in range(T)] if self.token_steps else self.chunks
        tr = v.trace()
        ir = v.lowered()  # a depthwise variant is checked one channel at a time, as it was derived
        self.dims = {dim_symbol(n): D for n in (*ir.dims, ir.value_dim) if n.isidentifier()}
        self.dv = self._size(tr.v.shape[1])
        self.loss, self.y, self.vsym = rationalize(tr.loss), tr.y, tr.v
        self._token_symbols(v)
        self.names = [lay.state for lay in self.layers] + [lay.bias for lay in self.layers if lay.bias]
        self.shapes = {n: tuple(self._size(s) for s in tr.weights[n].shape) for n in (*self.names, *v.slow_weights)}
        self.initial = {n: self._symbols(n, n) for n in self.names}
        self.placeholders = {n: self._symbols(f"p_{n}", n) for n in self.names}
        self._explicit_head(form, tr)

    def _token_symbols(self, v) -> None:
        """Rows k_t, v_t, q_t and the coefficients η_t, α_t, a_p, γ_t, all symbols."""
        self.k = [Matrix(1, D, sympy.symbols(f"k{t}_0:{D}")) for t in range(T)]
        self.v = [Matrix(1, self.dv, sympy.symbols(f"v{t}_0:{self.dv}")) for t in range(T)]
        self.q = self.k if v.queries == "key" else [Matrix(1, D, sympy.symbols(f"q{t}_0:{D}")) for t in range(T)]
        if v.lr.kind == "per_token":
            self.eta = list(sympy.symbols(f"eta0:{T}"))
        else:
            self.eta = [sympy.nsimplify(v.lr.value, rational=True)] * T
        self.alpha = list(sympy.symbols(f"alpha0:{T}")) if v.momentum else None
        self.a = list(sympy.symbols(f"a0:{self.L}")) if v.lr.position else None
        self.gamma = _decay_symbols(v.decay, D)
        self.decay_first = v.decay is not None and v.decay.order == "decay_then_gradient"
        self.sign = 1 if v.ascent else -1

    def decay_of(self, tokens):
        """Π_(t ∈ tokens) γ_t: a symbol product, or for a per-channel gate the diagonal matrix of
        the per-channel products (it multiplies a state's rows)."""
        if isinstance(self.gamma[0], Matrix):
            return Matrix.diag(*[sympy.Mul(*(self.gamma[t][c] for t in tokens)) for c in range(D)])
        return sympy.Mul(*(self.gamma[t] for t in tokens))

    def _explicit_head(self, form, tr) -> None:
        """The head and ∂ℓ/∂z made explicit once, in placeholder entries of z, x and v (cheap),
        to be filled in by entry substitution (no matrix algebra on the large entries)."""
        head = form.head.subs(self.dims)
        self.normalising = any(function_name(a.function) == "rsqrt" for a in head.atoms(ElementwiseApplyFunction))
        self.zp = {lay.z.subs(self.dims): Matrix(1, self._size(lay.z.shape[1]),
                                                 sympy.symbols(f"zp{j}_0:{self._size(lay.z.shape[1])}"))
                   for j, lay in enumerate(self.layers)}
        self.xp = Matrix(1, D, sympy.symbols(f"xp_0:{D}"))
        self.vp = Matrix(1, self.dv, sympy.symbols(f"vp_0:{self.dv}"))
        fixed = {**{z: ImmutableMatrix(m) for z, m in self.zp.items()}, tr.x.subs(self.dims): ImmutableMatrix(self.xp),
                 tr.v.subs(self.dims): ImmutableMatrix(self.vp),
                 **{tr.weights[n].subs(self.dims): ImmutableMatrix(self._symbols(n, n))
                    for n in form.variant.slow_weights}}
        self.head = _explicit(head.xreplace(fixed))
        self.dloss_z = {lay.state: _explicit(_cotangent(form, lay).subs(self.dims).xreplace(fixed))
                        for lay in self.layers}

    def _size(self, n) -> int:
        return int(sympy.sympify(n).subs(self.dims))

    def _symbols(self, prefix, name) -> Matrix:
        r, c = self.shapes[name]
        return Matrix(r, c, sympy.symbols(f"{prefix}_0:{r * c}"))

    def phi(self, j, version, x) -> Matrix:
        """φ_j of layer j at step ``version`` (one set for a static kernel), abstract."""
        h = self._size(self.layers[j].feature.shape[1])
        tag = f"phi{j}_{version}" if self.dynamic else f"phi{j}"
        return Matrix(1, h, [sympy.Function(f"{tag}_{c}")(*x) for c in range(h)])

    def zs(self, state, version, x) -> dict:
        """z_j = φ_j(x)·W_j (+ b_j) of every layer at ``state``."""
        out = {}
        for j, lay in enumerate(self.layers):
            z = self.phi(j, version, x) * state[lay.state]
            out[lay.z.subs(self.dims)] = z + state[lay.bias] if lay.bias else z
        return out

    def fill(self, M, zs, x, vrow=None):
        subs = {p: val for z, m in self.zp.items() for p, val in zip(m, zs[z])}
        subs.update(zip(self.xp, x))
        if vrow is not None:
            subs.update(zip(self.vp, vrow))
        return M.xreplace(subs)

    def model(self, state, version, x) -> Matrix:
        """f(x) = head(z(x), x) at ``state``."""
        return self.fill(self.head, self.zs(state, version, x), x)

    def literal_increments(self, version, t, state) -> dict:
        """∓η_t ∇ℓ_t per state, by SymPy's element-wise differentiation of the explicit loss."""
        f = self.model(self.placeholders, version, self.k[t])
        ell = _explicit(self.loss.xreplace({self.y: ImmutableMatrix(f), self.vsym: ImmutableMatrix(self.v[t])}))[0, 0]
        back = {p: val for n in self.names for p, val in zip(self.placeholders[n], state[n])}
        return {n: self.sign * self.eta[t] * self.placeholders[n].applyfunc(lambda p: sympy.diff(ell, p)).xreplace(back)
                for n in self.names}

    def values(self, version, t, state) -> dict:
        """v̂_j = ∓η_t ∂ℓ/∂z_j (our rules) at z = k̂ S, per layer."""
        zs = self.zs(state, version, self.k[t])
        return {lay.state: self.sign * self.eta[t] * self.fill(self.dloss_z[lay.state], zs, self.k[t], self.v[t])
                for lay in self.layers}

    def derived_increments(self, version, t, state) -> dict:
        """k̂ᵀ v̂_j for W_j and v̂_j for b_j (a key constantly 1)."""
        values, out = self.values(version, t, state), {}
        for j, lay in enumerate(self.layers):
            out[lay.state] = self.phi(j, version, self.k[t]).T * values[lay.state]
            if lay.bias:
                out[lay.bias] = values[lay.state]
        return out

    def abar(self, step):
        toks = self.steps[step]
        return sum(self.alpha[t] for t in toks) / len(toks)

    def clip(self, name, inc):
        return _abstract(f"Clip{name}", inc)

    def orthogonalize(self, name, inc):
        return _abstract(f"NS{name}", inc)

    def renorm(self, name, W):
        return _abstract(f"Norm{name}", W)


def _cotangent(form, layer):
    """∂ℓ/∂z_j as the code generator reads it: ∂L/∂f itself under the identity head of
    φ(x)·W, the layer's ∂ℓ/∂z through any other head."""
    return form.dloss.xreplace({form.y: layer.z}) if form.is_linear else layer.dloss_z


class _Literal:
    """The inner loop's SymPy interpretation (see :class:`derivations.inner_loop.Backend`)."""

    def __init__(self, p: _Problem):
        self.p = p

    def read(self, weights, version, tokens):
        return [self.p.model(weights, version, self.p.q[t]) for t in tokens]

    def increments(self, weights, version, tokens):
        total = {}
        for t in tokens:
            for n, inc in self.p.literal_increments(version, t, weights).items():
                total[n] = total[n] + inc if n in total else inc
        return total

    def trainable(self, weights):
        return weights

    def settle(self, weight):
        return weight

    def clip(self, name, inc):
        return self.p.clip(name, inc)

    def orthogonalize(self, name, inc):
        return self.p.orthogonalize(name, inc)

    def renorm(self, name, weight):
        return self.p.renorm(name, weight)

    def momentum(self, tokens):
        return sum(self.p.alpha[t] for t in tokens) / len(tokens)

    def decay(self, tokens):
        return self.p.decay_of(tokens)

    def position(self, p):
        return self.p.a[p]


def _decay_symbols(decay, channels: int) -> list | None:
    """γ_t of every token as symbols: one per token, one row of ``channels`` per token (a
    per-channel gate) or one symbol γ_h shared by every token (a constant per-head decay)."""
    if decay is None:
        return None
    if decay.gate == "channel":
        return [Matrix(1, channels, sympy.symbols(f"gamma{t}_0:{channels}")) for t in range(T)]
    if decay.gate == "head":
        return [sympy.Symbol("gamma_h", positive=True)] * T
    return list(sympy.symbols(f"gamma0:{T}"))


def _literal(p: _Problem) -> list:
    reads, _ = run_inner_loop(p.variant, _Literal(p), p.initial, T, p.L)
    return [o for piece in reads for o in piece]


def _uses_attention_form(p: _Problem) -> bool:
    v = p.variant
    return (p.form.is_linear and p.form.classification.parallel and v.orthogonalize is None and v.decay is None
            and v.clip is None and not v.lr.position)


def _coeff(p: _Problem, m, j):
    """B_m^j (β_m^j per token): Π_{l=m+1}^{j} ᾱ_l; without momentum 1[j = m]."""
    if p.alpha is None:
        return sympy.Integer(1 if j == m else 0)
    return sympy.Mul(*[p.abar(l) for l in range(m + 1, j + 1)])


def _read_step(p: _Problem, t):
    """r(t): the last step whose update token t reads (−1: the initial state)."""
    if p.token_steps:
        return t
    c = next(n for n, C in enumerate(p.chunks) if t in C)
    return {"apply_then_update": c - 1, "block_inclusive": c, "bidirectional": 0}[p.order]


def _start(p: _Problem, t):
    """Steps completed when token t's gradient is taken (its chunk start)."""
    c = next(n for n, C in enumerate(p.chunks) if t in C)
    return sum(len(C) for C in p.chunks[:c]) if p.token_steps else c


def _n_steps(p: _Problem) -> int:
    return len(p.steps) if p.order != "apply_then_update" else len(p.chunks) - 1


def _attention_form(p: _Problem) -> list:
    """o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i (φ(x)·W, one layer, values at S_0)."""
    step_of = {t: j for j, toks in enumerate(p.steps) for t in toks}
    W = p.layers[0].state
    S0 = p.initial[W]
    keys = {i: p.phi(0, 0, p.k[i]) for i in range(T)}
    vals = {i: p.values(0, i, p.initial)[W] for i in range(T)}  # values ignore the state here
    out = []
    for t in range(T):
        r, qh = _read_step(p, t), p.phi(0, 0, p.q[t])
        o = qh * S0
        for i in range(T):
            m = step_of[i]
            if m >= _n_steps(p):
                continue
            c = sum((_coeff(p, m, j) for j in range(m, r + 1)), sympy.Integer(0))
            if c != 0:
                o += c * (qh * keys[i].T)[0, 0] * vals[i]
        out.append(o)
    return out


def _chunk_state_form(p: _Problem) -> list:
    """S_r = Norm?(γ_r S_{r−1} + 𝓜?(Σ_m B_m^r Clip?(Δ_m))) per layer state, Δ_m = Σ k̂ᵀ v̂ at
    the chunk-start state (S_(c(t)) + a_p Σ_(j≤t) Δ_j with per-position factors), read through the head."""
    v = p.variant
    states = [p.initial]  # states[j] = the states after j steps
    deltas = []
    for j in range(_n_steps(p)):
        delta = {}
        for i in p.steps[j]:
            start = _start(p, i)
            at = {n: p.decay_of(p.steps[j]) * S for n, S in states[start].items()} if p.decay_first else states[start]
            for n, inc in p.derived_increments(start, i, at).items():
                delta[n] = delta[n] + inc if n in delta else inc
        deltas.append({n: p.clip(n, d) for n, d in delta.items()} if v.clip is not None else delta)
        if p.a is not None:  # the chunk's start c0 and the token's position j − c0 in it
            c0 = _start(p, p.steps[j][0])
            states.append({n: states[c0][n] + p.a[j - c0] * sum((d[n] for d in deltas[c0:j + 1]), sympy.zeros(*S.shape))
                           for n, S in states[c0].items()})
            continue
        new = {}
        for n, S in states[-1].items():
            M = sum((_coeff(p, m, j) * deltas[m][n] for m in range(j + 1)), sympy.zeros(*S.shape))
            if v.orthogonalize is not None:
                M = p.orthogonalize(n, M)
            S = (p.decay_of(p.steps[j]) * S if p.gamma else S) + M  # the decay of step j's tokens
            new[n] = p.renorm(n, S) if v.weight_norm is not None else S
        states.append(new)
    return [p.model(states[_read_step(p, t) + 1], _read_step(p, t) + 1, p.q[t]) for t in range(T)]


#: the block size of the delta_chunk check: blocks [0, 1] and [2] compose inside and across blocks
DELTA_BLOCK = 2


def _delta_chunk_form(p: _Problem) -> list:
    """DeltaNet's WY/UT block form, as the generated delta_chunk code computes it: with
    ∂L/∂f = c·f + r (c from :func:`~derivations.classify.delta_coefficient`), v̂_t = b_t − β_t k̂_t S
    with b_t = v̂_t at S = 0 and β_t = ±η_t c, and per block from the state S (Γ_t = Π_(s≤t) γ_s in
    the block, 1 without a decay; D_ti = Γ_t/Γ_i):

        A = strict_lower(diag(β)(K̂K̂ᵀ ⊙ D)),  u = (I + A)⁻¹ (B − diag(βΓ) K̂ S),
        o_t = Γ_t q̂_t S + Σ_(i≤t) D_ti (q̂_t k̂_iᵀ) u_i,  S ← Γ_L S + Σ_i (Γ_L/Γ_i) k̂_iᵀ u_i."""
    lay = p.layers[0]
    W = lay.state
    c = delta_coefficient(p.form.dloss, p.form.y)
    if c is None:
        raise ValueError(f"∂L/∂f = {to_text(p.form.dloss)} is not c·f + r(v), so there is no WY/UT form")
    zero = {n: sympy.zeros(*S.shape) for n, S in p.initial.items()}
    S, out = p.initial[W], []
    for s in range(0, T, DELTA_BLOCK):
        toks = range(s, min(s + DELTA_BLOCK, T))
        K = Matrix.vstack(*(p.phi(0, 0, p.k[t]) for t in toks))
        Q = Matrix.vstack(*(p.phi(0, 0, p.q[t]) for t in toks))
        B = Matrix.vstack(*(p.values(0, t, zero)[W] for t in toks))
        beta = [-p.sign * p.eta[t] * c for t in toks]
        gamma = [p.decay_of(toks[:i + 1]) if p.gamma else sympy.Integer(1) for i in range(len(toks))]
        reads, S = _ut_block(K, Q, B, beta, gamma, S)
        out += reads
    return out


def _ut_block(K, Q, B, beta, gamma, S):
    """One block of the WY/UT form from state S: ``(outputs, state after the block)``."""
    n = K.rows
    A = Matrix(n, n, lambda i, j: beta[i] * gamma[i] / gamma[j] * (K[i, :] * K[j, :].T)[0, 0] if j < i else 0)
    u = (sympy.eye(n) + A).LUsolve(B - Matrix.diag(*(b * g for b, g in zip(beta, gamma))) * K * S)
    reads = []
    for i in range(n):
        o = gamma[i] * Q[i, :] * S
        for j in range(i + 1):
            o += gamma[i] / gamma[j] * (Q[i, :] * K[j, :].T)[0, 0] * u[j, :]
        reads.append(o)
    after = gamma[-1] * S + sum((gamma[-1] / gamma[j] * K[j, :].T * u[j, :] for j in range(n)), sympy.zeros(*S.shape))
    return reads, after


def _failure(p: _Problem) -> str | None:
    literal = _literal(p)
    forms = {"derived": lambda: _attention_form(p) if _uses_attention_form(p) else _chunk_state_form(p)}
    if p.form.classification.parallel_form == "delta_chunk":
        forms["delta_chunk (WY/UT)"] = lambda: _delta_chunk_form(p)
    for which, outputs in forms.items():  # each form computed only when the ones before it hold
        for t, (der, lit) in enumerate(zip(outputs(), literal, strict=True)):
            bad = _residual(der - lit)
            if bad is not None:
                return f"token {t}: {which} − literal = {bad} ≠ 0"
    return None


def _stepwise_failure(p: _Problem) -> str | None:
    """Every token's increments at a symbolic state, derived vs literal, in the coordinates ζ_j = z_j."""
    for t in range(T):
        literal, derived = p.literal_increments(0, t, p.initial), p.derived_increments(0, t, p.initial)
        # both sides read the state only through z_j (plus whatever else the model reads):
        # compared in the coordinates ζ_j = z_j, the expansion stays small
        sub = _layer_coordinates(p, t)
        for n in literal:
            bad = _residual((derived[n] - literal[n]).xreplace(sub))
            if bad is not None:
                return f"token {t}: Δ{n} derived − literal = {bad} ≠ 0 (ζ_j = z_j at this step)"
    return None


def _layer_coordinates(p: _Problem, t):
    """An invertible change of variables of the state for token t's step: entry c of
    z_j = φ_j(k_t)·W_j (+ b_j) becomes the symbol ζ_j_c, solved for b_j[c] (or, without a bias,
    for W_j[0, c], whose coefficient φ_j,0(k_t) is generically non-zero). A solved entry occurs,
    linearly, in exactly one entry of the z's, so the substitution is invertible (back: ζ = z):
    an identity holds in the new coordinates iff it holds in the old ones."""
    state = p.initial
    zs, sub = p.zs(state, 0, p.k[t]), {}
    entries = [zc for z in zs.values() for zc in z]
    for j, lay in enumerate(p.layers):
        z = zs[lay.z.subs(p.dims)]
        for c, (zc, zeta) in enumerate(zip(z, sympy.symbols(f"zeta{j}_0:{len(z)}"))):
            pivot = state[lay.bias][0, c] if lay.bias else state[lay.state][0, c]
            coef = sympy.diff(zc, pivot)
            if coef != 0 and not coef.has(pivot) and sum(e.has(pivot) for e in entries) == 1:
                sub[pivot] = (zeta - (zc - coef * pivot)) / coef
    return sub


def _residual(entries):
    """The first entry that is not identically zero (expanded, then simplified), or None when
    every entry is zero. Stops at the first non-zero one: a rejected form costs one simplify."""
    for e in entries:
        e = sympy.expand(e)
        if e != 0:
            e = sympy.simplify(e)
            if e != 0:
                return e
    return None


def _not_covered(p: _Problem) -> str | None:
    """The stepwise check (a normalising head) compares single steps, not how steps combine:
    momentum, 𝓜, weight norm and a decay are not covered there."""
    v = p.variant
    blocked = [c for c, on in (("momentum", v.momentum), ("Newton–Schulz", v.orthogonalize),
                               ("weight norm", v.weight_norm), ("decay", v.decay)) if on]
    if p.normalising and blocked:
        return f"not covered: {', '.join(blocked)} with a normalising head"
    return None


def _description(p: _Problem) -> tuple[str, tuple[str, ...]]:
    """``(checked, abstract)``: what is compared, and what is kept abstract."""
    v, form = p.variant, p.form
    per_step = ", a fresh set per step" if p.dynamic else ""
    if form.is_linear:
        abstract = ["φ (undefined functions φ_j(x₀, x₁)" + (", a fresh set per step: φ_t" if p.dynamic else "") + ")"]
    else:
        abstract = [f"φ_j of every layer (undefined functions of the row{per_step})"]
    if v.orthogonalize is not None:
        abstract.append("Newton–Schulz 𝓜 (an undefined matrix function of the expanded increment, per "
                        + ("step" if p.token_steps else "chunk") + ")")
    if v.weight_norm is not None:
        abstract.append("weight norm (an undefined matrix function of the updated state)")
    if v.clip is not None:
        abstract.append("the column clip (an undefined matrix function of each step's expanded increment)")
    if p.dynamic:
        abstract.append("the Θ update (Theorem 5.1: it only replaces φ_t by φ_{t+1})")
    schedule = f"for all {T} tokens, {p.order} order, chunk size {p.L}" + (", a_p symbolic" if p.a else "")
    if form.is_linear:
        shape = ("attention form o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i with the mask/momentum coefficients"
                 if _uses_attention_form(p) else "chunk-state form S_t = S_(c(t)) + a_p Σ_(j≤t in its chunk) Δ_j"
                 if p.a else "chunk-state form S_r = Norm?(" + ("γ_r " if v.decay else "")
                 + "S_{r−1} + 𝓜?(Σ_m B_m^r " + ("Clip(Δ_m)" if v.clip else "Δ_m") + "))"
                 + (f" with the decay ({v.decay.order})" if v.decay else ""))
        delta = (f"; so does DeltaNet's WY/UT block form of the delta_chunk code (blocks of {DELTA_BLOCK}, "
                 "v̂_t = b_t − β_t k̂_t S with β_t = ±η_t c from ∂L/∂f = c·f + r)"
                 if form.classification.parallel_form == "delta_chunk" else "")
        return (f"{shape} (v̂ from the derived ∂L/∂f = {to_text(form.dloss)}) equals the literal inner loop "
                f"(SymPy element-wise gradients) {schedule}{delta}"), tuple(abstract)
    update = (f"the {form.classification.structure} form: W_j ← W_j + Σ k̂ᵀ v̂_j, b_j ← b_j + Σ v̂_j with "
              f"v̂_j = ∓η ∂ℓ/∂z_j from our rules, read through the head {to_text(form.head)},")
    literal = "(SymPy element-wise gradients of the explicit loss)"
    if p.normalising:
        return (f"{update} gives the literal step {literal} of every token at a symbolic state, compared in the "
                f"coordinates ζ_j = z_j of the state, for all {T} tokens, {p.order} order, chunk size {p.L}"), \
            tuple(abstract)
    return f"{update} equals the literal inner loop {literal} {schedule}", tuple(abstract)
