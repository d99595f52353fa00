"""Printing the matrix-expression IR as batched torch code.

Two pieces, after SymPy's printers (``sympy/printing/numpy.py``):

* :class:`TorchScalarPrinter` prints *scalar* SymPy expressions (the bodies of element-wise
  functions and their derivatives) as torch code, from a lookup table of functions; the
  entries of :data:`derivations.functions.FUNCTIONS` are added to it automatically.
* :class:`TorchEmitter` walks a *matrix* expression and emits one named assignment per
  intermediate value, with a shape comment, e.g. ``k_W0 = k @ W0  # [B, H, T, h]``.

Batched semantics. Every matrix symbol has a *kind*: a ``"row"`` symbol is one 1 × D row
per token, stored ``[B, H, T, D]``; a ``"weight"`` is one matrix per batch and head,
``[B, H, r, c]``. A transposed row is a per-token column. The product of a column and a
row, ``aᵀ b``, is printed ``a.mT @ b``: a **sum over tokens** — exactly what a weight's
gradient Σ_i a_iᵀ b_i is. A row times a column (a dot product) is a per-token 1 × 1,
stored ``[B, H, T, 1]``.
"""

from __future__ import annotations

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement
from sympy.printing.pycode import PythonCodePrinter

from derivations.functions import FUNCTIONS

__all__ = ["TorchScalarPrinter", "TorchEmitter", "ROW", "COL", "WEIGHT", "DOT"]

ROW, COL, WEIGHT, DOT = "row", "col", "weight", "dot"


class TorchScalarPrinter(PythonCodePrinter):
    """Scalar SymPy expressions as element-wise torch code."""

    _kf = {
        "exp": "torch.exp",
        "log": "torch.log",
        "tanh": "torch.tanh",
        "sinh": "torch.sinh",
        "cosh": "torch.cosh",
        "erf": "torch.erf",
        "sqrt": "torch.sqrt",
        "Abs": "torch.abs",
    }

    def __init__(self, settings=None):
        super().__init__(settings)
        self.known_functions = dict(self._kf)
        # our element-wise functions, printed through their torch spelling
        self._by_class = {
            fn.symbolic: fn for fn in FUNCTIONS.values() if isinstance(fn.symbolic, type)
        }

    def _print_Function(self, expr):
        fn = self._by_class.get(type(expr))
        if fn is not None:
            return fn.torch_source.format(self._print(expr.args[0]))
        return super()._print_Function(expr)

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        return f"({x} > 0).to({x}.dtype)"

    def _print_Max(self, expr):
        a, b = expr.args
        return f"torch.clamp_min({self._print(b)}, {self._print(a)})" if a.is_number else super()._print_Max(expr)

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Rational(self, expr):
        return repr(float(expr))

    def _print_Half(self, expr):
        return "0.5"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp == sympy.S.Half:
            return f"math.sqrt({self._print(base)})" if base.is_number else f"torch.sqrt({self._print(base)})"
        if base.is_number and exp.is_number:
            return repr(float(expr))
        return super()._print_Pow(expr, rational=rational)


