"""The derivation report reads as maths: names and constants typeset, each named part defined
once, long expressions out of the tables, no raw LaTeX or Python repr in the prose."""

import re
from functools import cache

import pytest
import sympy

from derivations import derive
from derivations.printing import name_latex, name_text, number_text, prose_subscripts, to_latex, to_text
from tttla.reporting.derivation_report import md_classification, render_html, render_markdown
from tttla.reporting.form_text import INLINE

#: the variants whose reports were hard to read (a LayerNorm head, a dynamic kernel, Muon and a
#: weight norm, a depthwise convolution, a per-channel decay)
HARD = ("ttt_linear", "ttt_mlp", "lact", "vittt_dwconv", "gla")

#: the most characters of maths in one table cell: an expression of up to INLINE (60) characters
#: with the few symbols around it (``v̂ = −η·…``); longer expressions are numbered equations below
#: the tables. At the report's width this keeps a cell's maths within two lines of its column.
CELL_MATHS = 80


@cache
def _form(name):
    return derive(name, certify=name == "ttt_linear")


def test_names_are_typeset():
    assert [name_text(n) for n in ("gamma", "W1_{0}", "W_{t+1}", "eta_t", "z_W", "c_12", "x_{c,p}")] == \
        ["γ", "W1₀", "Wₜ₊₁", "ηₜ", "z_W", "c₁₂", "x_(c,p)"]
    assert [name_latex(n) for n in ("gamma", "W1_{0}", "W1", "beta", "rms")] == \
        [r"\gamma", "{W1}_{0}", "W_{1}", r"\beta", r"\mathrm{rms}"]
    W = sympy.MatrixSymbol("gamma", 1, 3)
    assert to_text(W) == "γ" and to_latex(W) == r"\gamma"  # not g·a·m·m·a


def test_decimal_constants_are_decimals_or_powers_of_ten():
    eps, d = sympy.Rational(1, 10**6), sympy.Symbol("d")
    assert number_text(eps) == "10⁻⁶" and number_text(sympy.Rational(-3, 1000)) == "−0.003"
    assert number_text(sympy.Rational(1, 2)) is None  # a plain fraction stays a fraction
    assert to_text(eps * d) == "10⁻⁶·d" and to_latex(eps * d) == "10^{-6} d"
    assert to_text(sympy.Float(1e-6) * d) == "10⁻⁶·d" and to_latex(sympy.Float(1.5e-8)) == r"1.5 \cdot 10^{-8}"
    ones = sympy.OneMatrix(1, 3)
    assert to_text(sympy.MatAdd(ones * eps, -ones / d)) in ("10⁻⁶·𝟙 − 1/d·𝟙", "−1/d·𝟙 + 10⁻⁶·𝟙")


def test_prose_subscripts():
    assert prose_subscripts("η_ij = a_i η_j, k̂_jᵀ v̂_j, S_0 = W1_0, q̂_t = φ_{t+1}(q_t), ᾱ_n") == \
        "ηᵢⱼ = aᵢ ηⱼ, k̂ⱼᵀ v̂ⱼ, S₀ = W1₀, q̂ₜ = φₜ₊₁(qₜ), ᾱₙ"
    kept = "update_then_apply z_W a_last a_(p(i)) max_rel"
    assert prose_subscripts(kept) == kept


def _defined(md: str) -> list[str]:
    return re.findall(r"^\$\$([cu]_\{\d+\}) = ", md, flags=re.M)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_each_named_part_is_defined_once(name):
    md = render_markdown(_form(name))
    defined = _defined(md)
    assert defined and len(defined) == len(set(defined)), sorted(d for d in defined if defined.count(d) > 1)
    used = set(re.findall(r"\b[cu]_\{\d+\}", md))
    assert used == set(defined), used ^ set(defined)
    assert md.count("where\n") == 3  # the gradients', v̂'s and the tables' expressions: one block each


def _maths_run(cell: str) -> int:
    """The characters of the longest run of a cell's words that are not English words (its maths)."""
    word = re.compile(r"^\(?(?:[A-Za-z][a-z]{2,}|Section|Theorem|App\.)[,;:.)]*$")
    best = run = 0
    for token in cell.split():
        run = 0 if word.match(token) else run + len(token) + 1
        best = max(best, run)
    return best


@pytest.mark.parametrize("name", [*HARD, "gated_delta_rule", "vittt_glu"])
def test_table_cells_hold_short_maths(name):
    md = md_classification(_form(name))
    cells = [c.strip() for line in md.splitlines() if line.startswith("|") for c in line.strip("|").split("|")]
    worst = max(cells, key=_maths_run)
    assert _maths_run(worst) <= CELL_MATHS, worst
    references = sorted(set(re.findall(r"\((\d+)\)", " ".join(cells))))
    for n in references:  # each reference is displayed below the tables
        assert f"$$({n})\\qquad " in md


def test_long_expressions_become_numbered_equations():
    md = md_classification(_form("ttt_linear"))
    assert "f = (1) with z_W the last linear layer" in md and "v̂ = −η ∂ℓ/∂z = −η·(2)" in md
    assert "| headed | o = (1) with z_W = q̂ S_W + b, x = q |" in md
    assert len(max(md.splitlines(), key=len)) < 400  # before: one cell of about 2,000 characters
    assert INLINE < CELL_MATHS


@pytest.mark.parametrize("name", HARD)
def test_prose_has_no_raw_notation(name):
    page = render_html(_form(name))
    prose = re.sub(r"<math.*?</math>|<pre>.*?</pre>|<code>.*?</code>", " ", page, flags=re.S)
    for raw in ("_{", "\\frac", "\\hat", "{'", "1/1000000"):
        assert raw not in prose, (raw, prose[max(0, prose.find(raw) - 80):prose.find(raw) + 80])
    assert "1000000" not in page  # ε is 10⁻⁶ in the maths too
    if name.startswith("ttt"):  # the LayerNorm's γ and β (declared as gamma and beta) typeset as letters
        assert "<mi>&#x003B3;</mi>" in page and "<mi>&#x003B2;</mi>" in page  # γ, β
        assert "<mi>g</mi><mi>a</mi><mi>m</mi>" not in page


def test_certificate_sizes_read_as_text():
    md = render_markdown(_form("ttt_linear"))
    assert "(sizes T = 3, d = 2, h = 2, chunk = 2)" in md
