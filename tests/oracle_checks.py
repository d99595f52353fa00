"""Comparing a generated form with the oracle, forward and backward, in the tests."""

from __future__ import annotations

import torch

from verify import run_direct
from verify.forms import form_kwargs


def check_against_oracle(variant_, fn, case, chunk_size=None, tol=1e-9):
    """Output, final state (every updated weight) and the gradients of every input equal the oracle's (fp64)."""
    o_ref, final_ref = run_direct(variant_, **case.kwargs())
    g = torch.Generator().manual_seed(7)
    probe_o = torch.randn(o_ref.shape, generator=g, dtype=torch.float64)
    probes = {u: torch.randn(final_ref[u].shape, generator=g, dtype=torch.float64) for u in variant_.update}
    leaves = case.leaves()

    def outer_loss(o, final):
        return (o * probe_o).sum() + sum((final[u] * probes[u]).sum() for u in variant_.update)

    want = torch.autograd.grad(outer_loss(o_ref, final_ref), list(leaves.values()), allow_unused=True)
    kwargs = form_kwargs(variant_, case)
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    o, final = fn(case.q, case.k, case.v, **kwargs)
    final = final if isinstance(final, dict) else {variant_.update[0]: final}
    got = torch.autograd.grad(outer_loss(o, final), list(leaves.values()), allow_unused=True)
    torch.testing.assert_close(o, o_ref, rtol=tol, atol=tol * 1e-2)
    for u in variant_.update:
        torch.testing.assert_close(final[u], final_ref[u], rtol=tol, atol=tol * 1e-2, msg=f"final state {u}")
    for name, a, b in zip(leaves, got, want):
        if a is None or b is None:  # an input that is never read (q when the keys are read)
            assert (a is None or not a.any()) and (b is None or not b.any()), name
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2, msg=f"gradient of {name}")
