"""Random declarations from the variant language's grammar, and the check each one must pass.

:func:`declarations` is a hypothesis strategy that writes a variant file: a model of depth 1–3
(linear layers, any registered element-wise function, products and sums of branches, an optional
bias and output head), distinct named dimensions, any subset of updated weights, every loss
form and scale, and every rule option (learning rate, momentum, Newton–Schulz, weight norm,
decay, clip, schedule, ascent, keys as queries). Some combinations are outside the language
(momentum per chunk with per-token steps, a weight declared with the wrong width, …): those
must be refused at declaration time.

:func:`check` takes one declaration through the whole pipeline: it is either refused with a
:class:`~derivations.errors.DeclarationError` / :class:`~derivations.errors.ReductionError`
(``"refused"``), or it derives, certifies, generates and every generated form passes fp64
(forward and backward) and fp32 fuzzing (``"verified"``); anything else is ``"failed"``, with
the failed checks or the traceback. With ``nonfinite``, the forms must
also pass the forward non-finite causality check of ``tests/causality.py``.
``tests/test_generality.py`` runs a derandomised slice, ``benchmarks/generality.py`` a campaign.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import strategies as st

from derivations.functions import FUNCTIONS

__all__ = ["Declaration", "Outcome", "declarations", "check", "ACTIVATIONS", "DIMS"]

#: every registered element-wise function but rsqrt (defined on positive inputs only: it is
#: reached through layer_norm, drawn as a head)
ACTIVATIONS = tuple(sorted(n for n in FUNCTIONS if n != "rsqrt"))
#: the named dimensions a model may use; the input row is 1 × d
DIMS = ("d", "h", "e")
ORDERS = ("apply_then_update", "update_then_apply", "block_inclusive")
IMPORTS = ("bidirectional, chunked, column_clip, constant, decay, dot, layer_norm, momentum, newton_schulz, "
           "per_token, sq_norm, token_level, variant, weight_norm, " + ", ".join(ACTIVATIONS))


@dataclass(frozen=True)
class Declaration:
    """One random variant: its name, fast weights, model body, and the ``@variant`` keywords as source."""

    name: str
    fast: tuple  # ((weight, (rows, cols)), ...)
    body: str
    keywords: tuple  # ((keyword, source), ...)

    def source(self) -> str:
        """The variant file, as a user would write it."""
        fast = "{" + ", ".join(f"{n!r}: {shape!r}" for n, shape in self.fast) + "}"
        kw = "".join(f"    {k}={src},\n" for k, src in self.keywords)
        args = ", ".join(n for n, _ in self.fast)
        return (f"from derivations import {IMPORTS}\n\n\n"
                f"@variant(\n    fast={fast},\n{kw})\ndef {self.name}(x, {args}):\n    return {self.body}\n")


class _Weights:
    """Fresh fast-weight names W0, W1, … with their shapes, in order of use."""

    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def new(self, rows, cols) -> str:
        name = f"W{len(self.shapes)}"
        self.shapes[name] = (rows, cols)
        return name


@st.composite
def _layer(draw, weights: _Weights, z: str, width: str, out: str, last: bool) -> str:
    """One layer from ``z`` (1 × width) to 1 × out: linear, activated, a product or a sum of branches."""
    act = st.sampled_from(ACTIVATIONS)
    kind = draw(st.sampled_from(["linear", "linear", "act", "product", "sum"] if last else
                                ["act", "act", "product", "sum", "linear"]))
    if kind == "linear":
        return f"{z} @ {weights.new(width, out)}"
    if kind == "act":
        return f"{draw(act)}({z} @ {weights.new(width, out)})"
    a = f"{draw(act)}({z} @ {weights.new(width, out)})"
    b = f"({z} @ {weights.new(width, out)})" if draw(st.booleans()) else f"{draw(act)}({z} @ {weights.new(width, out)})"
    return f"{a} * {b}" if kind == "product" else f"({a} + {b})"


@st.composite
def _model(draw) -> tuple[dict, str]:
    """Fast weights and the model body: depth 1–3, an optional bias, an optional output head."""
    weights = _Weights()
    depth = draw(st.integers(1, 3))
    widths = ["d", *(draw(st.sampled_from(DIMS)) for _ in range(depth))]
    z = "x"
    for i in range(depth):
        last = i == depth - 1
        z = draw(_layer(weights, z if z == "x" else f"({z})", widths[i], widths[i + 1], last))
    if draw(st.integers(0, 4)) == 0:
        z = f"{z} + {weights.new(1, widths[-1])}"
    head = draw(st.sampled_from(["none"] * 6 + ["activation", "layer_norm"]))
    if head == "activation":
        z = f"{draw(st.sampled_from(ACTIVATIONS))}({z})"
    elif head == "layer_norm":
        gamma, beta = weights.new(1, widths[-1]), weights.new(1, widths[-1])
        z = f"layer_norm({z}, {gamma}, {beta})"
        if widths[-1] == "d" and draw(st.booleans()):
            z = f"x + {z}"
    shapes = dict(weights.shapes)
    if draw(st.integers(0, 9)) == 0:  # a weight declared with a width its input does not have: refused
        name = draw(st.sampled_from(sorted(shapes)))
        rows, cols = shapes[name]
        wrong = [d for d in DIMS if d != rows]
        shapes[name] = (draw(st.sampled_from(wrong)), cols)
    return shapes, z


LOSSES = ("-dot(y, v)", "0.5 * sq_norm(y - v)", "sq_norm(y - v)")
SCALES = ("", " * 2.0", " / 3", " * 0.25")


@st.composite
def _rule(draw, weights: list[str]) -> list[tuple[str, str]]:
    """The ``@variant`` keywords besides ``fast``: update, loss and the options of the rule."""
    kw = []
    updated = draw(st.one_of(st.just([w for w in weights if w == max(weights, key=lambda n: int(n[1:]))]),
                             st.lists(st.sampled_from(weights), min_size=1, max_size=len(weights), unique=True)))
    kw.append(("update", repr(sorted(updated))))
    kw.append(("loss", f"lambda y, v: {draw(st.sampled_from(LOSSES))}{draw(st.sampled_from(SCALES))}"))
    kw.append(("lr", draw(st.sampled_from(["constant(1.0)", "constant(0.3)", "constant(-0.5)", "per_token()",
                                           "per_token()", "per_token(position=True)"]))))
    schedule = draw(st.one_of(
        st.builds(lambda o, n: f"chunked({o!r}, {n})", st.sampled_from(ORDERS), st.integers(1, 8)),
        st.just("token_level()"), st.just("bidirectional()")))
    kw.append(("schedule", schedule))
    optional = {
        "momentum": st.sampled_from(["momentum('chunk')", "momentum('token')"]),
        "orthogonalize": st.sampled_from(["newton_schulz(1)", "newton_schulz(2)", "newton_schulz(5)",
                                          "newton_schulz(3, coefficients='fixed')"]),
        "weight_norm": st.just("weight_norm()"),
        "decay": st.sampled_from(["decay()", "decay('gradient_then_decay')", "decay(gate='channel')",
                                  "decay('gradient_then_decay', gate='channel')",
                                  "decay(per_head=lambda h: 1 - 2 ** (-5 - h))"]),
        "clip": st.just("column_clip()"),
        "ascent": st.just("True"),
        "queries": st.just("'key'"),
    }
    for keyword, values in optional.items():
        if draw(st.integers(0, 6)) == 0:
            kw.append((keyword, draw(values)))
    return kw


@st.composite
def declarations(draw) -> Declaration:
    """A random declaration from the language's grammar (see the module docstring)."""
    shapes, body = draw(_model())
    rule = draw(_rule(sorted(shapes, key=lambda n: int(n[1:]))))
    name = f"random_{draw(st.integers(0, 10**8))}"
    return Declaration(name, tuple(shapes.items()), body, tuple(rule))


