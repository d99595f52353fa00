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

from derivations.autodiff import rationalize
from derivations.form import Certificate
from derivations.printing import to_text

__all__ = ["certify"]

T, D = 3, 2


def _abstract(prefix, X):
    """An undefined matrix function applied to X: entry (r, c) is prefix_rc(expanded X)."""
    args = [sympy.expand(e) for e in X]
    return Matrix(X.rows, X.cols, lambda r, c: sympy.Function(f"{prefix}_{r}{c}")(*args))


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
        self.v = [Matrix(1, D, sympy.symbols(f"v{t}_0:{D}")) for t in range(T)]
        self.q = self.k if v.queries == "key" else [Matrix(1, D, sympy.symbols(f"q{t}_0:{D}")) for t in range(T)]
        if v.lr.kind == "per_token":
            self.eta = list(sympy.symbols(f"eta0:{T}"))
        else:
            self.eta = [sympy.nsimplify(v.lr.value, rational=True)] * T
        self.alpha = list(sympy.symbols(f"alpha0:{T}")) if v.momentum else None
        self.sign = 1 if v.ascent else -1
        self.S0 = Matrix(D, D, sympy.symbols(f"s0:{D * D}"))
        tr = v.trace()
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
        return self.loss.xreplace({self.y: ImmutableMatrix(f), self.vsym: ImmutableMatrix(v)}).as_explicit()[0, 0]

    def transform(self, inc):
        if self.variant.orthogonalize is not None:
            inc = _abstract("NS", inc)
        return inc

    def renorm(self, W):
        return _abstract("Norm", W) if self.variant.weight_norm is not None else W


def _literal(s: _Setup):
    """The oracle's loop, symbolically; gradients by SymPy element-wise differentiation."""
    Wsym = Matrix(D, D, sympy.symbols(f"w0:{D * D}"))

    def increment(version, t, W):
        ell = s.explicit_loss(s.phi(version, s.k[t]) * Wsym, s.v[t])
        G = Matrix(D, D, lambda r, c: sympy.diff(ell, Wsym[r, c]))
        return s.sign * s.eta[t] * G.xreplace(dict(zip(Wsym, W)))

    W, version, buf, out = s.S0, 0, sympy.zeros(D, D), {}
    step_index = 0

    def step(W, inc, a):
        nonlocal buf
        if s.variant.momentum is not None:
            buf = inc + a * buf
            inc = buf
        return s.renorm(W + s.transform(inc))

    for n, C in enumerate(s.chunks):
        if s.order == "apply_then_update":
            for t in C:
                out[t] = s.phi(version, s.q[t]) * W
            if n == len(s.chunks) - 1:
                break
        if s.token_steps:
            v0, W0 = version, W
            incs = [increment(v0, t, W0) for t in C]
            for t, inc in zip(C, incs):
                W = step(W, inc, s.alpha[t] if s.alpha else None)
                version += 1
                step_index += 1
                out[t] = s.phi(version, s.q[t]) * W
            continue
        inc = sum((increment(version, t, W) for t in C), sympy.zeros(D, D))
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
    return s.sign * s.eta[t] * Matrix(g.as_explicit())


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
        delta = sympy.zeros(D, D)
        for i in s.steps[j]:
            start = _start(s, i)
            key = s.phi(start, s.k[i])
            delta += key.T * _value(s, i, key, states[start])
        deltas.append(delta)
        M = sum((_coeff(s, m, j) * deltas[m] for m in range(j + 1)), sympy.zeros(D, D))
        states.append(s.renorm(states[-1] + s.transform(M)))
    return {t: s.phi(_read_step(s, t) + 1, s.q[t]) * states[_read_step(s, t) + 1] for t in range(T)}


def _zero(e) -> bool:
    e = sympy.expand(e)
    return e == 0 or sympy.simplify(e) == 0


def certify(form) -> Certificate:
    """Certify ``form`` against the literal inner loop, exactly (see the module docstring)."""
    start = time.perf_counter()
    s = _Setup(form)
    v = s.variant
    cls = form.classification
    attention_form = cls.parallel and v.orthogonalize is None
    abstract = ["φ (undefined functions φ_j(x₀, x₁)" + (", a fresh set per step: φ_t" if s.dynamic else "") + ")"]
    if v.orthogonalize is not None:
        abstract.append("Newton–Schulz 𝓜 (an undefined matrix function of the expanded increment, per "
                        + ("step" if s.token_steps else "chunk") + ")")
    if v.weight_norm is not None:
        abstract.append("weight norm (an undefined matrix function of the updated state)")
    if s.dynamic:
        abstract.append("the Θ update (Theorem 5.1: it only replaces φ_t by φ_{t+1})")
    form_name = ("attention form o_t = q̂_t S_0 + Σ_i C_ti (q̂_t k̂_iᵀ) v̂_i with the mask/momentum coefficients"
                 if attention_form else "chunk-state form S_r = Norm?(S_{r−1} + 𝓜?(Σ_m B_m^r Δ_m))")
    checked = (f"{form_name} (v̂ from the derived ∂L/∂f = {to_text(form.dloss)}) equals the literal inner loop "
               f"(SymPy element-wise gradients) for all {T} tokens, {s.order} order, chunk size {s.L}")
    failure = None
    try:
        lit, der = _literal(s), _derived(s, attention_form)
        for t in range(T):
            diff = der[t] - lit[t]
            bad = [e for e in diff if not _zero(e)]
            if bad:
                failure = f"token {t}: derived − literal = {sympy.simplify(bad[0])} ≠ 0"
                break
    except Exception as e:  # a certificate that cannot be computed is reported, not raised
        failure = f"could not be computed: {type(e).__name__}: {e}"
    return Certificate(
        certified=failure is None, checked=checked, abstract=tuple(abstract),
        sizes={"T": T, "d": D, "h": D, "chunk": s.L}, seconds=time.perf_counter() - start, failure=failure,
    )
