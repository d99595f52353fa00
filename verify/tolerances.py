"""How close a generated form must come to the fp64 oracle, per dtype and quantity.

Two metrics, one per dtype (``docs/maths.md`` section 13), each per tensor:

* fp64 — the exactness check: relative error ``max|Δ| / max|ref|`` ≤ 1e-9;
* fp32 — RMSE ratio ``RMS(Δ) / RMS(ref)`` ≤ 1e-4 (the reference is always the fp64 oracle).

A tensor whose reference is exactly zero (the gradient of an input that never reaches the
loss, e.g. k when every token falls in the apply-only last chunk) is compared in absolute terms.

**One rule for every variant: never stricter than plain torch.** A fixed bound is only right for
a well-conditioned case. Some cases are not, whatever the variant: Muon's 𝓜 amplifies rounding
along small singular directions (five quintic steps of slope ≈ 4, 4, 3.7, 2.9, 2.8 at 0, ≈ 490×
over the five, more in the backward pass; ∂η is pure cancellation since 𝓜 is nearly
scale-invariant), LayerNorm's 1/sqrt(var + 1e-6) amplifies it when a row's variance is small, and
a two-layer GELU kernel with per-token momentum reached 1.007e-4 in plain fp32 torch. So for
every variant, when a quantity exceeds its default bound, the oracle itself is executed in fp32
(lazily, once per case) — once as given and on three copies of the inputs perturbed by one ulp
(one run is one draw of the rounding: on lact's case seed 90 — chunk 1, h = 2, rank-1 updates —
plain torch's ∂lr error was 2.2e-4 as given and 1.5e-3 to 1.1e-2 after a one-ulp perturbation) —
and its largest error e₃₂ against the fp64 oracle sets the bound (:func:`bound`):

* fp32: bound = max(1e-4, c · e₃₂), c = 2 — the rule "at most 2× as far from the fp64
  reference as plain torch in the same dtype" — when one weight is updated, c = 10 when several
  are (feature layers and weight norm feed each chunk's rounding back into the next gradient,
  and the forms' hand-derived inner gradients round differently from autograd's).
  Measured over 150 cases each of lact_v1–v4 (seeds 0–149): every quantity above 1e-4 (up
  to 12 in RMS ratio, for ∂momentum of lact_v3) was within 1.62× of e₃₂ (≤ 1.00× for all
  but two); with several layers updated (lact, lact_ga, lact_mse, lact_no_query, seeds 0–119)
  the ratio reached 6.1 (2.0–6.1 in 140 of ~2000 exceedances).
* fp64: bound = max(1e-9, 16 · 2⁻²⁹ · e₃₂) — e₃₂ rescaled by the ratio of unit roundoffs
  (2⁻⁵³ / 2⁻²⁴). Measured over seeds 0–199 of lact, lact_v1, lact_v3 (and 0–599 of lact,
  lact_mse): the 1e-9 exceedances (up to 9.4e-9 on ∂lr, 2.9e-7 on ∂lr of a single
  Newton–Schulz step) were within 5.8× of the rescaled e₃₂ (factor 16 leaves margin).

On a well-conditioned case e₃₂ is far below the default, so the bound stays the flat one: the
catalog's plain variants (lact_v6, delta_rule, linear_attention) stayed below 1.7e-6 over 300
cases. Nothing in the rule names a variant or a feature.

Cases whose oracle is not finite are redrawn by :mod:`verify.fuzz`, never tolerated here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["Tolerance", "DEFAULTS", "default_tolerance", "bound", "relative_error", "quantity_kind", "PLAIN_DTYPE",
           "normalises_rows"]


@dataclass(frozen=True)
class Tolerance:
    """``metric`` is ``"max_rel"`` (max|Δ| / max|ref|) or ``"rms_ratio"`` (RMS(Δ) / RMS(ref))."""

    metric: str
    bound: float


DEFAULTS = {
    torch.float64: Tolerance("max_rel", 1e-9),
    torch.float32: Tolerance("rms_ratio", 1e-4),
}

#: the dtype plain torch (the oracle) is re-run in to measure a case's conditioning
PLAIN_DTYPE = torch.float32
#: per checked dtype: (factor, factor when feature layers are updated, scale), with
#: bound = max(default, factor · scale · e₃₂)
_WIDEN = {torch.float32: (2.0, 10.0, 1.0), torch.float64: (16.0, 16.0, 2.0**-29)}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    if dtype not in DEFAULTS:
        raise ValueError(f"no tolerance for dtype {dtype} (float64 and float32 are verified)")
    return DEFAULTS[dtype]


@functools.cache
def normalises_rows(variant) -> bool:
    """Whether the variant's model normalises a row (contains a LayerNorm's rsqrt)."""
    from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

    from derivations.printing import function_name

    pred = variant.trace().prediction
    return any(function_name(a.function) == "rsqrt" for a in pred.atoms(ElementwiseApplyFunction))


def bound(variant, dtype: torch.dtype, plain_error: float) -> float:
    """The bound of one quantity of any variant in ``dtype``, given e₃₂, the error of the oracle run
    in plain fp32 on the same case (measured with the dtype's own metric): the module's one rule."""
    factor, factor_features, scale = _WIDEN[dtype]
    if len(variant.update) > 1:
        factor = factor_features
    return max(default_tolerance(dtype).bound, factor * scale * plain_error)


def quantity_kind(quantity: str) -> str:
    """'o', 'state' (final fast weights) or 'grad' (a gradient of the outer loss)."""
    if quantity == "o":
        return "o"
    return "state" if quantity.startswith("state") else "grad"


def relative_error(ref: torch.Tensor, got: torch.Tensor, metric: str) -> float:
    """The error of ``got`` against ``ref`` (both compared in fp64) under ``metric``.

    A non-finite ``got`` gives ``inf``; a reference that is exactly zero makes the error absolute.
    """
    ref, got = ref.detach().double(), got.detach().double()
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {list(ref.shape)}, form {list(got.shape)}")
    if not torch.isfinite(got).all():
        return float("inf")
    diff = got - ref
    if metric == "max_rel":
        num, den = diff.abs().max(), ref.abs().max()
    elif metric == "rms_ratio":
        num, den = diff.pow(2).mean().sqrt(), ref.pow(2).mean().sqrt()
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return float(num / den) if den > 0 else float(num)
