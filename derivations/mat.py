"""The matrices a variant's model and loss are written in, with two interpretations.

A variant is an ordinary Python function of its input row and its fast weights. tttla
calls it with :class:`Mat` objects, so the very same function is

* **executed** on torch tensors (the oracle): a token row ``x`` is a batch of rows
  ``[..., n, D]`` (one row per token, all processed at once) and a weight is ``[..., r, c]``;
* **traced** on SymPy matrix symbols (the derivation engine): ``x`` is a ``1 × d``
  ``MatrixSymbol`` and the result is a SymPy matrix expression.

Operators mean the same on both sides, as in torch: ``@`` is the matrix product, ``*`` the
element-wise (Hadamard) product or a scalar scale, ``+``/``-`` add, ``.T`` transposes.
Shapes are checked on *logical* shapes (a token row is ``1 × D``) with messages that name
the operands, so a malformed declaration fails when it is traced at declaration time.
"""

from __future__ import annotations

import numbers

import sympy

from derivations.elementwise import Elementwise

__all__ = ["Mat", "ShapeMismatch", "dot", "sq_norm", "sum_all", "row_mean", "row_var", "broadcast", "add_constant"]


class ShapeMismatch(ValueError):
    """Two operands of an expression have incompatible logical shapes."""


def _fmt(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _is_scalar(obj) -> bool:
    if isinstance(obj, numbers.Number) and not isinstance(obj, bool):
        return True
    return isinstance(obj, sympy.Expr) and not isinstance(obj, sympy.MatrixExpr)


class Mat:
    """A matrix expression with a logical shape ``(rows, cols)``.

    ``kind`` tells how ``value`` stores it: ``"sym"`` (a SymPy matrix expression),
    ``"row"`` (torch, one logical ``1 × c`` row per token, stored ``[..., n, c]``),
    ``"col"`` (torch, one ``c × 1`` column per token, stored as rows ``[..., n, c]``) or
    ``"weight"`` (torch, one matrix per batch and head, ``[..., r, c]``).
    """

    __slots__ = ("value", "shape", "kind", "label", "grid")

    def __init__(self, value, shape, kind, label=None, grid=None):
        self.value = value
        self.shape = tuple(shape)
        self.kind = kind
        self.label = label or (str(value) if kind == "sym" else kind)
        #: only on the input row of a spatial (depthwise) layer: its token grid ``(h, w)``, or
        #: ``True`` on the symbolic side, where the row is one channel's patch
        self.grid = grid

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def symbol(cls, name, rows, cols):
        """A symbolic matrix ``name`` of shape ``rows × cols``."""
        return cls(sympy.MatrixSymbol(name, rows, cols), (rows, cols), "sym", name)

    @classmethod
    def sym(cls, expr):
        """Wrap an existing SymPy matrix expression."""
        return cls(expr, expr.shape, "sym", str(expr))

    @classmethod
    def rows(cls, tensor, label="x", grid=None):
        """Token rows ``[..., n, c]``: each token is a logical ``1 × c`` row (``grid``: the
        ``(h, w)`` token grid of a spatial layer's input, row-major, n = h·w)."""
        return cls(tensor, (1, tensor.shape[-1]), "row", label, grid)

    @classmethod
    def weight(cls, tensor, label="W"):
        """A per-(batch, head) matrix ``[..., r, c]``."""
        return cls(tensor, tuple(tensor.shape[-2:]), "weight", label)

    @property
    def symbolic(self) -> bool:
        return self.kind == "sym"

    def __repr__(self):
        return f"Mat({self.label}, shape={_fmt(self.shape)})"

    # --- helpers ----------------------------------------------------------------------

    def _check_same_family(self, other, op):
        if not isinstance(other, Mat):
            raise TypeError(
                f"cannot combine {self.label} with {type(other).__name__} in '{op}': "
                "use fast weights, the input row and scalars only"
            )
        if self.symbolic != other.symbolic:
            raise TypeError(f"cannot mix symbolic and numeric matrices in '{op}'")

    def _new(self, value, shape, kind, label):
        return Mat(value, shape, kind, label)

    # --- matrix product ---------------------------------------------------------------

    def __matmul__(self, other):
        self._check_same_family(other, "@")
        (r, k1), (k2, c) = self.shape, other.shape
        label = f"({self.label} @ {other.label})"
        if sympy.simplify(k1 - k2) != 0:
            raise ShapeMismatch(
                f"shape mismatch in {label}: {_fmt(self.shape)} @ {_fmt(other.shape)} "
                f"needs the inner dimensions to agree ({k1} vs {k2})"
            )
        if self.symbolic:
            return self._new(sympy.MatMul(self.value, other.value), (r, c), "sym", label)
        a, b = self.kind, other.kind
        if a == "row" and b == "weight":  # x W: one row per token
            return self._new(self.value @ other.value, (r, c), "row", label)
        if a == "weight" and b == "col":  # W x^T: one column per token, kept as rows
            return self._new(other.value @ self.value.transpose(-1, -2), (r, c), "col", label)
        if a == "weight" and b == "weight":
            return self._new(self.value @ other.value, (r, c), "weight", label)
        if a == "row" and b == "col":  # x y^T: a 1 × 1 per token
            return self._new((self.value * other.value).sum(-1, keepdim=True), (1, 1), "row", label)
        raise ShapeMismatch(
            f"unsupported product {label}: a {a} times a {b} would mix tokens "
            "(outer products of input rows are not part of the language)"
        )

    # --- element-wise algebra ---------------------------------------------------------

    def _elementwise(self, other, op, sym_fn, num_fn):
        self._check_same_family(other, op)
        label = f"({self.label} {op} {other.label})"
        if self.shape != other.shape and not all(sympy.simplify(a - b) == 0 for a, b in zip(self.shape, other.shape)):
            raise ShapeMismatch(
                f"shape mismatch in {label}: {_fmt(self.shape)} {op} {_fmt(other.shape)} needs equal shapes"
            )
        if self.symbolic:
            return self._new(sym_fn(self.value, other.value), self.shape, "sym", label)
        kinds = {self.kind, other.kind}
        if kinds == {"row", "col"}:
            raise ShapeMismatch(f"cannot combine a row and a column in {label}")
        kind = "weight" if kinds == {"weight"} else (kinds - {"weight"}).pop()
        return self._new(num_fn(self.value, other.value), self.shape, kind, label)

    def __add__(self, other):
        if _is_scalar(other) and other == 0:  # so that sum() works
            return self
        return self._elementwise(other, "+", lambda a, b: sympy.MatAdd(a, b), lambda a, b: a + b)

    __radd__ = __add__

    def __sub__(self, other):
        return self._elementwise(other, "-", lambda a, b: sympy.MatAdd(a, -b), lambda a, b: a - b)

    def __rsub__(self, other):
        return (-self).__add__(other)

    def __mul__(self, other):
        if _is_scalar(other):
            return self.scale(other)
        if isinstance(other, Mat) and other.shape == (1, 1) and self.shape != (1, 1):
            return other * self
        if isinstance(other, Mat) and self.shape == (1, 1) and other.shape != (1, 1):
            # a 1 × 1 (e.g. a dot product) scales a matrix
            self._check_same_family(other, "*")
            label = f"({self.label} * {other.label})"
            if self.symbolic:
                return self._new(sympy.MatMul(self.value[0, 0], other.value), other.shape, "sym", label)
            return self._new(self.value * other.value, other.shape, other.kind, label)
        return self._elementwise(other, "*", lambda a, b: sympy.HadamardProduct(a, b), lambda a, b: a * b)

    def __rmul__(self, other):
        if _is_scalar(other):
            return self.scale(other)
        return NotImplemented

    def __truediv__(self, other):
        if _is_scalar(other):
            return self.scale(sympy.Integer(1) / other if self.symbolic else 1.0 / other)
        raise TypeError(f"'{self.label} / {type(other).__name__}': only division by a scalar is supported")

    def __neg__(self):
        return self.scale(-1)

    def __pos__(self):
        return self

    def scale(self, c):
        label = f"{c}·{self.label}"
        if self.symbolic:
            return self._new(sympy.MatMul(sympy.sympify(c), self.value), self.shape, "sym", label)
        return self._new(c * self.value, self.shape, self.kind, label)

    # --- transpose and functions --------------------------------------------------------

    @property
    def T(self):
        label = f"{self.label}ᵀ"
        shape = (self.shape[1], self.shape[0])
        if self.symbolic:
            return self._new(sympy.Transpose(self.value), shape, "sym", label)
        flipped = {"row": "col", "col": "row"}
        if self.kind in flipped:
            return self._new(self.value, shape, flipped[self.kind], label)
        return self._new(self.value.transpose(-1, -2), shape, "weight", label)

    mT = T

    def apply(self, fn):
        """Apply an :class:`~derivations.functions.ElementwiseFunction` element-wise."""
        label = f"{fn.name}({self.label})"
        if self.symbolic:
            return self._new(Elementwise(fn.symbolic, self.value), self.shape, "sym", label)
        return self._new(fn.numeric(self.value), self.shape, self.kind, label)

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self.label} is a fast-weight expression, not an array")

    def __bool__(self):
        raise TypeError(f"{self.label} has no truth value: variants may not branch on data")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{name!r} is not part of the variant language (on {self.label}); use @, *, +, -, "
            ".T and the element-wise functions of derivations.functions"
        )


