"""``tttla derive``: text, LaTeX, JSON and the offline report, on the catalog and a user file."""

from __future__ import annotations

import json
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
