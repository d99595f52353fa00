"""Which forms a derived variant gets, from which templates, and how each one runs.

The one place that decides it: the context, the renderer, ``generate``, ``tttla generate`` and
``tttla derive`` (its ``"generated"`` field) all read :func:`plan`.

A form's *kind* says how it runs over the sequence: ``"parallel"`` (every chunk's work at once,
only a cheap pass over the chunk states in sequence, or one batched step on all tokens),
``"chunk_scan"`` (one inner step per chunk of tokens, the chunks in sequence) or
``"recurrence"`` (one step per token, in sequence). Every kind that is not parallel comes with a
one-line reason (a parallel form may carry one too, saying how it is parallel).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from derivations.form import LinearAttentionForm
from derivations.printing import to_text
from derivations.reasons import sentence

__all__ = ["plan", "biased_layer", "FormPlan", "PlannedForm", "PARALLEL", "CHUNK_SCAN", "RECURRENCE", "COMPUTE_CHUNK"]

PARALLEL, CHUNK_SCAN, RECURRENCE = "parallel", "chunk_scan", "recurrence"

#: default block size of the parallel forms when the schedule fixes the step (token level)
COMPUTE_CHUNK = 64
#: the same with a per-channel decay, whose intra-block ratios are L × L × Dk per block (so its
#: cost per token grows with L: on 2 CPU cores, GLA at d = 64 runs 3.5× faster in blocks of 16)
CHANNEL_DECAY_CHUNK = 16

#: the chunk form's template for each parallel chunk template (None: the recurrence re-exported)
_CHUNK_TEMPLATES = {"prefix_scan": "chunk.py.jinja", "delta_chunk": "delta_chunk.py.jinja",
                    None: "chunk_recurrence.py.jinja"}
_TRITON_TEMPLATES = {"prefix_scan": "triton_chunk.py.jinja", "delta_chunk": "triton_delta.py.jinja"}


@dataclass(frozen=True)
class PlannedForm:
    """One generated form: its file, its template, its kind and, unless parallel, why not."""

    file: str
    template: str
    kind: str
    reason: str | None = None

    def summary(self) -> dict:
        return {"kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class FormPlan:
    """The generated forms of one variant (see :func:`plan`)."""

    variant: str
    #: "prefix_scan" (the chunked prefix sum), "delta_chunk" (the WY/UT form) or None: no parallel
    #: chunk template fits, chunk.py is the recurrence and there is no Triton form
    chunk_template: str | None
    #: "recurrent", "chunk" and, when generated, "triton"
    forms: dict[str, PlannedForm]
    #: why the variant gets no Triton form (one line), or None when it gets one
    no_triton: str | None
    #: the default compute block of the parallel forms when the schedule fixes the step, else None
    compute_chunk: int | None = None
    #: the Triton form's fused scan (``tttla_kernels/triton_scan.py``: one kernel walks the sequence
    #: with the state in registers): ``"tokens"`` (one step per token), ``"chunks"`` (one step per
    #: chunk, or one bidirectional step), or None for the two-kernel pipeline
    fused_scan: str | None = None
    #: the files every package has besides its forms
    support: dict[str, str] = field(default_factory=lambda: {"__init__.py": "__init__.py.jinja",
                                                            "_common.py": "_common.py.jinja"})

    @property
    def files(self) -> dict[str, str]:
        """Every generated file → its template."""
        return {**self.support, **{f.file: f.template for f in self.forms.values()}}

    @property
    def triton_refusal(self) -> str | None:
        """"no Triton form for 'name': why", or None when the variant gets one."""
        return None if self.no_triton is None else f"no Triton form for {self.variant!r}: {self.no_triton}"

    def generated(self) -> dict[str, dict]:
        """``{form: {"kind": ..., "reason": ...}}`` (``tttla derive --json``'s ``"generated"``)."""
        return {name: f.summary() for name, f in self.forms.items()}

    def not_generated(self) -> dict[str, str]:
        """``{form: why}`` for the forms the variant does not get (``--json``'s ``"not_generated"``)."""
        return {} if self.no_triton is None else {"triton": self.no_triton}

    def describe(self) -> list[str]:
        """One line per form, then one per missing form (``tttla derive`` and ``tttla generate``)."""
        lines = [f"{name} ({f.file}): {f.kind}" + (f" — {f.reason}" if f.reason else "")
                 for name, f in self.forms.items()]
        return lines + ([self.triton_refusal] if self.triton_refusal else [])


def plan(form: LinearAttentionForm) -> FormPlan:
    """Decide the generated forms of ``form``'s variant."""
    variant = form.variant
    sched = variant.schedule
    if form.classification.parallel_form == "delta_chunk":
        chunk_template, refusal = "delta_chunk", None
    else:
        refusal = _no_prefix_scan_template(form)
        chunk_template = None if refusal else "prefix_scan"
    steps = _sequential_kind(sched.order)
    forms = {"recurrent": PlannedForm("recurrent.py", "recurrent.py.jinja", steps, _recurrence_reason(sched))}
    no_triton = refusal
    if chunk_template:
        forms["chunk"] = PlannedForm("chunk.py", _CHUNK_TEMPLATES[chunk_template], PARALLEL)
        no_triton = _no_triton_template(form, chunk_template)
        if no_triton is None:
            forms["triton"] = PlannedForm("triton_chunk.py", _TRITON_TEMPLATES[chunk_template], PARALLEL)
    elif sched.order == "bidirectional":  # one step: the recurrence is already one batched pass
        forms["chunk"] = PlannedForm("chunk.py", _CHUNK_TEMPLATES[None], PARALLEL, _ONE_STEP)
    else:
        forms["chunk"] = PlannedForm("chunk.py", _CHUNK_TEMPLATES[None], steps, refusal)
    token_steps = sched.order == "update_then_apply"
    return FormPlan(
        variant=variant.name,
        chunk_template=chunk_template,
        forms=forms,
        no_triton=no_triton,
        compute_chunk=_compute_chunk(variant) if chunk_template and sched.fixed and token_steps else None,
        fused_scan=_fused_scan(form) if "triton" in forms else None,
    )


def biased_layer(form: LinearAttentionForm) -> str | None:
    """The bias b of a model that is one linear layer φ(x)·W + b read directly (the identity head), or None.

    Such a layer is linear attention on the stacked state [W; b] with keys and queries [φ(x), 1]
    (the bias is a key constantly 1), so the prefix-scan templates serve it."""
    layers = form.layers
    if form.classification.structure != "linear" or len(layers) != 1 or layers[0].bias is None:
        return None
    return layers[0].bias


#: the recurrence of a bidirectional schedule: its one step is a batched pass over every token
_ONE_STEP = "one inner step on all tokens: every token's increment and read in one batched pass, with no sequence"


def _compute_chunk(variant) -> int:
    channel = variant.decay is not None and variant.decay.gate == "channel"
    return CHANNEL_DECAY_CHUNK if channel else COMPUTE_CHUNK


def _sequential_kind(order: str) -> str:
    """The kind of the recurrence: a token loop when every token reads right after its own step, one
    batched pass (parallel) for a single bidirectional step, else a scan over chunks."""
    return {"update_then_apply": RECURRENCE, "bidirectional": PARALLEL}.get(order, CHUNK_SCAN)


def _recurrence_reason(schedule) -> str:
    if schedule.order == "bidirectional":
        return "the reference form: " + _ONE_STEP
    if schedule.order != "update_then_apply":
        return "the reference form: one inner step per chunk, the chunks in sequence"
    at = "" if schedule.fixed else " (gradients at the chunk-start weights)"
    return f"the reference form: one inner step per token{at}, each token read right after it"


def _no_prefix_scan_template(form: LinearAttentionForm) -> str | None:
    """Why the chunked prefix-sum templates (chunk.py, triton_chunk.py) do not fit, or None."""
    variant = form.variant
    token_steps = variant.schedule.order == "update_then_apply"
    if not form.parallel:
        blocked = form.classification.reason("not_parallel")
        return sentence(blocked).rstrip(".") if blocked else "it is not an associative prefix scan"
    if biased_layer(form) is not None:
        if variant.orthogonalize is not None or variant.clip is not None:
            return ("Newton–Schulz and the clip act on W and its bias b apart, not on the stacked state [W; b] "
                    "that the chunk template scans")
    elif not form.is_linear:
        return (f"its {form.classification.structure} form (f = {to_text(form.head)}) has no parallel "
                "template yet (the chunk template covers f = φ(x)·W and φ(x)·W + b)")
    if form.classification.values == "state_dependent":  # parallel as one step, values read S_0
        return ("its values read the state (one step, so all at S_0), and the chunk template takes "
                "state-independent values")
    if variant.clip is not None and token_steps:  # a clip per token step does not batch over a chunk
        return ("the clip rescales every token's step by its own norm, so a chunk's steps are not one "
                "batched increment")
    if token_steps and variant.orthogonalize:
        return ("Newton–Schulz of every token's step would orthogonalise one rank-1 increment per token: a "
                "d×d matrix per token, which a chunked form cannot batch into chunk increments")
    if token_steps and variant.momentum and variant.decay is not None:
        return "per-token momentum together with a decay is not among the chunk templates yet"
    return None


def _no_triton_template(form: LinearAttentionForm, chunk_template: str) -> str | None:
    """Why a variant with a parallel chunk form gets no Triton form, or None."""
    variant = form.variant
    if chunk_template == "prefix_scan" and variant.momentum is not None and variant.momentum.per == "token":
        return ("per-token momentum weighs token j in token t's read by C_tj = Σ_(i=j..t) Π α, and the Triton read "
                "kernel's intra-chunk mask is 0/1")
    return None


def _fused_scan(form: LinearAttentionForm) -> str | None:
    """Which fused scan computes the Triton form, if one does: a plain sum of increments (no momentum,
    Newton–Schulz, clip or per-position factors) with at most one decay factor per step."""
    v = form.variant
    plain = (v.momentum is None and not v.lr.position and v.clip is None and v.orthogonalize is None
             and (v.decay is None or v.decay.gate in ("token", "head")))
    if form.classification.parallel_form != "prefix_scan" or not plain:
        return None
    return "tokens" if v.schedule.order == "update_then_apply" else "chunks"
