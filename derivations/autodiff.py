"""Reverse-mode differentiation of the matrix-expression IR (our own rules).

SymPy's ``MatrixExpr.diff`` mishandles element-wise nonlinearities, so gradients are
derived here by vector–Jacobian products over the IR nodes a traced variant produces:

=======================  =====================================================================
node                     cotangent ``G`` of the node (same shape) sent to its arguments
=======================  =====================================================================
``MatrixSymbol`` X       ``G`` if X is the variable, else nothing
``MatAdd`` A + B         ``G`` to every term
``MatMul`` c·A₁⋯Aₙ       ``c · (A₁⋯Aᵢ₋₁)ᵀ G (Aᵢ₊₁⋯Aₙ)ᵀ`` to Aᵢ; a scalar factor ``E[0, 0]`` of a
                         1 × 1 expression E gets ``1ᵀ(G ⊙ rest)1`` (a 1 × 1 cotangent)
``Transpose`` Aᵀ         ``Gᵀ`` to A
``HadamardProduct``      ``G ⊙ (∏ⱼ≠ᵢ Aⱼ)`` to Aᵢ
``ElementwiseApply`` f   ``G ⊙ f′(A)`` to A, f′ from SymPy's scalar derivative (``fdiff``)
constants                nothing (``OneMatrix``, ``ZeroMatrix``, ``Identity``, explicit matrices)
=======================  =====================================================================

The rules are applied over the expression DAG (:func:`vjp`): a sub-expression that occurs
several times is one node whose cotangents are summed first, then differentiated once.

SymPy is used only for scalar derivatives of the element-wise functions; every result is
again an IR expression (shapes stay symbolic).
"""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from derivations.elementwise import scalar_function
from derivations.errors import ReductionError
from derivations.function_names import DERIVATIVE_OF, function_name


def rationalize(expr):
    """Replace floats by exact rationals (``0.5 → 1/2``) so that scalar factors cancel."""
    floats = expr.atoms(sympy.Float)
    return expr.xreplace({f: sympy.nsimplify(f, rational=True) for f in floats}) if floats else expr


__all__ = [
    "rationalize", "vjp", "grad", "scalar_function", "derivative_function", "canonicalize", "CONSTANT_NODES",
]

CONSTANT_NODES = (sympy.OneMatrix, sympy.ZeroMatrix, sympy.Identity, sympy.MatrixBase)


def canonicalize(expr):
    """Light canonicalisation of an IR expression: flatten sums and products, collect
    scalar factors, drop identities and double transposes, pull scalars out of transposes.
    Unlike ``doit`` it keeps ``(A·B)ᵀ`` and ``φ(k)ᵀ`` readable. Each distinct sub-expression
    is canonicalised once (a memo per call), so shared sub-trees cost nothing extra."""
    memo: dict = {}

    def t(e):
        if e not in memo:
            memo[e] = _canonical_node(e, t)
        return memo[e]

    return t(expr)


def _canonical_node(expr, canonicalize):
    """One node of :func:`canonicalize`; ``canonicalize`` canonicalizes sub-expressions (memoised)."""
    if not isinstance(expr, sympy.MatrixExpr) or isinstance(expr, (sympy.MatrixSymbol, *CONSTANT_NODES)):
        return expr
    if isinstance(expr, sympy.Transpose):
        arg = canonicalize(expr.arg)
        if isinstance(arg, sympy.OneMatrix):
            return sympy.OneMatrix(arg.shape[1], arg.shape[0])
        if isinstance(arg, sympy.Transpose):
            return arg.arg
        if isinstance(arg, sympy.MatAdd):
            return canonicalize(sympy.MatAdd(*[sympy.Transpose(t) for t in arg.args]))
        if isinstance(arg, sympy.MatMul):
            c, mats = _split_scalars(arg)
            if c != 1:
                inner = canonicalize(sympy.Transpose(_matmul(*mats)))
                return canonicalize(sympy.MatMul(c, inner))
        if isinstance(arg, sympy.Identity) or (isinstance(arg, sympy.MatrixExpr) and arg.shape == (1, 1)
                                                and isinstance(arg, sympy.OneMatrix)):
            return arg
        return sympy.Transpose(arg)
    if isinstance(expr, sympy.MatMul):
        scalars, mats = [], []
        for a in expr.args:
            a = canonicalize(a)
            if isinstance(a, sympy.MatMul):
                c, ms = _split_scalars(a)
                scalars.append(c)
                mats.extend(ms)
            elif isinstance(a, sympy.MatrixExpr):
                mats.append(a)
            else:
                scalars.append(a)
        c = sympy.Mul(*scalars)
        mats = [m for m in mats if not isinstance(m, sympy.Identity)] or mats[:1]
        if not mats:
            return expr
        if c == 0:
            return sympy.ZeroMatrix(*expr.shape)
        if c == 1 and len(mats) == 1:
            return mats[0]
        return sympy.MatMul(*([c] if c != 1 else []), *mats)
    if isinstance(expr, sympy.MatAdd):
        terms = []
        for a in expr.args:
            a = canonicalize(a)
            terms.extend(a.args if isinstance(a, sympy.MatAdd) else [a])
        collected: dict = {}
        for t in terms:
            if isinstance(t, sympy.ZeroMatrix):
                continue
            c, ms = _split_scalars(t) if isinstance(t, sympy.MatMul) else (sympy.Integer(1), [t])
            key = _matmul(*ms)
            collected[key] = collected.get(key, 0) + c
        terms = [canonicalize(sympy.MatMul(c, m)) for m, c in collected.items() if c != 0]
        if not terms:
            return sympy.ZeroMatrix(*expr.shape)
        terms.sort(key=sympy.default_sort_key)
        return sympy.MatAdd(*terms) if len(terms) > 1 else terms[0]
    if isinstance(expr, sympy.HadamardProduct):
        factors, scale = [], sympy.Integer(1)
        for a in expr.args:
            a = canonicalize(a)
            if isinstance(a, sympy.MatMul):
                c, ms = _split_scalars(a)
                scale, a = scale * c, _matmul(*ms)
            factors.extend(a.args if isinstance(a, sympy.HadamardProduct) else [a])
        had = sympy.HadamardProduct(*factors)
        return had if scale == 1 else sympy.MatMul(scale, had)
    if isinstance(expr, ElementwiseApplyFunction):
        return type(expr)(expr.function, canonicalize(expr.expr))
    return expr


