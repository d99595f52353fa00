"""``tttla derive``: text, LaTeX, JSON and the offline report, on the catalog and a user file."""

from __future__ import annotations

import json
import re
import textwrap
import time

import pytest

from derivations.catalog import CATALOG
from derivations.reasons import CODES as REASON_CODES
from tttla.cli import main

USER_FILE = textwrap.dedent('''
    from derivations import variant, dot, silu, per_token, chunked

    @variant(fast={"A": ("d", "h"), "B": ("h", "d")}, update=["B"], loss=lambda y, v: -dot(y, v),
             lr=per_token(), schedule=chunked("block_inclusive", 16))
    def mine(x, A, B):
        """A user's GLU-free two-layer rule."""
        return silu(x @ A) @ B
''')

BAD_FILE = textwrap.dedent('''
    from derivations import variant, dot, silu

    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v))
    def bad(x, W):
        return silu(x @ W) @ W
''')


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_derive_text_on_catalog(name, capsys):
    start = time.perf_counter()
    assert main(["derive", name]) == 0
    print(f"tttla derive {name}: {time.perf_counter() - start:.3f} s")
    out = capsys.readouterr().out
    assert "q̂ =" in out and "v̂ =" in out and "classification" in out and "CERTIFIED" in out
    assert_readable_text(out)


#: what readable text never holds: LaTeX subscripts, a decimal constant as a fraction (ε as
#: 1/1000000), Greek spelled out, a Python dict
UNREADABLE = re.compile(r"_\{|\b\d+/10{3,}\b|\b(?:alpha|beta|gamma|eta|epsilon|phi)\b|\{'")


def assert_readable_text(out: str) -> None:
    bad = [line for line in out.splitlines() if UNREADABLE.search(line)]
    assert not bad, f"{len(bad)} unreadable lines, e.g. {bad[:2]}"


def test_derive_text_prints_maths_as_unicode(capsys):
    assert main(["derive", "ttt_linear"]) == 0
    out = capsys.readouterr().out
    assert "+ 10⁻⁶·𝟙" in out and "γ ⊙" in out and "+ β" in out and "S₀ = W₀" in out
    assert "∇_W ℓ = kᵀ·c₈" in out and out.count("c₁ = ") == 1  # each shared part defined once
    assert "(1) u₄ + β + x" in out  # the head, out of the reasons, shown once below them
    assert main(["derive", "lact"]) == 0
    out = capsys.readouterr().out
    assert "S₀ = W1₀" in out and "W0ₜ₊₁ = W0ₜ − ηₜ·∇_W0 ℓₜ" in out and "q̂ₜ = φₜ₊₁(qₜ)" in out


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_derive_json_on_catalog(name, capsys):
    assert main(["derive", name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("reducible", "kernel", "values", "parallel", "reasons", "certified", "effective"):
        assert key in data
    assert data["reducible"] is True and data["certified"] is True
    assert data["kernel"] in ("static", "dynamic")
    assert data["values"] in ("state_independent", "state_dependent")
    assert set(data["effective"]) >= {"query", "key", "value", "state0"}
    assert len(data["reason_codes"]) == len(data["reasons"]) and set(data["reason_codes"]) <= set(REASON_CODES)


def test_derive_latex_and_format(capsys):
    assert main(["derive", "lact_v2", "--latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{align*}" in latex and r"\odot" in latex
    assert main(["derive", "lact_v2", "--format", "latex"]) == 0
    assert capsys.readouterr().out == latex


def test_derive_user_file_and_report(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(USER_FILE)
    assert main(["derive", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variant"] == "mine" and data["parallel"] is True and data["kernel"] == "static"
    out = tmp_path / "report"
    assert main(["derive", f"{path}:mine", "--report", str(out)]) == 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "silu" in md and "$$" in md and "def mine" in md
    assert "<math" in page and "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def test_derive_report_for_catalog(tmp_path, capsys):
    assert main(["derive", "lact", "--report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("<math") > 10 and "http" not in page


def test_non_reducible_user_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(BAD_FILE)
    assert main(["derive", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "silu(x·W)·W" in err and "enters it through silu(z_W)·W" in err and err.startswith("tttla derive: error:")


TANH_FILE = textwrap.dedent('''
    from derivations import variant, dot, tanh, constant, token_level

    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v), lr=constant(0.1),
             schedule=token_level())
    def squashed(x, W):
        """A tanh head over one linear layer."""
        return tanh(x @ W)
''')


def _derive(argv, capsys):
    assert main(["derive", *argv, "--no-certificate"]) == 0
    return capsys.readouterr().out


def test_a_headed_model_says_its_read_is_through_the_head(tmp_path, capsys):
    """tanh(x·W) is reducible, but its output is o = tanh(q̂ S), not o = q̂ S: every output says so."""
    path = tmp_path / "squashed.py"
    path.write_text(TANH_FILE)
    data = json.loads(_derive([str(path), "--json"], capsys))
    assert data["reducible"] is True and data["structure"] == "headed" and data["head"] == "tanh(z_W)"
    assert data["read"] == "o = tanh(z_W) with z_W = q̂ S_W"
    text = _derive([str(path)], capsys)
    assert "structure: headed (o = tanh(z_W) with z_W = q̂ S_W) · reducible: yes" in text
    assert "f = tanh(z_W)" in text and "z_W = x·W" in text
    assert main(["derive", str(path), "--no-certificate", "--report", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| headed | o = tanh(z_W) with z_W = q̂ S_W | True |" in md and "under a head" in md


@pytest.mark.parametrize("name, structure, head", [("lact_v2", "linear", None), ("ttt_linear", "headed", "x + "),
                                                   ("vittt_glu", "gated", "z_W1 ⊙ silu(z_W2)")])
def test_the_structure_of_catalog_variants(name, structure, head, capsys):
    data = json.loads(_derive([name, "--json"], capsys))
    assert data["structure"] == structure
    assert data["head"] is None if head is None else head in data["head"]
    assert (data["read"] == "o = q̂ S") == (structure == "linear")


#: parallelism → (parallel, prefix_scan, parallel_form, the text's parallel field)
AGREEING = {
    "prefix_scan": (True, True, "prefix_scan", "parallel: prefix scan"),
    "one_step": (True, True, "prefix_scan", "parallel: one step on all tokens"),
    "chunk_parallel": (True, False, "delta_chunk", "parallel: chunk-parallel (delta_chunk"),
    "sequential": (False, False, "sequential", "parallel: no (a scan over the inner steps)"),
}


@pytest.mark.parametrize("name, parallelism", [
    ("linear_attention", "prefix_scan"), ("vittt_glu", "one_step"), ("delta_rule", "chunk_parallel"),
    ("gated_delta_rule", "chunk_parallel"), ("lact", "sequential"), ("ttt_linear", "sequential")])
def test_the_verdict_fields_agree(name, parallelism, tmp_path, capsys):
    """delta_rule used to print "parallel: no · parallel form: delta_chunk"."""
    parallel, prefix_scan, parallel_form, said = AGREEING[parallelism]
    data = json.loads(_derive([name, "--json"], capsys))
    assert (data["parallelism"], data["parallel"], data["prefix_scan"], data["parallel_form"]) == (
        parallelism, parallel, prefix_scan, parallel_form)
    text = _derive([name, "--report", str(tmp_path)], capsys)
    assert said in text and "parallel: no · parallel form" not in text
    assert said.removeprefix("parallel: ") in (tmp_path / "report.md").read_text()
