"""Declaring a TTT variant: the ``@variant`` decorator and the :class:`Variant` record.

A declaration is checked when it is made: its model and loss are traced once on symbolic
matrices (see :mod:`derivations.mat`), which verifies every shape, that only functions of
the language are called, that the loss is a scalar and that the model uses each updated
fast weight. Errors name the variant, the part and the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import keyword
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sympy

from derivations.errors import DeclarationError
from derivations.mat import Mat, ShapeMismatch
from derivations.spec import (
    ColumnClip,
    Decay,
    LearningRate,
    Momentum,
    Orthogonalize,
    Schedule,
    WeightNorm,
    chunked,
    constant,
)
from derivations.structured import Depthwise, Lowering, check_channel_separable, check_spatial

__all__ = ["Variant", "Trace", "variant", "dim_symbol"]


#: the key dimension of a lowered depthwise channel: its patch of k² taps (a name, so that the
#: certificate can check the rewrite at a small width; generated code reads it off the patches)
TAPS = "taps"


def dim_symbol(name: str) -> sympy.Symbol:
    """The SymPy symbol of a named dimension (a positive integer)."""
    return sympy.Symbol(name, integer=True, positive=True)


@dataclass(frozen=True)
class Trace:
    """A variant's model and loss traced on symbolic matrices.

    ``x`` is the ``1 × d`` input row, ``weights`` the fast-weight symbols, ``prediction`` the
    model's output expression f(x; θ) and ``loss`` L(y, v) as an expression of the prediction
    symbol ``y`` and the value row ``v`` (both ``1 × d_v``).
    """

    x: sympy.MatrixSymbol
    weights: dict
    prediction: sympy.MatrixExpr
    y: sympy.MatrixSymbol
    v: sympy.MatrixSymbol
    loss: sympy.MatrixExpr


@dataclass(frozen=True, eq=False)
class Variant:
    """A declared inner-loop update rule. Build one with :func:`variant`."""

    name: str
    model: Callable
    loss: Callable
    fast: Mapping[str, tuple]
    update: tuple
    lr: LearningRate
    momentum: Momentum | None
    orthogonalize: Orthogonalize | None
    weight_norm: WeightNorm | None
    ascent: bool
    schedule: Schedule
    key_dim: str
    value_dim: str
    queries: str
    description: str
    source: str
    spec_hash: str = field(repr=False)
    #: decay of the updated weights (per token, per key channel or per head; see spec.Decay), or None
    decay: Decay | None = None
    #: column-wise clip of every increment (ViTTT), or None
    clip: ColumnClip | None = None
    #: a spatial layer's structure (every fast weight a depthwise kernel on the token grid), or None
    spatial: Depthwise | None = None
    #: set on the per-channel variant that :meth:`lowered` derives from a spatial one: how it maps back
    lowering: Lowering | None = None

    @property
    def dims(self) -> tuple[str, ...]:
        """Every named dimension, key dimension first."""
        names = [self.key_dim]
        for shape in self.fast.values():
            names += [s for s in shape if isinstance(s, str) and s not in names]
        return tuple(names)

    @property
    def slow_weights(self) -> tuple[str, ...]:
        """Fast weights the inner loop does not update (slow weights of the outer loop)."""
        return tuple(n for n in self.fast if n not in self.update)

    def shape_of(self, name: str, sizes: Mapping[str, int]) -> tuple[int, int]:
        """The concrete shape of fast weight ``name`` given sizes for the named dimensions."""
        return tuple(sizes[s] if isinstance(s, str) else int(s) for s in self.fast[name])

    def trace(self) -> Trace:
        """Trace the model and loss on symbolic matrices (shapes stay symbolic).

        A spatial variant traces its lowered form: one channel, whose input row is the k×k
        patch (see :mod:`derivations.structured`)."""
        if self.spatial is not None:
            return self.lowered().trace()
        return _trace(self.name, self.model, self.loss, self.fast, self.key_dim, patch=self.lowering is not None)

    def lowered(self) -> Variant:
        """The per-channel variant of a spatial one: input row = one channel's ``1 × taps`` patch
        (taps = k²), every depthwise weight a ``taps × 1`` state, value width 1. Dense variants are
        their own."""
        if self.spatial is None:
            return self
        return dataclasses.replace(
            self, fast={n: (TAPS, 1) for n in self.fast}, key_dim=TAPS, value_dim="1", spatial=None,
            lowering=Lowering(self.spatial.kernel, self.key_dim, dict(self.fast)),
        )

    def summary(self) -> dict:
        """The rule's components in words (for listings and reports)."""
        return {
            "fast weights": ", ".join(f"{n}: {r}×{c}" for n, (r, c) in self.fast.items()),
            "updated": ", ".join(self.update),
            "learning rate": self.lr.describe(),
            "momentum": self.momentum.describe() if self.momentum else "none",
            "orthogonalisation": self.orthogonalize.describe() if self.orthogonalize else "none",
            "weight norm": self.weight_norm.describe() if self.weight_norm else "none",
            **({"decay": self.decay.describe()} if self.decay else {}),
            **({"clip": self.clip.describe()} if self.clip else {}),
            **({"structure": self.spatial.describe()} if self.spatial else {}),
            **({"structure": f"one channel of a depthwise {self.lowering.kernel}×{self.lowering.kernel} layer: "
                f"the input row is the channel's patch (1 × {self.lowering.taps}), each kernel a "
                f"{self.lowering.taps} × 1 state"} if self.lowering else {}),
            "direction": "gradient ascent" if self.ascent else "gradient descent",
            "schedule": self.schedule.describe(),
            "queries": "keys replace queries" if self.queries == "key" else "queries",
        }

    def __repr__(self):
        return f"<variant {self.name}: {self.description}>"


