"""tttla_kernels.layers: a layer per catalog variant (and per generated package) whose forms agree,
forward and backward; decoding from a cache equals one forward over the whole sequence; the
layers compile with torch.compile(fullgraph=True) and learn associative recall."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import tttla_kernels
from codegen.generate import generate, import_generated
from derivations import chunked, dot, momentum, per_token, silu, variant
from tttla_kernels import layers
from verify.tolerances import relative_error

HIDDEN, HEADS, CHUNK = 24, 2, 4
ORDER = {name: importlib.import_module(f"tttla_kernels.{name}._common").ORDER for name in layers.LAYERS}
CAUSAL = [name for name, order in ORDER.items() if order != "bidirectional"]


def _layer(name, mode="recurrent", dtype=torch.float64, **options):
    """The layer of ``name`` with chunks of 4 and, where the weights have one, an inner width h of 5."""
    torch.manual_seed(0)
    common = importlib.import_module(f"tttla_kernels.{name}._common")
    chunk = {} if common.ORDER == "bidirectional" else {"chunk_size": CHUNK}
    shapes = [*common.STATE_SHAPES.values(), *common.SLOW_WEIGHT_SHAPES.values()]
    sizes = {"h": 5} if any("h" in shape for shape in shapes) else {}
    return layers.build(name, HIDDEN, HEADS, mode=mode, sizes=sizes, **chunk, **options).to(dtype)


def _hidden(T, batch=2, dtype=torch.float64, seed=1):
    return torch.randn(batch, T, HIDDEN, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _outputs_and_grads(layer, x, **kw):
    o = layer(x, **kw)[0]
    # the same weights in every dtype: drawn in fp64, the loss summed in fp64
    weights = torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(o.device)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad((o.double() * weights).sum(), params, allow_unused=True)
    return o, {n: g for (n, _), g in zip(layer.named_parameters(), grads) if g is not None}


def test_every_catalog_variant_has_a_layer_and_fla_names_are_aliases():
    generated = {m.name for m in pkgutil.iter_modules(tttla_kernels.__path__) if m.ispkg}
    assert set(layers.LAYERS) == generated
    assert layers.GatedDeltaNet is layers.GatedDeltaRule and layers.DeltaNet is layers.DeltaRule
    assert layers.GatedLinearAttention is layers.GLA and layers.MultiScaleRetention is layers.Retention
    assert isinstance(layers.build("gated_delta_rule", 32, 4), layers.GatedDeltaRule)
    assert "Gated delta rule" in layers.GatedDeltaRule.__doc__


@pytest.mark.parametrize("name", list(layers.LAYERS))
def test_the_forms_agree_inside_the_layer_forward_and_backward(name):
    """fp64, T = 9 (not a multiple of the chunk, 4): every torch form against the recurrence, the
    output and the gradient of every parameter (projections, slow weights, initial state)."""
    layer = _layer(name)
    x = _hidden(9)
    kw = {"grid": (3, 3)} if layer.grid_input else {}
    o_ref, g_ref = _outputs_and_grads(layer, x, **kw)
    assert g_ref and all(g.abs().sum() > 0 for n, g in g_ref.items() if n.startswith(("q_proj", "v_proj", "o_proj")))
    for mode in [m for m in layer.package.FORMS if m not in ("recurrent", "triton")]:
        layer.mode = mode
        o, g = _outputs_and_grads(layer, x, **kw)
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10, msg=lambda m, at=f"{name} {mode}": f"{at}: o: {m}")
        assert g.keys() == g_ref.keys()
        for n in g:
            torch.testing.assert_close(g[n], g_ref[n], rtol=1e-9, atol=1e-9,
                                       msg=lambda m, at=f"{name} {mode}: {n}": f"{at}: {m}")


@pytest.mark.parametrize("name", ["linear_attention", "gated_delta_rule", "lact_v3"])
def test_the_triton_form_inside_the_layer(name):
    """fp32, in Triton's interpreter or on a GPU: the Triton form's output and parameter gradients are
    at most twice as far from the truth (the recurrence in fp64) as the recurrence in fp32, or within
    the fp32 floor (relative RMS error 1e-4, docs/maths.md section 13)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = _layer(name).to(device)
    x = _hidden(11).to(device)
    truth = _outputs_and_grads(layer, x)
    layer.float()
    plain = _outputs_and_grads(layer, x.float())
    layer.mode = "triton"
    got = _outputs_and_grads(layer, x.float())

    def errors(result):
        o, grads = result
        return {"o": relative_error(truth[0], o, "rms_ratio"),
                **{n: relative_error(truth[1][n], g, "rms_ratio") for n, g in grads.items()}}

    ours, theirs = errors(got), errors(plain)
    assert ours.keys() == theirs.keys()
    bad = {n: f"{ours[n]:.2e} (recurrence {theirs[n]:.2e})" for n in ours if not ours[n] <= max(2 * theirs[n], 1e-4)}
    assert not bad, f"{name}: the Triton form is farther from the fp64 truth than twice the fp32 recurrence: {bad}"


