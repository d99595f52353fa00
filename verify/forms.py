"""Generated forms of a variant, and calling them on a :class:`~verify.inputs.Case`.

Every generated form takes ``fn(q, k, v, *, <slow weights>, <optional inputs>, initial_state=,
output_final_state=, chunk_size=)``, the optional inputs (lr, momentum, log_decay, grid, lr_position: see
:mod:`verify.signature`) and ``chunk_size`` only where the variant takes them (see ``tttla_kernels/<variant>/``);
:func:`form_kwargs` turns a case into those keyword arguments and :func:`call_form`
returns ``(o, final)`` with the final state always a dict (updated weight → tensor).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from derivations.catalog import CATALOG
from derivations.variant import Variant
from verify.inputs import Case
from verify.signature import map_tensors

__all__ = ["form_kwargs", "call_form", "generated_forms", "cast_case", "usable_forms", "on_gpu"]


def form_kwargs(variant: Variant, case: Case, output_final_state: bool = True) -> dict:
    """Keyword arguments of a generated form for ``case`` (everything but q, k, v).

    Static weights are passed by name; the initial state is one tensor ``[B, H, r, c]``
    for a single updated weight, else a dict name → tensor; ``chunk_size`` only when the
    schedule is not fixed.
    """
    kwargs = {n: case.initial_weights[n] for n in variant.slow_weights}
    kwargs.update(case.optional)
    updated = {n: case.initial_weights[n] for n in variant.update}
    kwargs["initial_state"] = updated if len(updated) > 1 else next(iter(updated.values()))
    kwargs["output_final_state"] = output_final_state
    if not variant.schedule.fixed:
        kwargs["chunk_size"] = case.chunk_size
    return kwargs


def call_form(variant: Variant, fn: Callable, case: Case,
              compute_chunk: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one generated form on ``case``: ``(o [B, T, H, Dv], {updated name: final [B, H, r, c]})``.

    ``compute_chunk``: the ``chunk_size`` of a parallel form whose schedule fixes the step (a
    block size of the computation, not of the layer)."""
    kwargs = form_kwargs(variant, case)
    if compute_chunk is not None:
        kwargs["chunk_size"] = compute_chunk
    o, final = fn(case.q, case.k, case.v, **kwargs)
    if not isinstance(final, dict):
        final = {variant.update[0]: final}
    return o, final


def cast_case(case: Case, dtype: torch.dtype, requires_grad: bool = True, device=None) -> Case:
    """A copy of ``case`` whose every input tensor is a fresh leaf in ``dtype`` (on ``device``,
    default where it is)."""

    def leaf(t):
        return t.detach().to(device or t.device, dtype).requires_grad_(requires_grad)

    return Case(
        q=leaf(case.q),
        k=leaf(case.k),
        v=leaf(case.v),
        initial_weights={n: leaf(w) for n, w in case.initial_weights.items()},
        chunk_size=case.chunk_size,
        sizes=dict(case.sizes),
        optional=map_tensors(case.optional, leaf),
    )


@contextmanager
def generated_forms(ref: str | Variant):
    """``(variant, {form name: fn})`` for a variant reference.

    A catalog name uses the committed ``tttla_kernels`` package; any other variant (a user
    file) is derived and generated into a temporary folder that lives for the ``with`` block.
    """
    from codegen.generate import generate, import_generated
    from derivations.loading import load_variant

    variant = load_variant(ref)
    if isinstance(ref, str) and ref in CATALOG:
        yield variant, dict(import_generated(variant.name).FORMS)
        return
    with tempfile.TemporaryDirectory(prefix="tttla-verify-") as tmp:
        generate(variant, Path(tmp))
        yield variant, dict(import_generated(variant.name, tmp).FORMS)


def on_gpu(fn: Callable) -> Callable:
    """``fn`` run on the GPU for CPU inputs: every tensor argument is copied to ``cuda`` and every
    tensor it returns back to the CPU, differentiably (gradients flow to the CPU leaves)."""
    from torch.utils._pytree import tree_map

    def move(device):
        return lambda x: x.to(device) if isinstance(x, torch.Tensor) else x

    def wrapped(*args, **kwargs):
        args, kwargs = tree_map(move("cuda"), (args, kwargs))
        return tree_map(move("cpu"), fn(*args, **kwargs))

    wrapped.__name__ = getattr(fn, "__name__", "form")
    wrapped.__doc__ = fn.__doc__
    return wrapped


def usable_forms(forms: dict) -> tuple[dict, list[str]]:
    """The forms that can run here on CPU tensors, and a note for each one changed or left out.

    A Triton form runs in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` was set before
    triton was imported; otherwise on the GPU when torch sees one (inputs copied there and
    results back, see :func:`on_gpu`); otherwise it is left out.
    """
    if "triton" not in forms or os.environ.get("TRITON_INTERPRET") == "1":
        return forms, []
    if torch.cuda.is_available():
        forms = {**forms, "triton": on_gpu(forms["triton"])}
        return forms, [f"triton form run on the GPU ({torch.cuda.get_device_name()})"]
    forms = {n: f for n, f in forms.items() if n != "triton"}
    return forms, ["triton form skipped: no GPU; set TRITON_INTERPRET=1 to run it in Triton's CPU interpreter"]
