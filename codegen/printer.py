"""Printing the matrix-expression IR as batched torch code.

After SymPy's printers (``sympy/printing/numpy.py``, ``pycode.py``), :class:`TorchEmitter`
dispatches on the type of a node to a ``_print_<Node>`` method (an unknown node raises
:class:`UnprintableError` naming it and the expression); scalar bodies of element-wise
functions go through :class:`~codegen.scalar_printer.TorchScalarPrinter`.

It prints a *matrix* expression as one named assignment per intermediate value, with a
shape comment, e.g. ``k_W0 = k @ W0  # [B, H, T, h]``; each sub-expression is computed once,
and a name says what the value is (``mean_z``, ``centered_z``, ``silu_prime_z``).

Batched semantics. Every value has a *kind*, which says how it is stored:

========  ======================  ===========================================================
kind      stored                  what it is
========  ======================  ===========================================================
ROW       ``[B, H, T, n]``        one 1 × n row per token (a 1 × n weight broadcasts over T)
COL       ``[B, H, T, n]``        one n × 1 column per token, stored as a row
DOT       ``[B, H, T, 1]``        one 1 × 1 per token; with a logical 1 × n (or n × 1) shape
                                  it is that number broadcast along the row (a ``broadcast``)
WEIGHT    ``[B, H, r, c]``        one matrix per batch and head
CONST     a Python number         a constant c·𝟙 of any shape (ε, 1/d, an all-ones matrix)
========  ======================  ===========================================================

A per-token value of shape r × c (r, c > 1) is never stored: the only such values the
engine builds are gradients of fast weights, and those are printed **summed over tokens**.
So the product of a column and a row, ``aᵀ b``, is ``a.mT @ b`` = Σ_i a_iᵀ b_i — exactly a
weight's gradient — and a product whose inner dimension is 1 is evaluated per token first.
A column times a 1 × 1 *row* (e.g. ∂L/∂f of a width-1 prediction) is such a gradient too, of
a one-column weight, and is summed; a column times a dot product (DOT) stays a column.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement
from sympy.printing.printer import Printer

from codegen.scalar_printer import TorchScalarPrinter
from derivations.autodiff import DERIVATIVE_OF

__all__ = ["TorchScalarPrinter", "TorchEmitter", "UnprintableError", "ROW", "COL", "WEIGHT", "DOT", "CONST"]

ROW, COL, WEIGHT, DOT, CONST = "row", "col", "weight", "dot", "const"
PER_TOKEN = (ROW, COL, DOT)
#: longest generated name built from its operands' names (longer ones get a short role name)
MAX_NAME = 25
#: names that say only which operation made a value (never used inside another name)
GENERIC_ROLES = ("total", "prod", "mm", "scaled", "outer")
#: longest operand name kept inside a name built on it (a longer one is replaced by its role)
MAX_PART = 16


class UnprintableError(TypeError):
    """A node of a matrix expression has no torch form (names the node and the expression)."""


class Value(NamedTuple):
    """A printed value: its code, its kind and its logical shape."""

    code: str
    kind: str
    shape: tuple


class TorchEmitter(Printer):
    """Emit matrix expressions as named torch assignments (see the module docstring).

    ``symbols`` maps each :class:`sympy.MatrixSymbol` to ``(code name, kind)``; ``dims``
    maps dimension symbols to the names used in shape comments.
    """

    def __init__(self, symbols: dict, dims: dict | None = None, indent: str = "    "):
        super().__init__()
        self.names = {s: n for s, (n, _) in symbols.items()}
        self.kinds = {s: k for s, (_, k) in symbols.items()}
        self.dims = {k: str(v) for k, v in (dims or {}).items()}
        self.lines: list[str] = []
        self.indent = indent
        self.scalar = TorchScalarPrinter()
        self._memo: dict = {}
        self._used: set[str] = set(self.names.values())
        self._dim_names: dict = {}
        self._means: dict = {}  # name of a row mean → name of the row
        self._roles: dict = {}  # generated name → what it is ("mean", "gelu", …), for names built on it

    # --- public ---------------------------------------------------------------------

    def assign(self, name: str, expr) -> str:
        """Emit ``name = <expr>`` (with its intermediates) and return ``name``."""
        fresh = canonical(expr) not in self._memo and not isinstance(expr, sympy.MatrixSymbol)
        code, kind = self._code(expr)
        if fresh and self.lines and self.lines[-1].startswith(f"{code} = "):
            # the value was just computed under a generated name: give it the target's, everywhere
            # the generated one was recorded (a product is memoised both nested and flattened)
            self.lines[-1] = f"{name} = " + self.lines[-1].split(" = ", 1)[1]
            self._used.discard(code)
            self._rename(code, name)
        else:
            self._line(name, code, kind, expr.shape)
        self._used.add(name)
        self._memo[canonical(expr)] = (name, kind)
        return name

    def _rename(self, old: str, new: str) -> None:
        """Every record of the value named ``old`` now names it ``new``."""
        for key, (bound, kind) in list(self._memo.items()):
            if bound == old:
                self._memo[key] = (new, kind)
        if old in self._roles:
            self._roles[new] = self._roles.pop(old)
        self._means = {(new if k == old else k): (new if v == old else v) for k, v in self._means.items()}

    def line(self, name: str, code: str, kind: str, shape) -> str:
        """Emit a hand-written ``name = code`` with the shape comment of a ``kind`` value."""
        self._line(name, code, kind, shape)
        self._used.add(name)
        return name

    def code(self) -> str:
        return "\n".join(self.indent + line for line in self.lines)

    def kind_of(self, expr) -> str:
        return self._code(expr)[1]

    def peek_kind(self, expr) -> str:
        """The kind ``expr`` would print as, emitting nothing."""
        saved = [list(self.lines), set(self._used), *(dict(m) for m in self._tables())]
        try:
            return self._code(expr)[1]
        finally:
            self.lines, self._used = saved[:2]
            for table, before in zip(self._tables(), saved[2:]):
                table.clear()
                table.update(before)

    def value(self, expr, name: str | None = None) -> str:
        """Code for ``expr``'s value as an operand: the name of a symbol or of an earlier
        assignment, else ``expr`` emitted under ``name`` (a generated name when None)."""
        if name is None or isinstance(expr, sympy.MatrixSymbol) or canonical(expr) in self._memo:
            return self._wrap(self._code(expr)[0])
        return self.assign(name, expr)

    def _tables(self):
        return self._memo, self._dim_names, self._means, self._roles

    # --- dispatch -------------------------------------------------------------------------

    def _code(self, expr) -> tuple[str, str]:
        """``(code, kind)`` of a whole expression; an unprintable node names the expression too."""
        try:
            return self._print(expr)
        except UnprintableError as err:
            if f" in {expr}" in str(err):
                raise
            raise UnprintableError(f"{err} (in {expr})") from None

    def _print(self, expr, **kwargs) -> tuple[str, str]:
        """Dispatch to ``_print_<Node>`` (SymPy's lookup along the type's MRO), once per sub-expression."""
        key = canonical(expr)
        if key in self._memo:
            return self._memo[key]
        return super()._print(expr, **kwargs)

    def _value(self, expr) -> Value:
        code, kind = self._print(expr)
        shape = tuple(expr.shape) if isinstance(expr, sympy.MatrixExpr) else (1, 1)  # an entry E[0, 0] is 1 × 1
        return Value(code, DOT if kind == COL and shape == (1, 1) else kind, shape)

    def emptyPrinter(self, expr):
        raise UnprintableError(f"cannot print {type(expr).__name__} as torch code (no _print_{type(expr).__name__}):"
                               f" {expr}")

    # --- leaves ------------------------------------------------------------------------------

    def _print_MatrixSymbol(self, expr):
        if expr not in self.names:
            raise UnprintableError(f"no code name for the matrix symbol {expr} (known: "
                                   f"{', '.join(sorted(map(str, self.names))) or 'none'})")
        return self.names[expr], self.kinds[expr]

    def _print_OneMatrix(self, expr):
        return "1.0", CONST

    def _print_ZeroMatrix(self, expr):
        return "0.0", CONST

    def _print_Identity(self, expr):
        n = expr.shape[0]
        if n == 1:
            return "1.0", CONST
        if not self.names:
            raise UnprintableError(f"{expr} needs a tensor to take its dtype and device from, and none is named")
        ref = next(iter(self.names.values()))
        return self._bind(expr, f"torch.eye({self._dim(n)}, dtype={ref}.dtype, device={ref}.device)", WEIGHT, "eye",
                          "eye")

    def _print_MatrixElement(self, expr):
        if expr.parent.shape != (1, 1):
            raise UnprintableError(f"cannot print the entry {expr} of a {expr.parent.shape} matrix "
                                   "(only the entry of a 1 × 1 is a per-token number)")
        return self._value(expr.parent)[:2]

    # --- element-wise nodes ----------------------------------------------------------------

    def _print_Transpose(self, expr):
        code, kind = self._print(expr.arg)
        flipped = {ROW: COL, COL: ROW}
        return code if kind in flipped or kind in (DOT, CONST) else f"{self._wrap(code)}.mT", flipped.get(kind, kind)

    def _print_MatAdd(self, expr):
        signs, terms = [], []
        for a in expr.args:
            negated = _negated(a)
            signs.append("-" if negated is not None else "+")
            terms.append(self._value(negated if negated is not None else a))
        kind, codes = self._join(terms, expr)
        parts = list(zip(signs, codes))
        partial = self._partial_sum([canonical(a) for a in expr.args])
        if partial is not None:  # a sum of some of these terms computed before, e.g. z in z − mean(z)
            name, used = partial
            parts = [("+", name), *(p for i, p in enumerate(parts) if i not in used)]
        code = " ".join(f"{s} {c if s == '+' else self._wrap(c)}" for s, c in parts)
        code = code[2:] if code.startswith("+ ") else "-" + code[2:]
        hint = "_".join(("" if s == "+" and i == 0 else {"+": "plus_", "-": "minus_"}[s]) + self._part(c)
                        for i, (s, c) in enumerate(parts))
        if [s for s, _ in parts] == ["+", "-"] and self._means.get(parts[1][1]) == parts[0][1]:  # z − mean(z)
            hint = f"centered_{self._part(parts[0][1])}"
            return self._bind(expr, code, kind, hint, "centered")
        return self._bind(expr, code, kind, hint, "total")

    def _print_HadamardProduct(self, expr):
        factors = [self._value(a) for a in expr.args if not (isinstance(a, sympy.Identity) and a.shape == (1, 1))]
        if not factors:  # I ⊙ I of 1 × 1s
            return "1.0", CONST
        kind, codes = self._join(factors, expr)
        code = " * ".join(self._wrap(c) for c in codes)
        if len(factors) == 1:
            return code, kind
        same = len(set(codes)) == 1
        parts = [self._part(c) for c in codes]
        hint = f"{parts[0]}_sq" if same and len(codes) == 2 else "_times_".join(parts)
        return self._bind(expr, code, kind, hint, "squared" if same and len(codes) == 2 else "prod")

    def _print_ElementwiseApplyFunction(self, expr):
        arg, kind = self._print(expr.expr)
        if kind == CONST:
            raise UnprintableError(f"an element-wise function of a constant, {expr}, should have been folded")
        code = self._elementwise(expr.function, arg, kind, expr.shape)
        name = _function_name(expr.function)
        return self._bind(expr, code, kind, f"{name}_{self._part(arg)}", name)

    def _join(self, values, expr) -> tuple[str, list[str]]:
        """The kind of an element-wise combination (sum, ⊙) of ``values`` of shape
        ``expr.shape``, and their codes laid out for it (a weight column read per token is
        stored transposed)."""
        kinds = {v.kind for v in values} - {CONST}
        codes = [v.code for v in values]
        if not kinds:
            return CONST, codes
        if kinds == {WEIGHT}:
            return WEIGHT, codes
        rows, cols = expr.shape
        if rows != 1 and cols != 1:
            raise UnprintableError(f"cannot combine kinds {sorted(kinds)} into a per-token {rows} × {cols} "
                                   f"matrix in {expr}")
        full_weights = any(v.kind == WEIGHT and v.shape != (1, 1) for v in values)
        if (rows, cols) == (1, 1):  # a 1 × 1 scaled from a row stays a row (see _outer)
            return ROW if ROW in kinds else DOT, codes
        if kinds <= {DOT, WEIGHT} and not full_weights:
            return DOT, codes
        if rows == 1:
            return ROW, codes
        return COL, [f"{self._wrap(v.code)}.mT" if v.kind == WEIGHT and v.shape[0] != 1 else v.code for v in values]

    def _elementwise(self, function, arg: str, kind: str, shape) -> str:
        """Code for ``function`` applied element-wise to the tensor named ``arg``; shared
        sub-expressions of the body (e.g. σ(a) in silu′) are bound to names first."""
        x = sympy.Symbol(arg)
        if isinstance(function, sympy.Lambda):
            (var,), body = function.variables, function.expr
            body = body.xreplace({var: x})
        else:
            body = function(x)
        if body == x:
            return arg
        temps, (reduced,) = sympy.cse(body, symbols=sympy.numbered_symbols("_cse"))
        subs = {}
        for tmp, value in temps:
            name = self._fresh(_scalar_hint(value, arg))
            code = self.scalar.doprint(value.xreplace(subs))
            if x in value.free_symbols or any(t in value.free_symbols for t in subs):
                self._line(name, code, kind, shape)
            else:
                self.lines.append(f"{name} = {code}  # a constant")
            subs[tmp] = sympy.Symbol(name)
        return self.scalar.doprint(reduced.xreplace(subs))

    # --- products --------------------------------------------------------------------------

    def _print_MatMul(self, expr):
        args = _flat_product(expr)
        coeff = sympy.Mul(*[a for a in args if not isinstance(a, sympy.MatrixExpr)])
        mats = [a for a in args if isinstance(a, sympy.MatrixExpr) and not isinstance(a, sympy.Identity)]
        if not mats:  # c·I
            mats = [a for a in args if isinstance(a, sympy.MatrixExpr)][:1]
        if len(mats) > 1 and _is_ones(mats[-1]) and mats[-1].shape[0] == 1 and _product(mats[:-1]).shape == (1, 1):
            # a per-token number broadcast along a row: the number itself (torch broadcasts it)
            code, kind = self._print(sympy.MatMul(coeff, *mats[:-1]) if coeff != 1 else _product(mats[:-1]))
            return code, DOT if kind in PER_TOKEN else kind
        mean = self._mean(coeff, mats)
        if mean is not None:
            return mean
        scalar = self._scalar(coeff) if coeff != 1 else None
        segments, start = [], 0
        for i in range(1, len(mats) + 1):  # split where the inner dimension is 1: evaluated per token
            if i == len(mats) or mats[i - 1].shape[1] == 1:
                segments.append(self._segment(mats[start:i]))
                start = i
        code, kind = self._outer(segments, scalar, expr)
        if code.isidentifier() or kind == CONST:  # nothing computed, or a number
            return code, kind
        names = [self._part(v.code) for v in segments]
        if scalar is not None:
            names.insert(0, "neg" if scalar.code == "-1" else scalar.code if scalar.code.isidentifier() else "scaled")
        role = "outer" if len(segments) > 1 else "scaled" if scalar is not None else "mm"
        return self._bind(expr, code, kind, "_".join(names), role)

    def _mean(self, coeff, mats):
        """``X.mean(-1)`` for ``1/n · X 𝟙`` (a row X of n entries), else None."""
        if len(mats) < 2 or not _is_ones(mats[-1]) or sympy.simplify(coeff * mats[-1].shape[0]) != 1:
            return None
        row, ones = _product(mats[:-1]), mats[-1]
        x = self._value(row)
        if x.kind != ROW:
            return None
        if ones.shape[1] != 1:  # the mean broadcast along the row: the mean itself
            return self._print(sympy.MatMul(coeff, row, sympy.OneMatrix(ones.shape[0], 1)))
        name, kind = self._bind(sympy.MatMul(coeff, *mats), f"{self._wrap(x.code)}.mean(-1, keepdim=True)", DOT,
                                f"mean_{self._part(x.code)}", "mean")
        self._means[name] = x.code
        return name, kind

    def _segment(self, mats) -> Value:
        """The product of ``mats`` whose inner dimensions are all > 1, left to right; each
        partial product is named (and so computed once)."""
        acc = self._value(mats[0])
        for i in range(1, len(mats)):
            prefix = _product(mats[: i + 1])
            key = canonical(prefix)
            if key in self._memo:
                acc = Value(*self._memo[key], tuple(prefix.shape))
                continue
            code, kind = self._times(acc, self._value(mats[i]), prefix)
            hint = "_".join(self._part(self._print(m)[0]) for m in mats[: i + 1] if not _is_ones(m))
            if code.isidentifier():
                acc = Value(code, kind, tuple(prefix.shape))
            else:
                acc = Value(*self._bind(prefix, code, kind, f"sum_{hint}" if _is_ones(mats[i]) else hint, "mm"),
                            tuple(prefix.shape))
        return acc

    def _times(self, a: Value, b: Value, expr) -> tuple[str, str]:
        """``a @ b`` with an inner dimension > 1 (so no sum over tokens)."""
        wrap = self._wrap
        p, r = expr.shape
        if b.kind == CONST or (b.kind == DOT and b.shape[0] != 1):  # a @ (s 𝟙): s times a's row sums
            return self._times_ones(self._row_sum(a, expr), b, (p, r), expr)
        if a.kind == CONST or (a.kind == DOT and a.shape[1] != 1):  # (s 𝟙) @ b: s times b's column sums
            return self._times_ones(self._column_sum(b, expr), a, (p, r), expr)
        if a.kind in (ROW, WEIGHT) and b.kind == WEIGHT:
            return f"{wrap(a.code)} @ {wrap(b.code)}", a.kind
        if a.kind == WEIGHT and b.kind == COL:  # W cᵀ per token, kept as rows: c Wᵀ
            return f"{wrap(b.code)} @ {wrap(a.code)}.mT", COL
        if a.kind == ROW and b.kind == COL:  # a_i b_iᵀ per token
            return f"({wrap(a.code)} * {wrap(b.code)}).sum(-1, keepdim=True)", DOT
        raise UnprintableError(f"cannot print the product of a {a.kind} {a.shape} and a {b.kind} {b.shape} in {expr}")

    def _row_sum(self, a: Value, expr) -> Value:
        """a 𝟙: the sums of a's rows (p × 1)."""
        if a.kind in (ROW, WEIGHT):
            kind = DOT if a.kind == ROW else WEIGHT
            return Value(f"{self._wrap(a.code)}.sum(-1, keepdim=True)", kind, (a.shape[0], 1))
        if a.kind in (DOT, CONST):
            return Value(f"{self._dim(a.shape[1])} * {self._wrap(a.code)}", a.kind, (a.shape[0], 1))
        raise UnprintableError(f"cannot sum the rows of a {a.kind} in {expr}")

    def _column_sum(self, b: Value, expr) -> Value:
        """𝟙ᵀ b: the sums of b's columns (1 × r)."""
        if b.kind == WEIGHT:
            return Value(f"{self._wrap(b.code)}.sum(-2, keepdim=True)", WEIGHT, (1, b.shape[1]))
        if b.kind == COL:
            return Value(f"{self._wrap(b.code)}.sum(-1, keepdim=True)", DOT, (1, 1))
        if b.kind in (DOT, CONST):
            return Value(f"{self._dim(b.shape[0])} * {self._wrap(b.code)}", b.kind, (1, b.shape[1]))
        raise UnprintableError(f"cannot sum the columns of a {b.kind} in {expr}")

    def _times_ones(self, summed: Value, ones: Value, shape, expr) -> tuple[str, str]:
        """``summed`` (row or column sums) times the number of ``ones`` (s 𝟙), broadcast to ``shape``."""
        code, kind = self._scaled([ones, summed], _Shaped(shape, expr))
        if kind == WEIGHT and summed.shape != shape:
            code = self._expand(code, shape, summed.shape)
        return code, kind

    def _outer(self, segments: list[Value], scalar: Value | None, expr) -> tuple[str, str]:
        """The product of per-token segments p × 1, 1 × 1, …, 1 × r (or one p × r segment)
        scaled by ``scalar``: element-wise when p or r is 1, else a sum over tokens."""
        wrap = self._wrap
        factors = ([scalar] if scalar is not None else []) + segments[1:-1]
        p, r = expr.shape
        column_times_row = len(segments) > 1 and segments[0].kind in (COL, DOT) and segments[-1].kind == ROW
        if p == 1 or r == 1 and not column_times_row:  # per token; a column times a 1 × 1 row sums over tokens
            return self._scaled(factors + segments[:1] + segments[1:][-1:], expr)
        if len(segments) == 1:  # scalar · (a p × r value): a per-token scalar sums over tokens
            (m,) = segments
            if scalar is None:
                return m.code, m.kind
            if m.kind != WEIGHT and m.kind != CONST:
                raise UnprintableError(f"cannot scale a per-token {p} × {r} {m.kind} in {expr}")
            s = f"{wrap(scalar.code)}.sum(-2, keepdim=True)" if scalar.kind in PER_TOKEN else scalar.code
            return self._scaled([Value(s, WEIGHT if scalar.kind in PER_TOKEN else scalar.kind, (1, 1)), m], expr)
        left, right = segments[0], segments[-1]
        row = Value(*self._scaled(factors + [right], _Shaped((1, r), expr)), (1, r)) if factors else right
        per_left, per_right = left.kind in PER_TOKEN, row.kind in PER_TOKEN
        if per_left and per_right:  # Σ_i a_iᵀ b_i
            code = f"{wrap(left.code)}.mT @ {wrap(row.code)}"
        elif per_left:  # (Σ_i a_i)ᵀ b
            code = self._matmul_or_scale(f"{wrap(left.code)}.sum(-2, keepdim=True).mT", row)
        elif per_right:  # a (Σ_i b_i)
            code = self._matmul_or_scale(f"{wrap(row.code)}.sum(-2, keepdim=True)", left, left_side=True)
        elif CONST in (left.kind, row.kind):
            code, kind = self._scaled([left, row], _Shaped((1, 1), expr))
            if kind == CONST:
                return code, CONST
        else:
            return f"{wrap(left.code)} @ {wrap(row.code)}", WEIGHT
        stored = (p if left.kind in (COL, WEIGHT) else 1, r if row.kind in (ROW, WEIGHT) else 1)
        return self._expand(code, (p, r), stored), WEIGHT

    def _matmul_or_scale(self, summed: str, other: Value, left_side: bool = False) -> str:
        if other.kind == CONST:
            return summed if other.code == "1.0" else f"{self._wrap(other.code)} * {summed}"
        return f"{self._wrap(other.code)} @ {summed}" if left_side else f"{summed} @ {self._wrap(other.code)}"

    def _scaled(self, values: list[Value], expr) -> tuple[str, str]:
        """The element-wise product of ``values`` (numbers, per-token 1 × 1s, rows…)."""
        kind, codes = self._join(values, expr)
        codes = [c for c in codes if c not in ("1", "1.0")] or ["1.0"]
        sign = ""
        if codes[0] in ("-1", "-1.0") and len(codes) > 1:
            sign, codes = "-", codes[1:]
        if len(codes) == 1:
            return sign + (self._wrap(codes[0]) if sign else codes[0]), kind
        return sign + " * ".join(_factor(c) for c in codes), kind

    def _expand(self, code: str, shape, stored) -> str:
        """``code`` (stored with size 1 where ``stored`` differs from ``shape``) broadcast to ``shape``."""
        if tuple(stored) == tuple(shape):
            return code
        sizes = ", ".join(self._dim(n) if s != n else "-1" for n, s in zip(shape, stored))
        return f"{self._wrap(code)}.expand(-1, -1, {sizes})"

    # --- scalars and dimensions ------------------------------------------------------------

    def _scalar(self, s) -> Value:
        """A scalar factor: numbers, dimension symbols (``1/d``) and entries ``E[0, 0]`` of
        1 × 1 expressions (per-token numbers)."""
        entries = {el: self._value(el) for el in sorted(s.atoms(MatrixElement), key=sympy.default_sort_key)}
        subs = {el: sympy.Symbol(v.code) for el, v in entries.items()}
        kinds = {v.kind for v in entries.values()}
        kind = DOT if kinds & set(PER_TOKEN) else WEIGHT if WEIGHT in kinds else CONST
        s = s.xreplace(subs)
        for sym in sorted(s.free_symbols - set(subs.values()), key=str):
            name = self._dim(sym, required=False)
            if name is not None:
                subs[sym] = sympy.Symbol(name)
        return Value(self.scalar.doprint(s.xreplace(subs)), kind, (1, 1))

    def _dim(self, size, required: bool = True) -> str | None:
        """Code for a dimension: a literal, or a name bound once to the size of a tensor that
        has it, e.g. ``d = x.shape[-1]``."""
        if size.is_Integer if isinstance(size, sympy.Basic) else isinstance(size, int):
            return str(int(size))
        if size not in self._dim_names:
            for m, name in self.names.items():
                rows, cols = m.shape
                axis = -1 if cols == size else (-2 if rows == size and self.kinds[m] == WEIGHT else None)
                if axis is not None:
                    dname = self._fresh(self.dims.get(size, str(size)))
                    self.lines.append(f"{dname} = {name}.shape[{axis}]  # the size {size}")
                    self._dim_names[size] = dname
                    break
            else:
                if required:
                    raise UnprintableError(f"no tensor has the dimension {size}, so its size cannot be read")
                return None
        return self._dim_names[size]

    # --- names and lines ----------------------------------------------------------------------

    def _bind(self, expr, code, kind, hint, role):
        """Bind a composite value to a fresh name (each intermediate is computed once): named
        after its operands (``hint``) when short, else by its ``role``."""
        name = self._fresh(hint if hint.isidentifier() and len(hint) <= MAX_NAME else role)
        self._roles[name] = role
        self._line(name, code, kind, expr.shape)
        self._memo[canonical(expr)] = (name, kind)
        return name, kind

    def _part(self, code: str) -> str:
        """How an operand reads inside a name built on it: a small number is an ε, a long
        generated name is replaced by what it is (``gelu_tanh_W2``, not ``gelu_tanh_x_W1_plus_b1_W2``)."""
        try:
            return "eps" if abs(float(code)) < 1e-3 else "c"
        except ValueError:
            code = code.removesuffix(".mT")
        role = self._roles.get(code)
        return role if len(code) > MAX_PART and role not in (None, *GENERIC_ROLES) else code

    def _shape(self, kind, shape) -> str:
        rows, cols = (self.dims.get(s, str(s)) for s in shape)
        if kind == ROW:
            return f"[B, H, T, {cols}]"
        if kind == COL:
            return f"[B, H, T, {rows}] (columns, stored as rows)"
        if kind == DOT:
            return "[B, H, T, 1]"
        if kind == CONST:
            return "a constant"
        return f"[B, H, {rows}, {cols}]"

    def _line(self, name, code, kind, shape):
        self.lines.append(f"{name} = {code}  # {self._shape(kind, shape)}")

    def _fresh(self, hint: str) -> str:
        hint = "".join(c if c.isalnum() else "_" for c in hint).strip("_") or "t"
        name, i = hint, 2
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def _partial_sum(self, keys):
        """``(name, indices)`` of the largest sum already computed whose terms are some (at
        least two, not all) of the terms ``keys`` (canonical keys), or None."""
        best = None
        for key, (name, _) in self._memo.items():
            if not (isinstance(key, tuple) and key[0] == "MatAdd" and 1 < len(key) - 1 < len(keys)):
                continue
            free, used = list(range(len(keys))), set()
            for k in key[1:]:
                i = next((i for i in free if keys[i] == k), None)
                if i is None:
                    break
                free.remove(i)
                used.add(i)
            else:
                if best is None or len(used) > len(best[1]):
                    best = (name, used)
        return best

    @staticmethod
    def _wrap(code: str) -> str:
        return code if code.replace("_", "").replace(".", "").isalnum() else f"({code})"