@pytest.mark.parametrize("name", ["linear_attention", "gla", "gated_delta_rule", "titans"])
def test_a_bf16_layer_is_the_fp32_layer_within_bf16_rounding(name):
    """The same parameters in bf16 and fp32 (chunk form, T = 37): the bf16 output within a relative RMS
    error of 1.5e-2 (four bf16 ulps, 2^-8 each) of the fp32 one, and every gradient finite."""
    layer = _layer(name, mode="chunk", dtype=torch.bfloat16)
    reference = _layer(name, mode="chunk", dtype=torch.float32)
    reference.load_state_dict({n: t.float() for n, t in layer.state_dict().items()})
    x = _hidden(37, dtype=torch.float32)
    o = layer(x.bfloat16())[0]
    assert o.dtype == torch.bfloat16
    assert relative_error(reference(x)[0], o, "rms_ratio") < 1.5e-2
    o.float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", CAUSAL)
def test_decoding_token_by_token_equals_the_full_forward(name):
    """A prompt of 3 tokens, then one token per call from the cache, fp64: the outputs of one forward
    over all 11 tokens (chunks of 4: a step completes inside the prompt's continuation, and one stays
    partial), and the cache counts the tokens."""
    layer = _layer(name, mode="chunk")
    x = _hidden(11)
    full = layer(x)[0]
    cache = layers.Cache()
    o, _, cache = layer(x[:, :3], past_key_values=cache, use_cache=True)
    outputs = [o]
    for t in range(3, 11):
        o, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        outputs.append(o)
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, rtol=1e-10, atol=1e-10)
    state = cache[layer]
    assert state.seen == 11
    assert state.pending_tokens == (0 if layer.common.TOKENS_PER_STEP == 1 else 11 % CHUNK)


def test_decoding_a_prompt_at_once_and_layers_sharing_a_cache():
    """A whole prompt in one call (several complete steps, then a partial one) and two layers keyed by
    layer_idx in one Cache: the same outputs as forwards over the whole sequence."""
    first, second = _layer("lact_v2", layer_idx=0), _layer("titans", layer_idx=1)
    x = _hidden(13)
    full = second(first(x)[0])[0]
    cache = layers.Cache()
    h, _, cache = first(x[:, :10], past_key_values=cache, use_cache=True)
    o1, _, cache = second(h, past_key_values=cache, use_cache=True)
    h, _, cache = first(x[:, 10:], past_key_values=cache, use_cache=True)
    o2, _, cache = second(h, past_key_values=cache, use_cache=True)
    assert set(cache) == {0, 1}
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), full, rtol=1e-10, atol=1e-10)


def test_a_cache_is_read_without_use_cache_and_left_unchanged():
    layer = _layer("gated_delta_rule")
    x = _hidden(5)
    _, _, cache = layer(x[:, :4], use_cache=True)
    before = cache[layer]
    o, _, same = layer(x[:, 4:], past_key_values=cache)
    torch.testing.assert_close(o, layer(x)[0][:, 4:], rtol=1e-10, atol=1e-10)
    assert same is cache and cache[layer] is before


