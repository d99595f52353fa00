"""The project's documents stand on their own: no hand-written file points at the maths outside
the repository, and every relative link in README.md and docs/*.md leads to a file (and heading)
in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where the maths used to live, outside this repository
OUTSIDE = ("shared/reference", "ttt-math.md", "reference Section")
HAND_WRITTEN = (".py", ".md", ".ipynb", ".jinja")
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _generated(path: str) -> bool:
    """A module under tttla_kernels/<variant>/, written by codegen (its templates are checked)."""
    parts = Path(path).parts
    return len(parts) > 2 and parts[0] == "tttla_kernels"


def hand_written_files() -> list[str]:
    return [p for p in _tracked() if p.endswith(HAND_WRITTEN) and not _generated(p) and (ROOT / p).is_file()
            and Path(p).name != "test_docs.py"]  # this file names the strings it looks for


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {github_anchor(h) for h in HEADING.findall(path.read_text(encoding="utf-8"))}


def relative_links(doc: str) -> list[str]:
    """The link targets of ``doc`` that are neither web addresses nor mail."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links inside code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_files_are_found():
    files = hand_written_files()
    assert "README.md" in files and "docs/maths.md" in files and "derivations/classify.py" in files
    assert "codegen/templates/chunk.py.jinja" in files
    assert not any(f.startswith("tttla_kernels/lact_v2/") for f in files)
    assert "tttla_kernels/runtime.py" in files


@pytest.mark.parametrize("path", hand_written_files())
def test_no_pointer_outside_the_repository(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    found = [s for s in OUTSIDE if s in text]
    assert not found, f"{path} refers to {found}: explain the maths in docs/maths.md and point there instead"


def test_github_anchor():
    assert github_anchor("3. One gradient step is a rank-1 update (Theorem 5.1)") == \
        "3-one-gradient-step-is-a-rank-1-update-theorem-51"
    assert github_anchor("10. Newton–Schulz, weight norm and the clip") == "10-newtonschulz-weight-norm-and-the-clip"


def test_relative_links_finds_links():
    assert "docs/maths.md" in relative_links("README.md")
    assert any(t.startswith("#") for t in relative_links("docs/maths.md"))


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_relative_links_resolve(doc):
    source = ROOT / doc
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.is_file() or ROOT not in file.parents:
            broken.append(f"{target} (no file {path} in the repository)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{doc}: broken links: {broken}"


def _readme_tables():
    """benchmarks/readme_tables.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_rendered_from_the_committed_results():
    """Every marked table of README.md is exactly what benchmarks/readme_tables.py renders from the
    committed results files (no number is typed by hand)."""
    readme_tables = _readme_tables()
    found = readme_tables.tables_in((ROOT / "README.md").read_text())
    assert set(found) == set(readme_tables.TABLES)
    for name in readme_tables.TABLES:
        assert found[name] == readme_tables.render(name), f"README table {name!r}: run benchmarks/readme_tables.py"


def test_catalog_results_match_the_engine():
    """benchmarks/results/catalog.json holds every catalog variant with the verdict the engine
    derives now (re-measure with ``benchmarks/readme_tables.py --measure`` after a change)."""
    import json

    from derivations.catalog import CATALOG

    readme_tables = _readme_tables()

    committed = json.loads((ROOT / "benchmarks" / "results" / "catalog.json").read_text())["variants"]
    assert [e["name"] for e in committed] == list(CATALOG)
    for entry in committed:
        now = readme_tables.catalog_entry(entry["name"])
        for field in readme_tables.VERDICT_FIELDS:
            assert entry[field] == now[field], f"{entry['name']}: {field} is {now[field]!r}, committed {entry[field]!r}"


def _timed_result(variant: str, config: dict, rows: list[dict]) -> dict:
    return {"results": {variant: {"variant": variant, "config": config, "rows": rows}}}


#: a row measured with its spread and B·T, and one from a file written before either was recorded
SPREAD_ROWS = [
    {"name": "chunk", "pass": "forward", "seconds": 0.002, "seconds_min": 0.0015, "seconds_max": 0.0031,
     "tokens_per_s": 2.0e6, "sequence_tokens_per_s": 5.0e5, "fraction_of_matmul": 0.5, "speedup_vs_oracle": 3.0},
    {"name": "recurrent", "pass": "forward", "seconds": 0.004, "tokens_per_s": 1.0e6, "fraction_of_matmul": 0.25,
     "speedup_vs_oracle": 1.5},
]


@pytest.mark.parametrize("table", ["cpu_table", "gpu_table"])
def test_timed_tables_show_the_spread_where_recorded(table):
    """A row's min–max and B·T throughput appear where its results file records them and read
    "—" where it does not (never made up); the headers say what tokens/s counts."""
    render = getattr(_readme_tables(), table)
    config = {"seq_len": 1024, "dim": 16, "chunk": 64, "batch_heads": 4, "batch": 1}
    lines = render(_timed_result("gla", config, SPREAD_ROWS)).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[3:7] == ["ms", "min–max ms", f"{'k' if table == 'cpu_table' else 'M'} head-tok/s (B·H·T)",
                           f"{'k' if table == 'cpu_table' else 'M'} tok/s (B·T)"]
    measured, old = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    assert "B = 1, H = 4" in measured[0]
    assert measured[4] == ("1.5–3.1" if table == "cpu_table" else "1.50–3.10")
    assert measured[6] == ("500.0" if table == "cpu_table" else "0.5")
    assert old[4] == old[6] == "—" and old[5] != "—"
    older = {k: v for k, v in config.items() if k != "batch"}  # a file that does not record B
    assert "B·H = 4" in render(_timed_result("gla", older, SPREAD_ROWS))


EXAMPLE = re.compile(r"<!-- example:([\w-]+) -->\n```python\n(.*?)```", flags=re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/coming-from-fla.md"])
def test_marked_examples_run(doc):
    """Every Python block after an ``<!-- example:NAME -->`` marker runs as written (the fla page's
    example imports fla, a test dependency)."""
    examples = EXAMPLE.findall((ROOT / doc).read_text(encoding="utf-8"))
    assert examples, f"no marked example found in {doc}"
    for name, code in examples:
        if "import fla" in code or "from fla" in code:
            pytest.importorskip("fla.ops")
        exec(compile(code, f"{doc} example {name}", "exec"), {})
