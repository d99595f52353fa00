"""Packed variable-length batches (``cu_seqlens``, tttla_kernels/varlen.py) in every generated form of
every sequence variant: the packed call equals the oracle run on each sequence alone, in fp64, forward
and backward — o, each sequence's final state and the gradients of q, k, v, the per-token inputs, the
slow weights and each sequence's initial state — on lengths of 1, shorter than a chunk and not
multiples of it. Bad offsets are refused by name."""

from __future__ import annotations

import importlib

import pytest
import torch
from sequence_forms import SEQUENCE_VARIANTS, SIZES, usable_form, variant_forms

from codegen.generate import import_generated
from derivations.catalog import CATALOG
from tttla_kernels import runtime
from verify.inputs import make_case
from verify.oracle import run_direct

#: five sequences: one token, two of 7 (batched into one call), one chunk, three chunks; chunk 4
LENGTHS = [1, 7, 4, 7, 12]
CHUNK = 4


def _packed_case(variant):
    """A packed batch of one (T = Σ lengths), one initial state per sequence for each updated weight."""
    T, N, H = sum(LENGTHS), len(LENGTHS), 2
    chunk = None if variant.schedule.fixed else CHUNK  # a token-level schedule: CHUNK is the forms' block
    case = make_case(variant, batch=1, seq_len=T, heads=H, sizes=SIZES, chunk_size=chunk, requires_grad=True,
                     generator=torch.Generator().manual_seed(len(variant.name)))
    gen = torch.Generator().manual_seed(7)
    initial = {n: torch.randn(N, *case.initial_weights[n].shape[-3:], generator=gen, dtype=torch.float64)
               .requires_grad_() for n in variant.update}
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    return case, initial, cu


def _tokens(x, start, end):
    """A per-token input of the packed batch cut to one sequence (dicts entry by entry; others as given)."""
    if isinstance(x, dict):
        return {n: _tokens(t, start, end) for n, t in x.items()}
    if isinstance(x, torch.Tensor) and x.dim() >= 3 and x.shape[1] == sum(LENGTHS):
        return x[:, start:end]
    return x


def _one_by_one(variant, case, initial, cu):
    """The oracle on each sequence alone: (o packed [1, T, H, Dv], {weight: final [N, H, r, c]})."""
    bounds = cu.tolist()
    outs, finals = [], {n: [] for n in variant.update}
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        weights = {n: w for n, w in case.initial_weights.items() if n not in variant.update}
        weights.update({n: s[i:i + 1] for n, s in initial.items()})
        optional = {n: _tokens(x, start, end) for n, x in case.optional.items()}
        o, final = run_direct(variant, case.q[:, start:end], case.k[:, start:end], case.v[:, start:end],
                              initial_weights=weights, chunk_size=case.chunk_size, **optional)
        outs.append(o)
        for n in variant.update:
            finals[n].append(final[n][0])
    return torch.cat(outs, dim=1), {n: torch.stack(f) for n, f in finals.items()}


def _packed(variant, fn, case, initial, cu):
    kwargs = {n: case.initial_weights[n] for n in variant.slow_weights}
    kwargs.update(case.optional)
    kwargs["initial_state"] = initial if len(initial) > 1 else next(iter(initial.values()))
    if variant.schedule.order != "bidirectional":
        kwargs["chunk_size"] = CHUNK  # the inner step, or a token-level schedule's block of computation
    o, final = fn(case.q, case.k, case.v, output_final_state=True, cu_seqlens=cu, **kwargs)
    return o, final if isinstance(final, dict) else {variant.update[0]: final}


