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


_FORM_LABELS = {"chunk": "chunk", "recurrent": "recurrent", "oracle": "oracle"}


def _shape(result: dict) -> str:
    c = result["config"]
    dims = "d = h" if result["variant"].startswith("lact") else "d"
    chunk = f", chunk {c['chunk']}" if c.get("chunk") else ""
    return f"`{result['variant']}`, T = {c['seq_len']}, {dims} = {c['dim']}{chunk}"


def _number(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def cpu_table(results: dict) -> str:
    rows = ["| variant, shape | form | pass | ms | tokens/s | % matmul | × oracle |",
            "|---|---|---|---:|---:|---:|---:|"]
    for result in results["results"].values():
        first = True
        for r in result["rows"]:
            if r["name"] == "matmul" or r["seconds"] is None:
                continue
            label = _shape(result) if first else ""
            first = False
            pct = None if r["fraction_of_matmul"] is None else 100 * r["fraction_of_matmul"]
            rows.append(f"| {label} | {r['name']} | {r['pass']} | {1e3 * r['seconds']:.1f} "
                        f"| {_number(r['tokens_per_s'], ',.0f')} | {_number(pct, '.0f')} "
                        f"| {_number(r['speedup_vs_oracle'], '.2f')} |")
    return "\n".join(rows)


def _gpu_form(name: str, result: dict) -> str:
    """A GPU row's form as a reader names it (``triton_chunk256`` → "Triton, chunk 256")."""
    if name.startswith("triton_chunk"):
        return f"Triton, chunk {name.removeprefix('triton_chunk')}"
    default = f", chunk {result['config']['chunk']} (default)" if any(
        r["name"].startswith("triton_chunk") for r in result["rows"]) else ""
    return {"triton": f"Triton{default}", "chunk": "torch chunk", "recurrent": "recurrent",
            "fla_chunk": "fla `chunk_linear_attn`", "fla_fused_recurrent": "fla `fused_recurrent_linear_attn`"}.get(
        name, name)


def _gpu_shape(result: dict) -> str:
    c = result["config"]
    head = f"`{result['variant']}`, B·H = {c['batch_heads']}, T = {c['seq_len']}"
    if result["variant"].startswith("lact"):
        return f"{head}, d = h = {c['dim']}, chunk {c['chunk']}"
    return f"{head}, d = {c['dim']}"


def gpu_table(results: dict) -> str:
    """One row per (variant, form): forward ms, M tokens/s and % of the same-run matmul peak, then
    forward+backward ms and M tokens/s."""
    rows = ["| variant, shape | form | fwd ms | fwd Mtok/s | fwd % peak | fwd+bwd ms | fwd+bwd Mtok/s |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for result in results["results"].values():
        by = {(r["name"], r["pass"]): r for r in result["rows"] if r["name"] != "matmul"}
        for i, name in enumerate(dict.fromkeys(n for n, _ in by)):
            f, fb = by.get((name, "forward")), by.get((name, "forward+backward"))

            def cell(r, key, scale, fmt):
                return "–" if r is None or r[key] is None else format(scale * r[key], fmt)

            rows.append(f"| {_gpu_shape(result) if i == 0 else ''} | {_gpu_form(name, result)} "
                        f"| {cell(f, 'seconds', 1e3, '.2f')} | {cell(f, 'tokens_per_s', 1e-6, '.1f')} "
                        f"| {cell(f, 'fraction_of_matmul', 100, '.1f')} | {cell(fb, 'seconds', 1e3, '.2f')} "
                        f"| {cell(fb, 'tokens_per_s', 1e-6, '.1f')} |")
    return "\n".join(rows)


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


def _load(name: str):
    return lambda: json.loads((RESULTS / name).read_text())


TABLES = {"catalog": (_load("catalog.json"), catalog_table),
          "cpu": (_load("cpu.json"), cpu_table),
          "gpu-h200": (_load("nvidia-h200.json"), gpu_table),
          "gpu-h200-targets": (_load("nvidia-h200.json"), targets_table),
          "gpu-h100": (_load("nvidia-h100-80gb-hbm3.json"), gpu_table),
          "cost-model": (_load("cost-model.json"), cost_model_table)}


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