# --- reductions used by inner losses ------------------------------------------------------


def require_row(a, fname: str) -> None:
    """Raise, naming ``fname``, unless ``a`` is a ``1 × n`` row of the language."""
    if not isinstance(a, Mat):
        raise TypeError(f"{fname}() takes fast-weight expressions, got {type(a).__name__}")
    if a.shape[0] != 1:
        raise ShapeMismatch(f"{fname}() takes 1 × n rows, got {a.label} of shape {_fmt(a.shape)}")


def dot(a: Mat, b: Mat) -> Mat:
    """⟨a, b⟩ of two rows, a 1 × 1 matrix: ``a @ b.T``."""
    require_row(a, "dot")
    require_row(b, "dot")
    return a @ b.T


def sq_norm(a: Mat) -> Mat:
    """‖a‖² of a row, a 1 × 1 matrix."""
    return dot(a, a)


def sum_all(a: Mat) -> Mat:
    """Σ_j a_j of a row, a 1 × 1 matrix."""
    require_row(a, "sum_all")
    if a.symbolic:
        ones = sympy.OneMatrix(a.shape[1], 1)
        return Mat(sympy.MatMul(a.value, ones), (1, 1), "sym", f"Σ{a.label}")
    return Mat(a.value.sum(-1, keepdim=True), (1, 1), a.kind, f"Σ{a.label}")