class TorchEmitter:
    """Emit a matrix expression as named torch assignments (see the module docstring).

    ``symbols`` maps each :class:`sympy.MatrixSymbol` to ``(code name, kind)``; ``dims``
    maps dimension symbols to the names used in shape comments.
    """

    def __init__(self, symbols: dict, dims: dict | None = None, indent: str = "    "):
        self.names = {s: n for s, (n, _) in symbols.items()}
        self.kinds = {s: k for s, (_, k) in symbols.items()}
        self.dims = {k: str(v) for k, v in (dims or {}).items()}
        self.lines: list[str] = []
        self.indent = indent
        self.scalar = TorchScalarPrinter()
        self._memo: dict = {}
        self._used: set[str] = set(self.names.values())
        self._dim_names: dict = {}

    # --- public ---------------------------------------------------------------------

    def assign(self, name: str, expr) -> str:
        """Emit ``name = <expr>`` (with its intermediates) and return ``name``."""
        fresh = canonical(expr) not in self._memo and not isinstance(expr, sympy.MatrixSymbol)
        code, kind = self._code(expr)
        if fresh and self.lines and self.lines[-1].startswith(f"{code} = "):
            # the value was just computed under a generated name: give it the target's
            self.lines[-1] = f"{name} = " + self.lines[-1].split(" = ", 1)[1]
            self._used.discard(code)
        else:
            self._line(name, code, kind, expr.shape)
        self._used.add(name)
        self._memo[canonical(expr)] = (name, kind)
        return name

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
        saved = list(self.lines), dict(self._memo), set(self._used), dict(self._dim_names)
        try:
            return self._code(expr)[1]
        finally:
            self.lines, self._memo, self._used, self._dim_names = saved

    def value(self, expr, name: str | None = None) -> str:
        """Code for ``expr``'s value as an operand: the name of a symbol or of an earlier
        assignment, else ``expr`` emitted under ``name`` (a generated name when None)."""
        if name is None or isinstance(expr, sympy.MatrixSymbol) or canonical(expr) in self._memo:
            return self._wrap(self._code(expr)[0])
        return self.assign(name, expr)

    # --- internals ----------------------------------------------------------------------

    def _shape(self, kind, shape) -> str:
        cols = self.dims.get(shape[1], str(shape[1]))
        if kind == ROW:
            return f"[B, H, T, {cols}]"
        if kind == COL:
            return f"[B, H, T, {self.dims.get(shape[0], str(shape[0]))}] (columns, stored as rows)"
        if kind == DOT:
            return "[B, H, T, 1]"
        return f"[B, H, {self.dims.get(shape[0], str(shape[0]))}, {cols}]"

    def _line(self, name, code, kind, shape):
        self.lines.append(f"{name} = {code}  # {self._shape(kind, shape)}")

    def _fresh(self, hint: str) -> str:
        hint = "".join(c if c.isalnum() else "_" for c in hint).strip("_") or "t"
        if len(hint) > 16:
            hint = "t"
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}{i}", i + 1
        self._used.add(name)
        return name

    def _named(self, expr, code, kind, hint):
        """Bind a composite value to a fresh name (each intermediate is computed once)."""
        name = self._fresh(hint)
        self._line(name, code, kind, expr.shape)
        self._memo[canonical(expr)] = (name, kind)
        return name, kind

    def _code(self, expr):
        key = canonical(expr)
        if key in self._memo:
            return self._memo[key]
        if isinstance(expr, sympy.MatrixSymbol):
            if expr not in self.names:
                raise KeyError(f"no code name for matrix symbol {expr}")
            return self.names[expr], self.kinds[expr]
        if isinstance(expr, sympy.Transpose):
            code, kind = self._code(expr.arg)
            flipped = {ROW: COL, COL: ROW, DOT: DOT}
            if kind in flipped:
                return code, flipped[kind]
            return f"{self._wrap(code)}.mT", WEIGHT
        if isinstance(expr, sympy.MatMul):
            return self._matmul(expr)
        if isinstance(expr, sympy.MatAdd):
            terms, kinds = [], []
            for a in expr.args:
                negated = _negated(a)
                if negated is None:
                    code, kind = self._code(a)
                    terms.append(f"+ {code}")
                else:
                    code, kind = self._code(negated)
                    terms.append(f"- {self._wrap(code)}")
                kinds.append(kind)
            partial = self._partial_sum([canonical(a) for a in expr.args])
            if partial is not None:  # a sum of some of these terms computed before, e.g. z in z − mean(z)
                name, kind, used = partial
                terms = [f"+ {name}", *(t for i, t in enumerate(terms) if i not in used)]
                kinds = [kind, *(k for i, k in enumerate(kinds) if i not in used)]
            code = " ".join(terms)
            code = code[2:] if code.startswith("+ ") else "-" + code[2:]
            return self._named(expr, code, _join_kinds(kinds, expr), "total")  # not "sum": the builtin
        if isinstance(expr, sympy.HadamardProduct):
            parts = [self._code(a) for a in expr.args]
            kind = _join_kinds([k for _, k in parts], expr)
            return self._named(expr, " * ".join(self._wrap(c) for c, _ in parts), kind, "prod")
        if isinstance(expr, ElementwiseApplyFunction):
            arg, kind = self._code(expr.expr)
            code = self._elementwise(expr.function, arg, kind, expr.shape)
            return self._named(expr, code, kind, _fn_hint(expr.function, arg))
        if isinstance(expr, MatrixElement):
            # E[0, 0] of a 1 × 1 expression: its per-token value [B, H, T, 1]
            code, kind = self._code(expr.parent)
            return code, DOT
        if _is_ones(expr):
            return "1.0", DOT
        if isinstance(expr, sympy.ZeroMatrix):
            raise ValueError("a zero matrix should have been simplified away before printing")
        raise TypeError(f"cannot print {type(expr).__name__} as torch code: {expr}")

    def _partial_sum(self, keys):
        """``(name, kind, indices)`` of the largest sum already computed whose terms are some
        (at least two, not all) of the terms ``keys`` (canonical keys), or None."""
        best = None
        for key, (name, kind) in self._memo.items():
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
                if best is None or len(used) > len(best[2]):
                    best = (name, kind, used)
        return best

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

    def _matmul(self, expr):
        scalars = [a for a in expr.args if not isinstance(a, sympy.MatrixExpr) or isinstance(a, MatrixElement)]
        mats = [a for a in expr.args if isinstance(a, sympy.MatrixExpr) and not isinstance(a, MatrixElement)]
        if all(_is_ones(m) for m in mats):  # c·𝟙: a constant that broadcasts
            return self._scalar_code(sympy.Mul(*scalars)), DOT
        if _is_ones(mats[0]) and len(mats) > 1 and mats[0].shape[0] == 1:
            # 𝟙ᵀ M: column sums of M (a row of ones times a weight or a sum over tokens)
            code, kind = self._code(mats[1])
            if kind != WEIGHT:
                raise TypeError(f"cannot print a row of ones times a {kind} in {expr}")
            code, kind = f"{self._wrap(code)}.sum(-2, keepdim=True)", WEIGHT
            mats = [sympy.MatMul(mats[0], mats[1]), *mats[2:]]
        else:
            code, kind = self._code(mats[0])
            if kind == COL and len(mats) > 2 and any(_is_ones(m) for m in mats[1:]):
                # aᵀ (R 𝟙): reduce each token's row before summing over tokens
                rest = sympy.MatMul(*mats[1:])
                rcode, rkind = self._code(rest)
                if rkind == DOT and rest.shape[1] != 1:
                    rkind = ROW  # a per-token 1 × 1 broadcast along the row: aᵀ (s 𝟙) = (aᵀ s) 𝟙 broadcasts
                code, kind = _product(code, kind, rcode, rkind, expr)
                mats = [mats[0]]
        for m in mats[1:]:
            if _is_ones(m):  # row reductions and broadcasts
                code, kind = _ones_product(code, kind, m, expr)
                continue
            rcode, rkind = self._code(m)
            if kind == DOT and rkind == WEIGHT:
                # a per-token 1 × 1 (broadcast along a row when m has several rows) times m: s·(𝟙 m)
                rcode = rcode if m.shape[0] == 1 else f"{self._wrap(rcode)}.sum(-2, keepdim=True)"
                code, kind = f"{self._wrap(code)} * {self._wrap(rcode)}", ROW
            else:
                code, kind = _product(code, kind, rcode, rkind, expr)
            if m is not mats[-1]:
                code, kind = self._named(sympy.MatMul(*mats[: mats.index(m) + 1]), code, kind, "mm")
        factors = []
        for s in scalars:
            if isinstance(s, MatrixElement):
                c, k = self._code(s)
                if kind == WEIGHT:
                    raise ValueError(f"a per-token factor {s} scales a sum over tokens in {expr}")
                factors.append(c)
            else:
                factors.append(self._scalar_code(s))
        if factors:
            code = " * ".join([*factors, self._wrap(code)])
            if code.startswith("-1.0 * ") or code.startswith("-1 * "):
                code = "-" + code.split(" * ", 1)[1]
        if code.isidentifier():  # nothing computed (a 1 × 1 broadcast along a row): no new name
            self._memo[canonical(expr)] = (code, kind)
            return code, kind
        operands = [self._code(m)[0] if not (_is_ones(m) or _is_ones(m.args[0])) else "(" for m in mats]
        hint = "_".join(operands) if all(o.isidentifier() for o in operands) else "mm"
        return self._named(expr, code, kind, hint)

    def _scalar_code(self, s) -> str:
        """A scalar factor as code; a dimension symbol in it (the ``1/d`` of a row mean) is
        bound once to the size of a tensor that has it, e.g. ``d = x.shape[-1]``."""
        subs = {}
        for sym in sorted(s.free_symbols, key=str):
            if sym not in self._dim_names:
                for m, name in self.names.items():
                    rows, cols = m.shape
                    axis = -1 if cols == sym else (-2 if rows == sym and self.kinds[m] == WEIGHT else None)
                    if axis is not None:
                        dname = self._fresh(self.dims.get(sym, str(sym)))
                        self.lines.append(f"{dname} = {name}.shape[{axis}]  # the size {sym}")
                        self._dim_names[sym] = dname
                        break
                else:
                    continue
            subs[sym] = sympy.Symbol(self._dim_names[sym])
        return self.scalar.doprint(s.xreplace(subs))

    @staticmethod
    def _wrap(code: str) -> str:
        return code if code.replace("_", "").replace(".", "").isalnum() else f"({code})"


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


