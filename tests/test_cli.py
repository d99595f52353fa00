"""The tttla command line: list, run, catalog, user files and user mistakes."""

import subprocess
import sys

from tttla.cli import main


def test_list_prints_the_catalog(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("lact", "lact_v1", "lact_v6", "lact_ga", "lact_no_query", "lact_mse", "delta_rule"):
        assert f"\n{name} " in out
    assert "V2: V1 without weight norm" in out


def test_run_catalog_variant(capsys):
    assert main(["run", "lact_v2", "--seq-len", "20", "--chunk", "8", "--dim", "4"]) == 0
    out = capsys.readouterr().out
    assert "output o  1×20×2×4" in out
    assert "final W1" in out


def test_run_user_file(user_file, capsys):
    assert main(["run", str(user_file), "--seq-len", "12", "--dim", "3", "--chunk", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tanh_kernel: A tanh feature map with a linear last layer.")
    assert "final B" in out


def test_run_user_file_with_attribute(user_file, capsys):
    assert main(["run", f"{user_file}:tanh_kernel", "--seq-len", "5", "--dim", "2"]) == 0
    assert "tanh_kernel" in capsys.readouterr().out


def test_unknown_variant_suggests(capsys):
    assert main(["run", "lact_v7"]) == 2
    err = capsys.readouterr().err
    assert "no catalog variant named 'lact_v7'; did you mean" in err
    assert "'lact_v6'" in err


def test_missing_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.py")]) == 2
    assert "no such file:" in capsys.readouterr().err


def test_unknown_attribute(user_file, capsys):
    assert main(["run", f"{user_file}:other"]) == 2
    assert "has no variant named 'other' (variants in it: tanh_kernel)" in capsys.readouterr().err


def test_malformed_declaration_in_file(tmp_path, capsys, user_variant_source):
    path = tmp_path / "bad.py"
    path.write_text(user_variant_source.replace('update=["B"]', 'update=["C"]'))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "update names 'C', which is not a fast weight" in err


def test_bad_option_value(capsys):
    assert main(["run", "lact_v6", "--seq-len", "0"]) == 2
    assert "--seq-len must be >= 1, got 0" in capsys.readouterr().err


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "tttla", "--help"], capture_output=True, text=True, check=True)
    assert "examples:" in res.stdout and "run" in res.stdout


def test_generate_prints_how_to_build_a_layer_and_that_call_works(tmp_path, capsys):
    assert main(["generate", "lact_v2", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    prefix = "as a layer of a model: "
    assert line.startswith(prefix)
    call = line[len(prefix):].replace("hidden_size=...", "hidden_size=32").replace("num_heads=...", "num_heads=2")
    import codegen.generate
    import tttla_kernels.layers

    layer = eval(call, {"codegen": codegen, "tttla_kernels": tttla_kernels})
    assert layer.package.VARIANT == "lact_v2" and layer.q_proj.in_features == 32