# --- tracing and validation -------------------------------------------------------------


def _dim(spec):
    if isinstance(spec, str) and not spec.isdigit():
        return dim_symbol(spec)
    return sympy.Integer(int(spec))


def _call(name, part, fn, *args, **kwargs):
    """Call a model or loss on symbolic matrices, turning failures into DeclarationError."""
    try:
        return fn(*args, **kwargs)
    except ShapeMismatch as e:
        raise DeclarationError(f"variant {name!r}: {part}: {e}") from None
    except (TypeError, AttributeError) as e:
        raise DeclarationError(
            f"variant {name!r}: {part} uses something outside the variant language ({e}); "
            "write it with @, *, +, -, .T, scalars, dot/sq_norm and the element-wise functions "
            "(silu, gelu, gelu_tanh, tanh, sigmoid, relu, identity; add more with "
            "derivations.functions.register)"
        ) from None


def _trace(name, model, loss, fast, key_dim, patch=False) -> Trace:
    x = Mat.symbol("x", 1, _dim(key_dim))
    weights = {n: Mat.symbol(n, _dim(r), _dim(c)) for n, (r, c) in fast.items()}
    if patch:  # one channel of a depthwise layer: x is the channel's patch, read by depthwise_conv only
        x.grid = True
        try:
            out = _call(name, "model", model, x, **weights)
        except DeclarationError as e:
            raise DeclarationError(
                f"{e} (a depthwise layer is traced one channel at a time: x is that channel's 1 × {key_dim} patch "
                "and may only be read as depthwise_conv(x, w))"
            ) from None
    else:
        out = _call(name, "model", model, x, **weights)
    if not isinstance(out, Mat):
        raise DeclarationError(
            f"variant {name!r}: the model must return a matrix expression of the input row, got {type(out).__name__}"
        )
    if out.shape[0] != 1:
        raise DeclarationError(
            f"variant {name!r}: the model must map the 1 × {key_dim} input row to a 1 × n row, "
            f"got shape ({out.shape[0]}, {out.shape[1]})"
        )
    y = Mat.symbol("y", 1, out.shape[1])
    v = Mat.symbol("v", 1, out.shape[1])
    ell = _call(name, "loss", loss, y, v)
    if not isinstance(ell, Mat) or ell.shape != (1, 1):
        got = f"shape ({ell.shape[0]}, {ell.shape[1]})" if isinstance(ell, Mat) else type(ell).__name__
        raise DeclarationError(
            f"variant {name!r}: the loss must return a scalar (a 1 × 1 expression such as "
            f"-dot(y, v) or 0.5 * sq_norm(y - v)), got {got}"
        )
    return Trace(x.value, {n: w.value for n, w in weights.items()}, out.value, y.value, v.value, ell.value)


