"""GPU throughput of the generated forms at the paper's scale, in one run per shape.

    python benchmarks/run_gpu.py                 # on a machine with an NVIDIA GPU
    python benchmarks/run_gpu.py --autotune      # time the kernels' candidate configs first
    TRITON_INTERPRET=1 python benchmarks/run_gpu.py --smoke   # tiny shapes, CPU: checks the plumbing

Measures, each row the median, fastest and slowest of triton.testing.do_bench's repeats (CUDA
events, L2 flushed):

* the peak: a bf16 ``torch.matmul`` of 8192 x 8192 x 8192 in the same run;
* lact_v2 … lact_v6 at B = 1, H = 4, T = 32768, d = h = 384, chunk 2048, bf16: the Triton form,
  the generated torch chunk form and the recurrent form, forward and forward+backward;
* linear_attention at B = 4, H = 16, T = 8192, d = 128, bf16: the Triton form beside
  flash-linear-attention's ``chunk_linear_attn`` and ``fused_recurrent_linear_attn`` (when fla
  is importable; ``normalize=False, scale=1`` is the same layer, checked on the outputs);
* lact_v2's throughput as T grows (2K … 64K), plotted.

Forward+backward is verify.bench.forward_backward: torch.autograd.grad of the output and the
final states with random output gradients drawn once, untimed. Throughput is head-tokens/s
(B·H·T per call, the paper's Table 2 count) and sequence tokens/s (B·T per call). FLOPs are the
model's matmuls counted from the shapes (verify/flops.py: the same count for every
implementation of a layer; forward+backward = 3x forward). Writes
``<out>/<device>.json`` ({"machine", "results": {variant: BenchResult}, "scaling", "targets"})
and ``<out>/<device>-lact_v2-scaling.png``; prints the table and the targets last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from verify.bench import (  # noqa: E402
    BenchConfig,
    BenchResult,
    Row,
    Timing,
    forward_backward,
    machine,
    spread_ms,
    time_cuda,
    time_repeats,
    timed_row,
)
from verify.flops import form_flops, model_flops  # noqa: E402
from verify.forms import call_form, cast_case  # noqa: E402
from verify.inputs import make_case  # noqa: E402

LACT = ["lact_v2", "lact_v3", "lact_v4", "lact_v5", "lact_v6"]
PAPER = {"batch": 1, "heads": 4, "seq_len": 32768, "dim": 384, "chunk": 2048}
LINEAR = {"batch": 4, "heads": 16, "seq_len": 8192, "dim": 128, "chunk": 64}
LINEAR_CHUNKS = [128, 256]  # beside the default compute chunk (64)
SCALING = [2048, 4096, 8192, 16384, 32768, 65536]
SMOKE = {"paper": {"batch": 1, "heads": 2, "seq_len": 40, "dim": 16, "chunk": 16},
         "linear": {"batch": 1, "heads": 2, "seq_len": 40, "dim": 16, "chunk": 16},
         "scaling": [16, 32]}


def timing(fn, device: str) -> Timing:
    """Seconds of ``fn()``: CUDA events through do_bench on a GPU, wall clock elsewhere."""
    return time_cuda(fn) if device == "cuda" else time_repeats(fn, repeats=2)


def matmul_peak(dtype: torch.dtype, device: str, n: int = 8192) -> float:
    """FLOP/s of an n x n x n ``torch.matmul`` in ``dtype`` on random data."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / timing(lambda: a @ b, device).median


def _case(variant, shape: dict):
    """A CPU case of ``shape`` (every named dimension ``dim``) and its sizes."""
    sizes = {k: shape["dim"] for k in (*variant.dims, variant.value_dim) if isinstance(k, str)}
    chunk = None if variant.schedule.fixed else shape["chunk"]
    case = make_case(variant, batch=shape["batch"], seq_len=shape["seq_len"], heads=shape["heads"], sizes=sizes,
                     chunk_size=chunk, generator=torch.Generator().manual_seed(0))
    return case, sizes


def _forward(variant, fn, case, chunk):
    """One forward without autograd."""

    def run():
        with torch.no_grad():
            call_form(variant, fn, case, chunk)

    return run


