"""Readable text (Unicode) and LaTeX for IR expressions.

``to_text(expr)`` prints ``(silu(k·W0) ⊙ (k·W2))·W1``; ``to_latex(expr)`` prints the same
with ``\\odot``, ``^{\\top}`` and named element-wise functions (derivatives as ``silu'``).
Both print a symbol's name as maths (``gamma`` as γ, ``W1_{0}`` as W1₀ / ``{W1}_{0}``) and a
rational whose denominator is a power of ten as a decimal or a power of ten (10⁻⁶, not 1/1000000).
"""

from __future__ import annotations

import re

import sympy
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from derivations.elementwise import scalar_function
from derivations.function_names import function_name

__all__ = ["to_text", "to_latex", "function_name", "name_text", "name_latex", "number_text", "prose_subscripts"]

_SUP = str.maketrans("0123456789+-()t", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾ᵗ")
_SUB = dict(zip("0123456789+-−()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₋₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ"))

#: the Greek letters a symbol's name may spell (``gamma`` → γ, ``\\gamma``)
GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "zeta": "ζ", "eta": "η",
         "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "rho": "ρ", "sigma": "σ",
         "tau": "τ", "phi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ",
         "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω"}

_NAME = re.compile(r"^(?P<letters>[A-Za-z]*)(?P<digits>[0-9]*)(?:_\{(?P<braced>[^{}]*)\}|_(?P<plain>.+))?$")


def _name_parts(name: str) -> tuple[str, str, str | None] | None:
    """``(letters, digits, subscript)`` of a name such as ``W1_{0}``, ``eta_t`` or ``gamma``
    (None for any other name, which is printed as it is)."""
    m = _NAME.match(name)
    if m is None or not m["letters"]:
        return None
    return m["letters"], m["digits"], m["braced"] if m["braced"] is not None else m["plain"]


def name_text(name: str) -> str:
    """A symbol's name as Unicode: Greek spelled out becomes the letter and a subscript is set
    in subscript digits and letters where Unicode has them (``W1_{0}`` → ``W1₀``, ``W_{t+1}`` →
    ``Wₜ₊₁``), else after an underscore (``z_W``, ``x_(c,p)``)."""
    parts = _name_parts(name)
    if parts is None:
        return name
    letters, digits, sub = parts
    head = GREEK.get(letters, letters) + digits
    if sub is None:
        return head
    if all(ch in _SUB for ch in sub):
        return head + "".join(_SUB[ch] for ch in sub)
    return f"{head}_{sub}" if len(sub) == 1 or sub.isalnum() else f"{head}_({sub})"


def name_latex(name: str) -> str:
    """A symbol's name as LaTeX: ``gamma`` → ``\\gamma``, ``W1`` → ``W_{1}``, ``W1_{0}`` →
    ``{W1}_{0}`` (W1 with the subscript 0), ``eta_t`` → ``\\eta_{t}``."""
    parts = _name_parts(name)
    if parts is None:
        return name
    letters, digits, sub = parts
    head = "\\" + letters if letters in GREEK else letters if len(letters) == 1 else rf"\mathrm{{{letters}}}"
    if sub is None:
        return f"{head}_{{{digits}}}" if digits else head
    return f"{{{head}{digits}}}_{{{sub}}}" if digits else f"{head}_{{{sub}}}"


#: in prose, a one-letter symbol (and a digit) with a short subscript (η_ij, k̂_j, S_0, W1_0,
#: φ_{t+1}), not words joined by _ (update_then_apply, z_W stays)
_PROSE_SUBSCRIPT = re.compile(r"(?<![^\Wᵀ])(?<![\u0302-\u0304])([^\W\d_][\u0302-\u0304]?[0-9]?)_"  # the symbol, then _
                              r"(?:\{([0-9a-z+\-−]{1,5})\}|([0-9a-z]{1,3})(?!(?!ᵀ)\w))")  # {script} or a short one


def prose_subscripts(text: str) -> str:
    """Subscripts in prose set as Unicode subscripts where every character has one (``η_ij`` →
    ``ηᵢⱼ``, ``φ_{t+1}`` → ``φₜ₊₁``); anything else (``z_W``, ``a_(p(i))``) is left as it is."""
    def sub(m):
        script = m[2] or m[3]
        return m[1] + "".join(_SUB[ch] for ch in script) if all(ch in _SUB for ch in script) else m[0]

    return _PROSE_SUBSCRIPT.sub(sub, text)