@pytest.mark.parametrize(("name", "form"), variant_forms(SEQUENCE_VARIANTS))
def test_packed_sequences_are_each_sequence_alone_fp64(name, form):
    variant = CATALOG[name]
    fn = usable_form(name, form)
    case, initial, cu = _packed_case(variant)
    o_ref, final_ref = _one_by_one(variant, case, initial, cu)
    o, final = _packed(variant, fn, case, initial, cu)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    for n in variant.update:
        assert final[n].shape == (len(LENGTHS), *initial[n].shape[1:])
        torch.testing.assert_close(final[n], final_ref[n], rtol=1e-10, atol=1e-10, msg=f"final state {n}")
    leaves = {**case.leaves(), **{f"initial[{n}]": s for n, s in initial.items()}}
    leaves = {label: t for label, t in leaves.items() if t.requires_grad}
    gen = torch.Generator().manual_seed(3)
    w_o = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64)
    w_f = {n: torch.randn(f.shape, generator=gen, dtype=torch.float64) for n, f in final_ref.items()}

    def grads(o, final):
        loss = (o * w_o).sum() + sum((final[n] * w_f[n]).sum() for n in w_f)
        return torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)

    for label, got, want in zip(leaves, grads(o, final), grads(o_ref, final_ref)):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0, f"gradient of {label}"
            continue
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=f"gradient of {label}")


def test_a_shared_initial_state_serves_every_sequence():
    variant = CATALOG["gated_delta_rule"]
    fn = import_generated("gated_delta_rule").FORMS["chunk"]
    case, initial, cu = _packed_case(variant)
    shared = initial["W"][0].detach()
    o_shared, final_shared = _packed(variant, fn, case, {"W": shared}, cu)
    o_each, final_each = _packed(variant, fn, case, {"W": shared.expand(len(LENGTHS), *shared.shape)}, cu)
    torch.testing.assert_close(o_shared, o_each, rtol=0, atol=0)
    torch.testing.assert_close(final_shared["W"], final_each["W"], rtol=0, atol=0)


@pytest.mark.parametrize("given", [True, False], ids=["initial state", "zeros"])
def test_an_empty_sequence_keeps_its_state_and_leaves_the_others_alone(given):
    """fla allows an empty sequence (two equal offsets): it has no output and its final state is its
    initial state (zeros without one); the other sequences are as without it."""
    variant = CATALOG["gla"]
    fn = import_generated("gla").FORMS["chunk"]
    case, initial, cu = _packed_case(variant)
    with_empty = torch.tensor([0, 1, *cu[1:].tolist()])  # sequence 1 is empty
    own = torch.randn(1, *initial["W"].shape[1:], dtype=torch.float64)  # the empty sequence's state
    states = torch.cat([initial["W"][:1], own, initial["W"][1:]]) if given else None
    o, final = fn(case.q, case.k, case.v, initial_state=states, output_final_state=True, cu_seqlens=with_empty,
                  **case.optional)
    o_ref, final_ref = fn(case.q, case.k, case.v, initial_state=initial["W"] if given else None,
                          output_final_state=True, cu_seqlens=cu, **case.optional)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=0)
    assert final.shape[0] == len(LENGTHS) + 1
    torch.testing.assert_close(final[1], own[0] if given else torch.zeros_like(final[1]), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([final[:1], final[2:]]), final_ref, rtol=0, atol=0)


def test_an_empty_sequence_keeps_a_weight_the_initial_dict_leaves_out_at_zero():
    """Several updated weights, the initial state given for one of them: an empty sequence's final
    state is that one's given value and zeros for the other (as the forms start a missing entry)."""
    variant = CATALOG["vittt_glu"]
    fn = import_generated("vittt_glu").FORMS["chunk"]
    case, initial, _ = _packed_case(variant)
    first = variant.update[0]
    with_empty = torch.tensor([0, 1, 1, sum(LENGTHS)])  # sequences of 1, 0 and the rest
    given = torch.randn(3, *initial[first].shape[1:], dtype=torch.float64)
    _, final = fn(case.q, case.k, case.v, initial_state={first: given}, output_final_state=True,
                  cu_seqlens=with_empty, **case.optional)
    torch.testing.assert_close(final[first][1], given[1], rtol=0, atol=0)
    for other in variant.update[1:]:
        assert torch.count_nonzero(final[other][1]) == 0


def _bad_offsets():
    T = sum(LENGTHS)
    return {
        "decreasing": (torch.tensor([0, 9, 4, T]), "must not decrease: sequence 1"),
        "not from 0": (torch.tensor([2, 9, T]), "start at 0"),
        "not to T": (torch.tensor([0, 9, T - 1]), f"end at T = {T}"),
        "float": (torch.tensor([0.0, 9.0, float(T)]), "int32 or int64"),
        "2-D": (torch.tensor([[0, T]]), r"1-D \[N \+ 1\]"),
        "one offset": (torch.tensor([0]), r"1-D \[N \+ 1\]"),
        "another device": (torch.tensor([0, 9, T], device="meta"), "device of q"),
        "a list": ([0, 9, T], "must be a torch.Tensor"),
    }


