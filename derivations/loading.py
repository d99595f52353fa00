"""Resolve a variant reference: a catalog name, or ``path/to/file.py[:attr]``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from derivations.catalog import get as catalog_variant
from derivations.errors import DeclarationError, VariantNotFound
from derivations.variant import Variant

__all__ = ["load_variant", "variants_in_file", "reference_of"]


def _import_file(path: Path):
    # A unique module name per file path, so two user files named alike do not collide.
    mod_name = "tttla_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise VariantNotFound(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except DeclarationError:
        sys.modules.pop(mod_name, None)
        raise
    except Exception as e:  # a user's file: report, don't dump a traceback
        sys.modules.pop(mod_name, None)
        raise VariantNotFound(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _folder_given(path) -> VariantNotFound:
    return VariantNotFound(f"{path} is a folder, not a variant: give a Python file in it (FILE.py or FILE.py:NAME)")


def variants_in_file(path: str | Path) -> dict[str, Variant]:
    """Every variant defined at the top level of a Python file, by attribute name."""
    path = Path(path)
    if path.is_dir():
        raise _folder_given(path)
    if not path.is_file():
        raise VariantNotFound(f"no such file: {path}")
    module = _import_file(path)
    return {k: v for k, v in vars(module).items() if isinstance(v, Variant)}


def load_variant(ref: str | Variant) -> Variant:
    """A :class:`Variant` from a catalog name, ``FILE.py`` or ``FILE.py:ATTR``."""
    if isinstance(ref, Variant):
        return ref
    path_part, _, attr = ref.partition(":") if ".py:" in ref else (ref, "", "")
    if not path_part.endswith(".py"):
        try:
            return catalog_variant(ref)
        except VariantNotFound:
            if Path(ref).is_dir():
                raise _folder_given(ref) from None
            raise
    found = variants_in_file(path_part)
    if attr:
        if attr not in found:
            have = ", ".join(found) or "none"
            raise VariantNotFound(f"{path_part} has no variant named {attr!r} (variants in it: {have})")
        return found[attr]
    if len(found) != 1:
        have = ", ".join(found) or "none"
        raise VariantNotFound(f"{path_part} defines {len(found)} variants ({have}); name one as {path_part}:NAME")
    return next(iter(found.values()))


def reference_of(variant: Variant) -> str | None:
    """The VARIANT argument that loads ``variant`` again: its catalog name, or ``/abs/FILE.py:ATTR``
    for a variant bound to a top-level name of a file; None when no reference reaches it (e.g. a
    variant built inside a function)."""
    from derivations.catalog import CATALOG

    if CATALOG.get(variant.name) is variant:
        return variant.name
    module = sys.modules.get(getattr(variant.model, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    attr = next((k for k, v in vars(module).items() if v is variant), None) if module else None
    if path is None or attr is None or not path.endswith(".py"):
        return None
    return f"{Path(path).resolve()}:{attr}"
