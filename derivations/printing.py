"""Readable text (Unicode) and LaTeX for IR expressions.

``to_text(expr)`` prints ``(silu(k·W0) ⊙ (k·W2))·W1``; ``to_latex(expr)`` prints the same
with ``\\odot``, ``^{\\top}`` and named element-wise functions (derivatives as ``silu'``).
"""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from derivations.elementwise import scalar_function
from derivations.function_names import function_name

__all__ = ["to_text", "to_latex", "function_name"]

_SUP = str.maketrans("0123456789+-()t", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ᵗ")


def _needs_parens(arg, inside):
    if isinstance(arg, sympy.MatAdd):
        return True
    if inside == "hadamard" and isinstance(arg, (sympy.MatMul, sympy.HadamardProduct)):
        return True
    if inside == "matmul" and isinstance(arg, sympy.HadamardProduct):
        return True
    if inside == "transpose" and not isinstance(arg, (sympy.MatrixSymbol, ElementwiseApplyFunction)):
        return True
    return False


class _ProductPrinting:
    """Matrix products with a scalar coefficient, shared by the text and LaTeX printers: a
    printer sets ``TIMES`` (between factors), ``MINUS`` and ``PARENS`` (a format with ``{}``)."""

    TIMES = MINUS = PARENS = ""

    def _wrap(self, arg, inside):
        s = self._print(arg)
        return self.PARENS.format(s) if _needs_parens(arg, inside) else s

    def _print_MatMul(self, expr):
        scalars = [a for a in expr.args if not isinstance(a, sympy.MatrixExpr)]
        mats = [a for a in expr.args if isinstance(a, sympy.MatrixExpr)]
        c = sympy.Mul(*scalars)
        body = self.TIMES.join(self._wrap(m, "matmul") for m in mats)
        if c == 1:
            return body
        if c == -1:
            return self.MINUS + body
        cs = self._print(c)
        return f"{self.PARENS.format(cs) if isinstance(c, sympy.Add) else cs}{self.TIMES}{body}"


class TextPrinter(_ProductPrinting, StrPrinter):
    """Unicode one-line printer for the IR."""

    TIMES, MINUS, PARENS = "·", "−", "({})"

    def _print_MatAdd(self, expr):
        terms = [self._print(a) for a in expr.args]
        out = terms[0]
        for t in terms[1:]:
            out += f" − {t[1:]}" if t.startswith("−") else f" + {t}"
        return out

    def _print_HadamardProduct(self, expr):
        return " ⊙ ".join(self._wrap(a, "hadamard") for a in expr.args)

    def _print_Transpose(self, expr):
        return self._wrap(expr.arg, "transpose") + "ᵀ"

    def _print_ElementwiseApplyFunction(self, expr):
        name = function_name(expr.function) or str(scalar_function(expr.function)[1].func)
        return f"{name}({self._print(expr.expr)})"

    def _print_OneMatrix(self, expr):
        return "𝟙"

    def _print_MatrixSymbol(self, expr):
        return expr.name

    def _print_Symbol(self, expr):
        name = expr.name
        for ascii_, greek in (("eta", "η"), ("alpha", "α"), ("phi", "φ")):
            if name.startswith(ascii_):
                name = greek + name[len(ascii_):]
        return name


class IRLatexPrinter(_ProductPrinting, LatexPrinter):
    """LaTeX for the IR with ⊙, ⊤ and named element-wise functions."""

    TIMES, MINUS, PARENS = " ", "-", r"\left({}\right)"

    def _print_HadamardProduct(self, expr):
        return r" \odot ".join(self._wrap(a, "hadamard") for a in expr.args)

    def _print_Transpose(self, expr):
        return self._wrap(expr.arg, "transpose") + r"^{\top}"

    def _print_ElementwiseApplyFunction(self, expr):
        name = function_name(expr.function) or str(scalar_function(expr.function)[1].func)
        prime = name.endswith("'")
        base = name.rstrip("'")
        op = {"sigmoid": r"\sigma"}.get(base, rf"\operatorname{{{base}}}")
        return rf"{op}{chr(39) if prime else ''}\left({self._print(expr.expr)}\right)"

    def _print_OneMatrix(self, expr):
        return r"\mathbb{1}"

    def _print_MatrixSymbol(self, expr):
        name = expr.name
        if "_" in name or "^" in name or "{" in name:
            return name
        head = name.rstrip("0123456789")
        digits = name[len(head):]
        head = {"eta": r"\eta", "phi": r"\phi", "alpha": r"\alpha"}.get(head, head)
        return f"{head}_{{{digits}}}" if digits and head else head


def to_text(expr) -> str:
    """One-line Unicode text of an IR (or scalar) expression."""
    return TextPrinter().doprint(expr)


def to_latex(expr) -> str:
    """LaTeX of an IR (or scalar) expression."""
    return IRLatexPrinter().doprint(expr)


# --- long expressions with their shared parts named ----------------------------------------------


def _nodes(expr):
    """Every matrix sub-expression of ``expr``, with repeats (a pre-order walk of the tree)."""
    yield expr
    for a in expr.args:
        if isinstance(a, sympy.MatrixExpr):
            yield from _nodes(a)
        elif isinstance(a, sympy.Basic):  # a scalar factor E[i, j] of a product reaches E
            for el in a.atoms(sympy.matrices.expressions.matexpr.MatrixElement):
                yield from _nodes(el.parent)


def _size(expr) -> int:
    return sum(1 for _ in _nodes(expr))


def shared_parts(expr, prefix: str = "c") -> tuple[sympy.Basic, list[tuple[sympy.MatrixSymbol, sympy.Basic]]]:
    """``expr`` with each sub-expression it repeats named once: ``(main, [(name, definition), …])``.

    Bottom-up: the smallest repeated sub-expression (at least one operation on two operands)
    gets the next name ``c_1, c_2, …`` everywhere, until nothing non-trivial repeats; a name
    then used only once is put back. The definitions are in order (each uses earlier names
    only), so ``main`` reads as "… where c_1 = …, c_2 = …". Nothing is simplified.
    """
    main, defs = expr, []
    while True:
        counts: dict = {}
        for e in (main, *(d for _, d in defs)):
            for node in _nodes(e):
                counts[node] = counts.get(node, 0) + 1
        repeated = [n for n, c in counts.items()
                    if c >= 2 and not isinstance(n, (sympy.MatrixSymbol, sympy.OneMatrix, sympy.ZeroMatrix,
                                                     sympy.Identity)) and _size(n) >= 3]
        if not repeated:
            break
        part = min(repeated, key=lambda n: (_size(n), str(n)))
        name = sympy.MatrixSymbol(f"{prefix}_{len(defs) + 1}", *part.shape)
        main = main.xreplace({part: name})
        defs = [(s, d.xreplace({part: name})) for s, d in defs] + [(name, part)]
    def uses(name):
        return sum(1 for e in (main, *(d for _, d in defs)) for n in _nodes(e) if n == name)

    for name in [n for n, _ in defs]:
        if uses(name) == 1:  # named on the way up, but only its parent repeats: put it back
            body = dict(defs)[name]
            main = main.xreplace({name: body})
            defs = [(t, e.xreplace({name: body})) for t, e in defs if t != name]
    # number the parts that stayed 1, 2, … in order
    renamed = {old: sympy.MatrixSymbol(f"{prefix}_{i}", *old.shape) for i, (old, _) in enumerate(defs, 1)}
    return main.xreplace(renamed), [(renamed[t], e.xreplace(renamed)) for t, e in defs]


def with_parts(expr, printer, long: int = 160) -> tuple[str, list[str]]:
    """``expr`` printed with ``printer``; when that is longer than ``long`` characters, the shortened
    expression and one ``name = definition`` line per shared part (see :func:`shared_parts`)."""
    text = printer(expr)
    if len(text) <= long or not isinstance(expr, sympy.MatrixExpr):
        return text, []
    main, defs = shared_parts(expr)
    if not defs:
        return text, []
    return printer(main), [f"{printer(s)} = {printer(d)}" for s, d in defs]
