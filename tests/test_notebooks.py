"""The tutorials in notebooks/: committed with the outputs of one clean top-to-bottom run, so they read
without running; outputs clean (no error, stderr, absolute path or memory address), timings marked;
each one still runs, executed as a copy, leaves no temporary folder behind and prints what is committed."""

import ast
import importlib.util
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")

#: what a cell tagged ``timings`` says where the reader sees it (its text output, or its plot's title)
TIMINGS_NOTE = "timings on the machine that ran this notebook"
#: a cell whose source does one of these measures time: it must be tagged ``timings``
TIMING_CALLS = ("run_bench", "perf_counter", "timeit")
#: the largest committed output (a small plot is about 27 kB of base64)
MAX_OUTPUT_CHARS = 40_000
#: relative errors printed as ``4.3e-16``: rounding, which differs between machines
ROUNDING = re.compile(r"\b\d\.\de[-+]\d+\b")


def read(path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def output_text(output) -> str:
    """What a reader sees of one output as text (streams, plain-text results, error tracebacks)."""
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join([output.ename, output.evalue, *output.traceback])
    return output.get("data", {}).get("text/plain", "")


def shows_something(source: str) -> bool:
    """Whether a cell prints or displays: it calls print/display, or ends on an expression without ``;``."""
    tree = ast.parse(source)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    ends_on_expression = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return bool(calls & {"print", "display"}) or (ends_on_expression and not source.rstrip().endswith(";"))


def test_the_four_tutorials_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_paper_chain", "03_your_kernel", "04_structured_weights"]


def test_shows_something_tells_printing_cells():
    assert shows_something("x = 1\nprint(x)")
    assert shows_something("import io\nImage(b'')")
    assert not shows_something("x = 1")
    assert not shows_something("f(x);")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_the_outputs_of_one_clean_run(path):
    cells = code_cells(read(path))
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), (
        f"{path.name}: execute it top to bottom in a fresh kernel: python notebooks/execute.py {path.stem}")
    silent = [f"In [{i + 1}]" for i, c in enumerate(cells) if shows_something(c.source) and not c.outputs]
    assert not silent, f"{path.name}: {', '.join(silent)} print but have no stored output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_clean_and_small(path):
    machine = [tempfile.gettempdir(), "/tmp/", str(ROOT), str(Path.home())]
    for i, cell in enumerate(code_cells(read(path))):
        for output in cell.outputs:
            where = f"{path.name}, In [{i + 1}]"
            assert output.output_type != "error", f"{where}: an error is stored"
            assert output.get("name") != "stderr", f"{where}: stderr (a warning?) is stored: {output.text[:200]}"
            text = output_text(output)
            assert "Traceback" not in text, f"{where}: a traceback is stored"
            paths = [m for m in machine if m in text]
            assert not paths, f"{where}: a path of this machine ({paths[0]}) is stored: {text[:200]}"
            assert not re.search(r" at 0x[0-9a-f]+", text), f"{where}: a memory address is stored: {text[:200]}"
            assert set(output.get("data", {})) <= {"text/plain", "image/png"}, f"{where}: only text and PNG"
            assert len(json.dumps(output)) < MAX_OUTPUT_CHARS, (
                f"{where}: an output over {MAX_OUTPUT_CHARS} characters: summarise it instead")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_timings_are_marked(path):
    for i, cell in enumerate(code_cells(read(path))):
        tagged = "timings" in cell.metadata.get("tags", [])
        if any(call in cell.source for call in TIMING_CALLS):
            assert tagged, f"{path.name}, In [{i + 1}] measures time: tag it `timings`"
        if tagged:
            shown = cell.source + "".join(output_text(o) for o in cell.outputs)
            assert TIMINGS_NOTE in shown, f"{path.name}, In [{i + 1}]: say '{TIMINGS_NOTE}'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_switches_on_the_triton_interpreter_without_a_gpu(path):
    nb = read(path)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    setup = nb.cells[first].source
    assert 'if not torch.cuda.is_available():\n    os.environ["TRITON_INTERPRET"] = "1"' in setup
    imports = [n for n in ast.walk(ast.parse(setup)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = {getattr(n, "module", None) or a.name for n in imports for a in n.names}
    assert imported == {"os", "torch"}, "set TRITON_INTERPRET before importing tttla or triton"
    explained = " ".join(c.source for c in nb.cells[:first] if c.cell_type == "markdown")
    assert "TRITON_INTERPRET" in explained and "interpreter" in explained, "say why before the cell"


# ---- executed: each notebook once per session, as a copy, in a fresh kernel with its own TMPDIR


def load_executor():
    pytest.importorskip("nbclient")
    spec = importlib.util.spec_from_file_location("notebook_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merged_streams_joins_consecutive_writes_to_one_stream():
    execute = load_executor()
    outputs = [nbformat.v4.new_output("stream", name=n, text=t)
               for n, t in [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "c\n"), ("stdout", "d\n")]]
    assert [(o.name, o.text) for o in execute.merged_streams(outputs)] == [
        ("stdout", "a\nb\n"), ("stderr", "c\n"), ("stdout", "d\n")]


class Run:
    """One notebook executed: the committed file's bytes before and after, the fresh notebook, and
    the kernel's temporary directory."""

    def __init__(self, path: Path, tmpdir: Path):
        self.path, self.tmpdir = path, tmpdir
        self.before = path.read_bytes()
        self.fresh = load_executor().executed(read(path), tmpdir=str(tmpdir))
        self.after = path.read_bytes()


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def run(request, tmp_path_factory):
    tmpdir = tmp_path_factory.mktemp(f"{request.param.stem}-tmp")
    return Run(request.param, tmpdir)  # a failing cell raises CellExecutionError: the tests fail


def shown(nb) -> dict[int, list]:
    """Code cell index (from 0) → its outputs as a reader sees them, rounding-level errors masked (a PNG
    counts by its presence), for every code cell not tagged ``timings``."""
    return {i: [(o.output_type, o.get("name"), ROUNDING.sub("<rounding>", output_text(o)), sorted(o.get("data", {})))
                for o in cell.outputs]
            for i, cell in enumerate(code_cells(nb)) if "timings" not in cell.metadata.get("tags", [])}


@pytest.mark.slow
def test_runs_on_a_copy(run):
    assert run.after == run.before, f"{run.path.name} was rewritten by its test run"


@pytest.mark.slow
def test_leaves_no_temporary_folder(run):
    left = sorted(p.name for p in run.tmpdir.glob("tttla-*"))
    assert not left, f"{run.path.name} left {left} in the temporary directory"


@pytest.mark.slow
def test_committed_outputs_are_what_a_fresh_run_prints(run):
    if torch.cuda.is_available():
        pytest.skip("the committed outputs are a CPU run's (Triton in its interpreter)")
    committed, fresh = shown(read(run.path)), shown(run.fresh)
    assert committed.keys() == fresh.keys()
    for i, want in committed.items():
        assert fresh[i] == want, (f"{run.path.name}, In [{i + 1}] prints something else now: "
                                  f"re-execute it with python notebooks/execute.py {run.path.stem}")