@pytest.mark.parametrize("name", ["gated_delta_rule", "gla", "lact_v2"])
def test_grouped_value_heads_in_the_layer(name):
    """Two query/key heads serving four value heads: the per-token inputs, slow weights and states are
    per value head; the forms agree and decoding equals the full forward."""
    layer = _layer(name, mode="chunk", num_v_heads=4)
    assert layer.v_proj.out_features == 4 * layer.value_dim and layer.q_proj.out_features == 2 * layer.head_dim
    assert all(p.shape[0] == 4 for p in layer.slow.values())
    x = _hidden(9)
    o = layer(x)[0]
    layer.mode = "recurrent"
    torch.testing.assert_close(layer(x)[0], o, rtol=1e-10, atol=1e-10)
    cache, steps = None, []
    for t in range(9):
        step, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=1), o, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="num_v_heads 3 must be a positive multiple of num_heads 2"):
        _layer(name, num_v_heads=3)


def test_packed_sequences_in_the_layer_are_each_sequence_alone():
    layer = _layer("gated_delta_rule", mode="chunk")
    x = _hidden(12, batch=1)
    cu = torch.tensor([0, 5, 6, 12])
    o = layer(x, cu_seqlens=cu)[0]
    alone = torch.cat([layer(x[:, s:e])[0] for s, e in zip(cu[:-1], cu[1:])], dim=1)
    torch.testing.assert_close(o, alone, rtol=1e-10, atol=1e-10)


def test_a_generated_user_package_builds_a_layer(tmp_path):
    """The README's rule, generated into a folder of the user's: build() takes its package, and
    decoding equals the full forward (momentum per chunk, read before the chunk's step)."""
    @variant(fast={"W0": ("d", "h"), "W2": ("d", "h"), "W1": ("h", "d")}, update=["W1"],
             loss=lambda y, v: -dot(y, v), lr=per_token(), momentum=momentum(per="chunk"),
             schedule=chunked(order="apply_then_update", size=4))
    def my_rule(x, W0, W1, W2):
        return (silu(x @ W0) * (x @ W2)) @ W1

    generate(my_rule, tmp_path)
    package = import_generated("my_rule", tmp_path)
    torch.manual_seed(0)
    layer = layers.build(package, HIDDEN, HEADS, mode="chunk", sizes={"h": 7}).double()
    assert type(layer) is layers.TTTLayer and layer.slow["W0"].shape == (HEADS, HIDDEN // HEADS, 7)
    x = _hidden(10)
    full = layer(x)[0]
    cache = None
    outputs = []
    for t in range(10):
        o, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        outputs.append(o)
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, rtol=1e-10, atol=1e-10)


