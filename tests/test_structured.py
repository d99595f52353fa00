"""Structured fast weights: the depthwise k×k convolution on a token grid (ViTTT's second branch,
docs/maths.md section 11), on its own and through the whole pipeline."""

from __future__ import annotations

import pytest
import torch

from codegen.generate import generate, import_generated
from derivations import (
    DeclarationError,
    bidirectional,
    chunked,
    column_clip,
    depthwise,
    depthwise_conv,
    derive,
    dot,
    newton_schulz,
    per_token,
    silu,
    sq_norm,
    variant,
)
from derivations.catalog import CATALOG
from derivations.mat import Mat
from tttla.reporting import formulas
from tttla_kernels import runtime
from verify.forms import call_form, generated_forms, usable_forms
from verify.fuzz import run_campaign
from verify.inputs import grid_for, make_case
from verify.oracle import run_direct

pytestmark = pytest.mark.usefixtures("nan_fill")

#: odd grids: one token, one row, one column, T smaller than the kernel's 9 taps, rectangles
ODD_GRIDS = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (4, 7)]


def _patch(X: torch.Tensor, grid, p: int, k: int = 3) -> torch.Tensor:
    """The k×k patch of token p, written out: ``[k², C]``, zero outside the grid."""
    h, w = grid
    i, j = divmod(p, w)
    out = X.new_zeros(k * k, X.shape[-1])
    for ky in range(k):
        for kx in range(k):
            ii, jj = i + ky - k // 2, j + kx - k // 2
            if 0 <= ii < h and 0 <= jj < w:
                out[ky * k + kx] = X[ii * w + jj]
    return out


# --- the language ------------------------------------------------------------------------------


def test_depthwise_conv_executes_a_grouped_conv2d():
    g = torch.Generator().manual_seed(0)
    B, H, grid, C = 2, 3, (4, 5), 6
    x = torch.randn(B, H, 20, C, generator=g, dtype=torch.float64)
    w = torch.randn(B, H, 9, C, generator=g, dtype=torch.float64)
    got = depthwise_conv(Mat.rows(x, grid=grid), Mat.weight(w)).value
    for b in range(B):
        for h in range(H):
            conv = torch.nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False).double()
            with torch.no_grad():  # the documented layout: w[ky·3 + kx, c] = conv.weight[c, 0, ky, kx]
                conv.weight.copy_(w[b, h].T.reshape(C, 1, 3, 3))
                image = x[b, h].T.reshape(1, C, *grid)
                want = conv(image).reshape(C, -1).T
            torch.testing.assert_close(got[b, h], want, rtol=1e-12, atol=1e-12)


def test_grid_patches_are_the_written_out_patches():
    g = torch.Generator().manual_seed(1)
    B, H, grid, C = 2, 2, (3, 4), 5
    x = torch.randn(B, 12, H, C, generator=g, dtype=torch.float64)
    patches = runtime.grid_patches(x, grid, 3)  # [B, T, H·C, 9]
    assert patches.shape == (B, 12, H * C, 9)
    for b in range(B):
        for h in range(H):
            for p in range(12):
                want = _patch(x[b, :, h], grid, p)  # [9, C]
                torch.testing.assert_close(patches[b, p, h * C:(h + 1) * C], want.T)


@pytest.mark.parametrize("name", ["vittt_dwconv", "vittt_dwconv_noclip"])
def test_oracle_equals_the_closed_form(name):
    """Section 7.5 written out: G[Δ, c] = −(s/N) Σ_p K_pad[c, p+Δ] V[c, p], the per-kernel clip
    G/(‖G‖_F + 1), w' = w − G, O = Conv(Q; w')."""
    v = CATALOG[name]
    grid = (3, 4)
    T = 12
    case = make_case(v, batch=2, heads=2, seq_len=T, sizes={"d": 5, "dv": 6}, grid=grid,
                     generator=torch.Generator().manual_seed(2))
    case.lr = torch.full_like(case.lr, 1.0 / T)  # η = 1/N with s = 1/3 in the loss
    o, final = run_direct(v, **case.kwargs())
    for b in range(2):
        for h in range(2):
            Q, K, V = case.q[b, :, h], case.k[b, :, h], case.v[b, :, h]
            w = case.initial_weights["w"][b, h]
            G = -sum(_patch(K, grid, p) * V[p] for p in range(T)) / (3 * T)
            if name == "vittt_dwconv":
                G = G / (G.norm(dim=0, keepdim=True) + 1)
            w_new = w - G
            torch.testing.assert_close(final["w"][b, h], w_new, rtol=1e-12, atol=1e-12)
            want = torch.stack([(_patch(Q, grid, p) * w_new).sum(0) for p in range(T)])
            torch.testing.assert_close(o[b, :, h], want, rtol=1e-12, atol=1e-12)


