"""The README's tables, rendered from committed results files (never typed by hand).

    .venv/bin/python benchmarks/readme_tables.py --measure   # re-derive the catalog: results/catalog.json
    .venv/bin/python benchmarks/readme_tables.py             # rewrite the README's tables from the results

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in README.md:

* ``catalog``: every catalog variant's classification, its generated forms and their kind, whether
  it is certified, and one ``derive`` time (``results/catalog.json``, written by ``--measure``);
* ``cpu``: the CPU benchmark (``results/cpu.json``, written by ``benchmarks/run_cpu.py``);
* ``gpu-…``: a GPU run and its targets (``results/<device>.json``, written by ``benchmarks/run_gpu.py``
  through ``benchmarks/gpu_check.sh``);
* ``cost-model``: bytes, launches and FLOPs counted on the CPU, with an H100 roofline's time
  (``results/cost-model.json``, written by ``benchmarks/cost_model.py``).

The timed tables (``cpu``, ``gpu-…``) give each row's median ms and the min–max of its timed repeats
("—" where the results file predates their recording), head-tokens/s (B·H·T per call, as the LaCT
paper's Table 2 counts) and sequence tokens/s (B·T, "—" where not recorded).

``tests/test_docs.py`` renders the tables from the committed files and checks that README.md holds
exactly them, and that ``catalog.json`` still matches what the engine derives.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT))

from verify.bench import spread_ms  # noqa: E402

#: the fields of a catalog entry that follow from the declaration (checked against the engine)
VERDICT_FIELDS = ("description", "kernel", "values", "parallel_form", "generated", "not_generated", "certified")


def catalog_entry(name: str) -> dict:
    """One catalog variant's verdict and generated forms (and how long ``derive`` took)."""
    from codegen.plan import plan
    from derivations import derive

    start = time.perf_counter()
    form = derive(name)
    seconds = time.perf_counter() - start
    c, p = form.classification, plan(form)
    return {"name": name, "description": form.variant.description, "kernel": c.kernel,
            "values": c.values.replace("_", "-"), "parallel_form": c.parallel_form,
            "generated": {f: planned.kind for f, planned in p.forms.items()},
            "not_generated": sorted(p.not_generated()), "certified": bool(form.certificate.certified),
            "derive_seconds": round(seconds, 3)}


def measure_catalog() -> dict:
    from derivations.catalog import CATALOG
    from verify.bench import machine

    return {"machine": machine(), "variants": [catalog_entry(name) for name in CATALOG]}


def _forms_cell(entry: dict) -> str:
    """``chunk ∥ · Triton ∥``: the generated forms beyond the recurrence, ∥ when parallel, else how they run."""
    cells = []
    for form in ("chunk", "triton"):
        kind = entry["generated"].get(form)
        if kind is not None:
            label = "Triton" if form == "triton" else form
            cells.append(f"{label} ∥" if kind == "parallel" else f"{label} ({kind.replace('chunk_', '')})")
    return " · ".join(cells)


def catalog_table(results: dict) -> str:
    rows = ["| variant | what it is | kernel | values | parallel form | generated | certified | derive (s) |",
            "|---|---|---|---|---|---|---|---:|"]
    for e in results["variants"]:
        rows.append(f"| `{e['name']}` | {e['description']} | {e['kernel']} | {e['values']} | {e['parallel_form']} "
                    f"| {_forms_cell(e)} | {'yes' if e['certified'] else 'no'} | {e['derive_seconds']:.2f} |")
    return "\n".join(rows)


def _shape(result: dict, with_chunk: bool = True) -> str:
    """``variant, B = 1, H = 4, T = …, d = …, chunk …`` (``B·H = 4`` where the file does not record B)."""
    c = result["config"]
    heads = f"B = {c['batch']}, H = {c['batch_heads'] // c['batch']}" if "batch" in c else f"B·H = {c['batch_heads']}"
    dims = "d = h" if result["variant"].startswith("lact") else "d"
    chunk = f", chunk {c['chunk']}" if with_chunk and c.get("chunk") else ""
    return f"`{result['variant']}`, {heads}, T = {c['seq_len']}, {dims} = {c['dim']}{chunk}"


