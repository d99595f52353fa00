"""User mistakes through ``tttla.cli.main``, for every subcommand that takes a VARIANT: one line
on stderr that says what is wrong and what to do, exit status 2, never a traceback."""

import json
import textwrap

import pytest

from tttla.cli import main

#: subcommand → extra arguments it needs besides VARIANT
COMMANDS = {"run": [], "derive": [], "generate": ["--out", "{tmp}/gen"], "verify": [], "bench": [],
            "report": ["--out", "{tmp}/rep"]}

#: W enters the model twice (x·W·W): not a linear layer in W, so there is no linear-attention form
IRREDUCIBLE = textwrap.dedent('''
    from derivations import variant, dot

    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v))
    def twice(x, W):
        return (x @ W) @ W
''')

#: one invalid option value per subcommand
BAD_OPTION = {
    "run": (["--seq-len", "0"], "--seq-len must be >= 1, got 0"),
    "derive": (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    "generate": (["--out", "{file}"], "is a file; give a folder"),
    "verify": (["--cases", "0"], "--cases must be >= 1, got 0"),
    "bench": (["--dtype", "float16"], "--dtype must be one of float64, float32, got 'float16'"),
    "report": (["--seq-lens", "64,abc"], "--seq-lens must be comma-separated integers"),
}


def _argv(command, variant, tmp_path, extra=()):
    args = [a.format(tmp=tmp_path, file=tmp_path / "a_file") for a in [*COMMANDS[command], *extra]]
    return [command, variant, *args]


def _one_line_error(capsys, command, code):
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in captured.out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tttla {command}: error: ")
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file(command, tmp_path, capsys):
    code = main(_argv(command, str(tmp_path / "nope.py"), tmp_path))
    line = _one_line_error(capsys, command, code)
    assert "no such file:" in line and "nope.py" in line and "hint:" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_variant_name(command, tmp_path, capsys):
    code = main(_argv(command, "lact_v7", tmp_path))
    line = _one_line_error(capsys, command, code)
    assert "no catalog variant named 'lact_v7'; did you mean" in line and "'lact_v6'" in line
    assert "tttla list" in line


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "run"])
def test_variant_that_cannot_be_reduced(command, tmp_path, capsys):
    path = tmp_path / "twice.py"
    path.write_text(IRREDUCIBLE)
    code = main(_argv(command, str(path), tmp_path))
    line = _one_line_error(capsys, command, code)
    assert "is not linear in a fast weight" in line and "x·W·W" in line
    assert "hint:" in line and "tttla run" in line


def test_run_still_runs_a_variant_that_cannot_be_reduced(tmp_path, capsys):
    """The oracle executes the inner loop literally: no reduction needed."""
    path = tmp_path / "twice.py"
    path.write_text(IRREDUCIBLE)
    assert main(["run", str(path), "--seq-len", "4", "--dim", "2"]) == 0
    assert "final W" in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_invalid_option_value(command, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    extra, expected = BAD_OPTION[command]
    argv = _argv(command, "lact_v6", tmp_path, extra)  # a repeated --out: the last one counts
    line = _one_line_error(capsys, command, main(argv))
    assert expected in line
    assert f"tttla {command} --help" in line


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["run"], ["report", "lact_v6"], ["catalog", "--only", "nope"]])
def test_usage_errors_are_one_line(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_every_help_explains_with_examples(capsys):
    from tttla.commands import COMMANDS as ALL

    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "examples:" in top
    for command in ALL:
        assert f"\n    {command}" in top
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "example" in text and f"tttla {command}" in text, command


@pytest.mark.parametrize("command", ["derive", "bench"])
@pytest.mark.parametrize("variant, message", [("lact_v7", "no catalog variant named 'lact_v7'"),
                                               ("{tmp}/nope.py", "no such file:")])
def test_a_refusal_with_json_prints_a_json_object(command, variant, message, tmp_path, capsys):
    """--json promises JSON on stdout: a refusal is an object with the error and the hint, exit 2."""
    code = main([command, variant.format(tmp=tmp_path), "--json"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == 2 and data["exit_code"] == 2 and data["command"] == f"tttla {command}"
    assert message in data["error"] and "hint" in data
    assert captured.err.startswith(f"tttla {command}: error: {data['error']}")


def test_a_usage_error_with_json_prints_a_json_object(capsys):
    assert main(["derive", "--format", "json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert "required: VARIANT" in data["error"] and data["hint"] == "see 'tttla derive --help'"


def test_a_refusal_without_json_prints_nothing_on_stdout(capsys):
    assert main(["derive", "lact_v7"]) == 2
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("folder", ["rules", "rules.py"])
def test_a_folder_given_as_variant_is_named_a_folder(command, folder, tmp_path, capsys):
    (tmp_path / folder).mkdir()
    line = _one_line_error(capsys, command, main(_argv(command, str(tmp_path / folder), tmp_path)))
    assert f"{tmp_path / folder} is a folder, not a variant" in line and "FILE.py:NAME" in line
    assert "no such file" not in line


def test_a_folder_named_like_a_catalog_variant_does_not_hide_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "delta_rule").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["derive", "delta_rule", "--no-certificate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == "delta_rule"