# --- derivation --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vittt_dwconv", "vittt_dwconv_noclip"])
def test_derived_as_sliding_window_linear_attention(name):
    form = derive(name)
    c = form.classification
    assert (c.structure, c.kernel, c.values, c.parallel, c.parallel_form) == (
        "linear", "static", "state_independent", True, "prefix_scan")
    assert form.certificate.certified, form.certificate.failure
    assert c.codes[0] == "lowered.depthwise" and c.reasons[0].facts == {"kernel": 3}
    assert (c.reason("parallel.one_step").facts["clip"] is not None) == (name == "vittt_dwconv")
    assert form.state == "w" and form.feature == form.x  # φ = the patch itself
    assert form.x.shape[1] == form.variant.lowered().trace().x.shape[1]  # 1 × taps
    assert any("ψ_c(Q, p)" in f.text for f in formulas.unrolled(form))
    v = form.variant
    assert v.fast == {"w": (9, "d")} and v.value_dim == "d" and v.lowered().fast == {"w": ("taps", 1)}


def test_lowering_is_general_a_gated_depthwise_layer(tmp_path):
    """Two depthwise weights under a GLU head and a ½‖f − v‖² loss: the lowering feeds the gated
    path of the engine, and the generated forms match the literal conv2d oracle."""

    @variant(fast={"w1": depthwise(3), "w2": depthwise(3)}, update=["w1", "w2"],
             loss=lambda y, v: 0.5 * sq_norm(y - v), lr=per_token(), schedule=bidirectional(), clip=column_clip())
    def gated_dwconv(x, w1, w2):
        """A GLU of two depthwise convolutions."""
        return depthwise_conv(x, w1) * silu(depthwise_conv(x, w2))

    form = derive(gated_dwconv)
    assert form.classification.structure == "gated" and form.certificate.certified, form.certificate.failure
    generate(gated_dwconv, tmp_path)
    forms = dict(import_generated("gated_dwconv", tmp_path).FORMS)
    for dtype in (torch.float64, torch.float32):
        campaign = run_campaign(gated_dwconv, forms, cases=3, dtype=dtype, seed=5)
        odd = run_campaign(gated_dwconv, forms, cases=1, dtype=dtype, seed=9, seq_len=8, grid=(2, 4))
        for c in (campaign, odd):
            assert c.passed, [(s.describe(), r.form, r.failures()) for s, r in c.failures()]


# --- generated forms on odd grids ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("grid", ODD_GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("name", ["vittt_dwconv", "vittt_dwconv_noclip"])
def test_forms_match_the_oracle_on_odd_grids(name, grid, dtype):
    with generated_forms(name) as (variant_, forms):
        forms, _ = usable_forms(forms)
        assert {"recurrent", "chunk"} <= set(forms)
        c = run_campaign(variant_, forms, cases=1, dtype=dtype, seed=31, seq_len=grid[0] * grid[1], grid=grid)
    assert c.cases[0][0].grid == grid
    assert c.passed, [(s.describe(), r.form, r.failures()) for s, r in c.failures()]


def test_grid_is_drawn_among_the_divisors_of_T():
    assert grid_for(12) == (3, 4) and grid_for(7) == (1, 7) and grid_for(1) == (1, 1)
    from verify.fuzz import sample_spec

    specs = [sample_spec(CATALOG["vittt_dwconv"], seed) for seed in range(60)]
    assert all(s.grid[0] * s.grid[1] == s.seq_len for s in specs)
    assert any(s.grid[0] > 1 and s.grid[1] > 1 for s in specs)
    assert sample_spec(CATALOG["linear_attention"], 0).grid is None


# --- errors --------------------------------------------------------------------------------------


def _case(**kw):
    return make_case(CATALOG["vittt_dwconv"], seq_len=6, sizes={"d": 4, "dv": 5}, **kw)