def _number(x, fmt: str, scale: float = 1.0) -> str:
    """``x`` (times ``scale``) in ``fmt``, or "–" where it does not apply."""
    return "–" if x is None else format(scale * x, fmt)


#: a field a results file written before min–max and B·T were recorded lacks
NOT_RECORDED = "—"


#: tokens/s columns: their unit prefix and scale
_RATE_UNITS = {"k": 1e-3, "M": 1e-6}


def _timed_table(results: dict, ms_fmt: str, unit: str, extra: dict, form_label, with_chunk) -> str:
    """One row per (variant, form, pass): median ms, the repeats' min–max, head-tokens/s (B·H·T),
    sequence tokens/s (B·T) and the ``extra`` columns (header → cell of a row). A row without
    seconds is the oracle's forward+backward (not timed: left out) or a run out of memory."""
    scale = _RATE_UNITS[unit]
    headers = ["variant, shape", "form", "pass", "ms", "min–max ms", f"{unit} head-tok/s (B·H·T)",
               f"{unit} tok/s (B·T)", *extra]
    rows = ["| " + " | ".join(headers) + " |", "|---|---|---|" + "---:|" * (len(headers) - 3)]
    for result in results["results"].values():
        shape = _shape(result, with_chunk(result))
        for r in result["rows"]:
            if r["name"] == "matmul" or (r["seconds"] is None and r["name"] == "oracle"):
                continue
            label, shape = shape, ""
            if r["seconds"] is None:
                cells = ["out of memory", *["–"] * (len(headers) - 4)]
            else:
                sequence = r.get("sequence_tokens_per_s")
                noisy = " (noisy)" if r.get("noise") else ""  # Timing.noise: the spread or the timer's resolution
                cells = [format(1e3 * r["seconds"], ms_fmt) + noisy,
                         spread_ms(r.get("seconds_min"), r.get("seconds_max"), ms_fmt, NOT_RECORDED),
                         _number(r["tokens_per_s"], ".1f", scale),
                         NOT_RECORDED if sequence is None else _number(sequence, ".1f", scale),
                         *(cell(r) for cell in extra.values())]
            rows.append(f"| {label} | {form_label(r['name'], result)} | {r['pass']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cpu_table(results: dict) -> str:
    """The CPU benchmark: k tokens/s, % of the same-run matmul FLOP/s and the speed over the oracle."""
    return _timed_table(results, ".1f", "k", {
        "% matmul": lambda r: _number(r["fraction_of_matmul"], ".0f", 100),
        "× oracle": lambda r: _number(r["speedup_vs_oracle"], ".2f")}, lambda name, _: name, lambda _: True)


def _gpu_form(name: str, result: dict) -> str:
    """A GPU row's form as a reader names it (``triton_chunk256`` → "Triton, chunk 256")."""
    if name.startswith("triton_chunk"):
        return f"Triton, chunk {name.removeprefix('triton_chunk')}"
    default = f", chunk {result['config']['chunk']} (default)" if _chunk_sweep(result) else ""
    return {"triton": f"Triton{default}", "chunk": "torch chunk", "recurrent": "recurrent",
            "fla_chunk": "fla `chunk_linear_attn`", "fla_fused_recurrent": "fla `fused_recurrent_linear_attn`"}.get(
        name, name)


def _chunk_sweep(result: dict) -> bool:
    """Whether the Triton form ran at several compute chunks (then each row names its own)."""
    return any(r["name"].startswith("triton_chunk") for r in result["rows"])


def gpu_table(results: dict) -> str:
    """A GPU run: M tokens/s and % of the same-run matmul peak."""
    return _timed_table(results, ".2f", "M", {"% peak": lambda r: _number(r["fraction_of_matmul"], ".1f", 100)},
                        _gpu_form, lambda result: not _chunk_sweep(result))


def targets_table(results: dict) -> str:
    rows = ["| target | at least | measured | met |", "|---|---:|---:|---|"]
    rows += [f"| {t['target']} | {t['at_least']:g} | {t['value']:.3f} | {'yes' if t['met'] else 'no'} |"
             for t in results["targets"]]
    return "\n".join(rows)


def _cost_shape(row: dict) -> str:
    s = row["shape"]
    dims = "d = h" if row["variant"].startswith("lact") else "d"
    return (f"`{row['variant']}`, B·H = {s['batch'] * s['heads']}, T = {s['seq_len']}, {dims} = {s['dim']}, "
            f"chunk {s['chunk']}, {row['dtype']}")


#: a cost-model row's form as a reader names it
_COST_FORMS = {"chunk": "torch chunk", "triton": "Triton", "fla_chunk": "fla `chunk_linear_attn` (by hand)"}


def cost_model_table(results: dict) -> str:
    """One row per (variant, form, pass) of ``results/cost-model.json``, then its targets."""
    rows = ["| variant, shape | form | pass | bytes / head-token | launches | GFLOP | predicted ms |",
            "|---|---|---|---:|---:|---:|---:|"]
    shown = None
    for r in results["rows"]:
        shape = _cost_shape(r)
        rows.append(f"| {shape if shape != shown else ''} | {_COST_FORMS.get(r['form'], r['form'])} "
                    f"| {r['pass']} | {r['bytes_per_head_token']:,.0f} | {r['launches']} | {r['flops'] / 1e9:,.1f} "
                    f"| {1e3 * r['predicted_seconds']:.2f} |")
        shown = shape
    rows += ["", "| target (cost model) | at most | counted | met |", "|---|---:|---:|---|"]
    rows += [f"| `{t['variant']}` {t['form']} {t['pass']}: {t['field'].replace('_', ' ')} | {t['at_most']:g} "
             f"| {t['value']:g} | {'yes' if t['met'] else 'no'} |" for t in results["targets"]]
    return "\n".join(rows)


def context_parallel_table(results: dict) -> str:
    """Bytes a rank sends per call against gathering k and v, then the wall time of 1 process and 2 ranks."""
    rows = ["| variant | ranks | T | bytes a rank sends (summaries) | k and v to every rank | ratio |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| `{r['variant']}` | {r['world']} | {r['seq_len']:,} | {r['bytes_sent_per_rank']:,} "
             f"| {r['ring_bytes_per_rank']:,} | {r['ring_bytes_per_rank'] / r['bytes_sent_per_rank']:.1f}× |"
             for r in results["bytes"]]
    rows += ["", "| variant | T | one process (ms) | two ranks (ms, the slower) |", "|---|---:|---:|---:|"]
    rows += [f"| `{w['variant']}` | {w['seq_len']:,} | {1e3 * w['one_process_seconds']:.0f} "
             f"| {1e3 * w['two_ranks_seconds']:.0f} |" for w in results["wall"]]
    return "\n".join(rows)


def _load(name: str):
    return lambda: json.loads((RESULTS / name).read_text())


TABLES = {"catalog": (_load("catalog.json"), catalog_table),
          "cpu": (_load("cpu.json"), cpu_table),
          "gpu-h200": (_load("nvidia-h200.json"), gpu_table),
          "gpu-h200-targets": (_load("nvidia-h200.json"), targets_table),
          "gpu-h100": (_load("nvidia-h100-80gb-hbm3.json"), gpu_table),
          "cost-model": (_load("cost-model.json"), cost_model_table),
          "context-parallel": (_load("context-parallel.json"), context_parallel_table)}


def render(name: str) -> str:
    load, table = TABLES[name]
    return table(load())


def _markers(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table:{name} -->\n)(.*?)(<!-- /table:{name} -->)", re.S)


def tables_in(text: str) -> dict[str, str]:
    """The body of every marked table in ``text``."""
    return {name: m.group(2).rstrip("\n") for name in TABLES if (m := _markers(name).search(text))}


def rewrite(text: str) -> str:
    for name in TABLES:
        pattern = _markers(name)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- table:{name} --> … <!-- /table:{name} --> markers")
        text = pattern.sub(lambda m, n=name: m.group(1) + render(n) + "\n" + m.group(3), text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="re-derive the catalog into results/catalog.json")
    args = parser.parse_args(argv)
    if args.measure:
        path = RESULTS / "catalog.json"
        path.write_text(json.dumps(measure_catalog(), indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")
    README.write_text(rewrite(README.read_text()))
    print(f"rewrote the tables of {README}")


if __name__ == "__main__":
    main()
