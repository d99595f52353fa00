"""The full report of a variant (``tttla report``): derivation, generated code, verification,
benchmarks, as Markdown and as one self-contained HTML page.

One module per part: :mod:`.derivation_report` (the derivation's sections, also the page of
``tttla derive --report``), :mod:`.form_text` (the form as text, LaTeX and JSON for ``tttla
derive``), :mod:`.theorems` (the results a classification reason rests on), :mod:`.pages`
(Markdown to one self-contained HTML page), :mod:`.code` (signatures and paths of the generated functions),
:mod:`.verification` (a small fuzz campaign), :mod:`.benchmark` (a CPU sweep over T),
:mod:`.gpu` (GPU results already measured), :mod:`.plots` (matplotlib figures as PNG bytes)
and :mod:`.build`, which runs them in order and writes the pages.
"""

from tttla.reporting.build import ReportOptions, ReportResult, build_report

__all__ = ["ReportOptions", "ReportResult", "build_report"]
