"""A feature map that is one linear layer, split into its products and a printed Triton epilogue
(codegen.triton_epilogue): which φ qualify, why the others do not, and that the printed body
computes what the torch feature map computes (evaluated with torch standing in for ``tl``)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from codegen.triton_epilogue import NotALinearLayer, TritonScalarPrinter, linear_epilogue
from derivations.derive import derive
from derivations.functions import gelu, gelu_tanh, relu, sigmoid, silu, tanh
from derivations.mat import dot
from derivations.spec import chunked, per_token
from derivations.variant import variant

#: torch standing in for triton.language in the printed bodies
TL = types.SimpleNamespace(exp=torch.exp, log=torch.log, sqrt=torch.sqrt, rsqrt=torch.rsqrt, erf=torch.erf,
                           abs=torch.abs, sin=torch.sin, cos=torch.cos, sigmoid=torch.sigmoid,
                           maximum=lambda a, b: torch.maximum(a, torch.as_tensor(b, dtype=a.dtype)),
                           minimum=lambda a, b: torch.minimum(a, torch.as_tensor(b, dtype=a.dtype)),
                           where=lambda c, a, b: torch.where(c, torch.as_tensor(a, dtype=torch.float64),
                                                             torch.as_tensor(b, dtype=torch.float64)))


def _layer(phi, weights=("W0", "W2")):
    """A parallel layer φ(x)·W1 with the slow weights ``weights`` (d × h) inside φ."""
    fast = {w: ("d", "h") for w in weights} | {"W1": ("h", "d")}

    def model(x, W0, W1, W2=None):
        return phi(x, W0, W2) @ W1

    if len(weights) == 1:
        def model(x, W0, W1):  # noqa: F811 — the one-weight signature
            return phi(x, W0, None) @ W1

    return variant(fast=fast, update=["W1"], loss=lambda y, v: -dot(y, v), lr=per_token(),
                   schedule=chunked(order="apply_then_update", size=16), name=f"phi_{phi.__name__}")(model)


def swiglu(x, W0, W2):
    return silu(x @ W0) * (x @ W2)


def gelu_gate(x, W0, W2):
    return gelu(x @ W0) * tanh(x @ W2) + 0.5 * sigmoid(x @ W2)


def relu_sq(x, W0, W2):
    return relu(x @ W0) * relu(x @ W0)


def tanh_gelu(x, W0, W2):
    return gelu_tanh(x @ W0)


def _evaluate(body: str, products: list[torch.Tensor]) -> torch.Tensor:
    return eval(body, {"tl": TL, "math": math}, {f"a{i}": a for i, a in enumerate(products)})  # noqa: S307


@pytest.mark.parametrize(("phi", "weights"), [(swiglu, ("W0", "W2")), (gelu_gate, ("W0", "W2")),
                                              (relu_sq, ("W0",)), (tanh_gelu, ("W0",))],
                         ids=["swiglu", "gelu-tanh-sigmoid", "relu²", "gelu_tanh"])
def test_the_printed_epilogue_is_the_feature_map(phi, weights):
    form = derive(_layer(phi, weights), certify=False)
    epilogue = linear_epilogue(form)
    assert epilogue.weights == tuple(w for w in ("W0", "W2") if w in form.feature_weights)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    W = {w: torch.randn(5, 4, generator=gen, dtype=torch.float64) for w in ("W0", "W2")}
    want = phi(x, W["W0"], W["W2"])
    got = _evaluate(epilogue.body, [x @ W[w] for w in epilogue.weights])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_lact_v2_gets_the_swiglu_epilogue():
    epilogue = linear_epilogue(derive("lact_v2", certify=False))
    assert epilogue.weights == ("W0", "W2")
    assert epilogue.body == "a0*a1/(1 + tl.exp(-a0))"


@pytest.mark.parametrize(("name", "why"), [("ttt_mlp", "b1 is not built from products"),
                                           ("lact_v3", "no slow weight")])
def test_other_feature_maps_are_refused_with_the_sub_expression(name, why):
    with pytest.raises(NotALinearLayer, match=why):
        linear_epilogue(derive(name, certify=False))


def test_the_printer_spells_what_triton_lacks():
    import sympy

    x = sympy.Symbol("a0")
    printer = TritonScalarPrinter()
    assert printer.doprint(sympy.tanh(x)) == "(2 * tl.sigmoid(2 * a0) - 1)"
    assert printer.doprint(x**3) == "a0 * a0 * a0"
    assert printer.doprint(1 / sympy.sqrt(x)) == "tl.rsqrt(a0)"
    with pytest.raises(NotALinearLayer, match="power"):
        printer.doprint(x**sympy.Rational(1, 3))
