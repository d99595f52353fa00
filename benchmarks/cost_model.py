"""The cost model at the two GPU benchmark shapes, computed on the CPU (no GPU, no memory).

    .venv/bin/python benchmarks/cost_model.py        # writes benchmarks/results/cost-model.json

For ``linear_attention`` (B = 4, H = 16, T = 8192, d = 128, chunk 64) and ``lact_v2`` (B = 1,
H = 4, T = 32768, d = h = 384, chunk 2048), bf16, the torch chunk form and the Triton form are
run on fake tensors and counted op by op (:mod:`verify.cost`: bytes read and written, launches,
matmul FLOPs, the H100 roofline's time), forward and forward+backward; flash-linear-attention's
``chunk_linear_attn`` gets a row from its kernels' reads and writes (:func:`fla_chunk_linear_attn`).
The issue's cost-model targets are checked on the rows and written beside them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.run_gpu import LINEAR, PAPER  # noqa: E402
from verify.cost import H100_SXM, PASSES, OpCost, Tally, causal_pairs, cost_row, form_rows  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "cost-model.json"
DTYPE = torch.bfloat16
#: variant → the benchmark shape it is counted at (the GPU benchmark's, benchmarks/run_gpu.py)
SHAPES = {"linear_attention": LINEAR, "lact_v2": PAPER}
FORMS = ("chunk", "triton")
#: (variant, form, pass, row field, at most): the issue's cost-model targets (1.6 KB = 1600 bytes)
TARGETS = [
    ("linear_attention", "triton", "forward", "bytes_per_head_token", 1600),
    ("linear_attention", "triton", "forward", "launches", 3),
    ("lact_v2", "triton", "forward", "launches", 25),
]


def fla_chunk_linear_attn(shape: dict, pass_: str, dtype: torch.dtype = DTYPE) -> Tally:
    """flash-linear-attention's ``chunk_linear_attn`` (``normalize=False``, as benchmarked), kernel
    by kernel, each an :class:`~verify.cost.OpCost` of what it reads and writes, modelled from how
    fla's chunk kernels work (fla/ops/simple_gla/chunk.py over fla/ops/common/chunk_h.py and
    chunk_o.py; no gate).

    Assumed: q, k, v, o and their gradients ``[B, T, H, d]`` in ``dtype``, read in place through
    strides; chunk L = 64 (``shape["chunk"]``), N = ⌈T/L⌉ chunk states ``h [B, N, H, K, V]``:
    in ``dtype`` in the forward (fla's ``states_in_fp32=False``), in fp32 when the backward
    recomputes them, and the state gradients dh in fp32; the initial state is read and the final
    state written (fp32 ``[B, H, K, V]``), as the benchmark asks for both. Every tensor is counted
    once per kernel that touches it: tiles of K or V that re-read a token block (served from L2)
    are not counted. FLOPs: 2·T·K·V per state product, 2·(K or V) per causal pair of the
    intra-chunk products. The optional normalisation (``normalize=True``: a running key sum and a
    division) is not modelled.

    Forward, 2 launches:

    * ``chunk_fwd_h``: reads k, v and h0; writes every chunk's state h and the final state;
      FLOPs Kᵀ_n V_n per chunk;
    * ``chunk_fwd_o``: reads q, k, v and h; writes o; FLOPs q h, and q kᵀ and its product with v
      over the causal pairs.

    Backward, 4 more launches:

    * ``chunk_fwd_h`` again, states in fp32;
    * ``chunk_bwd_dh``: reads q, dO and the final state's gradient; writes dh (fp32) and dh0;
      FLOPs Qᵀ_n dO_n per chunk;
    * ``chunk_bwd_dqkwg``: reads q, k, v, dO, h, dh; writes dq, dk; FLOPs dO hᵀ and v dhᵀ, and
      dO vᵀ, its products with k and q over the pairs;
    * ``chunk_bwd_dv``: reads q, k, dO, dh; writes dv; FLOPs k dh, and k qᵀ and its product with
      dO over the pairs.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    bh, T, d, L = shape["batch"] * shape["heads"], shape["seq_len"], shape["dim"], shape["chunk"]
    K = V = d
    size = dtype.itemsize
    fp32 = torch.float32.itemsize
    tokens = bh * T * d * size  # one of q, k, v, o, dO, dq, dk, dv
    states = bh * math.ceil(T / L) * K * V  # elements of h (or dh)
    one_state = bh * K * V * fp32  # h0, the final state, its gradient, dh0
    state_products = 2 * bh * T * K * V  # one [T, K] × [K, V] product per head
    pair_products = 2 * bh * causal_pairs(T, L)  # × (K or V)

    def kernel(name, read, written, flops):
        return OpCost(f"fla {name}", read, written, flops, 1, dtype)

    ops = [
        kernel("chunk_fwd_h", 2 * tokens + one_state, states * size + one_state, state_products),
        kernel("chunk_fwd_o", 3 * tokens + states * size, tokens, state_products + pair_products * (K + V)),
    ]
    if pass_ == "forward+backward":
        ops += [
            kernel("chunk_fwd_h (recomputed, fp32)", 2 * tokens + one_state, states * fp32, state_products),
            kernel("chunk_bwd_dh", 2 * tokens + one_state, states * fp32 + one_state, state_products),
            kernel("chunk_bwd_dqkwg", 4 * tokens + 2 * states * fp32, 2 * tokens,
                   2 * state_products + pair_products * (2 * K + V)),
            kernel("chunk_bwd_dv", 3 * tokens + states * fp32, tokens, state_products + pair_products * (K + V)),
        ]
    return Tally(ops)


def fla_rows(shape: dict, dtype: torch.dtype = DTYPE) -> list[dict]:
    return [cost_row("linear_attention", "fla_chunk", p, shape, dtype, fla_chunk_linear_attn(shape, p, dtype))
            for p in PASSES]


def check_targets(rows: list[dict]) -> list[dict]:
    """Each target of :data:`TARGETS` against its row: the value, and whether it is met."""
    found = []
    for variant, form, pass_, field, at_most in TARGETS:
        row = next((r for r in rows if (r["variant"], r["form"], r["pass"]) == (variant, form, pass_)), None)
        if row is None:
            raise ValueError(f"no cost-model row for the target on {variant} {form} {pass_}")
        found.append({"variant": variant, "form": form, "pass": pass_, "field": field, "at_most": at_most,
                      "value": row[field], "met": row[field] <= at_most})
    return found


def measure(shapes: dict = SHAPES, forms=FORMS, dtype: torch.dtype = DTYPE) -> list[dict]:
    """The rows of every variant of ``shapes`` (its generated ``forms``), and fla's beside
    linear_attention."""
    from verify.forms import generated_forms

    rows = []
    for name, shape in shapes.items():
        with generated_forms(name) as (variant, generated):
            rows += form_rows(variant, {f: generated[f] for f in forms}, shape, dtype)
        if name == "linear_attention":
            rows += fla_rows(shape, dtype)
    return rows


def hardware_json(hw=H100_SXM) -> dict:
    return {"name": hw.name, "hbm_bytes_per_s": hw.bytes_per_s, "launch_seconds": hw.launch_s,
            "matmul_flops_per_s": {str(k).removeprefix("torch."): v for k, v in hw.flops_per_s.items()}}


def main() -> None:
    rows = measure()
    out = {"hardware": hardware_json(), "rows": rows, "targets": check_targets(rows)}
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"{r['variant']:17} {r['form']:10} {r['pass']:17} {r['bytes_per_head_token']:10.1f} B/head-token "
              f"{r['launches']:4d} launches {r['flops'] / 1e9:9.1f} GFLOP {r['predicted_seconds'] * 1e3:7.3f} ms")
    for t in out["targets"]:
        print(f"target {t['variant']} {t['form']} {t['pass']} {t['field']} <= {t['at_most']}: {t['value']} "
              f"({'met' if t['met'] else 'not met'})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
