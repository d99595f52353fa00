"""Context parallelism of the prefix-scan chunk forms on ``gloo`` (tttla_kernels/context_parallel.py,
verify/context_parallel.py): ranks holding slices of the sequence give the one-process output, final
state and every gradient in fp64; bad slices and forms that run in one process are refused by name."""

from __future__ import annotations

import functools

import pytest
import torch

from derivations.catalog import get
from verify.context_parallel import call_arguments, compare, one_process, run_sharded, slice_lengths
from verify.inputs import default_sizes, make_case

#: (variant, T, chunk, world): momentum and Newton–Schulz (lact_v2, slices of whole chunks), a plain
#: scan, a per-token decay, a per-channel gate, and the delta rule with and without a gate (an affine
#: map through a D_k × D_k matrix per slice); T divisible by neither the world nor the chunk
CASES = [("linear_attention", 37, None, 2), ("lact_v2", 45, 4, 3), ("simple_gla", 29, None, 4), ("gla", 23, None, 3),
         ("delta_rule", 29, None, 3), ("gated_delta_rule", 23, None, 2)]


def _arguments(name: str, T: int, chunk: int | None, seed: int = 0):
    variant = get(name)
    case = make_case(variant, batch=1, seq_len=T, heads=2, sizes=default_sizes(variant, 4), chunk_size=chunk,
                     generator=torch.Generator().manual_seed(seed))
    return variant, call_arguments(variant, case)


@functools.cache
def _sharded(name: str, T: int, chunk: int | None, world: int):
    """(the ranks' results, the one-process result) of the chunk form, each rank's bytes sent counted."""
    variant, args = _arguments(name, T, chunk)
    lengths = slice_lengths(T, world, chunk if chunk and not variant.schedule.fixed else 1)
    module = f"tttla_kernels.{name}"
    return lengths, run_sharded(module, args, lengths, count_bytes=True), one_process(module, args)


@pytest.mark.parametrize(("name", "T", "chunk", "world"), CASES, ids=[f"{c[0]}-world{c[3]}" for c in CASES])
def test_ranks_give_the_one_process_form(name, T, chunk, world):
    lengths, ranks, whole = _sharded(name, T, chunk, world)
    assert len(set(lengths)) > 1 or T % world  # a ragged split
    diffs = compare(ranks, whole)
    assert {"o", "grad q", "grad k", "grad v"} <= diffs.keys() and any(k.startswith("final") for k in diffs)
    assert max(diffs.values()) < 1e-9, diffs
    assert all(r["final"] == {} for r in ranks[:-1])  # the final state is the last rank's


@pytest.mark.parametrize(("name", "T", "chunk", "world"),
                         [("linear_attention", 21, None, 2), ("lact_v2", 26, 4, 2), ("delta_rule", 19, None, 2)],
                         ids=["linear_attention", "lact_v2", "delta_rule"])
def test_the_triton_form_runs_context_parallel(name, T, chunk, world):
    """The Triton form on ranks (the pipeline's kernels; the fused scan runs one process) in Triton's interpreter."""
    variant, args = _arguments(name, T, chunk)
    lengths = slice_lengths(T, world, chunk if chunk and not variant.schedule.fixed else 1)
    module = f"tttla_kernels.{name}"
    ranks = run_sharded(module, args, lengths, form="triton")
    diffs = compare(ranks, one_process(module, args, form="triton"))
    assert max(diffs.values()) < 1e-9, diffs


def test_slices_of_a_chunk_schedule_must_hold_whole_chunks():
    _, args = _arguments("lact_v2", 21, 4)
    with pytest.raises(RuntimeError, match=r"whole chunks; got slice lengths \[6, 15\]"):
        run_sharded("tttla_kernels.lact_v2", args, [6, 15])


@pytest.mark.parametrize(("name", "form", "why"), [
    ("linear_attention", "recurrent", "the recurrent form runs in one process; the chunk and Triton forms"),
    ("lact", "chunk", "lact is not a prefix scan: the kernel is dynamic"),
    ("delta_rule", "recurrent", "the recurrent form runs in one process"),
    ("vittt_dwconv", "chunk", "one bidirectional step"),
])
def test_a_form_that_runs_in_one_process_refuses_a_group_saying_why(name, form, why):
    import importlib

    variant, args = _arguments(name, 16, None if get(name).schedule.fixed else 4)
    fn = importlib.import_module(f"tttla_kernels.{name}").FORMS[form]
    with pytest.raises(ValueError, match=f"process_group: .*{why}"):
        fn(**args, process_group=object())


def test_the_summary_is_read_off_the_form():
    from derivations.derive import derive
    from derivations.shard import NotShardable, shard_summary

    lact = shard_summary(derive("lact_v2", certify=False))
    assert [c.name.split()[0] for c in lact.carries] == ["M", "S"] and lact.local == ("Newton–Schulz",)
    assert lact.whole_chunks and "ᾱₙ" in lact.carries[0].step
    gla = shard_summary(derive("gla", certify=False))
    assert not gla.whole_chunks and "per key channel" in gla.carries[0].step
    assert any("combine: (A₂, h₂) ∘ (A₁, h₁)" in line for line in gla.describe())
    delta = shard_summary(derive("delta_rule", certify=False))
    assert "Mₙ = I − K̂ₙᵀ Wₙ" in delta.carries[0].step and not delta.whole_chunks
    assert "Mₙ = Γₙ I − K̂ₙᵀ Wₙ" in shard_summary(derive("gated_delta_rule", certify=False)).carries[0].step
    for name, why in [("lact", "the kernel is dynamic"), ("vittt_dwconv", "one bidirectional step")]:
        with pytest.raises(NotShardable, match=why):
            shard_summary(derive(name, certify=False))


def test_a_rank_sends_summaries_whatever_the_length():
    """The bytes a rank sends (forward and backward) do not grow with its slice: state-sized summaries
    (the 37 tokens of CASES' linear_attention run against 8)."""
    sent = [[r["bytes_sent"] for r in _sharded("linear_attention", T, None, 2)[1]] for T in (8, 37)]
    assert sent[0] == sent[1] and min(sent[0]) > 0