def _power_of_ten(n: int) -> int | None:
    """k with n = 10^k (k ≥ 1), else None."""
    text = str(n)
    return len(text) - 1 if len(text) > 1 and text == "1" + "0" * (len(text) - 1) else None


def number_text(r: sympy.Rational) -> str | None:
    """A rational with a power-of-ten denominator (from a decimal constant such as ε = 1e-6) as
    text: ``10⁻⁶`` for 1/10^k with k ≥ 4, a decimal (``0.001``, ``2.5``) otherwise; None for any
    other rational (1/2 stays a fraction)."""
    k = _power_of_ten(r.q)
    if k is None:
        return None
    sign = "−" if r.p < 0 else ""
    if abs(r.p) == 1 and k >= 4:
        return f"{sign}10{('-' + str(k)).translate(_SUP)}"
    whole, frac = divmod(abs(r.p), r.q)
    return f"{sign}{whole}.{str(frac).rjust(k, '0').rstrip('0')}"


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


def _float_text(x: sympy.Float) -> str:
    """A float constant as text: through :func:`number_text` where it is a short decimal
    (``1e-06`` → ``10⁻⁶``), else its shortest repr (``0.3``, ``1.5·10⁻⁸``)."""
    short = repr(float(x))
    exact = number_text(sympy.Rational(short))
    if exact is not None:
        return exact
    if "e" not in short:
        return short.replace("-", "−")
    mantissa, exp = short.split("e")
    return f"{mantissa.replace('-', '−')}·10{str(int(exp)).translate(_SUP)}"


def _decimal_coefficient(expr: sympy.Mul):
    """``(c, rest)`` when the product's numeric coefficient c is a decimal (a power-of-ten
    denominator) or a float, so it prints as ``10⁻⁶·rest`` and not ``rest/1000000``; else ``(None, expr)``."""
    coeff, rest = expr.as_coeff_Mul()
    if isinstance(coeff, sympy.Float) or (isinstance(coeff, sympy.Rational) and not coeff.is_Integer
                                          and _power_of_ten(coeff.q) is not None):
        return coeff, rest
    return None, expr


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
        if c.could_extract_minus_sign():
            return self.MINUS + self._print_MatMul(sympy.MatMul(-c, *mats))
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
        return name_text(expr.name)

    def _print_Symbol(self, expr):
        return name_text(expr.name)

    def _print_Rational(self, expr):
        return number_text(expr) or super()._print_Rational(expr)

    def _print_Float(self, expr):
        return _float_text(expr)

    def _print_Mul(self, expr):
        if expr.could_extract_minus_sign():
            return "−" + self._print(-expr)
        coeff, rest = _decimal_coefficient(expr)
        return f"{self._print(coeff)}·{self._print(rest)}" if coeff is not None else super()._print_Mul(expr)


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
        # a name with an underscore (gelu_tanh) is upright text, not an operator with a subscript
        op = {"sigmoid": r"\sigma"}.get(base, rf"\operatorname{{{base}}}" if "_" not in base
                                         else rf"\mathrm{{{base.replace('_', chr(92) + '_')}}}")
        return rf"{op}{chr(39) if prime else ''}\left({self._print(expr.expr)}\right)"

    def _print_OneMatrix(self, expr):
        return r"\mathbb{1}"

    def _print_MatrixSymbol(self, expr):
        return name_latex(expr.name)

    def _print_Float(self, expr):
        short = repr(float(expr))
        if number_text(sympy.Rational(short)) is not None:
            return self._print_Rational(sympy.Rational(short))
        mantissa, _, exp = short.partition("e")
        return rf"{mantissa} \cdot 10^{{{int(exp)}}}" if exp else mantissa

    def _print_Mul(self, expr):
        coeff, rest = _decimal_coefficient(-expr if expr.could_extract_minus_sign() else expr)
        if coeff is None:
            return super()._print_Mul(expr)
        return f"{'-' if expr.could_extract_minus_sign() else ''}{self._print(coeff)} {self._print(rest)}"

    def _print_Rational(self, expr):
        k = _power_of_ten(expr.q)
        if k is None:
            return super()._print_Rational(expr)
        if abs(expr.p) == 1 and k >= 4:
            return f"{'-' if expr.p < 0 else ''}10^{{-{k}}}"
        return number_text(expr).replace("−", "-")


def to_text(expr) -> str:
    """One-line Unicode text of an IR (or scalar) expression."""
    return TextPrinter().doprint(expr)


def to_latex(expr) -> str:
    """LaTeX of an IR (or scalar) expression."""
    return IRLatexPrinter().doprint(expr)
