"""An exact, floating-point-free check that the derived form equals the literal inner loop.

At tiny sizes (T = 3 tokens, D_k = D_h = D_v = 2) every token, value, learning rate and
momentum coefficient is a SymPy symbol and the feature map is kept abstract (undefined
functions φ_j(x₀, x₁), one set per step when the kernel is dynamic), so the check is about
the rewrite, not about φ. Two outputs are computed and compared entry by entry:

* **literal**: the inner loop as the oracle runs it (reads in the schedule's order,
  increments ∓Σ η_i ∇ℓ_i at the chunk-start state, momentum, 𝓜, weight norm), where ∇ℓ_i
  comes from SymPy's element-wise differentiation of the explicit loss — not from our rules;
* **derived**: the linear-attention form: v̂ from our ∂L/∂f, k̂ = φ_i(k_i), q̂ = φ_{r+1}(q),
  and either the attention form ``o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i`` with the mask and
  momentum coefficients of Theorem 5.3 / Section 5 (parallel variants without 𝓜), or the
  chunk-state form ``S_r = S_0 + Σ_{j≤r} 𝓜(Σ_{m≤j} B_m^j Δ_m)`` otherwise.

Newton–Schulz and weight norm are nonlinear and not exactly computable symbolically; they
are kept abstract (an undefined matrix function of the expanded entries), so the linear
part around them is certified.
"""

from __future__ import annotations

import time

import sympy
from sympy import ImmutableMatrix, Matrix
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from derivations.autodiff import rationalize
from derivations.form import Certificate
from derivations.printing import function_name, to_text

__all__ = ["certify"]

T, D = 3, 2


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


class _Setup:
    def __init__(self, form):
        v = form.variant
        self.form, self.variant = form, v
        self.order = v.schedule.order
        self.dynamic = form.classification.kernel == "dynamic"
        if self.order == "bidirectional":
            L = T
        elif v.schedule.fixed:
            L = v.schedule.chunk_size
        else:
            L = 2
        self.L = L
        self.chunks = [list(range(s, min(s + L, T))) for s in range(0, T, L)]
        self.k = [Matrix(1, D, sympy.symbols(f"k{t}_0:{D}")) for t in range(T)]
        tr = v.trace()
        # the value width: D, or the declared one when it is a number (1 for a depthwise channel)
        self.dv = int(tr.v.shape[1]) if tr.v.shape[1].is_number else D
        self.v = [Matrix(1, self.dv, sympy.symbols(f"v{t}_0:{self.dv}")) for t in range(T)]
        self.q = self.k if v.queries == "key" else [Matrix(1, D, sympy.symbols(f"q{t}_0:{D}")) for t in range(T)]
        if v.lr.kind == "per_token":
            self.eta = list(sympy.symbols(f"eta0:{T}"))
        else:
            self.eta = [sympy.nsimplify(v.lr.value, rational=True)] * T
        self.alpha = list(sympy.symbols(f"alpha0:{T}")) if v.momentum else None
        # TTT-Linear's per-position factor a_p: token p of a chunk reads W_0 + a_p Σ_(j≤p) ΔW_j
        self.a = list(sympy.symbols(f"a0:{L}")) if v.lr.position else None
        # decay γ_t (per token; declarations allow it with per-token steps only)
        self.gamma = list(sympy.symbols(f"gamma0:{T}")) if v.decay else None
        self.decay_first = v.decay is not None and v.decay.order == "decay_then_gradient"
        self.sign = 1 if v.ascent else -1
        self.S0 = Matrix(D, self.dv, sympy.symbols(f"s0:{D * self.dv}"))
        self.loss, self.y, self.vsym = rationalize(tr.loss), tr.y, tr.v
        # steps: token-level orders step once per token, the others once per chunk
        self.token_steps = self.order == "update_then_apply"
        self.steps = [[t] for t in range(T)] if self.token_steps else self.chunks

    def phi(self, version, x):
        tag = f"phi{version}" if self.dynamic else "phi"
        return Matrix(1, D, [sympy.Function(f"{tag}_{j}")(*x) for j in range(D)])

    def abar(self, step):
        toks = self.steps[step]
        return sum(self.alpha[t] for t in toks) / len(toks)

    def explicit_loss(self, f, v):
        return _explicit(self.loss.xreplace({self.y: ImmutableMatrix(f), self.vsym: ImmutableMatrix(v)}))[0, 0]

    def clip(self, inc):
        return _abstract("Clip", inc) if self.variant.clip is not None else inc

    def transform(self, inc):
        if self.variant.orthogonalize is not None:
            inc = _abstract("NS", inc)
        return inc

    def renorm(self, W):
        return _abstract("Norm", W) if self.variant.weight_norm is not None else W