def _ones_product(code, kind, ones, expr):
    """``A · 𝟙``: a row sum when 𝟙 is n × 1 (n > 1), a broadcast when it is 1 × n."""
    wrap = TorchEmitter._wrap
    rows, cols = ones.shape
    if rows == 1:  # 1 × n: a 1 × 1 per token broadcasts along the row
        if kind not in (DOT,) and cols != 1:
            raise TypeError(f"cannot broadcast a {kind} along a row in {expr}")
        return code, kind
    if cols != 1:  # n × m: the row sum, broadcast along a row of m
        if kind in (ROW, DOT):
            return f"{wrap(code)}.sum(-1, keepdim=True)", DOT
        raise TypeError(f"cannot print a {kind} times an all-ones {rows} × {cols} matrix in {expr}")
    if kind in (ROW, DOT):
        return f"{wrap(code)}.sum(-1, keepdim=True)", DOT
    if kind == WEIGHT:
        return f"{wrap(code)}.sum(-1, keepdim=True)", WEIGHT
    raise TypeError(f"cannot sum a {kind} along its row in {expr}")


def _negated(expr):
    """X when ``expr`` is −1·X, else None."""
    if isinstance(expr, sympy.MatMul) and expr.args[0] == -1 and len(expr.args) == 2:
        return expr.args[1]
    return None