def _check_fast(name, fast) -> dict:
    if not isinstance(fast, Mapping) or not fast:
        raise DeclarationError(f"variant {name!r}: fast must be a non-empty dict name -> (rows, cols)")
    checked = {}
    for wname, shape in fast.items():
        if not (isinstance(wname, str) and wname.isidentifier() and not keyword.iskeyword(wname)):
            raise DeclarationError(f"variant {name!r}: fast weight name {wname!r} is not a Python identifier")
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise DeclarationError(f"variant {name!r}: fast weight {wname!r} needs a shape (rows, cols), got {shape!r}")
        for s in shape:
            ok = (isinstance(s, str) and s.isidentifier()) or (isinstance(s, int) and not isinstance(s, bool) and s > 0)
            if not ok:
                raise DeclarationError(
                    f"variant {name!r}: fast weight {wname!r} has dimension {s!r}; expected a name "
                    "such as 'd' or a positive integer"
                )
        checked[wname] = tuple(shape)
    return checked


def _check_signature(name, model, fast):
    params = list(inspect.signature(model).parameters)
    if not params:
        raise DeclarationError(f"variant {name!r}: the model must take the input row as its first argument")
    got, want = set(params[1:]), set(fast)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"not declared in fast: {', '.join(extra)}" if extra else "",
        ]
        raise DeclarationError(
            f"variant {name!r}: the model's arguments after {params[0]!r} must be the fast weights "
            f"{sorted(want)} ({'; '.join(p for p in parts if p)})"
        )


def _check_rule(name, update, lr, mom, ortho, wnorm, schedule):
    for label, value, cls in (
        ("momentum", mom, Momentum),
        ("orthogonalize", ortho, Orthogonalize),
        ("weight_norm", wnorm, WeightNorm),
    ):
        if value is not None and not isinstance(value, cls):
            raise DeclarationError(f"variant {name!r}: {label} must be None or a {cls.__name__}, got {value!r}")
    if not isinstance(lr, LearningRate):
        raise DeclarationError(f"variant {name!r}: lr must be constant(x), per_token() or a number, got {lr!r}")
    if not isinstance(schedule, Schedule):
        raise DeclarationError(f"variant {name!r}: schedule must come from chunked()/token_level(), got {schedule!r}")
    if schedule.chunk_size is not None and schedule.chunk_size < 1:
        raise DeclarationError(f"variant {name!r}: chunk size must be >= 1, got {schedule.chunk_size}")
    if lr.position:
        if schedule.order != "update_then_apply" or schedule.fixed:
            raise DeclarationError(
                f"variant {name!r}: per_token(position=True) scales the reads within a mini-batch, so it needs "
                "chunked('update_then_apply', size) (mini-batches whose tokens read after their own step)"
            )
        others = [n for n, on in (("momentum", mom), ("orthogonalize", ortho), ("weight_norm", wnorm)) if on]
        if others:
            raise DeclarationError(
                f"variant {name!r}: per_token(position=True) reads W_0 − a_i Σ_(j≤i) η_j ∇ℓ_j, which is not a "
                f"sequence of steps, so it does not combine with {', '.join(others)}"
            )
    if mom is not None:
        if schedule.order == "bidirectional":
            raise DeclarationError(
                f"variant {name!r}: momentum needs several steps; a bidirectional schedule takes one"
            )
        token_steps = schedule.order == "update_then_apply"
        if mom.per == "chunk" and token_steps:
            raise DeclarationError(
                f"variant {name!r}: momentum(per='chunk') needs a block order (apply_then_update or "
                "block_inclusive); update_then_apply steps per token, so use momentum(per='token')"
            )
        if mom.per == "token" and not token_steps:
            raise DeclarationError(
                f"variant {name!r}: momentum(per='token') needs per-token steps (update_then_apply); "
                f"the {schedule.order} order steps once per chunk, so use momentum(per='chunk')"
            )


