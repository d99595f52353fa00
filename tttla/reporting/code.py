"""The generated functions of a variant: where they live and their signatures (via ``inspect``)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GeneratedFunction", "generated_functions", "md_code"]


@dataclass(frozen=True)
class GeneratedFunction:
    form: str
    name: str
    path: Path
    signature: str
    summary: str


def _signature(fn) -> str:
    sig = inspect.signature(fn)
    params = ",\n    ".join(str(p).replace("'", "") for p in sig.parameters.values())
    ret = "" if sig.return_annotation is inspect.Signature.empty else f" -> {sig.return_annotation}".replace("'", "")
    return f"def {fn.__name__}(\n    {params},\n){ret}"


def generated_functions(package) -> list[GeneratedFunction]:
    """Every form of an imported generated package (its ``FORMS``), with file and signature."""
    out = []
    for form, fn in package.FORMS.items():
        doc = (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append(GeneratedFunction(form, fn.__name__, Path(inspect.getsourcefile(fn)), _signature(fn), doc))
    return out


def _shown(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when it is below it (reports stay portable), else absolute."""
    if base is not None:
        try:
            return os.path.relpath(path.resolve(), base.resolve())
        except ValueError:
            pass
    return str(path)


def md_code(functions: list[GeneratedFunction], folder: Path, refusal: str | None, base: Path | None = None) -> str:
    """The "Generated code" section: the folder, then each function's file and signature."""
    lines = ["## Generated code", "",
             f"Generated into `{_shown(folder, base)}` (paths relative to this report); import it with "
             f"`codegen.generate.import_generated({folder.name!r}, {str(folder.parent)!r})`.", "",
             "| form | function | file |", "|---|---|---|"]
    lines += [f"| {f.form} | `{f.name}` | `{_shown(f.path, base)}` |" for f in functions]
    lines.append("")
    if refusal:
        lines += [refusal[0].upper() + refusal[1:] + ".", ""]
    for f in functions:
        lines += [f"### `{f.name}` ({f.form} form)", "", f.summary, "", "```python", f.signature, "```", ""]
    return "\n".join(lines)
