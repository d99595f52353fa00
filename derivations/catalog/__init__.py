"""The built-in catalog of variants, by name.

Its declarations import the language from the modules that define it, not from the
``derivations`` package, whose facade reaches this catalog (through ``derive`` and ``loading``).
"""

from __future__ import annotations

import difflib

from derivations.catalog.delta import delta_rule, gated_delta_rule
from derivations.catalog.gated import gla, mamba2, retention, simple_gla
from derivations.catalog.lact import (
    lact,
    lact_ga,
    lact_mse,
    lact_no_query,
    lact_v1,
    lact_v2,
    lact_v3,
    lact_v4,
    lact_v5,
    lact_v6,
)
from derivations.catalog.linear import linear_attention
from derivations.catalog.titans import titans
from derivations.catalog.ttt import ttt_linear, ttt_mlp
from derivations.catalog.vittt import vittt_dwconv, vittt_dwconv_noclip, vittt_glu, vittt_glu_noclip
from derivations.errors import VariantNotFound
from derivations.variant import Variant

CATALOG: dict[str, Variant] = {
    v.name: v
    for v in (
        lact,
        lact_v1,
        lact_v2,
        lact_v3,
        lact_v4,
        lact_v5,
        lact_v6,
        lact_ga,
        lact_no_query,
        lact_mse,
        delta_rule,
        gated_delta_rule,
        titans,
        linear_attention,
        simple_gla,
        retention,
        gla,
        mamba2,
        ttt_linear,
        ttt_mlp,
        vittt_glu,
        vittt_glu_noclip,
        vittt_dwconv,
        vittt_dwconv_noclip,
    )
}


def get(name: str) -> Variant:
    """The catalog variant ``name``; an unknown name gets a did-you-mean suggestion."""
    try:
        return CATALOG[name]
    except KeyError:
        close = difflib.get_close_matches(name, CATALOG, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise VariantNotFound(
            f"no catalog variant named {name!r}{hint} (run 'tttla list' for the catalog, "
            "or pass a file: path/to/file.py[:attr])"
        ) from None


__all__ = ["CATALOG", "get"]