def _check_decay(name, value, schedule, fast, update, key_dim) -> Decay | None:
    """``decay``: None, a :func:`~derivations.spec.decay` record or ``per_token()`` (its default).

    Per-token steps decay per token; a schedule that steps once per chunk decays once per chunk
    (by the product of its tokens' factors); one bidirectional step has nothing to decay towards.
    A per-channel gate scales the rows of every updated weight, so their rows are the key channels."""
    if value is None:
        return None
    if isinstance(value, LearningRate) and value.kind == "per_token":
        value = Decay()
    if not isinstance(value, Decay):
        raise DeclarationError(f"variant {name!r}: decay must be None, decay(order) or per_token(), got {value!r}")
    if schedule.order == "bidirectional":
        raise DeclarationError(
            f"variant {name!r}: a decay needs a sequence of steps; the bidirectional order takes one step on "
            "all tokens, so a decay would only scale the initial weights (fold it into them)"
        )
    token_steps = schedule.order == "update_then_apply"
    if value.order == "decay_then_gradient" and token_steps and not (schedule.fixed and schedule.chunk_size == 1):
        raise DeclarationError(
            f"variant {name!r}: decay(order='decay_then_gradient') takes each gradient at the decayed previous "
            "state, so it needs token_level() (chunk size 1); for gradients at a chunk start use "
            "decay(order='gradient_then_decay')"
        )
    if value.gate == "channel":
        rows = {u: fast[u][0] for u in update}
        wrong = {u: r for u, r in rows.items() if r != key_dim}
        if wrong:
            u, r = next(iter(wrong.items()))
            raise DeclarationError(
                f"variant {name!r}: decay(gate='channel') scales each row of the updated weights by its key "
                f"channel's γ, so their rows must be the key dimension {key_dim!r}; {u} has rows {r!r}"
            )
    return value


def _source_of(fn) -> str:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return ""


def _spec_hash(source, fields) -> str:
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(repr(fields).encode())
    return h.hexdigest()[:16]


