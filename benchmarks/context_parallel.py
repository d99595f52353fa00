"""Context parallelism on the CPU (gloo): what a rank sends per call, and the wall time of 1 and 2 ranks.

    .venv/bin/python benchmarks/context_parallel.py     # writes benchmarks/results/context-parallel.json + .png
    .venv/bin/python benchmarks/context_parallel.py --replot   # redraws the .png from the committed .json

For linear_attention and lact_v2 (B = 1, H = 4, every width 64, fp32; lact_v2 in chunks of 256) the chunk
form runs forward and backward on gloo ranks, every rank its slice of T tokens, with each collective's
payload counted as it is called (``torch.distributed`` wrapped in this process only). The alternative a
ring-attention-style layer would need — every rank's k and v sent to every other rank — is counted
from the same shapes: (world − 1) · T/world · H · (Dk + Dv) · 4 bytes per rank, its forward only (its
backward sends the gradients of k and v back as well, as much again). The wall time is the
median of 3 calls (forward + backward) of one process on all T tokens against 2 ranks on T/2 each, on
this machine's 2 cores (both ranks share them: the figure shows the exchange's overhead, not a speedup).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from verify import context_parallel as cp  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
SHAPE = {"heads": 4, "dim": 64}
VARIANTS = {"linear_attention": None, "lact_v2": 256}
SEQ_LENS = [1024, 4096, 16384]
WORLDS = [2, 4]


def _arguments(name: str, T: int, chunk: int | None):
    from derivations.catalog import get
    from verify.inputs import default_sizes, make_case

    variant = get(name)
    case = make_case(variant, batch=1, seq_len=T, heads=SHAPE["heads"], sizes=default_sizes(variant, SHAPE["dim"]),
                     chunk_size=chunk, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    return variant, cp.call_arguments(variant, case)


def _ring_bytes(args: dict, world: int) -> int:
    """k and v of one rank's slice, sent to each of the other ranks."""
    k, v = args["k"], args["v"]
    per_token = k.shape[2] * (k.shape[3] + v.shape[3]) * k.element_size()
    return (world - 1) * (k.shape[1] // world) * per_token


def main() -> None:
    rows = []
    for name, chunk in VARIANTS.items():
        for world in WORLDS:
            for T in SEQ_LENS:
                variant, args = _arguments(name, T, chunk)
                lengths = cp.slice_lengths(T, world, chunk or 1)
                ranks = cp.run_sharded(f"tttla_kernels.{name}", args, lengths, timeout=600, count_bytes=True)
                sent = max(r["bytes_sent"] for r in ranks)
                rows.append({"variant": name, "world": world, "seq_len": T, "bytes_sent_per_rank": sent,
                             "ring_bytes_per_rank": _ring_bytes(args, world)})
                ring = rows[-1]["ring_bytes_per_rank"]
                print(f"{name} world {world} T {T}: {sent:,} B sent per rank (ring: {ring:,})", flush=True)
    timings = []
    for name, chunk in VARIANTS.items():
        T = SEQ_LENS[-1]
        _, args = _arguments(name, T, chunk)
        module = f"tttla_kernels.{name}"
        one = cp.one_process(module, args, repeats=3)["seconds"]
        ranks = cp.run_sharded(module, args, cp.slice_lengths(T, 2, chunk or 1), timeout=600, repeats=3)
        two = max(r["seconds"] for r in ranks)
        timings.append({"variant": name, "seq_len": T, "one_process_seconds": one, "two_ranks_seconds": two})
        print(f"{name} T {T}: one process {one * 1e3:.0f} ms, two ranks {two * 1e3:.0f} ms", flush=True)
    out = {"shape": {**SHAPE, "batch": 1, "dtype": "float32", "chunks": VARIANTS}, "bytes": rows, "wall": timings}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "context-parallel.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(rows, OUT / "context-parallel.png")
    print(f"wrote {OUT / 'context-parallel.json'}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name in VARIANTS:
        for world in WORLDS:
            mine = [r for r in rows if r["variant"] == name and r["world"] == world]
            ax.plot([r["seq_len"] for r in mine], [r["bytes_sent_per_rank"] for r in mine], marker="o",
                    label=f"{name}, {world} ranks: summaries")
    for world in WORLDS:
        mine = [r for r in rows if r["variant"] == "linear_attention" and r["world"] == world]
        ax.plot([r["seq_len"] for r in mine], [r["ring_bytes_per_rank"] for r in mine], linestyle="--",
                label=f"{world} ranks: k, v to every rank (forward alone)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (tokens of the sequence)")
    ax.set_ylabel("bytes a rank sends per call (forward + backward)")
    ax.set_title("Context parallelism: summaries against gathering k, v")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # redraw the committed results' plot, measuring nothing
        _plot(json.loads((OUT / "context-parallel.json").read_text())["bytes"], OUT / "context-parallel.png")
    else:
        main()