def test_decoding_is_refused_where_a_token_reads_later_tokens(tmp_path):
    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v), lr=per_token(),
             schedule=chunked(order="block_inclusive", size=4))
    def inclusive_rule(x, W):
        return x @ W

    generate(inclusive_rule, tmp_path)
    layer = layers.build(import_generated("inclusive_rule", tmp_path), HIDDEN, HEADS)
    layer(_hidden(6, dtype=torch.float32))  # a forward runs
    with pytest.raises(ValueError, match="read the state after their own step, so a token reads the later tokens"):
        layer(_hidden(6, dtype=torch.float32), use_cache=True)
    with pytest.raises(ValueError, match="vittt_glu is bidirectional"):
        _layer("vittt_glu")(_hidden(6), use_cache=True)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by num_heads 4"):
        layers.build("linear_attention", 30, 4)
    with pytest.raises(ValueError, match=r"mode 'fast': gated_delta_rule has the forms \['chunk', 'recurrent'"):
        layers.build("gated_delta_rule", 32, 4, mode="fast")
    with pytest.raises(ValueError, match="variant 'no_such_rule': no generated package"):
        layers.build("no_such_rule", 32, 4)
    with pytest.raises(ValueError, match="value_dim must equal head_dim"):
        layers.build("ttt_linear", 32, 4, value_dim=4)
    with pytest.raises(ValueError, match=r"sizes: \['x'\] are not named dimensions of lact's weights \(they are "
                                         r"\['d', 'h'\]\)"):
        layers.build("lact", 32, 4, sizes={"x": 3})
    with pytest.raises(ValueError, match="chunk_size: vittt_glu takes one step on all tokens"):
        layers.build("vittt_glu", 32, 4, chunk_size=4)
    layer = layers.build("linear_attention", 32, 4)
    with pytest.raises(ValueError, match=r"hidden_states must be a tensor \[B, T, hidden_size=32\], got \[2, 3, 16\]"):
        layer(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="attention_mask with padding is not supported.*cu_seqlens"):
        layer(torch.randn(2, 3, 32), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert layer(torch.randn(2, 3, 32), attention_mask=torch.ones(2, 3))[0].shape == (2, 3, 32)
    with pytest.raises(ValueError, match=r"vittt_dwconv convolves the token grid: pass grid=\(h, w\)"):
        layers.build("vittt_dwconv", 32, 4)(torch.randn(1, 6, 32))
    with pytest.raises(ValueError, match="grid: linear_attention has no spatial structure"):
        layer(torch.randn(1, 6, 32), grid=(2, 3))
    with pytest.raises(ValueError, match="cu_seqlens with a cache"):
        layer(torch.randn(1, 6, 32), cu_seqlens=torch.tensor([0, 2, 6]), use_cache=True)


def test_torch_compile_fullgraph_of_a_forward_and_of_a_decoding_step():
    """A chunk-form forward with its backward, and one decoding step from a cache, each one graph."""
    torch.manual_seed(0)
    layer = layers.build("linear_attention", 32, 2, mode="chunk", chunk_size=8)
    x = torch.randn(2, 19, 32)
    compiled = torch.compile(layer, fullgraph=True)
    o = compiled(x)[0]
    torch.testing.assert_close(o, layer(x)[0], rtol=1e-5, atol=1e-5)
    o.sum().backward()
    assert layer.q_proj.weight.grad is not None
    _, _, cache = layer(x[:, :18], use_cache=True)
    step, _, cache = compiled(x[:, 18:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(step, layer(x)[0][:, 18:], rtol=1e-5, atol=1e-5)
    assert cache[layer].seen == 19


class _Recall(nn.Module):
    """Associative recall: tokens carry a (key, value) pair; the last carries a key alone and the
    model names its value."""

    def __init__(self, keys, values, width, variant):
        super().__init__()
        self.key, self.value = nn.Embedding(keys, width), nn.Embedding(values + 1, width)  # id `values`: none
        self.mix = layers.build(variant, width, 4, mode="chunk")
        self.head = nn.Linear(width, values)

    def forward(self, keys, values):
        x = self.key(keys) + self.value(values)
        return self.head(x + self.mix(x)[0])[:, -1]


def test_a_small_model_learns_associative_recall():
    """gated_delta_rule, 200 Adam steps on the CPU (seconds): the loss falls from chance (ln 16 ≈ 2.8)."""
    keys, values, pairs = 16, 16, 6
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        k = torch.stack([torch.randperm(keys, generator=gen)[:pairs] for _ in range(n)])
        v = torch.randint(values, (n, pairs), generator=gen)
        pick = torch.randint(pairs, (n,), generator=gen)
        query = k[torch.arange(n), pick, None]
        return torch.cat([k, query], 1), torch.cat([v, torch.full((n, 1), values)], 1), v[torch.arange(n), pick]

    torch.manual_seed(0)
    model = _Recall(keys, values, 64, "gated_delta_rule")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    test = batch(256)
    with torch.no_grad():
        start = nn.functional.cross_entropy(model(*test[:2]), test[2]).item()
    for _ in range(200):
        k, v, y = batch(64)
        loss = nn.functional.cross_entropy(model(k, v), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(*test[:2])
    end = nn.functional.cross_entropy(logits, test[2]).item()
    accuracy = (logits.argmax(-1) == test[2]).float().mean().item()
    assert start > 2.5 and end < 0.3 and accuracy > 0.9, (start, end, accuracy)
