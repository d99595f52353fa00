"""Execute the tutorials top to bottom, each in a fresh kernel, and store their outputs.

    python notebooks/execute.py                      # every notebook, outputs written in place
    python notebooks/execute.py 02_paper_chain       # one notebook
    python notebooks/execute.py --out DIR            # executed copies in DIR, sources untouched

The kernel runs in an empty temporary working directory with the repository on its PYTHONPATH and
without ``TRITON_INTERPRET``: each notebook decides that itself (its first cell), as it does for a
reader. Cell timings and the kernel's version details are not stored and consecutive writes to a
stream are merged, so re-executing an unchanged notebook changes only the outputs of cells tagged
``timings``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from traitlets.config import Config

NOTEBOOK_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOK_DIR.parent
#: seconds a single cell may run (the Triton interpreter is the slow part)
CELL_TIMEOUT = 600


def notebooks() -> list[Path]:
    """Every tutorial, in reading order."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def kernel_env(tmpdir: str | None = None) -> dict[str, str]:
    """The kernel's environment: this one, with the repository importable, a non-interactive
    matplotlib and no inherited ``TRITON_INTERPRET`` (the notebook sets it when there is no GPU);
    ``tmpdir``: the kernel's temporary directory (``TMPDIR``), default this process's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    if tmpdir is not None:
        env["TMPDIR"] = tmpdir
    return env


def executed(nb: nbformat.NotebookNode, tmpdir: str | None = None) -> nbformat.NotebookNode:
    """A copy of ``nb`` run top to bottom in a fresh kernel (``TMPDIR=tmpdir`` when given); raises
    ``nbclient.exceptions.CellExecutionError`` on the first cell that fails."""
    nb = copy.deepcopy(nb)
    metadata = copy.deepcopy(nb.metadata)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with tempfile.TemporaryDirectory(prefix="notebook-run-") as cwd:
        config = Config()  # local sockets in cwd: no TCP port, no warning about plain-text TCP
        config.KernelManager.transport, config.KernelManager.ip = "ipc", str(Path(cwd) / "kernel")
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": cwd}}, config=config)
        client.execute(env=kernel_env(tmpdir), cwd=cwd)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merged_streams(cell.outputs)
    nb.metadata = metadata  # the kernel adds its Python version: machine detail, not content
    return nb


def merged_streams(outputs: list) -> list:
    """``outputs`` with consecutive writes to one stream as one output (how a cell's printing is
    split into outputs depends on when the kernel flushed)."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                and previous.name == output.name):
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def execute(path: Path, out: Path) -> None:
    """Execute the notebook at ``path`` and write it, with its outputs, to ``out``."""
    nbformat.write(executed(nbformat.read(path, as_version=4)), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all), e.g. 01_quickstart")
    parser.add_argument("--out", type=Path, help="write executed copies here instead of in place")
    args = parser.parse_args(argv)
    by_name = {p.stem: p for p in notebooks()}
    unknown = [n for n in args.names if n.removesuffix(".ipynb") not in by_name]
    if unknown:
        parser.error(f"no notebook named {', '.join(unknown)}; there are {', '.join(by_name)}")
    chosen = [by_name[n.removesuffix(".ipynb")] for n in args.names] or list(by_name.values())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for path in chosen:
        print(f"executing {path.name}", flush=True)
        execute(path, (args.out / path.name) if args.out else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