class _Shaped(NamedTuple):
    """An expression's shape for :meth:`TorchEmitter._join`, with the expression for errors."""

    shape: tuple
    expr: object

    def __str__(self):
        return str(self.expr)


def canonical(expr):
    """A hashable key under which equal computations coincide: element-wise functions are
    keyed by what they compute, not by the dummy variable of their ``Lambda``."""
    if isinstance(expr, ElementwiseApplyFunction):
        f = expr.function
        if isinstance(f, sympy.Lambda):
            (var,), body = f.variables, f.expr
            fkey = type(body).__name__ if isinstance(body, sympy.Function) and body.args == (var,) else \
                sympy.srepr(body.xreplace({var: sympy.Symbol("_arg")}))
        else:
            fkey = getattr(f, "__name__", sympy.srepr(f))
        return ("apply", fkey, canonical(expr.expr))
    if isinstance(expr, sympy.MatrixSymbol) or not isinstance(expr, sympy.Basic) or not expr.args:
        return expr
    return (type(expr).__name__, *(canonical(a) for a in expr.args))


def _is_ones(expr) -> bool:
    """A matrix of ones 𝟙 (or its transpose): row sums, broadcasts and constants."""
    if isinstance(expr, sympy.Transpose):
        expr = expr.arg
    return isinstance(expr, sympy.OneMatrix)