def bench_shape(variant, forms: dict, shape: dict, dtype, device, peak: float, progress=None,
                passes=("forward", "forward+backward"), keep=None) -> BenchResult:
    """Every form of ``forms`` (name → fn(q, k, v, **kwargs)), in each of ``passes``, on one
    shape in one run; ``progress(msg)`` hears of each row as it is measured, and ``keep(result)``
    gets the rows so far after each (a run stopped by its time limit keeps what it measured)."""
    config = BenchConfig(seq_len=shape["seq_len"], dim=shape["dim"], chunk=shape["chunk"],
                         dtype=str(dtype).removeprefix("torch."), batch_heads=shape["batch"] * shape["heads"],
                         repeats=0, batch=shape["batch"])
    result = BenchResult(variant.name, config, matmul_flops_per_s=peak, machine=machine())
    case, sizes = _case(variant, shape)
    fwd_case = cast_case(case, dtype, requires_grad=False, device=device)
    grad_case = cast_case(case, dtype, requires_grad=True, device=device)
    per_token = model_flops(variant, sizes)
    compute_chunk = shape["chunk"] if variant.schedule.fixed else None
    for name, fn in forms.items():
        for pass_ in passes:
            chunk = compute_chunk if name != "recurrent" else None
            try:
                if pass_ == "forward":
                    run = _forward(variant, fn, fwd_case, chunk)
                else:
                    run = forward_backward(variant, fn, grad_case, chunk)
                t = timing(run, device)
            except torch.OutOfMemoryError:
                result.rows.append(Row(name, pass_, None))
                torch.cuda.empty_cache()
                continue
            flops = form_flops(variant, "recurrent", batch_heads=config.batch_heads, seq_len=config.seq_len,
                               sizes=sizes, chunk_size=shape["chunk"], backward=pass_ != "forward",
                               per_token=per_token)
            row = timed_row(name, pass_, t, config, flops, peak)
            result.rows.append(row)
            if progress:
                progress(f"{variant.name} T={config.seq_len} {name} {pass_}: {t.median * 1e3:.3f} ms "
                         f"({t.min * 1e3:.3f}–{t.max * 1e3:.3f}), {row.tokens_per_s / 1e6:.2f} M head-tok/s, "
                         f"{100 * row.fraction_of_matmul:.1f}% of peak")
            if keep:
                keep(result)
    result.rows.append(Row("matmul", "forward", None, None, None, peak, 1.0))
    return result


def with_chunk(fn, chunk_size: int):
    """``fn`` with its compute chunk fixed at ``chunk_size``."""
    return lambda q, k, v, **kwargs: fn(q, k, v, **{**kwargs, "chunk_size": chunk_size})