# --- row reductions and LayerNorm ---------------------------------------------------------


def row_mean(a: Mat) -> Mat:
    """The mean of a row's entries, a 1 × 1 matrix: ``sum_all(a) / n``."""
    require_row(a, "row_mean")
    n = a.shape[1]
    return sum_all(a).scale(sympy.Integer(1) / n if a.symbolic else 1.0 / n)


def broadcast(s: Mat, like: Mat) -> Mat:
    """A 1 × 1 matrix ``s`` repeated along ``like``'s row: ``s · 1_{1×n}`` (a 1 × n row)."""
    require_row(like, "broadcast")
    if not isinstance(s, Mat) or s.shape != (1, 1):
        raise ShapeMismatch(f"broadcast() takes a 1 × 1 matrix, got {getattr(s, 'label', s)}")
    n = like.shape[1]
    if s.symbolic:
        return Mat(sympy.MatMul(s.value, sympy.OneMatrix(1, n)), (1, n), "sym", f"{s.label}·1")
    return Mat(s.value.expand(*s.value.shape[:-1], n), (1, n), s.kind, f"{s.label}·1")


def add_constant(a: Mat, c) -> Mat:
    """``a + c`` for a scalar constant ``c`` added to every entry (e.g. an ε under a root)."""
    if a.symbolic:
        const = sympy.MatMul(sympy.sympify(c), sympy.OneMatrix(*a.shape))
        return Mat(sympy.MatAdd(a.value, const), a.shape, "sym", f"({a.label} + {c})")
    return Mat(a.value + c, a.shape, a.kind, f"({a.label} + {c})")


def row_var(a: Mat) -> Mat:
    """The (biased) variance of a row's entries, a 1 × 1 matrix: mean((a − mean(a))²)."""
    require_row(a, "row_var")
    centered = a - broadcast(row_mean(a), a)
    return row_mean(centered * centered)
