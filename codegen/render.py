"""Rendering generated modules from Jinja templates (package data under ``templates/``).

One :class:`jinja2.Environment` with ``StrictUndefined``: a template that asks for a value
the context lacks fails loudly instead of printing nothing. Templates see the variant's
context as ``c`` and its generated pieces as ``h`` (:class:`codegen.hooks.Hooks`); which file
comes from which template is the plan's (``c.plan.files``).
"""

from __future__ import annotations

import functools

import jinja2

from codegen.context import ModuleContext
from codegen.hooks import Hooks

__all__ = ["environment", "render", "render_package"]


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
    text = environment().get_template(template).render(c=context, h=Hooks(context))
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(_squeeze_blank_lines(lines)) + "\n"


def render_package(context: ModuleContext) -> dict[str, str]:
    """Every file of the variant's package (the plan's files), by name, as text."""
    return {fname: render(template, context) for fname, template in context.plan.files.items()}


def _squeeze_blank_lines(lines):
    """At most two consecutive blank lines (PEP 8 between top-level definitions)."""
    blank = 0
    for line in lines:
        blank = blank + 1 if not line else 0
        if blank <= 2:
            yield line
