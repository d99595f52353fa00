"""Rendering generated modules from Jinja templates (package data under ``templates/``).

One :class:`jinja2.Environment` with ``StrictUndefined``: a template that asks for a value
the context lacks fails loudly instead of printing nothing.
"""

from __future__ import annotations

import functools

import jinja2

from codegen.context import ModuleContext

__all__ = ["environment", "render", "MODULES", "OPTIONAL_MODULES", "modules_for"]

#: generated file → template
MODULES = {
    "__init__.py": "__init__.py.jinja",
    "recurrent.py": "recurrent.py.jinja",
    "chunk.py": "chunk.py.jinja",
}

#: generated file → (template, whether a variant's context gets it)
OPTIONAL_MODULES = {
    # Triton kernels exist for the parallel chunked form only
    "triton_chunk.py": ("triton_chunk.py.jinja", lambda c: c.parallel_template),
}


def modules_for(context: ModuleContext) -> dict[str, str]:
    """The generated files (→ template) of one variant: MODULES plus the optional ones it gets."""
    extra = {f: t for f, (t, wanted) in OPTIONAL_MODULES.items() if wanted(context)}
    if context.parallel_form == "delta_chunk":  # DeltaNet's WY/UT chunked form, in torch and with Triton
        extra["chunk.py"] = "delta_chunk.py.jinja"
        extra["triton_chunk.py"] = "triton_delta.py.jinja"
    return {**MODULES, **extra}


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["repr"] = repr
    return env


def render(template: str, context: ModuleContext) -> str:
    """Render one template for one variant's context; trailing spaces are stripped."""
    text = environment().get_template(template).render(c=context)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(_squeeze_blank_lines(lines)) + "\n"


def _squeeze_blank_lines(lines):
    """At most two consecutive blank lines (PEP 8 between top-level definitions)."""
    blank = 0
    for line in lines:
        blank = blank + 1 if not line else 0
        if blank <= 2:
            yield line