def _product(a, ka, b, kb, expr):
    wrap = TorchEmitter._wrap
    if ka == ROW and kb == WEIGHT:
        return f"{wrap(a)} @ {wrap(b)}", ROW
    if ka == WEIGHT and kb == WEIGHT:
        return f"{wrap(a)} @ {wrap(b)}", WEIGHT
    if ka == WEIGHT and kb == COL:  # W cᵀ per token, kept as rows: c Wᵀ
        return f"{wrap(b)} @ {wrap(a)}.mT", COL
    if ka == COL and kb == ROW:  # Σ_i a_iᵀ b_i: a sum over tokens
        return f"{wrap(a)}.mT @ {wrap(b)}", WEIGHT
    if ka == ROW and kb == COL:  # a_i b_iᵀ per token
        return f"({wrap(a)} * {wrap(b)}).sum(-1, keepdim=True)", DOT
    if ka == DOT and kb in (ROW, DOT):  # a 1 × 1 per token times a row
        return f"{wrap(a)} * {wrap(b)}", kb
    if kb == DOT and ka in (COL, DOT):
        return f"{wrap(a)} * {wrap(b)}", ka
    raise TypeError(f"cannot print the product of a {ka} and a {kb} in {expr}")


def _join_kinds(kinds, expr):
    ks = set(kinds)
    if len(ks) == 1:
        return kinds[0]
    if ks <= {ROW, WEIGHT} or ks <= {DOT, ROW}:
        return ROW  # a (1, c) weight broadcasts over tokens
    if ks <= {ROW, WEIGHT, DOT} and expr.shape[0] == 1:
        return ROW  # per-token 1 × 1 values and (1, c) weights broadcast along the row and over tokens
    raise TypeError(f"cannot combine kinds {sorted(ks)} in {expr}")


def _scalar_hint(value, arg):
    if isinstance(value, sympy.Function):
        return f"{type(value).__name__.rstrip('_')}_{arg}" if len(arg) <= 8 else type(value).__name__.rstrip("_")
    return "tmp"


def _fn_hint(function, arg):
    if isinstance(function, sympy.Lambda):
        body = function.expr
        name = type(body).__name__.rstrip("_") if isinstance(body, sympy.Function) else "d"
    else:
        name = getattr(function, "__name__", "f").rstrip("_")
    return f"{name}_{arg}" if len(arg) <= 8 else name