@pytest.mark.parametrize("case_name", list(_bad_offsets()))
@pytest.mark.parametrize("form", ["recurrent", "chunk"])
def test_bad_offsets_are_refused_by_name(case_name, form):
    variant = CATALOG["linear_attention"]
    fn = import_generated("linear_attention").FORMS[form]
    case, _, _ = _packed_case(variant)
    cu, message = _bad_offsets()[case_name]
    with pytest.raises((ValueError, TypeError), match=message) as error:
        fn(case.q, case.k, case.v, cu_seqlens=cu)
    assert "cu_seqlens" in str(error.value)


def test_a_batch_of_several_rows_and_wrong_states_are_refused():
    variant = CATALOG["linear_attention"]
    fn = import_generated("linear_attention").FORMS["chunk"]
    case, initial, cu = _packed_case(variant)
    two = torch.cat([case.q, case.q])
    with pytest.raises(ValueError, match="q: with cu_seqlens .* B must be 1, got B = 2"):
        fn(two, two, torch.cat([case.v, case.v]), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"initial_state: with cu_seqlens, one state per sequence .* N = 5"):
        fn(case.q, case.k, case.v, cu_seqlens=cu, initial_state=initial["W"][:3])
    with pytest.raises(ValueError, match="process_group: must be None with cu_seqlens"):
        fn(case.q, case.k, case.v, cu_seqlens=cu, process_group=object())


@pytest.mark.parametrize("name", ["linear_attention", "simple_gla", "retention", "mamba2"])
def test_the_fused_scan_takes_the_packed_row_as_it_is(name, monkeypatch):
    """The Triton form of a per-token scan runs packed sequences in one fused scan, one program per
    (sequence, head) whose blocks (16 tokens) start at the sequence's own first token: lengths that cross
    several blocks from unaligned starts, and an empty one. Equal to the form run on each sequence alone
    (fp64: o, each final state, every gradient), without runtime.each_sequence."""
    package = import_generated(name)
    common = importlib.import_module(f"tttla_kernels.{name}._common")
    lengths, H, Dk, Dv = [1, 37, 0, 20, 33], 2, 5, 6
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    T, N = sum(lengths), len(lengths)
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, low=-1.0, high=1.0):
        return (low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    q, k, v = leaf(1, T, H, Dk), leaf(1, T, H, Dk), leaf(1, T, H, Dv)
    tokens = {n: leaf(1, T, H, low=-0.5 if n == "log_decay" else 0.0, high=0.0 if n == "log_decay" else 1.0)
              for n in common.CALL_INPUTS}
    initial = leaf(N, H, Dk, Dv)
    fn = package.FORMS["triton"]

    def not_alone(*args, **kwargs):
        raise AssertionError("runtime.each_sequence ran: the fused scan should take the packed row")

    monkeypatch.setattr(runtime, "each_sequence", not_alone)
    o, final = fn(q, k, v, **tokens, initial_state=initial, output_final_state=True, cu_seqlens=cu, chunk_size=4)
    monkeypatch.undo()
    outs, finals = [], []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if s == e:
            finals.append(initial[i])
            continue
        o_i, f_i = fn(q[:, s:e], k[:, s:e], v[:, s:e], **{n: t[:, s:e] for n, t in tokens.items()},
                      initial_state=initial[i:i + 1], output_final_state=True, chunk_size=4)
        outs.append(o_i)
        finals.append(f_i[0])
    o_ref, final_ref = torch.cat(outs, dim=1), torch.stack(finals)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=1e-12, atol=1e-12)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    w_f = torch.randn(final.shape, generator=gen, dtype=torch.float64)
    leaves = [q, k, v, *tokens.values(), initial]
    got = torch.autograd.grad((o * w_o).sum() + (final * w_f).sum(), leaves)
    want = torch.autograd.grad((o_ref * w_o).sum() + (final_ref * w_f).sum(), leaves)
    for label, a, b in zip(["q", "k", "v", *tokens, "initial_state"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, at=label: f"gradient of {at}: {m}")
