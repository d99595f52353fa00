"""What every hook module shares: the context, and lines at their final indentation."""

from __future__ import annotations

from codegen.context import ModuleContext

BODY, INNER = " " * 4, " " * 8


def lines(rows, indent: str = BODY) -> str:
    return "\n".join(indent + row if row else "" for row in rows)


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
