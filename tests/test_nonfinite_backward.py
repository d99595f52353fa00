"""Every form's backward stays causal for non-finite output gradients (issue 13, item 4, backward).

A NaN in an input makes the oracle's gradients NaN everywhere (one NaN output poisons the outer loss),
so the forward property cannot be mirrored. Its transpose can: with every input finite, a NaN or inf in
the gradient of one output o_t (column 0, one head) may reach only the gradients of the inputs o_t
depends on, per (b, s, h) cell of a per-token input and per (b, h) of an initial weight; a bad
gradient of a final state may reach every input of its head but q (unless the queries are the keys)
and never the other head. "Depends" is read off the oracle's vector–Jacobian product with a finite
cotangent in the same place (on any entry of a batch of random cases), united with what the oracle's
own backward makes non-finite (see ``tests/causality.py``). T = 12 with chunks of 4: the targets are
the first token, one in the middle of the second chunk and the last one.
"""

import pytest
import torch
from causality import check_backward, nonfinite_case

from derivations.catalog import CATALOG
from verify.forms import generated_forms, usable_forms

SEQ_LEN, CHUNK = 12, 4

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.parametrize("ref", list(CATALOG))
def test_nonfinite_output_gradient_stays_causal_in_every_form(ref):
    with generated_forms(ref) as (variant, forms):
        forms, _ = usable_forms(forms)
        check_backward(variant, forms, nonfinite_case(variant, SEQ_LEN, CHUNK, batch=2), CHUNK)


def test_causal_product_backward_is_the_masked_products_and_stays_causal():
    """``runtime.causal_product``'s written-out backward: for finite inputs the gradients of
    ``tril(W) @ V`` (also twice differentiable); a NaN in the gradient of row t reaches ∂V at rows
    s ≤ t and ∂W at row t only (``tril(W) @ V``'s own backward spreads it to every row s > t)."""
    from tttla_kernels.runtime import causal_product

    g = torch.Generator().manual_seed(0)
    W, V = (torch.randn(2, 4, c, generator=g, dtype=torch.float64, requires_grad=True) for c in (4, 2))
    torch.autograd.gradcheck(causal_product, (W, V))
    torch.autograd.gradgradcheck(causal_product, (W, V))
    W, V = (torch.randn(2, 6, c, generator=g, dtype=torch.float64, requires_grad=True) for c in (6, 3))
    t = 2
    grad = torch.zeros(2, 6, 3, dtype=torch.float64)
    grad[:, t, 0] = float("nan")
    dW, dV = torch.autograd.grad(causal_product(W, V), (W, V), grad)
    rows = torch.arange(6)
    assert torch.equal(~torch.isfinite(dV).all(-1), (rows <= t).expand(2, 6))
    assert torch.equal(~torch.isfinite(dW), ((rows[:, None] == t) & (rows[None, :] <= t)).expand(2, 6, 6))
    dV_tril = torch.autograd.grad(W.tril() @ V, V, grad)[0]
    assert torch.isnan(dV_tril[:, t + 1:, 0]).all()  # what the written-out backward avoids
