"""``tttla report`` and the main job ``tttla catalog``: the report's sections in order, its
self-contained HTML, its figures, the GPU section, and the catalog's summary and exit status."""

import re
import textwrap
from pathlib import Path

import pytest

from derivations.form import Reason
from tttla.cli import main
from tttla.reporting.theorems import cited

SECTIONS = ["## Declaration", "## Inner loss and gradients", "## Effective linear attention", "## Unrolled state",
            "## Classification", "## Certificate", "## Generated code", "## Verification", "## CPU benchmark",
            "## GPU results"]

USER_FILE = textwrap.dedent('''
    from derivations import variant, dot, silu, per_token, momentum, chunked

    @variant(fast={"A": ("d", "h"), "W": ("h", "d")}, update=["W"], loss=lambda y, v: -dot(y, v),
             lr=per_token(), momentum=momentum(per="chunk"), schedule=chunked(order="block_inclusive"))
    def mine(x, A, W):
        """silu features, chunk momentum."""
        return silu(x @ A) @ W
''')


def test_report_has_every_section_in_order(small_report):
    md = Path(small_report.markdown).read_text()
    positions = [md.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions)
    assert "def lact_v6(x, W):" in md  # the declaration as written
    assert r"\nabla_{W} \ell" in md and r"\hat q" in md and "S_0" in md
    assert "| decision | reason | rests on |" in md and "**Theorem 5.1**:" in md
    assert "**certified**" in md


def test_report_lists_generated_functions_with_signatures(small_report):
    md = Path(small_report.markdown).read_text()
    for f in small_report.functions:
        assert f.path.is_file() and f.path.parent == small_report.folder
        assert f"def {f.name}(" in md and f"`kernels/lact_v6/{f.path.name}`" in md
    assert {f.form for f in small_report.functions} == {"recurrent", "chunk", "triton"}
    assert "initial_state: torch.Tensor | None = None" in md


def test_report_verification_and_benchmark(small_report):
    md = Path(small_report.markdown).read_text()
    for dtype in ("float64", "float32"):
        assert small_report.verified(dtype) is True
        assert f"### Forms in {dtype}" in md
        assert re.search(rf"\| triton \| {dtype} \| 3 \| 3 \|", md)
    assert "| 32 | chunk | forward+backward |" in md and "not timed here" in md
    assert "NVIDIA H100 (test fixture)" in md and "| triton | forward | 1.000 |" in md
    folder = Path(small_report.markdown).parent
    for png in ("verification_errors.png", "cpu_throughput.png"):
        assert f"]({png})" in md and (folder / png).read_bytes().startswith(b"\x89PNG")


def test_report_html_is_self_contained(small_report):
    page = Path(small_report.html).read_text()
    assert page.count("<math") > 10 and page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert re.findall(r'\b(?:src|href)="([^"]*)"', page) == [m for m in re.findall(
        r'\b(?:src|href)="([^"]*)"', page) if m.startswith("data:")]


def test_cited_references():
    reasons = (Reason("kernel.static", ("Theorem 5.2",)), Reason("parallel.prefix_scan", ("Section 5", "Section 4")),
               Reason("values.state_independent", ("Section 4", "Theorem 5.2")))
    assert cited(reasons) == ["Theorem 5.2", "Section 5", "Section 4"]


def test_report_command_on_a_user_file(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(USER_FILE)
    out = tmp_path / "r"
    assert main(["report", str(path), "--out", str(out), "--cases", "2", "--no-bench"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("mine: verify float64 pass, float32 pass")
    md = (out / "report.md").read_text()
    assert "def mine(x, A, W):" in md and "## Momentum coefficients" in md and "## CPU benchmark" not in md
    assert (out / "kernels" / "mine" / "chunk.py").is_file() and (out / "report.html").is_file()


def test_catalog_main_job(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["catalog", "--quick", "--only", "lact_v6,delta_rule", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["variant", "classification", "certified", "fp64", "fp32", "report"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"lact_v6", "delta_rule"}
    assert "prefix_scan" in rows["lact_v6"] and "delta_chunk" in rows["delta_rule"]
    for name, row in rows.items():
        assert re.search(r"\byes\s+pass\s+pass\s", row)
        assert (out / "reports" / name / "report.html").is_file() and str(out / "reports" / name) in row
        assert (out / "kernels" / name / "__init__.py").is_file()
    # the columns line up
    assert len({line.index(" yes ") for line in rows.values()}) == 1


def test_catalog_exits_1_on_a_failure(tmp_path, capsys, monkeypatch):
    import tttla.reporting

    def broken(name, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tttla.reporting, "build_report", broken)
    assert main(["catalog", "--quick", "--only", "lact_v6", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED lact_v6: boom" in out and re.search(r"lact_v6\s+error", out)


@pytest.mark.parametrize("argv", [["catalog", "--only", "lact_v7"], ["catalog", "--cases", "0"]])
def test_catalog_mistakes(argv, capsys):
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_long_expressions_name_their_shared_parts():
    from derivations import derive
    from derivations.printing import to_text
    from derivations.shared_parts import canonical, shared_parts, with_parts
    from tttla.reporting.form_text import render_text

    form = derive("ttt_linear", certify=False)
    main, parts = shared_parts(form.value)
    assert parts and [s.name for s, _ in parts] == [f"c_{i}" for i in range(1, len(parts) + 1)]
    back = main
    for name, body in reversed(parts):  # substituting the parts back gives the expression itself
        back = back.xreplace({name: body})
    assert back == canonical(form.value)  # the same expression, sums and products in one order
    text, lines = with_parts(form.value, to_text)
    assert len(text) + sum(map(len, lines)) < len(to_text(form.value)) / 3
    short, none = with_parts(derive("lact_v6", certify=False).value, to_text)
    assert none == [] and short == to_text(derive("lact_v6", certify=False).value)
    report = render_text(form)
    assert "where c₁ = k·W\n" in report and "where c₉ = k·Wₜ\n" in report  # the gradients' parts, then v̂'s
