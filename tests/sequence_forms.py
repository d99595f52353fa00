"""What the tests of fla's conventions (packed sequences, scale, grouped value heads) run: every form
usable here of the catalog's sequence variants, on sizes that keep the named dimensions apart."""

from __future__ import annotations

from codegen.generate import import_generated
from derivations.catalog import CATALOG
from verify.forms import usable_forms

#: the variants of token sequences (a spatial variant's tokens are one grid)
SEQUENCE_VARIANTS = [name for name, v in CATALOG.items() if v.spatial is None]
#: one size per named dimension, all distinct: a form that confuses two cannot pass
SIZES = {"d": 3, "dv": 4, "h": 5, "e": 2}


def usable_form(name: str, form: str):
    """The generated ``form`` of catalog variant ``name``, as it runs here (Triton in the interpreter)."""
    return usable_forms(import_generated(name).FORMS)[0][form]


def variant_forms(names) -> list[tuple[str, str]]:
    """(variant, form) for every form of each of ``names`` that runs here."""
    return [(name, form) for name in names for form in usable_forms(import_generated(name).FORMS)[0]]