@dataclass
class Outcome:
    """``status``: "refused", "verified" or "failed"; ``message``: the refusal, the failed checks or the
    traceback; ``traceback``: whether an unexpected exception was raised (not the stage timer's)."""

    status: str
    message: str = ""
    traceback: bool = False

    @property
    def timed_out(self) -> bool:
        """Whether the check failed by running past its limit (somewhere in the message: a certificate or a
        fuzz case reports the timer's error among others)."""
        return self.status == "failed" and TIMED_OUT in self.message


#: what the stage timer's error says
TIMED_OUT = "ran past the limit of"


def _unexpected(stage, e: Exception) -> Outcome:
    """A failure for an exception raised in ``stage``: the timer's (also wrapped, as Triton's interpreter
    wraps what a kernel raises) fails with its message, anything else with its traceback."""
    cause = e
    while cause is not None and not isinstance(cause, TimeoutError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return Outcome("failed", str(cause))
    return Outcome("failed", f"{stage.name}: {traceback.format_exc(limit=-4)}", traceback=True)


def _failures(campaign) -> list[str]:
    return [f"{campaign.dtype} case seed {spec.seed} [{spec.describe(campaign.variant)}] {r.form}: "
            + "; ".join(r.failures()[:3]) for spec, r in campaign.failures()[:3]]


class _Stage:
    """The stage a check is in; with ``limit_s``, a SIGALRM timer that fails the check there."""

    def __init__(self, limit_s: float | None):
        self.name, self.limit_s = "declaration", limit_s

    def __enter__(self):
        if self.limit_s:
            signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, self.limit_s)
        return self

    def _expired(self, *_):
        raise TimeoutError(f"{self.name} {TIMED_OUT} {self.limit_s:g} s")

    def __exit__(self, *exc):
        if self.limit_s:
            signal.setitimer(signal.ITIMER_REAL, 0)


