"""What every hook module shares: the context, and lines at their final indentation."""

from __future__ import annotations

from codegen.context import ModuleContext

BODY, INNER = " " * 4, " " * 8


def lines(rows, indent: str = BODY) -> str:
    return "\n".join(indent + row if row else "" for row in rows)


def call(opening: str, args: list[str], width: int = 116) -> list[str]:
    """``opening(args)`` on one line when it fits in ``width`` (a function body's 120 columns), else the
    arguments packed on indented lines between ``opening(`` and ``)``."""
    one = f"{opening}({', '.join(args)})"
    if len(one) <= width:
        return [one]
    rows, row = [], ""
    for arg in args:
        if row and len(row) + len(arg) + 2 > width - 4:
            rows.append(row)
            row = ""
        row += f"{arg}, "
    return [f"{opening}(", *(f"    {r.rstrip()}" for r in [*rows, row]), ")"]


def column_clip(step: str) -> str:
    """Each column of a step divided by its norm + 1 (ViT³'s clip)."""
    return f"{step} = {step} / ({step}.norm(dim=-2, keepdim=True) + 1.0)  # column clip G[:, c] / (‖G[:, c]‖ + 1)"


def isort_key(name: str):
    """isort's order of imported names: constants, classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


class HookBase:
    """Hooks read one variant's context ``c``; ``form`` is "recurrent", "chunk" or "triton"."""

    def __init__(self, c: ModuleContext):
        self.c = c
