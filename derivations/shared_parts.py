"""Long expressions with the sub-expressions they repeat named once: ``c_1 = …``, ``c_2 = …``, so a
LayerNorm's backward reads as a few short definitions instead of one expanded expression."""

from __future__ import annotations

import functools

import sympy

from derivations.printing import to_text

__all__ = ["shared_parts", "shared_parts_of", "canonical", "parts_used", "named_if_long", "with_parts"]

def _nodes(expr):
    """Every matrix sub-expression of ``expr``, with repeats (a pre-order walk of the tree)."""
    yield expr
    for a in expr.args:
        if isinstance(a, sympy.MatrixExpr):
            yield from _nodes(a)
        elif isinstance(a, sympy.Basic):  # a scalar factor E[i, j] of a product reaches E
            for el in a.atoms(sympy.matrices.expressions.matexpr.MatrixElement):
                yield from _nodes(el.parent)


@functools.lru_cache(maxsize=4096)
def _size(expr) -> int:
    return sum(1 for _ in _nodes(expr))


def shared_parts(expr, prefix: str = "c") -> tuple[sympy.Basic, list[tuple[sympy.MatrixSymbol, sympy.Basic]]]:
    """``expr`` with each sub-expression it repeats named once: ``(main, [(name, definition), …])``
    (:func:`shared_parts_of` for one expression)."""
    (main,), defs = shared_parts_of([expr], prefix)
    return main, defs


def shared_parts_of(exprs, prefix: str = "c") -> tuple[list, list[tuple[sympy.MatrixSymbol, sympy.Basic]]]:
    """``exprs`` with each sub-expression they repeat (within one or across them) named once:
    ``([main, …], [(name, definition), …])``.

    Bottom-up: the smallest repeated sub-expression (at least one operation on two operands)
    gets the next name ``c_1, c_2, …`` everywhere, until nothing non-trivial repeats; a name
    then used only once is put back. The definitions are in order (each uses earlier names
    only), so each main reads as "… where c_1 = …, c_2 = …". Nothing is simplified; the terms
    of sums and products that commute are put in one order first (:func:`canonical`).
    """
    mains, defs = [canonical(e) for e in exprs], []

    def everything():
        return (*mains, *(d for _, d in defs))

    while True:
        counts: dict = {}
        for e in everything():
            for node in _nodes(e):
                counts[node] = counts.get(node, 0) + 1
        repeated = [n for n, c in counts.items()
                    if c >= 2 and not isinstance(n, (sympy.MatrixSymbol, sympy.OneMatrix, sympy.ZeroMatrix,
                                                     sympy.Identity)) and _size(n) >= 3]
        if not repeated:
            break
        smallest = min(map(_size, repeated))
        part = min((n for n in repeated if _size(n) == smallest), key=str)
        name = sympy.MatrixSymbol(f"{prefix}_{len(defs) + 1}", *part.shape)
        mains = [m.xreplace({part: name}) for m in mains]
        defs = [(s, d.xreplace({part: name})) for s, d in defs] + [(name, part)]

    for name in [n for n, _ in defs]:
        if sum(1 for e in everything() for n in _nodes(e) if n == name) == 1:
            body = dict(defs)[name]  # named on the way up, but only its parent repeats: put it back
            mains = [m.xreplace({name: body}) for m in mains]
            defs = [(t, e.xreplace({name: body})) for t, e in defs if t != name]
    # number the parts that stayed 1, 2, … in order
    renamed = {old: sympy.MatrixSymbol(f"{prefix}_{i}", *old.shape) for i, (old, _) in enumerate(defs, 1)}
    return [m.xreplace(renamed) for m in mains], [(renamed[t], e.xreplace(renamed)) for t, e in defs]


def canonical(expr):
    """``expr`` with the terms of every matrix sum and the factors of every Hadamard product in
    SymPy's sort order, nested sums and products flattened and the scalar factors of a product as
    one coefficient, so ``a + b`` and ``b + a`` are one sub-expression (nothing else changes)."""
    if not isinstance(expr, sympy.MatrixExpr) or not expr.args:
        return expr
    args = [canonical(a) for a in expr.args]
    if isinstance(expr, (sympy.MatAdd, sympy.HadamardProduct, sympy.MatMul)):  # associative: one level
        args = [b for a in args for b in (a.args if type(a) is type(expr) else (a,))]
    if isinstance(expr, (sympy.MatAdd, sympy.HadamardProduct)):
        args.sort(key=sympy.default_sort_key)
    elif isinstance(expr, sympy.MatMul):  # the scalar factors as one coefficient
        scalar = sympy.Mul(*(a for a in args if not isinstance(a, sympy.MatrixExpr)))
        args = [*([scalar] if scalar != 1 else []), *(a for a in args if isinstance(a, sympy.MatrixExpr))]
    return expr if tuple(args) == expr.args else expr.func(*args)


def parts_used(exprs, defs) -> list[tuple[sympy.MatrixSymbol, sympy.Basic]]:
    """The definitions among ``defs`` that ``exprs`` use, directly or through other definitions, in order."""
    body = dict(defs)
    used, todo = set(), [s for e in exprs for s in e.atoms(sympy.MatrixSymbol) if s in body]
    while todo:
        s = todo.pop()
        if s not in used:
            used.add(s)
            todo += [t for t in body[s].atoms(sympy.MatrixSymbol) if t in body]
    return [(s, d) for s, d in defs if s in used]


def named_if_long(exprs, prefix: str = "c", long: int = 160) -> tuple[list, list]:
    """``shared_parts_of(exprs, prefix)`` when one of ``exprs`` prints longer than ``long``
    characters of text (all matrix expressions), else ``(exprs, [])``."""
    exprs = list(exprs)
    if all(len(to_text(e)) <= long for e in exprs) or not all(isinstance(e, sympy.MatrixExpr) for e in exprs):
        return exprs, []
    return shared_parts_of(exprs, prefix)


def with_parts(expr, printer, long: int = 160) -> tuple[str, list[str]]:
    """``expr`` printed with ``printer``; when that is longer than ``long`` characters, the shortened
    expression and one ``name = definition`` line per shared part (see :func:`shared_parts`)."""
    (main,), defs = named_if_long([expr], long=long)
    return printer(main), [f"{printer(name)} = {printer(body)}" for name, body in defs]