def _split_scalars(mm):
    scalars = [a for a in mm.args if not isinstance(a, sympy.MatrixExpr)]
    return sympy.Mul(*scalars), [a for a in mm.args if isinstance(a, sympy.MatrixExpr)]


_DERIVATIVES: dict = {}


def derivative_function(fn) -> sympy.Lambda:
    """The scalar derivative f′ of an element-wise function, as a ``Lambda`` (cached per
    function, so equal functions get the identical derivative node)."""
    d, body = scalar_function(fn)
    key = body.func if isinstance(body, sympy.Function) and body.args == (d,) else sympy.Lambda(d, body)
    if key in _DERIVATIVES:
        return _DERIVATIVES[key]
    lam = _derivative_lambda(d, body)
    _DERIVATIVES[key] = lam
    name = function_name(fn)
    if name:
        DERIVATIVE_OF[lam] = name
    return lam


def _derivative_lambda(d, body) -> sympy.Lambda:
    deriv = sympy.diff(body, d)
    if deriv.has(sympy.Derivative) or deriv.has(sympy.Subs):
        raise ReductionError(
            f"cannot differentiate the element-wise function {body.func}: SymPy has no derivative "
            "for it (give its symbolic side an fdiff, see derivations.functions.register)"
        )
    return sympy.Lambda(d, deriv)


def _matmul(*factors):
    kept = [f for f in factors if not isinstance(f, sympy.Identity)]
    factors = kept or list(factors[:1])
    return sympy.MatMul(*factors) if len(factors) > 1 else factors[0]


def _sum_entries(M):
    """1ᵀ M 1 as a 1 × 1 expression (M is r × c)."""
    r, c = M.shape
    if r == 1 and c == 1:
        return M
    return sympy.MatMul(sympy.OneMatrix(1, r), M, sympy.OneMatrix(c, 1))


def vjp(expr, wrt: sympy.MatrixSymbol, cotangent):
    """The vector–Jacobian product ``∂⟨G, expr⟩/∂wrt`` for a matrix expression ``expr``.

    Standard reverse mode over the expression *DAG*: equal sub-expressions are one node (SymPy
    compares structurally), nodes are visited parents before children, and the cotangents
    that reach a node along different paths are summed before its rule is applied, so a
    shared sub-expression (LayerNorm's centred row, its inverse standard deviation) is
    differentiated once, not once per path.

    Args:
        expr: an IR expression of shape ``m × n``.
        wrt: the matrix symbol to differentiate by, shape ``p × r``.
        cotangent: ``G``, an ``m × n`` matrix expression.

    Returns:
        A ``p × r`` matrix expression, or ``sympy.ZeroMatrix`` when ``expr`` does not
        depend on ``wrt``.
    """
    depends: dict = {}
    order: list = []  # the nodes that depend on wrt, children before parents
    _visit(expr, wrt, depends, order)
    if not depends[expr]:
        return sympy.ZeroMatrix(*wrt.shape)
    pending = {expr: [cotangent]}
    for node in reversed(order):  # parents before children: a node's cotangent is complete
        parts = pending.pop(node)
        G = parts[0] if len(parts) == 1 else sympy.MatAdd(*parts)
        if node == wrt:
            return canonicalize(G)
        for child, cot in _pullback(node, G, depends):
            pending.setdefault(child, []).append(cot)
    raise AssertionError("unreachable: wrt is the last node of the order")