def _literal(s: _Setup):
    """The oracle's loop, symbolically; gradients by SymPy element-wise differentiation."""
    Wsym = Matrix(D, s.dv, sympy.symbols(f"w0:{D * s.dv}"))

    def increment(version, t, W):
        ell = s.explicit_loss(s.phi(version, s.k[t]) * Wsym, s.v[t])
        G = Matrix(D, s.dv, lambda r, c: sympy.diff(ell, Wsym[r, c]))
        return s.sign * s.eta[t] * G.xreplace(dict(zip(Wsym, W)))

    W, version, buf, out = s.S0, 0, sympy.zeros(D, s.dv), {}
    step_index = 0

    def step(W, inc, a, g=None):
        nonlocal buf
        inc = s.clip(inc)
        if s.variant.momentum is not None:
            buf = inc + a * buf
            inc = buf
        return s.renorm((W if g is None else g * W) + s.transform(inc))

    for n, C in enumerate(s.chunks):
        if s.order == "apply_then_update":
            for t in C:
                out[t] = s.phi(version, s.q[t]) * W
            if n == len(s.chunks) - 1:
                break
        if s.token_steps:
            if s.decay_first:  # token level: C is one token; S ← γ_t S before its gradient
                W = s.gamma[C[0]] * W
            v0, W0 = version, W
            incs = [increment(v0, t, W0) for t in C]
            total = sympy.zeros(D, s.dv)
            for p, (t, inc) in enumerate(zip(C, incs)):
                if s.a is not None:  # no steps: W_0 + a_p Σ_(j≤p) ΔW_j (no momentum, 𝓜, norm or decay)
                    total += inc
                    W = W0 + s.a[p] * total
                    version += 1
                    out[t] = s.phi(version, s.q[t]) * W
                    continue
                g = s.gamma[t] if s.gamma and not s.decay_first else None
                W = step(W, inc, s.alpha[t] if s.alpha else None, g)
                version += 1
                step_index += 1
                out[t] = s.phi(version, s.q[t]) * W
            continue
        inc = sum((increment(version, t, W) for t in C), sympy.zeros(D, s.dv))
        W = step(W, inc, s.abar(step_index) if s.alpha else None)
        version += 1
        step_index += 1
        if s.order != "apply_then_update":
            for t in C:
                out[t] = s.phi(version, s.q[t]) * W
    return out


def _value(s: _Setup, t, key_row, state):
    """v̂_t from the derived ∂L/∂f (our reverse-mode rules) at f = k̂ S."""
    f = s.form
    g = f.dloss.xreplace({f.y: ImmutableMatrix(key_row * state), f.v: ImmutableMatrix(s.v[t])})
    return s.sign * s.eta[t] * _explicit(g)


def _coeff(s: _Setup, m, j):
    """B_m^j (β_m^j per token): Π_{l=m+1}^{j} ᾱ_l; without momentum 1[j = m]."""
    if s.alpha is None:
        return sympy.Integer(1 if j == m else 0)
    return sympy.Mul(*[s.abar(l) for l in range(m + 1, j + 1)])


def _read_step(s: _Setup, t):
    """r(t): the last step whose update token t reads (−1: the initial state)."""
    if s.token_steps:
        return t
    c = next(n for n, C in enumerate(s.chunks) if t in C)
    return {"apply_then_update": c - 1, "block_inclusive": c, "bidirectional": 0}[s.order]


def _start(s: _Setup, t):
    """Steps completed when token t's gradient is taken (its chunk start)."""
    c = next(n for n, C in enumerate(s.chunks) if t in C)
    return sum(len(C) for C in s.chunks[:c]) if s.token_steps else c


