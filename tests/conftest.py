"""Test configuration: without a CUDA device Triton runs in its CPU interpreter (set before any
kernel module is imported); hypothesis is deterministic under CI."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25)
settings.register_profile("dev", deadline=None, max_examples=25)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import json  # noqa: E402

import pytest  # noqa: E402

#: a GPU results file as a GPU run would write it (benchmarks/results/<device>.json)
FAKE_GPU = {"machine": {"device": "NVIDIA H100 (test fixture)", "torch": "2.x"}, "results": {"lact_v6": {
    "config": {"seq_len": 8192, "dim": 128, "chunk": 64, "dtype": "bfloat16", "batch_heads": 32},
    "rows": [{"name": "triton", "pass": "forward", "seconds": 0.001, "tokens_per_s": 2.6e8, "flops_per_s": 3e14}]}}}


@pytest.fixture
def nan_fill(monkeypatch):
    """Fresh Triton kernel outputs filled with NaN, so an element no program writes fails a comparison."""
    monkeypatch.setenv("TTTLA_NAN_FILL", "1")


@pytest.fixture
def reversed_grid(monkeypatch):
    """Triton's CPU interpreter runs a grid's programs in reverse order. In order, a program that
    writes outside its tile is overwritten by the next program, which owns those elements; on a
    GPU the programs run in any order, so such a write is a race. Reversed, it shows on the CPU."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    builder = type(interpreter.interpreter_builder)
    in_order = builder.set_grid_idx

    def reversed_idx(self, x, y, z):
        in_order(self, *(n - 1 - i for n, i in zip(self.grid_dim, (x, y, z))))

    monkeypatch.setattr(builder, "set_grid_idx", reversed_idx)


@pytest.fixture(scope="session")
def small_report(tmp_path_factory):
    """One full report of lact_v6 (a parallel variant with a Triton form), built once with few
    cases and a tiny benchmark, plus a fake GPU results file: shared by the report tests."""
    from tttla.reporting import ReportOptions, build_report
    from tttla.reporting.benchmark import SweepConfig

    results = tmp_path_factory.mktemp("results")
    (results / "h100.json").write_text(json.dumps(FAKE_GPU))
    options = ReportOptions(cases=3, bench=SweepConfig(seq_lens=(16, 32), dim=8, chunk=8, repeats=1),
                            results_dir=results)
    return build_report("lact_v6", tmp_path_factory.mktemp("report"), options)


#: a user's variant file, as a researcher would write it (shared by the CLI and verifier tests)
USER_VARIANT_SOURCE = """\
from derivations import variant, dot, tanh, per_token, chunked

@variant(fast={"A": ("d", "h"), "B": ("h", "d")}, update=["B"],
         loss=lambda y, v: -2.0 * dot(y, v), lr=per_token(),
         schedule=chunked(order="block_inclusive", size=8))
def tanh_kernel(x, A, B):
    \"\"\"A tanh feature map with a linear last layer.\"\"\"
    return tanh(x @ A) @ B
"""


@pytest.fixture
def user_variant_source() -> str:
    """The source of a user's variant file (``tanh_kernel``)."""
    return USER_VARIANT_SOURCE


@pytest.fixture
def user_file(tmp_path, user_variant_source):
    """That source written to ``tmp_path/my_rule.py``."""
    path = tmp_path / "my_rule.py"
    path.write_text(user_variant_source)
    return path
