"""Code generation: printer semantics, committed modules regenerate identically, the
generated forms equal the oracle, argument errors name the argument, and the overwrite
guards hold."""

import inspect
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import sympy
import torch

from codegen.generate import PACKAGE_ROOT, GenerationError, generate, import_generated, render_variant
from codegen.printer import ROW, WEIGHT, TorchEmitter
from derivations import Mat, gelu_tanh, silu, tanh
from derivations.catalog import CATALOG
from tttla.cli import main
from verify import make_case, run_direct
from verify.forms import form_kwargs, usable_forms

d, h = sympy.symbols("d h", integer=True, positive=True)


def _run_emitted(emitter, result, env):
    code = "def f({}):\n{}\n    return {}".format(", ".join(env), emitter.code(), result)
    scope = {"torch": torch, "F": torch.nn.functional, "math": __import__("math")}
    exec(code, scope)  # noqa: S102 - testing printed code
    return scope["f"](**env)


class TestPrinter:
    def setup_method(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)  # [B, H, T, d]
        self.G = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
        self.W0 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
        self.W1 = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
        self.X, self.Gs = sympy.MatrixSymbol("x", 1, d), sympy.MatrixSymbol("G", 1, h)
        self.S0, self.S1 = sympy.MatrixSymbol("W0", d, h), sympy.MatrixSymbol("W1", h, h)
        self.symbols = {self.X: ("x", ROW), self.Gs: ("G", ROW), self.S0: ("W0", WEIGHT), self.S1: ("W1", WEIGHT)}

    def test_rows_are_printed_batched_and_match_the_numeric_interpretation(self):
        expr = (silu(Mat.sym(self.X) @ Mat.sym(self.S0)) * tanh(Mat.sym(self.X) @ Mat.sym(self.S0))) @ Mat.sym(self.S1)
        em = TorchEmitter(self.symbols, {d: "d", h: "h"})
        em.assign("out", expr.value)
        got = _run_emitted(em, "out", {"x": self.x, "W0": self.W0, "W1": self.W1})
        X, W0, W1 = Mat.rows(self.x), Mat.weight(self.W0), Mat.weight(self.W1)
        torch.testing.assert_close(got, ((silu(X @ W0) * tanh(X @ W0)) @ W1).value, rtol=0, atol=0)
        assert em.code().count("x @ W0") == 1  # a shared sub-expression is computed once
        assert "# [B, H, T, h]" in em.code()

    def test_column_times_row_is_a_sum_over_tokens(self):
        expr = sympy.MatMul(sympy.Transpose(self.X), self.Gs)  # xᵀ G: d × h
        em = TorchEmitter(self.symbols, {d: "d", h: "h"})
        em.assign("grad", expr)
        got = _run_emitted(em, "grad", {"x": self.x, "G": self.G})
        torch.testing.assert_close(got, torch.einsum("bhtd,bhte->bhde", self.x, self.G))
        assert "x.mT @ G" in em.code() and "# [B, H, d, h]" in em.code()

    def test_elementwise_derivative_bodies_share_subexpressions(self):
        from derivations.autodiff import vjp

        f = gelu_tanh(Mat.sym(self.X) @ Mat.sym(self.S0)).value
        em = TorchEmitter(self.symbols, {d: "d", h: "h"})
        em.assign("grad", vjp(f, self.S0, self.Gs))
        got = _run_emitted(em, "grad", {"x": self.x, "G": self.G, "W0": self.W0})
        W = self.W0.clone().requires_grad_()
        y = torch.nn.functional.gelu(self.x @ W, approximate="tanh")
        (expected,) = torch.autograd.grad((y * self.G).sum(), W)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_committed_modules_regenerate_identically(name):
    for fname, text in render_variant(name).items():
        path = PACKAGE_ROOT / name / fname
        assert path.is_file(), f"{path} is missing: run 'tttla generate --catalog --force'"
        assert path.read_text() == text, f"{path} differs from its regeneration: run 'tttla generate --catalog --force'"