def fla_forms() -> tuple[dict, str | None]:
    """flash-linear-attention's two linear-attention kernels as forms (normalize=False, scale=1:
    o_t = q_t (S0 + Σ_{s≤t} k_sᵀ v_s)), or a note on why they are missing."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
    except Exception as e:  # noqa: BLE001 — fla is optional: the row is left out with the reason
        return {}, f"flash-linear-attention not importable: {type(e).__name__}: {e}"

    def wrap(fn):
        def form(q, k, v, *, initial_state=None, output_final_state=False, chunk_size=None):
            state = initial_state
            if state is not None:  # fla wants a fp32 [B, H, K, V] state
                state = state.float().expand(q.shape[0], *state.shape[-3:])
            return fn(q, k, v, scale=1.0, initial_state=state, output_final_state=output_final_state, normalize=False)

        return form

    import fla

    return ({"fla_chunk": wrap(chunk_linear_attn), "fla_fused_recurrent": wrap(fused_recurrent_linear_attn)},
            f"flash-linear-attention {getattr(fla, '__version__', '?')}")


def agreement(variant, forms: dict, shape: dict, dtype, device) -> dict[str, float]:
    """RMS ratio of each form's output against the first form's, on the benchmark's inputs."""
    from verify.tolerances import relative_error

    case = cast_case(_case(variant, shape)[0], dtype, requires_grad=False, device=device)
    chunk = shape["chunk"] if variant.schedule.fixed else None
    with torch.no_grad():
        outs = {n: call_form(variant, fn, case, chunk if n != "recurrent" else None)[0] for n, fn in forms.items()}
    first = next(iter(outs.values()))
    return {n: relative_error(first, o, "rms_ratio") for n, o in outs.items()}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plot_scaling(rows: list[dict], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in [("triton_forward", "Triton, forward"), ("triton_forward+backward", "Triton, fwd+bwd"),
                       ("chunk_forward", "torch chunk, forward"), ("chunk_forward+backward", "torch chunk, fwd+bwd")]:
        pts = [(r["seq_len"], r[key]) for r in rows if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("head-tokens / s (B·H·T)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"lact_v2 throughput vs T (B=1, H=4, d=h=384, chunk 2048, bf16)\n{device}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--autotune", action="store_true", help="TTTLA_AUTOTUNE=1: time the kernels' candidates")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script, measures nothing)")
    parser.add_argument("--only", nargs="*", choices=["lact", "linear", "scaling"], default=None,
                        help="run only these parts (default: all)")
    parser.add_argument("--variants", nargs="*", default=LACT, help="LaCT variants at the paper's shape")
    parser.add_argument("--merge", type=Path, default=None,
                        help="an earlier results file whose parts this run does not measure are kept "
                             "(each part keeps the peak of its own run)")
    args = parser.parse_args(argv)
    if args.autotune:
        os.environ["TTTLA_AUTOTUNE"] = "1"
    from codegen.generate import import_generated
    from derivations.catalog import CATALOG
    from tttla_kernels import triton_runtime

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        parser.error("no CUDA device: run on a GPU, or pass --smoke with TRITON_INTERPRET=1")
    paper, linear, scaling = (SMOKE["paper"], SMOKE["linear"], SMOKE["scaling"]) if args.smoke else \
        (PAPER, LINEAR, SCALING)
    parts = set(args.only or ["lact", "linear", "scaling"])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"

    def say(msg):
        print(f"  .. {msg}", flush=True)

    peak = matmul_peak(dtype, device, 8192 if device == "cuda" else 256)
    info = {**machine(), "device": name, "dtype": str(dtype).removeprefix("torch."), "matmul_peak_flops_per_s": peak,
            "autotune": args.autotune}
    if device == "cuda":
        import triton

        info.update(triton=triton.__version__, cuda=torch.version.cuda,
                    sms=torch.cuda.get_device_properties(0).multi_processor_count)
    print(f"{name}: same-run {info['dtype']} matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    out = {"machine": info, "results": {}, "scaling": {}, "agreement": {}, "targets": []}
    if args.merge is not None:
        earlier = json.loads(args.merge.read_text())
        for key in ("results", "scaling", "agreement"):
            out[key].update(earlier.get(key, {}))
        out["machine"]["merged_from"] = {"file": args.merge.name, "peak": earlier["machine"]["matmul_peak_flops_per_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = _slug(name) + ("-autotune" if args.autotune else "")
    path = args.out / f"{stem}.json"

    def save():  # after every part, so a run cut short keeps what it measured
        out["machine"]["tuned_configs"] = {str(k): v for k, v in triton_runtime.tuned_configs().items()}
        out["targets"] = targets(out)
        path.write_text(json.dumps(out, indent=2) + "\n")

    def keeping(name):
        def keep(result):
            out["results"][name] = result.to_json()
            save()
        return keep

    if "lact" in parts:
        for v in args.variants:
            forms = {k: f for k, f in import_generated(v).FORMS.items() if k in ("triton", "chunk", "recurrent")}
            out["agreement"][v] = agreement(CATALOG[v], forms, paper, dtype, device)
            out["results"][v] = bench_shape(CATALOG[v], forms, paper, dtype, device, peak, say,
                                            keep=keeping(v)).to_json()
            save()
    if "linear" in parts:
        la = import_generated("linear_attention").FORMS
        forms = {"triton": la["triton"], "chunk": la["chunk"]}
        for L in LINEAR_CHUNKS:  # the compute chunk is free for a token-level layer: larger blocks, fewer states
            forms[f"triton_chunk{L}"] = with_chunk(la["triton"], L)
        extra, note = fla_forms() if device == "cuda" else ({}, "fla needs a GPU")
        forms.update(extra)
        info["fla"] = note
        variant = CATALOG["linear_attention"]
        out["agreement"]["linear_attention"] = agreement(variant, forms, linear, dtype, device)
        out["results"]["linear_attention"] = bench_shape(variant, forms, linear, dtype, device, peak, say,
                                                         keep=keeping("linear_attention")).to_json()
        save()
    if "scaling" in parts:
        rows = []
        v2 = import_generated("lact_v2").FORMS
        out["scaling"]["lact_v2"] = rows
        for T in scaling:  # the Triton form both ways, the torch chunk form forward (for scale)
            shape = {**paper, "seq_len": T}
            triton_rows = bench_shape(CATALOG["lact_v2"], {"triton": v2["triton"]}, shape, dtype, device, peak, say)
            chunk_rows = bench_shape(CATALOG["lact_v2"], {"chunk": v2["chunk"]}, shape, dtype, device, peak, say,
                                     passes=("forward",))
            measured = [*triton_rows.rows, *chunk_rows.rows]
            rows.append({"seq_len": T, **{f"{x.name}_{x.pass_}": x.tokens_per_s for x in measured if x.seconds}})
            save()
    save()
    if out["scaling"]:
        plot_scaling(out["scaling"]["lact_v2"], name, args.out / f"{stem}-lact_v2-scaling.png")
    print(table(out))
    print(f"wrote {path}")
    return 0


def _row(result: dict, name: str, pass_: str) -> dict | None:
    return next((r for r in result["rows"] if r["name"] == name and r["pass"] == pass_ and r["seconds"]), None)


def targets(out: dict) -> list[dict]:
    """The issue's targets, each with the measured value (never asserted)."""
    found = []

    def ratio(variant, a, b, pass_, at_least, what):
        res = out["results"].get(variant)
        ra, rb = (_row(res, a, pass_), _row(res, b, pass_)) if res else (None, None)
        if ra and rb:
            value = rb["seconds"] / ra["seconds"]
            found.append({"target": what, "at_least": at_least, "value": value, "met": value >= at_least})

    for pass_ in ("forward", "forward+backward"):
        ratio("lact_v2", "triton", "chunk", pass_, 2.0, f"lact_v2 Triton / torch chunk speed, {pass_}")
        ratio("linear_attention", "triton", "fla_chunk", pass_, 1.0,
              f"linear_attention Triton / fla chunk_linear_attn speed, {pass_}")
    res = out["results"].get("linear_attention")
    fla = _row(res, "fla_chunk", "forward") if res else None
    best = min((r for r in res["rows"] if r["name"].startswith("triton") and r["pass"] == "forward" and r["seconds"]),
               key=lambda r: r["seconds"], default=None) if res else None
    if fla and best:
        value = fla["seconds"] / best["seconds"]
        found.append({"target": f"linear_attention fastest Triton ({best['name']}) / fla chunk_linear_attn, forward",
                      "at_least": 1.0, "value": value, "met": value >= 1.0})
    r = out["results"].get("lact_v6")
    row = _row(r, "triton", "forward") if r else None
    if row:
        found.append({"target": "lact_v6 Triton forward, fraction of same-run bf16 matmul peak", "at_least": 0.40,
                      "value": row["fraction_of_matmul"], "met": row["fraction_of_matmul"] >= 0.40})
    return found


def table(out: dict) -> str:
    """Every row: median ms and the repeats' min–max, M head-tokens/s (B·H·T) and M sequence
    tokens/s (B·T), TFLOP/s and % of the same-run matmul peak; then the scaling and the targets."""
    lines = [f"\n{'variant':<17} {'form':<20} {'pass':<17} {'ms':>9} {'min–max ms':>17} {'M head-tok/s':>12} "
             f"{'M tok/s':>8} {'TFLOP/s':>8} {'%peak':>6}"]
    for v, res in out["results"].items():
        for r in res["rows"]:
            if r["name"] == "matmul":
                continue
            if r["seconds"] is None:
                lines.append(f"{v:<17} {r['name']:<20} {r['pass']:<17} {'OOM':>9}")
                continue
            spread = spread_ms(r.get("seconds_min"), r.get("seconds_max"), ".3f")
            sequence = "—" if r.get("sequence_tokens_per_s") is None else f"{r['sequence_tokens_per_s'] / 1e6:.2f}"
            lines.append(f"{v:<17} {r['name']:<20} {r['pass']:<17} {r['seconds'] * 1e3:9.3f} {spread:>17} "
                         f"{r['tokens_per_s'] / 1e6:12.2f} {sequence:>8} {r['flops_per_s'] / 1e12:8.1f} "
                         f"{100 * r['fraction_of_matmul']:6.1f}")
    for v, rows in out["scaling"].items():
        lines.append(f"\n{v} M head-tokens/s (B·H·T) vs T: " + ", ".join(
            f"{r['seq_len']}: {(r.get('triton_forward') or 0) / 1e6:.2f} fwd / "
            f"{(r.get('triton_forward+backward') or 0) / 1e6:.2f} fwd+bwd" for r in rows))
    for v, agree in out["agreement"].items():
        lines.append(f"{v} outputs vs {next(iter(agree))}: " + ", ".join(f"{n} {e:.1e}" for n, e in agree.items()))
    lines.append("")
    for t in out["targets"]:
        lines.append(f"target {t['target']}: {t['value']:.3f} (>= {t['at_least']}) {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
