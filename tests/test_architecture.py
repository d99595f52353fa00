"""The import graph of the toolkit, read from the source with ``ast``.

Packages are layered and arrows point down only: ``tttla`` (CLI, reports) → ``verify`` →
``codegen`` → ``derivations``; the generated ``tttla_kernels`` import only torch, Triton and
the standard library, so they run without the toolkit. Within the tree, imports form no cycle,
and no module takes a private (``_name``) symbol from another one.

Every import counts for the layering, a function-level one included: a lazy import still
couples the packages. Cycles are checked twice: among module-level imports (those run at
import time, and a cycle among them breaks it) and with function-level imports included (a lazy
import dodges a cycle, it does not remove it). ``if TYPE_CHECKING:`` imports never run and
count for neither.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: top to bottom: a package may import those after it, never those before it
LAYERS = ("tttla", "verify", "codegen", "derivations")
KERNELS = "tttla_kernels"
#: all the generated kernels may import besides the standard library
KERNELS_MAY_IMPORT = {KERNELS, "torch", "triton"}
PACKAGES = (*LAYERS, KERNELS)


@dataclass(frozen=True)
class Import:
    """One imported module (or one name taken from it) at one place in the source."""

    source: str
    target: str
    name: str | None  # the name a ``from target import name`` takes; None for a module
    where: str  # file:line
    module_level: bool

    def __str__(self):
        taken = f" ({self.name})" if self.name else ""
        return f"{self.where}: {self.source} imports {self.target}{taken}"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` by dotted name (a package by its own name)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(dotted: str, known) -> str:
    """The longest prefix of ``dotted`` that is a module of the tree (else ``dotted`` itself)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return dotted


def _is_type_checking(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    return "TYPE_CHECKING" in (getattr(node.test, "id", None), getattr(node.test, "attr", None))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _statements(tree):
    """``(statement, module_level)`` for every import statement that can run."""
    def walk(node, module_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]), module_level)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, module_level
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(child, inner)

    yield from walk(tree, True)


def imports_of(name: str, path: Path, known, root: Path) -> list[Import]:
    """The imports of module ``name`` (file ``path``), each resolved to a module of ``known``
    where it names one (``from pkg import mod`` is an import of ``pkg.mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node, module_level in _statements(tree):
        where = f"{path.relative_to(root)}:{node.lineno}"
        if isinstance(node, ast.Import):
            out += [Import(name, _resolve(a.name, known), None, where, module_level) for a in node.names]
            continue
        if node.module == "__future__":
            continue
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                out.append(Import(name, submodule, None, where, module_level))
            else:
                out.append(Import(name, _resolve(base, known), alias.name, where, module_level))
    return out


def import_graph(root: Path, packages=PACKAGES) -> list[Import]:
    files = module_files(root, packages)
    return [imp for name, path in files.items() for imp in imports_of(name, path, files, root)]


def _top(module: str) -> str:
    return module.split(".")[0]


def upward_imports(imports: list[Import]) -> list[Import]:
    """Imports that point up the layers, or from the kernels to anything but torch, Triton and
    the standard library."""
    bad = []
    for imp in imports:
        src, dst = _top(imp.source), _top(imp.target)
        if src == KERNELS:
            if dst not in KERNELS_MAY_IMPORT and dst not in sys.stdlib_module_names:
                bad.append(imp)
        elif src in LAYERS and dst in LAYERS and LAYERS.index(dst) < LAYERS.index(src):
            bad.append(imp)
    return bad


def import_cycles(imports: list[Import], known, lazy_included: bool = False) -> list[list[str]]:
    """The groups of modules that import each other in a circle, each as its edges
    (``file:line: a → b``); module-level imports only unless ``lazy_included``."""
    edges: dict[str, dict[str, str]] = {m: {} for m in known}  # source → {target: where}
    for imp in imports:
        if (imp.module_level or lazy_included) and imp.target in known and imp.target != imp.source:
            edges[imp.source].setdefault(imp.target, imp.where)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append([f"{where}: {m} → {w}" for m in sorted(group)
                               for w, where in edges[m].items() if w in group])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def private_imports(imports: list[Import], known) -> list[Import]:
    """``from module import _name`` where ``module`` is one of the tree's."""
    return [imp for imp in imports if imp.name and imp.target in known and _is_private(imp.name)]


def private_attributes(root: Path, packages=PACKAGES) -> list[str]:
    """``module._name`` where ``module`` is bound to a module of the tree by an import."""
    files = module_files(root, packages)
    bad = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # ``import a.b`` binds a; ``import a.b as c`` binds c to a.b
                for a in node.names:
                    top = a.name.split(".")[0]
                    bound[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom) and node.module:
                bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            dotted, value = [], node.value
            while isinstance(value, ast.Attribute):
                dotted.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                module = ".".join([bound[value.id], *dotted])
                if module in files:
                    bad.append(f"{path.relative_to(root)}:{node.lineno}: {name} reads {module}.{node.attr}")
    return bad