def _derived(s: _Setup, attention_form: bool):
    step_of = {t: j for j, toks in enumerate(s.steps) for t in toks}
    n_steps = len(s.steps) if s.order != "apply_then_update" else len(s.chunks) - 1
    if attention_form:
        keys = {i: s.phi(0, s.k[i]) for i in range(T)}
        vals = {i: _value(s, i, keys[i], s.S0) for i in range(T)}  # values ignore the state here
        out = {}
        for t in range(T):
            r, qh = _read_step(s, t), s.phi(0, s.q[t])
            o = qh * s.S0
            for i in range(T):
                m = step_of[i]
                if m >= n_steps:
                    continue
                c = sum((_coeff(s, m, j) for j in range(m, r + 1)), sympy.Integer(0))
                if c != 0:
                    o += c * (qh * keys[i].T)[0, 0] * vals[i]
            out[t] = o
        return out
    states = [s.S0]  # states[j] = state after j steps
    deltas = []
    for j in range(n_steps):
        delta = sympy.zeros(D, s.dv)
        for i in s.steps[j]:
            start = _start(s, i)
            key = s.phi(start, s.k[i])
            at = s.gamma[i] * states[start] if s.decay_first else states[start]  # token level: start = i
            delta += key.T * _value(s, i, key, at)
        deltas.append(s.clip(delta))
        if s.a is not None:  # the chunk's start c0 and the token's position j − c0 in it
            c0 = _start(s, s.steps[j][0])
            states.append(states[c0] + s.a[j - c0] * sum(deltas[c0:j + 1], sympy.zeros(D, s.dv)))
            continue
        M = sum((_coeff(s, m, j) * deltas[m] for m in range(j + 1)), sympy.zeros(D, s.dv))
        prev = s.gamma[j] * states[-1] if s.gamma else states[-1]  # decay: per-token steps, step j = token j
        states.append(s.renorm(prev + s.transform(M)))
    return {t: s.phi(_read_step(s, t) + 1, s.q[t]) * states[_read_step(s, t) + 1] for t in range(T)}


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


