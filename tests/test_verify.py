"""The verifier: every catalog variant passes in fp64 and fp32 (odd shapes included), a wrong
form is caught with a reproducible seed, the JSON report, user mistakes and a user file."""

import json

import pytest
import torch

from derivations.catalog import CATALOG
from tttla.cli import main
from verify.forms import generated_forms, usable_forms
from verify.fuzz import draw, run_campaign, sample_spec


def _odd_shapes(variant):
    """T = 1, T < chunk and T % chunk != 0 (chunk 3 or 4, or the variant's fixed one)."""
    if variant.schedule.fixed:
        return [{"seq_len": 1}, {"seq_len": 3}, {"seq_len": 7}]
    return [{"seq_len": 1, "chunk_size": 4}, {"seq_len": 3, "chunk_size": 4}, {"seq_len": 7, "chunk_size": 3}]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(CATALOG))
def test_catalog_variant_passes(name, dtype):
    with generated_forms(name) as (variant, forms):
        forms, _ = usable_forms(forms)
        campaigns = [run_campaign(variant, forms, cases=2, dtype=dtype, seed=0)]
        campaigns += [run_campaign(variant, forms, cases=1, dtype=dtype, seed=100 + i, **shape)
                      for i, shape in enumerate(_odd_shapes(variant))]
    for c in campaigns:
        assert c.passed, [(spec.describe(variant), r.form, r.failures()) for spec, r in c.failures()]
    lengths = [c.cases[0][0].seq_len for c in campaigns[1:]]
    assert lengths == [1, 3, 7]


def test_case_seed_reproduces_alone():
    variant = CATALOG["lact_v2"]
    spec_in_run = run_campaign(variant, {}, cases=4, seed=10).cases[3][0]
    assert spec_in_run == sample_spec(variant, 13, spec_in_run.attempt)
    assert run_campaign(variant, {}, cases=1, seed=13).cases[0][0] == spec_in_run


def test_nonfinite_oracle_is_redrawn(monkeypatch):
    import verify.fuzz as fuzz

    real = fuzz.reference
    calls = []

    def flaky(variant, case, g):
        ref = real(variant, case, g)
        calls.append(1)
        if len(calls) == 1:
            ref.o = ref.o * float("nan")
        return ref

    monkeypatch.setattr(fuzz, "reference", flaky)
    spec, ref = draw(CATALOG["lact_v6"], 3)
    assert spec.attempt == 1 and torch.isfinite(ref.o).all()
    assert spec == sample_spec(CATALOG["lact_v6"], 3, 1)


def test_wrong_form_fails_with_reproducible_seed(monkeypatch, capsys):
    import tttla_kernels.lact_v6 as module

    good = module.FORMS["chunk"]

    def wrong(*args, **kwargs):
        o, state = good(*args, **kwargs)
        return o + 1e-6, state

    monkeypatch.setitem(module.FORMS, "chunk", wrong)
    assert main(["verify", "lact_v6", "--cases", "3", "--seed", "7"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "case seed 7" in out
    assert "tttla verify lact_v6 --seed 7 --cases 1 --dtype float64 --form chunk" in out
    assert main(["verify", "lact_v6", "--cases", "1", "--seed", "7", "--form", "recurrent"]) == 0


def test_json_report(capsys):
    assert main(["verify", "lact_v6", "--cases", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == "lact_v6" and report["passed"] is True and report["cases"] == 2
    for form in ("recurrent", "chunk"):
        assert report["forms"][form]["passed"] is True
        assert report["forms"][form]["max_rel_error"] < 1e-9


def test_table_report(capsys):
    assert main(["verify", "delta_rule", "--cases", "2", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "form" in out and "max err gradients" in out and "recurrent" in out and "ok" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "0"], "--cases must be >= 1"),
        (["--dtype", "float16"], "--dtype must be one of float64, float32"),
        (["--form", "fused"], "--form must be one of"),
    ],
)
def test_user_mistakes_are_one_line(argv, message, capsys):
    assert main(["verify", "lact_v6", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err




def test_user_file_derive_generate_verify(tmp_path, capsys, user_file):
    path = user_file
    assert main(["derive", str(path)]) == 0
    assert main(["generate", str(path), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["verify", str(path), "--cases", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == "tanh_kernel" and report["passed"] and set(report["forms"]) >= {"recurrent", "chunk"}
    assert main(["verify", f"{path}:tanh_kernel", "--cases", "3", "--dtype", "float32"]) == 0