def check(decl: Declaration, root: Path, *, cases: int = 2, seed: int = 0, forms_filter=None,
          limit_s: float | None = None, nonfinite: bool = False) -> Outcome:
    """Take ``decl`` through declaration, derivation (certified), generation into ``root`` and fp64/fp32 fuzzing
    of every generated form on ``cases`` cases per dtype (none with 0: "verified" then says the forms were
    generated and passed the other checks asked for); ``forms_filter(names) -> names`` may leave some forms
    out, e.g. to save time; with ``nonfinite``, also :func:`causality.check_forward` (a NaN or inf input
    reaches only the outputs that may depend on it); with ``limit_s``, a check that runs longer fails with
    the stage it was in."""
    from causality import NoFiniteCase, check_forward

    from codegen.generate import generate, import_generated
    from derivations.derive import derive
    from derivations.errors import DeclarationError, ReductionError
    from derivations.loading import load_variant
    from verify.forms import usable_forms
    from verify.fuzz import run_campaign

    path = Path(root) / f"{decl.name}.py"
    path.write_text(decl.source())
    problems = []
    with _Stage(limit_s) as stage:
        try:
            variant = load_variant(str(path))
            stage.name = "derivation and certificate"
            form = derive(variant)
        except (DeclarationError, ReductionError) as e:
            return Outcome("refused", str(e))
        except Exception as e:
            return _unexpected(stage, e)
        if not form.certificate.certified:  # e.g. "could not be computed: TimeoutError: … ran past the limit"
            return Outcome("failed", f"{stage.name}: not certified: {form.certificate.failure}")
        try:
            stage.name = "generation"
            generate(form, Path(root) / "generated")
            forms, _ = usable_forms(dict(import_generated(variant.name, Path(root) / "generated").FORMS))
            if forms_filter is not None:
                forms = {n: forms[n] for n in forms_filter(list(forms))}
            for dtype in (torch.float64, torch.float32) if cases else ():
                stage.name = f"verification in {dtype}"
                problems += _failures(run_campaign(variant, forms, cases=cases, dtype=dtype, seed=seed))
            if nonfinite:
                stage.name = "non-finite causality"
                try:
                    check_forward(variant, forms)
                except (AssertionError, NoFiniteCase) as e:
                    problems.append(f"non-finite causality: {e}")
        except Exception as e:
            return _unexpected(stage, e)
    return Outcome("failed", "\n".join(problems)) if problems else Outcome("verified")
