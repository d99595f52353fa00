"""The language names of element-wise functions and of the derivatives the engine builds
(``silu``, ``silu'``), for printing and for reasons that name a function."""

from __future__ import annotations

from derivations.elementwise import scalar_function
from derivations.functions import FUNCTIONS

__all__ = ["DERIVATIVE_OF", "function_name"]

#: derivative Lambdas built by :func:`derivations.autodiff.derivative_function` → the name of the
#: function they differentiate (for printing ``silu'(·)``)
DERIVATIVE_OF: dict = {}


def function_name(fn) -> str | None:
    """The language name of an element-wise function (``silu``, ``silu'``), or None."""
    if fn in DERIVATIVE_OF:
        return DERIVATIVE_OF[fn] + "'"
    d, body = scalar_function(fn)
    if body == d:
        return "identity"
    for f in FUNCTIONS.values():
        try:
            if body == f.symbolic(d):
                return f.name
        except (TypeError, ValueError):
            continue
    return None