def _listing(items) -> str:
    return "\n  " + "\n  ".join(map(str, items))


# ---- the toolkit ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT), module_files(ROOT)


def test_imports_point_down_the_layers(graph):
    imports, _ = graph
    bad = upward_imports(imports)
    rule = f"{' → '.join(LAYERS)}; {KERNELS} imports only torch, triton and the standard library"
    assert not bad, f"imports against the layering ({rule}):" + _listing(bad)


@pytest.mark.parametrize("lazy_included", [False, True], ids=["module-level", "lazy-included"])
def test_imports_form_no_cycle(graph, lazy_included):
    """Module-level cycles break at import time; one closed only by a function-level import is
    still a cycle between the modules (the lazy import dodges it, it does not remove it)."""
    imports, known = graph
    cycles = import_cycles(imports, known, lazy_included)
    assert not cycles, "import cycles (each group's edges):" + "".join(_listing(c) for c in cycles)


def test_no_private_name_crosses_a_module(graph):
    imports, known = graph
    bad = [*map(str, private_imports(imports, known)), *private_attributes(ROOT)]
    assert not bad, "private names used from another module:" + _listing(bad)


# ---- the checker, on a small tree that breaks every rule ----------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "tttla/__init__.py": "from verify import check\n__version__ = '1'\n",
    "verify/__init__.py": "",
    "verify/check.py": "import codegen.emit\nfrom derivations import model\n",
    "codegen/__init__.py": "",
    "codegen/emit.py": "from derivations.model import build\nfrom tttla_kernels import runtime\n",
    "derivations/__init__.py": "from derivations.model import build\n",
    "derivations/model.py": "import sympy\nfrom typing import TYPE_CHECKING\n"
                            "if TYPE_CHECKING:\n    from tttla import __version__\n"
                            "def build():\n    from derivations import helpers\n",
    "derivations/helpers.py": "x = 1\n",
    "tttla_kernels/__init__.py": "",
    "tttla_kernels/runtime.py": "import math\nimport torch\nimport triton.language as tl\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    root = _write(tmp_path, CLEAN)
    imports, known = import_graph(root), module_files(root)
    assert upward_imports(imports) == []
    assert import_cycles(imports, known) == [] and import_cycles(imports, known, lazy_included=True) == []
    assert private_imports(imports, known) == [] and private_attributes(root) == []


def test_checker_finds_upward_imports_lazy_ones_included(tmp_path):
    root = _write(tmp_path, {**CLEAN,
                             "codegen/emit.py": "def version():\n    from tttla import __version__\n",
                             "tttla_kernels/runtime.py": "import torch\nimport sympy\nimport numpy\n"})
    found = {f"{i.where} {i.target}" for i in upward_imports(import_graph(root))}
    assert found == {"codegen/emit.py:2 tttla", "tttla_kernels/runtime.py:2 sympy", "tttla_kernels/runtime.py:3 numpy"}


def test_checker_finds_module_level_cycles_through_a_facade(tmp_path):
    # helpers → derivations (the package facade) → model → helpers
    root = _write(tmp_path, {**CLEAN, "derivations/model.py": "from derivations.helpers import x\n",
                             "derivations/helpers.py": "from derivations import build\nx = 1\n"})
    cycles = import_cycles(import_graph(root), module_files(root))
    assert cycles == [["derivations/__init__.py:1: derivations → derivations.model",
                       "derivations/helpers.py:1: derivations.helpers → derivations",
                       "derivations/model.py:1: derivations.model → derivations.helpers"]]


def test_checker_finds_cycles_closed_by_a_lazy_import(tmp_path):
    # model → helpers is function-level; helpers → model (a relative import) is module-level
    root = _write(tmp_path, {**CLEAN, "derivations/helpers.py": "from . import model\n"})
    imports, known = import_graph(root), module_files(root)
    assert import_cycles(imports, known) == []
    assert import_cycles(imports, known, lazy_included=True) == [[
        "derivations/helpers.py:1: derivations.helpers → derivations.model",
        "derivations/model.py:6: derivations.model → derivations.helpers"]]


def test_checker_finds_private_names(tmp_path):
    root = _write(tmp_path, {**CLEAN,
                             "verify/check.py": "from derivations.model import _secret, build\n"
                                                "from codegen import emit\nemit._hidden()\n",
                             "codegen/emit.py": "from torch.utils._pytree import tree_map\n"})
    imports, known = import_graph(root), module_files(root)
    assert [str(i) for i in private_imports(imports, known)] == [
        "verify/check.py:1: verify.check imports derivations.model (_secret)"]
    assert private_attributes(root) == ["verify/check.py:3: verify.check reads codegen.emit._hidden"]