def _certify_layers(form) -> Certificate:
    """Headed and gated forms, f = head(z_1, …; x) with z_j = φ_j(x)·W_j (+ b_j).

    The literal loop differentiates the explicit loss L(head(φ(k)W + b), v) with SymPy; the
    derived side adds k̂ᵀ v̂ to W_j and v̂ to b_j with v̂ = ∓η ∂ℓ/∂z_j from our rules. The head
    (LayerNorm, the GLU gate) is explicit at D = 2; φ_j stays abstract, as does the clip. A
    LayerNorm head is checked step by step at a symbolic state, in the coordinates ζ_j = z_j (an
    invertible substitution of b_j, see ``layer_coordinates``), where both sides expand small.
    """
    from derivations.variant import dim_symbol

    start = time.perf_counter()
    s = _Setup(form)
    v = s.variant
    tr = v.trace()
    ir = v.lowered()  # a depthwise variant is checked one channel at a time, as it was derived
    dims = {dim_symbol(n): D for n in (*ir.dims, ir.value_dim) if n.isidentifier()}
    layers = form.layers
    abstract = ["φ_j of every layer (undefined functions of the row" + (", a fresh set per step" if s.dynamic else "")
                + ")"]
    if v.clip is not None:
        abstract.append("the column clip (an undefined matrix function of the expanded increment)")
    checked = (f"the {form.classification.structure} form: W_j ← W_j + Σ k̂ᵀ v̂_j, b_j ← b_j + Σ v̂_j "
               "with v̂_j = ∓η ∂ℓ/∂z_j "
               f"from our rules, read through the head {to_text(form.head)}, equals the literal inner loop (SymPy "
               f"element-wise gradients of the explicit loss) for all {T} tokens, {s.order} order, chunk size {s.L}")
    blocked = [c for c, on in (("momentum", v.momentum), ("Newton–Schulz", v.orthogonalize),
                               ("weight norm", v.weight_norm), ("decay", v.decay)) if on]

    def done(failure):
        nonlocal checked
        return Certificate(certified=failure is None, checked=checked, abstract=tuple(abstract),
                           sizes={"T": T, "d": D, "h": D, "chunk": s.L}, seconds=time.perf_counter() - start,
                           failure=failure)

    if blocked:
        return done(f"not covered: {', '.join(blocked)} with a headed or gated form")

    def explicit(name):
        r, c = (int(sympy.sympify(n).subs(dims)) for n in tr.weights[name].shape)
        return ImmutableMatrix(r, c, sympy.symbols(f"{name}_0:{r * c}"))

    slow = {tr.weights[n].subs(dims): explicit(n) for n in v.static}
    head = form.head.subs(dims)
    names = [lay.state for lay in layers] + [lay.bias for lay in layers if lay.bias]

    def phi(j, version, x):
        h = int(sympy.sympify(layers[j].feature.shape[1]).subs(dims))
        tag = f"phi{j}_{version}" if s.dynamic else f"phi{j}"
        return Matrix(1, h, [sympy.Function(f"{tag}_{c}")(*x) for c in range(h)])

    def zs_at(state, version, x):
        out = {}
        for j, lay in enumerate(layers):
            z = phi(j, version, x) * state[lay.state]
            out[lay.z.subs(dims)] = ImmutableMatrix(z + state[lay.bias] if lay.bias else z)
        return out

    # the head and ∂ℓ/∂z made explicit once, in placeholder entries of z, x and v (cheap), then
    # filled in by entry substitution (no matrix algebra on the large entries)
    zp = {lay.z.subs(dims): Matrix(1, int(sympy.sympify(lay.z.shape[1]).subs(dims)),
                                   sympy.symbols(f"zp{j}_0:{int(sympy.sympify(lay.z.shape[1]).subs(dims))}"))
          for j, lay in enumerate(layers)}
    xp = Matrix(1, D, sympy.symbols(f"xp_0:{D}"))
    dv = int(sympy.sympify(tr.v.shape[1]).subs(dims))
    vp = Matrix(1, dv, sympy.symbols(f"vp_0:{dv}"))
    fixed = {**{z: ImmutableMatrix(m) for z, m in zp.items()}, tr.x.subs(dims): ImmutableMatrix(xp),
             tr.v.subs(dims): ImmutableMatrix(vp), **slow}
    head_e = _explicit(head.xreplace(fixed))
    dloss_e = {lay.state: _explicit(lay.dloss_z.subs(dims).xreplace(fixed)) for lay in layers}

    def fill(M, zs, x, vrow=None):
        subs = {p: val for z, m in zp.items() for p, val in zip(m, zs[z])}
        subs.update(zip(xp, x))
        if vrow is not None:
            subs.update(zip(vp, vrow))
        return M.xreplace(subs)

    def model(state, version, x):
        return fill(head_e, zs_at(state, version, x), x)

    placeholders = {n: Matrix(explicit(n).shape[0], explicit(n).shape[1], sympy.symbols(f"p_{n}_0:{len(explicit(n))}"))
                    for n in names}

    def literal_increments(version, t, state):
        f = model(placeholders, version, s.k[t])
        ell = s.explicit_loss(f, s.v[t])
        back = {p: val for n in names for p, val in zip(placeholders[n], state[n])}
        return {n: s.sign * s.eta[t] * placeholders[n].applyfunc(lambda p, ell=ell: sympy.diff(ell, p)).xreplace(back)
                for n in v.update if n in names}

    def derived_increments(version, t, state):
        zs = zs_at(state, version, s.k[t])
        out = {}
        for j, lay in enumerate(layers):
            g = fill(dloss_e[lay.state], zs, s.k[t], s.v[t])
            value = s.sign * s.eta[t] * g
            out[lay.state] = phi(j, version, s.k[t]).T * value
            if lay.bias:
                out[lay.bias] = value
        return out

    def clip(inc, name):
        return _abstract(f"Clip{name}", inc) if v.clip is not None else inc

    def run(increments):
        state = {n: Matrix(explicit(n)) for n in names}
        version, out = 0, {}
        for n, C in enumerate(s.chunks):
            if s.order == "apply_then_update":
                for t in C:
                    out[t] = model(state, version, s.q[t])
                if n == len(s.chunks) - 1:
                    break
            if s.token_steps:
                incs = [increments(version, t, state) for t in C]
                start, total = state, {}
                for p, (t, inc) in enumerate(zip(C, incs)):
                    if s.a is not None:  # no steps: W_0 + a_p Σ_(j≤p) ΔW_j
                        total = {m: total[m] + inc[m] if m in total else inc[m] for m in inc}
                        state = {m: start[m] + s.a[p] * total[m] if m in total else start[m] for m in names}
                    else:
                        state = {m: state[m] + clip(inc[m], m) if m in inc else state[m] for m in names}
                    version += 1
                    out[t] = model(state, version, s.q[t])
                continue
            total = {}
            for t in C:
                for m, val in increments(version, t, state).items():
                    total[m] = total[m] + val if m in total else val
            state = {m: state[m] + clip(total[m], m) if m in total else state[m] for m in names}
            version += 1
            if s.order != "apply_then_update":
                for t in C:
                    out[t] = model(state, version, s.q[t])
        return out

    def layer_coordinates(t, state):
        """An invertible change of variables of the state for token t's step: entry c of
        z_j = φ_j(k_t)·W_j (+ b_j) becomes the symbol ζ_j_c, solved for b_j[c] (or, without a bias,
        for W_j[0, c], whose coefficient φ_j,0(k_t) is generically non-zero). A solved entry occurs,
        linearly, in exactly one entry of the z's, so the substitution is invertible (back: ζ = z):
        an identity holds in the new coordinates iff it holds in the old ones."""
        zs, sub = zs_at(state, 0, s.k[t]), {}
        entries = [zc for z in zs.values() for zc in z]
        for j, lay in enumerate(layers):
            z = zs[lay.z.subs(dims)]
            for c, (zc, zeta) in enumerate(zip(z, sympy.symbols(f"zeta{j}_0:{len(z)}"))):
                pivot = state[lay.bias][0, c] if lay.bias else state[lay.state][0, c]
                coef = sympy.diff(zc, pivot)
                if coef != 0 and not coef.has(pivot) and sum(e.has(pivot) for e in entries) == 1:
                    sub[pivot] = (zeta - (zc - coef * pivot)) / coef
        return sub

    failure = None
    try:
        if any(function_name(a.function) == "rsqrt" for a in head.atoms(ElementwiseApplyFunction)):
            # a normalising head (LayerNorm): unrolled states nest 1/sqrt(var) and SymPy's expansion
            # blows up, so every token's step is checked at a symbolic state (the loop around the
            # steps is the same code on both sides)
            checked = checked.replace("equals the literal inner loop", "gives the literal step of every token, "
                                      "at a symbolic state (compared in the coordinates ζ_j = z_j of the state),")
            state = {n: Matrix(explicit(n)) for n in names}
            for t in range(T):
                lit, der = literal_increments(0, t, state), derived_increments(0, t, state)
                # both sides read the state only through z_j (plus whatever else the model reads):
                # compared in the coordinates ζ_j = z_j, the expansion stays small
                sub = layer_coordinates(t, state)
                for n in lit:
                    bad = _residual((der[n] - lit[n]).xreplace(sub))
                    if bad is not None:
                        failure = f"token {t}: Δ{n} derived − literal = {bad} ≠ 0 (ζ_j = z_j at this step)"
                        break
                if failure:
                    break
        else:
            if s.a:
                checked += ", per-position factors a_p symbolic"
            lit, der = run(literal_increments), run(derived_increments)
            for t in range(T):
                bad = _residual(der[t] - lit[t])
                if bad is not None:
                    failure = f"token {t}: derived − literal = {bad} ≠ 0"
                    break
    except Exception as e:  # a certificate that cannot be computed is reported, not raised
        failure = f"could not be computed: {type(e).__name__}: {e}"
    return done(failure)