def grad(scalar, wrt: sympy.MatrixSymbol):
    """∇_wrt of a ``1 × 1`` expression (e.g. an inner loss), shape of ``wrt``."""
    if scalar.shape != (1, 1):
        raise ValueError(f"grad() needs a 1 × 1 expression, got shape {scalar.shape}")
    return vjp(scalar, wrt, sympy.Identity(1))


def _children(expr):
    """The sub-expressions the rules send cotangents to (a scalar factor ``E[i, j]`` of a
    product sends one to E)."""
    if isinstance(expr, (sympy.MatAdd, sympy.HadamardProduct)):
        return expr.args
    if isinstance(expr, sympy.Transpose):
        return (expr.arg,)
    if isinstance(expr, ElementwiseApplyFunction):
        return (expr.expr,)
    if isinstance(expr, sympy.MatMul):
        mats = tuple(a for a in expr.args if isinstance(a, sympy.MatrixExpr))
        return mats + tuple(el.parent for a in expr.args if not isinstance(a, sympy.MatrixExpr)
                            for el in a.atoms(MatrixElement))
    return None


def _visit(expr, wrt, depends, order):
    """Depth-first: record in ``depends`` whether each node depends on ``wrt`` and append the
    dependent ones to ``order`` after their children (a post-order of the DAG)."""
    if expr in depends:
        return depends[expr]
    if expr == wrt:
        dep = True
    elif isinstance(expr, (sympy.MatrixSymbol, *CONSTANT_NODES)):
        dep = False
    else:
        children = _children(expr)
        if children is None:
            if expr.has(wrt):
                raise ReductionError(
                    f"no reverse-mode rule for {type(expr).__name__} in {expr}: the variant language builds "
                    "products, sums, transposes, element-wise products and element-wise functions only"
                )
            dep = False
        else:
            dep = False
            for child in children:
                dep = _visit(child, wrt, depends, order) or dep
    depends[expr] = dep
    if dep:
        order.append(expr)
    return dep


def _pullback(expr, G, depends):
    """``(child, cotangent)`` for every child of ``expr`` that depends on wrt (the table in
    the module docstring), given the node's total cotangent ``G``."""
    if isinstance(expr, sympy.MatAdd):
        return [(term, G) for term in expr.args if depends[term]]
    if isinstance(expr, sympy.Transpose):
        return [(expr.arg, sympy.Transpose(G))]
    if isinstance(expr, sympy.HadamardProduct):
        return [(a, sympy.HadamardProduct(G, *(b for j, b in enumerate(expr.args) if j != i)))
                for i, a in enumerate(expr.args) if depends[a]]
    if isinstance(expr, ElementwiseApplyFunction):
        fprime = derivative_function(expr.function)
        return [(expr.expr, sympy.HadamardProduct(G, type(expr)(fprime, expr.expr)))]
    return _pullback_matmul(expr, G, depends)


def _pullback_matmul(expr, G, depends):
    scalars = [a for a in expr.args if not isinstance(a, sympy.MatrixExpr)]
    mats = [a for a in expr.args if isinstance(a, sympy.MatrixExpr)]
    c = sympy.Mul(*scalars)
    out = []
    for i, A in enumerate(mats):
        if not depends[A]:
            continue
        left, right = mats[:i], mats[i + 1:]
        parts = [sympy.Transpose(_matmul(*left))] if left else []
        parts.append(G)
        if right:
            parts.append(sympy.Transpose(_matmul(*right)))
        cot = _matmul(*parts)
        out.append((A, sympy.MatMul(c, cot) if c != 1 else cot))
    # scalar factors that are entries of 1 × 1 expressions (e.g. dot(a, b) * M)
    rest = _matmul(*mats) if mats else None
    for s in scalars:
        for el in s.atoms(MatrixElement):
            E = el.parent
            if not depends[E]:
                continue
            ds = sympy.diff(s, el)
            others = sympy.Mul(*[t for t in scalars if t is not s]) * ds
            inner = sympy.HadamardProduct(G, rest) if rest is not None else G
            kappa = _sum_entries(inner)
            if E.shape == (1, 1):
                cot = kappa if others == 1 else sympy.MatMul(others, kappa)
            elif all(n.is_Integer for n in E.shape):
                unit = sympy.ImmutableMatrix(*E.shape, lambda i, j, el=el: int((i, j) == (el.i, el.j)))
                cot = sympy.MatMul(others * kappa.as_explicit()[0, 0], unit)
            else:
                raise ReductionError(f"unsupported scalar factor {s} in {expr}: an entry of a non-1×1 matrix")
            out.append((E, cot))
    return out
