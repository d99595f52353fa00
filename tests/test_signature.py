"""The one description of a variant's optional inputs (verify/signature.py) drives the random
cases, the forms' keyword arguments, the gradient leaves and the fuzzer's ranges."""

import pytest
import torch

from derivations.catalog import CATALOG
from verify.forms import cast_case, form_kwargs
from verify.fuzz import sample_spec
from verify.inputs import make_case
from verify.signature import OPTIONAL_INPUTS, grid_for, optional_inputs, resolve_ranges

FORM_ARGUMENTS = {"initial_state", "output_final_state", "chunk_size"}


def test_momentum_lr_and_decay_are_exactly_the_inputs_of_titans():
    titans = CATALOG["titans"]
    assert [i.name for i in optional_inputs(titans)] == ["lr", "momentum", "log_decay"]
    case = make_case(titans, batch=2, seq_len=5, heads=3, sizes={"d": 4, "dv": 5}, chunk_size=2, requires_grad=True)
    assert list(case.optional) == ["lr", "momentum", "log_decay"]
    assert all(t.shape == (2, 5, 3) for t in case.optional.values())
    assert case.grid is None and case.lr_position is None
    assert list(case.leaves()) == ["q", "k", "v", "W[M]", "lr", "momentum", "log_decay"]
    assert all(t.requires_grad for t in case.leaves().values())
    kwargs = form_kwargs(titans, case)
    assert set(kwargs) - FORM_ARGUMENTS == {"lr", "momentum", "log_decay"}
    assert all(kwargs[n] is case.optional[n] for n in case.optional)
    assert set(case.kwargs()) == {"q", "k", "v", "initial_weights", "chunk_size", "lr", "momentum", "log_decay"}


def test_draws_follow_the_ranges():
    titans = CATALOG["titans"]
    case = make_case(titans, seq_len=200, lr_range=(2.0, 3.0), momentum_range=(0.1, 0.2), decay_range=(0.3, 0.4))
    assert 2.0 <= case.lr.min() and case.lr.max() <= 3.0
    assert 0.1 <= case.momentum.min() and case.momentum.max() <= 0.2
    gamma = case.log_decay.exp()
    assert 0.3 <= gamma.min() and gamma.max() <= 0.4 + 1e-12


def test_a_learning_rate_per_updated_weight_is_a_dict():
    lact = CATALOG["lact"]
    case = make_case(lact, seq_len=4, sizes={"d": 3, "dv": 4, "h": 2}, chunk_size=2)
    assert set(case.lr) == set(lact.update) == {"W0", "W1", "W2"}
    assert [n for n in case.leaves() if n.startswith("lr")] == ["lr[W0]", "lr[W1]", "lr[W2]"]
    cast = cast_case(case, torch.float32)
    assert all(t.dtype == torch.float32 and t.requires_grad for t in cast.lr.values())
    assert form_kwargs(lact, cast)["lr"] is cast.lr


def test_spatial_and_rank1_inputs():
    dw = make_case(CATALOG["vittt_dwconv"], seq_len=6, sizes={"d": 2, "dv": 3})
    assert dw.grid == grid_for(6) == (2, 3) and "grid" not in dw.leaves()
    assert cast_case(dw, torch.float32).grid == (2, 3)
    ttt = make_case(CATALOG["ttt_linear"], seq_len=6, sizes={"d": 2, "dv": 3}, chunk_size=4)
    assert ttt.lr_position.shape == (4,) and "lr_position" in ttt.leaves()
    assert "lr_position" in form_kwargs(CATALOG["ttt_linear"], ttt)


def test_every_catalog_variant_gets_what_it_takes():
    for name, variant in CATALOG.items():
        case = make_case(variant, seq_len=4, sizes={d: 3 for d in variant.dims})
        assert list(case.optional) == [i.name for i in OPTIONAL_INPUTS if i.takes(variant)], name


def test_case_attributes_are_the_optional_inputs():
    case = make_case(CATALOG["delta_rule"], seq_len=3, sizes={"d": 2, "dv": 3})
    assert case.momentum is None
    case.lr = torch.full_like(case.lr, 0.5)
    assert torch.equal(case.optional["lr"], torch.full((1, 3, 1), 0.5, dtype=torch.float64))
    case.lr = None
    assert "lr" not in case.optional and "lr" not in case.kwargs()
    with pytest.raises(AttributeError, match="no attribute 'gate'"):
        case.gate  # noqa: B018


def test_range_keywords_are_checked():
    with pytest.raises(TypeError, match=r"unknown range keyword\(s\) \['gate_range'\]"):
        make_case(CATALOG["lact_v2"], gate_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"decay_range must lie within \(0, 1\], got \(0.5, 1.5\)"):
        resolve_ranges({"decay_range": (0.5, 1.5)})
    assert resolve_ranges({})["decay_range"] == (0.5, 1.0)


def test_fuzz_ranges_are_described_only_where_taken():
    spec = sample_spec(CATALOG["lact_v2"], 0)
    assert set(spec.ranges) == {"lr_range", "momentum_range"}
    assert "lr~U[" in spec.describe(CATALOG["lact_v2"]) and "momentum~U[" in spec.describe(CATALOG["lact_v2"])
    plain = sample_spec(CATALOG["lact_v6"], 0).describe(CATALOG["lact_v6"])
    assert "lr~U" not in plain and "momentum~U" not in plain