def variant(
    *,
    fast: Mapping[str, tuple],
    update,
    loss: Callable,
    lr=None,
    momentum: Momentum | None = None,
    orthogonalize: Orthogonalize | None = None,
    weight_norm: WeightNorm | None = None,
    ascent: bool = False,
    schedule: Schedule | None = None,
    decay=None,
    clip: ColumnClip | None = None,
    key_dim: str = "d",
    queries: str = "query",
    name: str | None = None,
    description: str | None = None,
):
    """Declare a TTT variant; decorate its inner model ``f(x, *fast weights)``.

    Args:
        fast: fast weights and their shapes, e.g. ``{"W1": ("h", "d")}``; names become the
            model's arguments, their initial values come from the caller. ``depthwise(k)``
            instead of a shape declares a depthwise k×k kernel per channel on the token grid,
            applied with ``depthwise_conv(x, w)`` (see :mod:`derivations.structured`).
        update: the fast weights the inner loop updates (a name or a list of names).
        loss: the inner loss ``L(y, v)`` of the prediction row and the value row, a scalar,
            e.g. ``lambda y, v: -dot(y, v)``.
        lr: ``constant(x)`` (or a number) or ``per_token()``; default ``constant(1.0)``.
        momentum: ``momentum(per="chunk"|"token")`` or None.
        orthogonalize: ``newton_schulz(steps, coefficients)`` or None.
        weight_norm: ``weight_norm()`` or None.
        ascent: take gradient-ascent steps (flips the sign of every update).
        schedule: ``chunked(order, size)`` or ``token_level()``; default
            ``chunked("apply_then_update", 64)``.
        decay: ``decay(order)`` (or ``per_token()``, the default order) or None: a per-token
            factor γ_t = exp(g_t) on the updated weights, g supplied by the caller as ``log_decay``.
        clip: ``column_clip()`` or None: ViTTT's G[:, c] / (‖G[:, c]‖ + 1) on each increment.
        key_dim: the name of the input row's dimension.
        queries: ``"query"`` or ``"key"`` (the layer reads with its keys instead of queries).
        name, description: default to the function's name and the first docstring line.
    """

    def decorate(model: Callable) -> Variant:
        vname = name or model.__name__
        sched = schedule or chunked("apply_then_update", 64)
        upd = (update,) if isinstance(update, str) else tuple(update)
        spatial = check_spatial(vname, fast, upd, orthogonalize, sched) if isinstance(fast, Mapping) else None
        declared = {n: (s.taps, key_dim) for n, s in fast.items()} if spatial else fast  # stored [k², channels]
        fast_ = _check_fast(vname, declared)
        if not upd:
            raise DeclarationError(f"variant {vname!r}: update must name at least one fast weight")
        unknown = [u for u in upd if u not in fast_]
        if unknown:
            raise DeclarationError(
                f"variant {vname!r}: update names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not a fast weight (declared: {', '.join(fast_)})"
            )
        if len(set(upd)) != len(upd):
            raise DeclarationError(f"variant {vname!r}: update lists a fast weight twice: {list(upd)}")
        lr_ = constant(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else (lr or constant(1.0))
        _check_rule(vname, upd, lr_, momentum, orthogonalize, weight_norm, sched)
        decay_ = _check_decay(vname, decay, sched, fast_, upd, key_dim)
        if decay_ is not None and spatial is not None:
            raise DeclarationError(f"variant {vname!r}: a decay of a spatial (depthwise) layer is not supported; "
                                   "declare the per-channel form instead")
        if queries not in ("query", "key"):
            raise DeclarationError(f"variant {vname!r}: queries must be 'query' or 'key', got {queries!r}")
        if not callable(loss):
            raise DeclarationError(f"variant {vname!r}: loss must be a function (y, v) -> scalar")
        _check_signature(vname, model, fast_)
        if spatial is not None:
            tr = _trace(vname, model, loss, {n: (TAPS, 1) for n in fast_}, TAPS, patch=True)
            check_channel_separable(vname, loss)
        else:
            tr = _trace(vname, model, loss, fast_, key_dim)
        free = tr.prediction.free_symbols
        unused = [u for u in upd if tr.weights[u] not in free]
        if unused:
            raise DeclarationError(f"variant {vname!r}: the model does not use the updated fast weight(s) {unused}")
        if tr.y not in tr.loss.free_symbols:
            raise DeclarationError(f"variant {vname!r}: the loss does not depend on the prediction y")
        doc = inspect.getdoc(model) or ""
        source = _source_of(model)
        fields = (vname, fast_, upd, lr_, momentum, orthogonalize, weight_norm, bool(ascent), sched, key_dim, queries)
        if decay_ is not None:  # appended only when set, so existing spec hashes are unchanged
            fields += (decay_,)
        if clip is not None and not isinstance(clip, ColumnClip):
            raise DeclarationError(f"variant {vname!r}: clip must be None or column_clip(), got {clip!r}")
        if clip is not None:
            fields += (clip,)
        if spatial is not None:
            fields += (spatial,)
        if lr_.position:
            fields += ("lr_position",)
        if lr_.position and (decay_ is not None or clip is not None):
            raise DeclarationError(
                f"variant {vname!r}: per_token(position=True) reads W_0 − a_i Σ_(j≤i) η_j ∇ℓ_j, which is not a "
                "sequence of steps, so it does not combine with a decay or a clip"
            )
        return Variant(
            name=vname,
            model=model,
            loss=loss,
            fast=fast_,
            update=upd,
            lr=lr_,
            momentum=momentum,
            orthogonalize=orthogonalize,
            weight_norm=weight_norm,
            ascent=bool(ascent),
            schedule=sched,
            key_dim=key_dim,
            value_dim=key_dim if spatial is not None else str(tr.prediction.shape[1]),
            queries=queries,
            description=description or (doc.splitlines()[0] if doc else vname),
            source=source,
            spec_hash=_spec_hash(source, fields),
            decay=decay_,
            clip=clip,
            spatial=spatial,
        )

    return decorate