@pytest.mark.parametrize("name", sorted(CATALOG))
@pytest.mark.parametrize("T", [1, 3, 11])
def test_generated_forms_equal_the_oracle_in_fp64(name, T):
    variant = CATALOG[name]
    module = import_generated(name)
    case = make_case(variant, batch=2, seq_len=T, heads=2, sizes={"d": 5, "dv": 6, "h": 3, "e": 4},
                     chunk_size=None if variant.schedule.fixed else 4, requires_grad=True,
                     generator=torch.Generator().manual_seed(T), lr_range=(-1.0, 2.0))
    o_ref, final_ref = run_direct(variant, **case.kwargs())
    named = [(n, t) for n, t in case.leaves().items() if not (n == "q" and variant.queries == "key")]
    leaves = [t for _, t in named]
    probe = torch.randn_like(o_ref)
    ref_grads = torch.autograd.grad((o_ref * probe).sum(), leaves, allow_unused=True)
    for form, fn in module.FORMS.items():
        if form == "triton":
            continue  # covered by tests/test_triton.py in the interpreter
        o, final = fn(case.q, case.k, case.v, **form_kwargs(variant, case))
        final = final if isinstance(final, dict) else {variant.update[0]: final}
        torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-12, msg=f"{form}: output")
        for u in variant.update:
            torch.testing.assert_close(final[u], final_ref[u], rtol=1e-9, atol=1e-12, msg=f"{form}: state {u}")
        grads = torch.autograd.grad((o * probe).sum(), leaves, allow_unused=True)
        for (label, _), g, r in zip(named, grads, ref_grads):
            if r is None:
                assert g is None or not g.any(), f"{form}: gradient of {label} should vanish"
                continue
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=f"{form}: gradient of {label}")


USER = textwrap.dedent(
    '''
    from derivations import variant, dot, sq_norm, tanh, per_token, momentum, newton_schulz, chunked

    @variant(fast={"A": ("d", "h"), "B": ("h", "e")}, update=["B"], key_dim="d",
             loss=lambda y, v: -0.5 * dot(y, v), lr=per_token(), momentum=momentum("chunk"),
             orthogonalize=newton_schulz(2, "fixed"), schedule=chunked("block_inclusive", 4))
    def tanh_memory(x, A, B):
        """A tanh kernel with its own value width e."""
        return tanh(x @ A) @ B
    '''
)


