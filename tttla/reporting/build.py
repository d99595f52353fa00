"""``build_report``: derive, generate, verify and benchmark one variant, then write
``report.md`` (with its PNG figures beside it) and a self-contained ``report.html``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tttla.reporting.benchmark import SweepConfig

__all__ = ["ReportOptions", "ReportResult", "build_report", "prepare_triton"]

ERRORS_PNG = "verification_errors.png"
THROUGHPUT_PNG = "cpu_throughput.png"


@dataclass(frozen=True)
class ReportOptions:
    """What a report runs: ``cases`` fuzz cases per dtype, a CPU sweep (None: no benchmark),
    where the code is generated (default ``OUT/kernels``) and where GPU results are read."""

    cases: int = 20
    dtypes: tuple[str, ...] = ("float64", "float32")
    seed: int = 0
    bench: SweepConfig | None = field(default_factory=SweepConfig)
    kernels: Path | None = None
    results_dir: Path | None = None


@dataclass
class ReportResult:
    variant: object
    form: object
    folder: Path
    functions: list
    campaigns: dict
    bench: list
    markdown: Path
    html: Path
    notes: list
    seconds: float

    def verified(self, dtype: str) -> bool | None:
        """Whether every form passed every case in ``dtype`` (None when not run)."""
        c = self.campaigns.get(dtype)
        return None if c is None else c.passed


def prepare_triton() -> None:
    """Without a GPU, let Triton forms run in the interpreter: ``TRITON_INTERPRET=1`` must be
    set before triton is first imported, so this is a no-op once it has been."""
    import sys

    if "triton" in sys.modules or os.environ.get("TRITON_INTERPRET"):
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def _bench_forms(forms: dict) -> tuple[dict, str | None]:
    """The forms the CPU sweep times: all but the Triton form, which runs in Triton's interpreter
    on the CPU (its timings say nothing about the kernel) or, on a GPU machine, on the GPU with
    copies both ways; its GPU figures are the GPU results section's."""
    if "triton" in forms:
        return ({n: f for n, f in forms.items() if n != "triton"},
                "The Triton form is not timed here: this sweep runs on CPU tensors (in Triton's interpreter, "
                "or with copies to and from a GPU); see the GPU results below.")
    return forms, None


def build_report(ref, out, options: ReportOptions | None = None, *, progress: bool = False,
                 form=None) -> ReportResult:
    """Write the full report of ``ref`` (catalog name, ``FILE.py[:ATTR]`` or Variant) into ``out``.

    Raises the toolkit's one-line errors (:class:`derivations.errors.TTTLAError`) for an unknown
    variant or one that cannot be reduced.
    """
    from codegen.generate import generate, import_generated, triton_refusal
    from derivations.derive import derive
    from derivations.loading import load_variant
    from tttla import __version__
    from tttla.reporting import benchmark, code, gpu, plots, verification
    from tttla.reporting.derivation_report import SECTIONS, md_title
    from tttla.reporting.pages import html_page, markdown_to_html, write_pages
    from verify.forms import usable_forms
    from verify.tolerances import DEFAULTS

    start = time.perf_counter()
    options = options or ReportOptions()
    out = Path(out)
    variant = load_variant(ref)
    form = form or derive(variant)
    root = Path(options.kernels) if options.kernels is not None else out / "kernels"
    generate(variant, root)
    package = import_generated(variant.name, root)
    functions = code.generated_functions(package)
    forms, notes = usable_forms(dict(package.FORMS))

    campaigns = verification.run_verification(variant, forms, cases=options.cases, dtypes=options.dtypes,
                                              seed=options.seed, progress=progress)
    images = {}
    if campaigns:
        import torch

        panels = {dt: verification.case_errors(c) for dt, c in campaigns.items()}
        bounds = {dt: DEFAULTS[getattr(torch, dt)].bound for dt in campaigns}
        images[ERRORS_PNG] = plots.error_strip_png(panels, bounds, title=f"{variant.name}: error per fuzz case")
    sweep, bench_note = [], None
    if options.bench is not None:
        bench_forms, bench_note = _bench_forms(forms)
        sweep = benchmark.run_sweep(variant, bench_forms, options.bench, progress=progress)
        images[THROUGHPUT_PNG] = plots.throughput_png(benchmark.series(sweep), title=f"{variant.name} on the CPU")

    parts = [md_title(form, "tttla report"), *(section(form) for section in SECTIONS),
             code.md_code(functions, root / variant.name, triton_refusal(form), base=out)]
    if notes:
        parts.append("\n".join(f"Note: {n}." for n in notes) + "\n")
    if campaigns:
        parts.append(verification.md_verification(campaigns, ERRORS_PNG))
    if sweep:
        parts.append(benchmark.md_benchmark(sweep, THROUGHPUT_PNG, bench_note))
    parts.append(gpu.md_gpu(variant.name, gpu.gpu_results(variant.name, options.results_dir), options.results_dir))
    seconds = time.perf_counter() - start
    parts.append(f"---\n\nWritten by tttla {__version__} in {seconds:.1f} s.\n")
    markdown = "\n".join(parts)
    page = html_page(f"tttla report {variant.name}", markdown_to_html(markdown, images))
    md_path, html_path = write_pages(out, markdown, page, images)
    return ReportResult(variant, form, root / variant.name, functions, campaigns, sweep, md_path, html_path,
                        notes, seconds)