def test_generated_form_names_bad_arguments():
    chunk = import_generated("vittt_dwconv").chunk_vittt_dwconv
    case = _case()
    kw = dict(lr=case.lr, initial_state=case.initial_weights["w"])
    with pytest.raises(ValueError, match=r"grid \(2, 2\) holds h·w = 4 tokens, but q has T = 6"):
        chunk(case.q, case.k, case.v, grid=(2, 2), **kw)
    with pytest.raises(ValueError, match="grid must be a pair"):
        chunk(case.q, case.k, case.v, grid=(2.0, 3), **kw)
    with pytest.raises(ValueError, match="v must have the channels of q"):
        chunk(case.q, case.k, case.v[..., :3], grid=(2, 3), **kw)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[B, H, rows, cols\] = \[1, 1, 9, 4\]"):
        chunk(case.q, case.k, case.v, grid=(2, 3), lr=case.lr, initial_state=case.initial_weights["w"][..., :8, :])
    with pytest.raises(ValueError, match=r"lr must have shape \[B, T, H\]"):
        chunk(case.q, case.k, case.v, grid=(2, 3), lr=case.lr[:, :3], initial_state=case.initial_weights["w"])
    with pytest.raises(TypeError, match="grid"):
        chunk(case.q, case.k, case.v, **kw)


def test_oracle_needs_the_grid_exactly_for_spatial_variants():
    case = _case()
    kwargs = case.kwargs()
    with pytest.raises(ValueError, match=r"pass grid=\(h, w\) with h·w = T = 6"):
        run_direct(CATALOG["vittt_dwconv"], **{**kwargs, "grid": None})
    lin = make_case(CATALOG["linear_attention"], seq_len=6)
    with pytest.raises(ValueError, match="has no spatial structure; do not pass grid"):
        run_direct(CATALOG["linear_attention"], **{**lin.kwargs(), "grid": (2, 3)})
    with pytest.raises(ValueError, match="has no spatial structure"):
        make_case(CATALOG["linear_attention"], seq_len=6, grid=(2, 3))
    o, _ = call_form(CATALOG["vittt_dwconv"], import_generated("vittt_dwconv").FORMS["recurrent"], case)
    assert o.shape == case.v.shape


def _declare(fast, model, *, loss=lambda y, v: -dot(y, v), schedule=None, update=None, **kw):
    return variant(fast=fast, update=update or list(fast), loss=loss, schedule=schedule or bidirectional(), **kw)(model)


@pytest.mark.parametrize("bad, match", [
    (dict(fast={"w": depthwise(3), "W": ("d", "d")}, model=lambda x, w, W: depthwise_conv(x, w)),
     "W is dense but w depthwise"),
    (dict(fast={"w": depthwise(3)}, model=lambda x, w: depthwise_conv(x, w), schedule=chunked("block_inclusive", 4)),
     "use schedule=bidirectional"),
    (dict(fast={"w": depthwise(3)}, model=lambda x, w: depthwise_conv(x, w), orthogonalize=newton_schulz(2)),
     "Newton–Schulz mixes the columns"),
    (dict(fast={"w": depthwise(3)}, model=lambda x, w: depthwise_conv(x, w), loss=lambda y, v: -dot(y, v) * dot(y, v)),
     "a sum over channels"),
    (dict(fast={"w": depthwise(3)}, model=lambda x, w: depthwise_conv(silu(x), w)),
     "takes the layer's input row itself"),
    (dict(fast={"w": depthwise(3)}, model=lambda x, w: depthwise_conv(x, w) + x),
     "may only be read as depthwise_conv"),
    (dict(fast={"w1": depthwise(3), "w2": depthwise(5)}, model=lambda x, w1, w2: depthwise_conv(x, w1)
          * depthwise_conv(x, w2)), "kernels of different sizes"),
    (dict(fast={"w1": depthwise(3), "w2": depthwise(3)}, update=["w1"],
          model=lambda x, w1, w2: depthwise_conv(x, w1) * depthwise_conv(x, w2)), "not updated"),
])
def test_declaration_errors_say_what_breaks_the_channels(bad, match):
    with pytest.raises(DeclarationError, match=match):
        _declare(**bad)


def test_even_kernel_is_refused():
    with pytest.raises(DeclarationError, match=r"depthwise\(kernel=2\): expected an odd integer"):
        depthwise(2)


def test_flop_model_counts_one_multiply_add_per_tap_and_channel():
    from verify.flops import model_flops

    flops = model_flops(CATALOG["vittt_dwconv"], {"d": 8})
    # the read convolves (2·9·d per token); the increment is one correlation per token, the kernel's
    # gradient (the forward product is not needed: −⟨y, v⟩ values do not read the prediction)
    assert (flops.read, flops.increment) == (2 * 9 * 8, 2 * 9 * 8)