def test_user_variant_generate_and_match_oracle(tmp_path, capsys):
    path = tmp_path / "user.py"
    path.write_text(USER)
    out = tmp_path / "kernels"
    assert main(["generate", str(path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    module = import_generated("tanh_memory", out)
    from derivations.loading import load_variant

    variant = load_variant(str(path))
    case = make_case(variant, seq_len=10, heads=2, sizes={"d": 4, "dv": 5, "h": 3, "e": 2}, chunk_size=4)
    o_ref, final_ref = run_direct(variant, **case.kwargs())
    for fn in usable_forms(dict(module.FORMS))[0].values():
        o, final = fn(case.q, case.k, case.v, **form_kwargs(variant, case))
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(final, final_ref["B"], rtol=1e-10, atol=1e-12)
    # generating again replaces the folder
    assert main(["generate", str(path), "--out", str(out)]) == 0


def _printed_increments(form):
    import codegen.context as context

    fn = context._increments(form, context._dim_names(form.variant), multi=len(form.variant.update) > 1)
    scope = {"torch": torch, "F": torch.nn.functional, "math": __import__("math")}
    exec(f"def f({', '.join(fn.params)}):\n{fn.body}\n    return {fn.returns}", scope)  # noqa: S102
    return fn, scope["f"]


@pytest.mark.parametrize("name", ["ttt_mlp", "lact"])
def test_increments_share_the_cotangent_across_weights(name, monkeypatch):
    """Every weight's increment is a token sum of rows taken once with ∂L/∂f; scaling the
    cotangent per weight first (the form kept for gradients of any other shape) agrees."""
    import codegen.context as context
    from derivations import derive

    form = derive(CATALOG[name])
    shared, f_shared = _printed_increments(form)
    assert "G_" not in shared.body and shared.body.count("dL_dz_") >= 2
    if name == "ttt_mlp":  # the LayerNorm backward once, not once per updated weight
        row_reductions = shared.body.count(".sum(-1, keepdim=True)") + shared.body.count(".mean(-1, keepdim=True)")
        assert row_reductions == 4 and shared.body.count(" @ ") == 5
    monkeypatch.setattr(context, "_token_sums", lambda em, grad: [(False, grad)])
    per_weight, f_per_weight = _printed_increments(form)
    assert "G_W" in per_weight.body and shared.params == per_weight.params
    g = torch.Generator().manual_seed(0)
    sizes = {"d": 5, "dv": 6, "h": 4}
    args = {}
    for p in shared.params:
        if p in ("k", "v") or p.startswith("eta"):
            args[p] = torch.randn(2, 3, 7, 1 if p.startswith("eta") else 5, generator=g, dtype=torch.float64)
        else:
            shape = [s if isinstance(s, int) else sizes[str(s)] for s in CATALOG[name].fast[p]]
            args[p] = 0.5 * torch.randn(2, 3, *shape, generator=g, dtype=torch.float64)
    want, got = f_per_weight(**args), f_shared(**args)
    for w in CATALOG[name].update:
        torch.testing.assert_close(got[w], want[w], rtol=1e-12, atol=1e-12)


def test_generate_refuses_the_package_without_force(capsys):
    assert main(["generate", "lact_v6", "--out", str(PACKAGE_ROOT)]) == 2
    assert "inside the tttla_kernels package; pass --force" in capsys.readouterr().err


def test_generate_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "lact_v6").mkdir()
    (tmp_path / "lact_v6" / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="was not generated by tttla; pass --force"):
        generate("lact_v6", tmp_path)
    assert (tmp_path / "lact_v6" / "notes.txt").read_text() == "mine"


class TestArgumentErrors:
    def setup_method(self):
        self.v = CATALOG["lact_v2"]
        self.fn = import_generated("lact_v2").FORMS["chunk"]
        self.case = make_case(self.v, batch=2, seq_len=6, heads=2, sizes={"d": 4, "dv": 5, "h": 3}, chunk_size=4)
        self.kw = form_kwargs(self.v, self.case)

    def call(self, **override):
        args = {"q": self.case.q, "k": self.case.k, "v": self.case.v, **self.kw, **override}
        return self.fn(**args)

    def test_shape(self):
        with pytest.raises(ValueError, match=r"k must have the shape of q"):
            self.call(k=self.case.k[:, :2])

    def test_dtype(self):
        with pytest.raises(ValueError, match=r"v must have the dtype of q \(torch.float64\), got torch.float32"):
            self.call(v=self.case.v.float())

    def test_device(self):
        with pytest.raises(ValueError, match=r"lr must be on the device of q \(cpu\), got meta"):
            self.call(lr=self.case.lr.to("meta"))

    @pytest.mark.parametrize("size", [0, -1])
    def test_chunk_size(self, size):
        with pytest.raises(ValueError, match=rf"chunk_size must be an integer >= 1, got {size}"):
            self.call(chunk_size=size)

    def test_slow_weight_shape(self):
        with pytest.raises(ValueError, match=r"W2 has size 3 along 'h' \(shape \[2, 2, 4, 3\]\), but W0 has 2"):
            self.call(W0=self.case.initial_weights["W0"][..., :2])

    def test_initial_state_shape(self):
        msg = r"initial_state has size 4 along 'h' \(shape \[2, 2, 4, 4\]\), but W0 has 3"
        with pytest.raises(ValueError, match=msg):
            self.call(initial_state=torch.zeros(2, 2, 4, 4, dtype=torch.float64))


def test_kernels_import_without_sympy_or_jinja():
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("sympy", "jinja2"):
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, Block())
        import tttla_kernels
        for info in pkgutil.walk_packages(tttla_kernels.__path__, "tttla_kernels."):
            importlib.import_module(info.name)
        assert not any(m.split(".")[0] in ("sympy", "jinja2") for m in sys.modules)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# -- the plan of generated forms (codegen.plan) ------------------------------------------------

def _plan(name):
    from codegen.plan import plan
    from derivations import derive

    return plan(derive(CATALOG[name], certify=False))


def test_plan_of_a_prefix_scan_variant():
    p = _plan("lact_v2")
    assert p.chunk_template == "prefix_scan" and p.compute_chunk is None and p.triton_refusal is None
    assert p.files["chunk.py"] == "chunk.py.jinja" and p.files["triton_chunk.py"] == "triton_chunk.py.jinja"
    assert p.generated()["chunk"] == p.generated()["triton"] == {"kind": "parallel", "reason": None}
    recurrent = p.generated()["recurrent"]  # one step per chunk, the chunks in sequence
    assert recurrent["kind"] == "chunk_scan" and "one inner step per chunk" in recurrent["reason"]


def test_plan_of_a_token_level_prefix_scan_takes_a_compute_chunk():
    p = _plan("linear_attention")
    assert p.chunk_template == "prefix_scan" and p.compute_chunk == 64
    assert p.forms["recurrent"].kind == "recurrence" and p.forms["chunk"].kind == "parallel"


def test_plan_of_a_delta_chunk_variant():
    p = _plan("gated_delta_rule")
    assert p.chunk_template == "delta_chunk" and p.compute_chunk == 64 and p.triton_refusal is None
    assert p.files["chunk.py"] == "delta_chunk.py.jinja" and p.files["triton_chunk.py"] == "triton_delta.py.jinja"
    assert {f.kind for n, f in p.forms.items() if n != "recurrent"} == {"parallel"}


@pytest.mark.parametrize("name,kind", [("ttt_linear", "recurrence"), ("lact", "chunk_scan")])
def test_plan_of_a_sequential_variant(name, kind):
    p = _plan(name)
    assert p.chunk_template is None and set(p.forms) == {"recurrent", "chunk"}
    chunk = p.forms["chunk"]
    assert chunk.template == "chunk_recurrence.py.jinja" and chunk.kind == kind == p.forms["recurrent"].kind
    assert chunk.reason.startswith("not parallel") and p.not_generated() == {"triton": chunk.reason}
    assert p.triton_refusal == f"no Triton form for {name!r}: {chunk.reason}"


def test_plan_of_a_headed_one_step_variant_says_why_it_has_no_triton_form():
    """One bidirectional step under a gated head: the recurrence is one batched pass (parallel), and
    there is no template for its f, so no Triton form, with the head named."""
    p = _plan("vittt_glu")
    assert p.chunk_template is None and "triton" not in p.forms
    chunk = p.forms["chunk"]
    assert chunk.kind == p.forms["recurrent"].kind == "parallel" and "one batched pass" in chunk.reason
    assert "no parallel template" in p.no_triton and "f = z_W1 ⊙ silu(z_W2)" in p.no_triton  # the head it lacks


def test_derive_reports_the_generated_forms(capsys):
    import json

    assert main(["derive", "ttt_linear", "--json", "--no-certificate"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generated"]["recurrent"]["kind"] == "recurrence"
    assert data["generated"]["chunk"]["reason"].startswith("not parallel") and "triton" not in data["generated"]
    assert data["not_generated"]["triton"] == data["generated"]["chunk"]["reason"]
    assert main(["derive", "lact_v2", "--no-certificate"]) == 0
    text = capsys.readouterr().out
    assert "generated forms" in text and "triton (triton_chunk.py): parallel" in text


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_package_shares_its_pieces_through_common(name):
    folder = PACKAGE_ROOT / name
    common = (folder / "_common.py").read_text()
    assert "def feature_map(" in common and "def prepare(" in common and "def finish(" in common
    forms = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "_common.py")]
    assert {p.name for p in forms} == set(_plan(name).files) - {"__init__.py", "_common.py"}
    for path in forms:
        text = path.read_text()
        assert "def feature_map(" not in text and "def prepare(" not in text, f"{path} redefines a shared piece"
        assert "runtime.check_qkv" not in text, f"{path} repeats the input checks of _common.prepare"


def test_a_chunk_form_that_is_the_recurrence_says_so():
    doc = import_generated("ttt_linear").chunk.__doc__  # chunk.py's module docstring
    assert "the recurrence itself" in doc and "not a parallel form" in doc


def test_codegen_never_imports_the_cli_package():
    import ast
    from pathlib import Path

    for path in (Path(__file__).resolve().parent.parent / "codegen").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tttla" or n.startswith("tttla.") for n in names), f"{path.name} imports {names}"


def test_docstrings_describe_each_slow_weight_by_its_role():
    text = (PACKAGE_ROOT / "ttt_mlp" / "recurrent.py").read_text()
    assert "gamma: slow weight of the output head" in text and "beta: slow weight of the output head" in text
    assert "W0: slow weight inside the feature map φ" in (PACKAGE_ROOT / "lact_v2" / "chunk.py").read_text()


def test_the_header_of_a_file_variant_regenerates_it(tmp_path, monkeypatch, capsys):
    """The header names the VARIANT argument that loads the declaration again, from any folder."""
    path = tmp_path / "user.py"
    path.write_text(USER)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "user.py", "--out", "kernels"]) == 0
    header = (tmp_path / "kernels" / "tanh_memory" / "__init__.py").read_text().splitlines()[1]
    command = header.split("`")[1].split()
    assert command == ["tttla", "generate", f"{path.resolve()}:tanh_memory", "--out", "DIR"], header
    monkeypatch.chdir(tmp_path.parent)
    capsys.readouterr()
    assert main([*command[1:-1], str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "tanh_memory" / "recurrent.py").is_file()


def test_the_header_of_a_catalog_variant_names_the_catalog_and_the_name():
    header = render_variant("lact_v2")["recurrent.py"].splitlines()[1]
    assert "`tttla generate --catalog --force`" in header and "`tttla generate lact_v2 --out DIR`" in header


def test_the_header_of_a_variant_built_in_a_function_says_how_to_regenerate_it():
    from derivations import dot, variant

    @variant(fast={"W": ("d", "d")}, update=["W"], loss=lambda y, v: -dot(y, v))
    def local(x, W):
        return x @ W

    header = render_variant(local)["__init__.py"].splitlines()[1]
    assert "codegen.generate.generate" in header and "tttla generate" not in header


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_generated_folders_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        paths = generate("lact_v6", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths[0].parent.stat().st_mode) == 0o777 & ~umask


def _public_signatures(name):
    package = import_generated(name)
    return {form: inspect.signature(fn) for form, fn in package.FORMS.items()}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_form_of_a_variant_takes_the_same_arguments(name):
    """The forms are swappable: the same keyword arguments, with the same defaults."""
    signatures = _public_signatures(name)
    first, *rest = signatures.items()
    for form, signature in rest:
        assert list(signature.parameters.values()) == list(first[1].parameters.values()), (form, first[0])


@pytest.mark.parametrize("name", ["delta_rule", "linear_attention"])
def test_the_recurrence_checks_a_chunk_size_it_does_not_need(name):
    variant, forms = CATALOG[name], import_generated(name).FORMS
    case = make_case(variant, seq_len=7, heads=2, sizes={"d": 3, "dv": 4}, chunk_size=1)
    kwargs = form_kwargs(variant, case)
    o_ref, _ = forms["recurrent"](case.q, case.k, case.v, **kwargs)
    for chunk_size in (1, 3, 64):
        o, _ = forms["recurrent"](case.q, case.k, case.v, **kwargs, chunk_size=chunk_size)
        torch.testing.assert_close(o, o_ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        forms["recurrent"](case.q, case.k, case.v, **kwargs, chunk_size=0)