def certify(form) -> Certificate:
    """Certify ``form`` against the literal inner loop, exactly (see the module docstring)."""
    if not form.is_linear:
        return _certify_layers(form)
    start = time.perf_counter()
    s = _Setup(form)
    v = s.variant
    cls = form.classification
    attention_form = (cls.parallel and v.orthogonalize is None and v.decay is None and v.clip is None
                      and not v.lr.position)
    abstract = ["φ (undefined functions φ_j(x₀, x₁)" + (", a fresh set per step: φ_t" if s.dynamic else "") + ")"]
    if v.orthogonalize is not None:
        abstract.append("Newton–Schulz 𝓜 (an undefined matrix function of the expanded increment, per "
                        + ("step" if s.token_steps else "chunk") + ")")
    if v.weight_norm is not None:
        abstract.append("weight norm (an undefined matrix function of the updated state)")
    if v.clip is not None:
        abstract.append("the column clip (an undefined matrix function of each step's expanded increment)")
    if s.dynamic:
        abstract.append("the Θ update (Theorem 5.1: it only replaces φ_t by φ_{t+1})")
    form_name = ("attention form o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i with the mask/momentum coefficients"
                 if attention_form else "chunk-state form S_t = S_(c(t)) + a_p Σ_(j≤t in its chunk) Δ_j"
                 if s.a else "chunk-state form S_r = Norm?(" + ("γ_r " if v.decay else "")
                 + "S_{r−1} + 𝓜?(Σ_m B_m^r " + ("Clip(Δ_m)" if v.clip else "Δ_m") + "))"
                 + (f" with the decay ({v.decay.order})" if v.decay else ""))
    checked = (f"{form_name} (v̂ from the derived ∂L/∂f = {to_text(form.dloss)}) equals the literal inner loop "
               f"(SymPy element-wise gradients) for all {T} tokens, {s.order} order, chunk size {s.L}"
               + (", a_p symbolic" if s.a else ""))
    failure = None
    try:
        lit, der = _literal(s), _derived(s, attention_form)
        for t in range(T):
            diff = der[t] - lit[t]
            bad = _residual(diff)
            if bad is not None:
                failure = f"token {t}: derived − literal = {bad} ≠ 0"
                break
    except Exception as e:  # a certificate that cannot be computed is reported, not raised
        failure = f"could not be computed: {type(e).__name__}: {e}"
    return Certificate(
        certified=failure is None, checked=checked, abstract=tuple(abstract),
        sizes={"T": T, "d": D, "h": D, "chunk": s.L}, seconds=time.perf_counter() - start, failure=failure,
    )