def _flat_product(expr) -> list:
    """The factors of a product, nested products expanded (c·(A·B)·C → c, A, B, C)."""
    out = []
    for a in expr.args:
        out.extend(_flat_product(a) if isinstance(a, sympy.MatMul) else [a])
    return out


def _product(mats):
    return mats[0] if len(mats) == 1 else sympy.MatMul(*mats)


def _negated(expr):
    """X when ``expr`` is c·X with a negative number c, written (−c)·X; else None."""
    if isinstance(expr, sympy.MatMul) and not isinstance(expr.args[0], sympy.MatrixExpr) \
            and expr.args[0].could_extract_minus_sign():
        positive = -expr.args[0]
        return _product(expr.args[1:]) if positive == 1 else sympy.MatMul(positive, *expr.args[1:])
    return None


def _factor(code: str) -> str:
    """``code`` as a factor of a product ``a * b``: parenthesised only where it must be."""
    return f"({code})" if any(op in code for op in (" + ", " - ", " @ ")) else code


def _scalar_hint(value, arg):
    if isinstance(value, sympy.Function):
        return f"{type(value).__name__.rstrip('_')}_{arg}"
    return "c"


def _function_name(function) -> str:
    """``silu``, ``silu_prime`` (a derivative built by the reverse-mode rules) or ``f``."""
    if function in DERIVATIVE_OF:
        return f"{DERIVATIVE_OF[function]}_prime"
    if isinstance(function, sympy.Lambda):
        body = function.expr
        return type(body).__name__.rstrip("_") if isinstance(body, sympy.Function) else "f"
    return getattr(function, "__name__", "f").rstrip("_")
