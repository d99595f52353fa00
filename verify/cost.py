"""What one call of a form moves, launches and multiplies, counted on fake tensors; and the time
a roofline predicts for it on a GPU.

The call runs under :class:`torch._subclasses.fake_tensor.FakeTensorMode` on the ``meta`` device:
no memory is allocated and no kernel runs, so the paper's shapes cost nothing on a CPU. A
:class:`CostCounter` (a ``TorchDispatchMode`` inside the fake mode) sees every aten op and every
``tttla::`` custom op (the Triton kernels, through their fake implementations) and records, per op:

* bytes: every input tensor read once and every output written once (each tensor counted by the
  distinct addresses it spans, so a broadcast ``expand`` is read at its own size); a fill or a copy
  does not read its destination; factories (``zeros_like``, ``new_ones``, …) do not read their template;
* launches: one per op that computes; view and metadata ops (``view``, ``transpose``, ``expand``,
  ``slice``, ``detach``, ``as_strided``, …) and bare allocations (``empty``) count 0 bytes and 0 launches;
* FLOPs: matrix products only (``mm``, ``bmm``, ``addmm``, ``baddbmm``, convolutions: torch's own
  formulas, 2·m·n·k for a product; ``matmul`` and ``einsum`` reach them as they decompose), and
  for the ``tttla::`` kernels the products an ideal kernel computes (:data:`KERNEL_FLOPS`).

A ``tttla::`` kernel is counted as an ideal kernel (its inputs read once, its outputs written once)
plus the copies its launcher makes: chunk_outer and chunk_read read their operands through their
strides and copy one only when its channels are not at unit stride
(``triton_runtime.launcher_copies``).

The prediction (:meth:`Tally.seconds`) is a roofline: each op takes max(bytes / HBM bandwidth,
FLOPs / peak of its operands' dtype), ops run one after another, and each launch adds a fixed
overhead. It ignores caches (an op whose operands sit in L2 is faster), overlap between kernels,
and how well a kernel reaches either roof.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tttla_kernels.triton_runtime import MASK_NONE, launcher_copies
from tttla_kernels.triton_scan import value_block

__all__ = ["Hardware", "H100_SXM", "OpCost", "Tally", "CostCounter", "tensor_bytes", "count", "fake_tensors",
           "KERNEL_FLOPS", "causal_pairs", "PASSES", "count_form", "form_rows", "cost_row"]


@dataclass(frozen=True)
class Hardware:
    """The roofline's constants: HBM bandwidth, dense matmul peak per operand dtype, launch overhead."""

    name: str
    bytes_per_s: float
    flops_per_s: dict[torch.dtype, float]
    launch_s: float

    def peak(self, dtype: torch.dtype) -> float:
        if dtype not in self.flops_per_s:
            raise ValueError(f"{self.name}: no matmul peak for operands in {dtype}")
        return self.flops_per_s[dtype]


#: NVIDIA H100 SXM5 80 GB. Bandwidth and dense (no sparsity) tensor-core peaks: vendor spec sheet
#: (3.35 TB/s HBM3; 989 TFLOP/s bf16 and fp16; 67 TFLOP/s fp32 without TF32, torch's default for
#: matmuls, and fp64 tensor core). The launch overhead is an assumption, not a spec: ~4 µs per
#: kernel, launch latency plus a small kernel's ramp-up, as commonly measured.
H100_SXM = Hardware(
    name="H100 SXM (roofline)",
    bytes_per_s=3.35e12,
    flops_per_s={torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12, torch.float64: 67e12},
    launch_s=4e-6,
)


@dataclass(frozen=True)
class OpCost:
    """One op of a call: what it read and wrote (bytes), its matmul FLOPs (in ``dtype``) and launches."""

    name: str
    read: int
    written: int
    flops: int
    launches: int
    dtype: torch.dtype

    def seconds(self, hw: Hardware) -> float:
        flop_s = self.flops / hw.peak(self.dtype) if self.flops else 0.0
        return max((self.read + self.written) / hw.bytes_per_s, flop_s) + self.launches * hw.launch_s


@dataclass
class Tally:
    """The ops of one call, in order."""

    ops: list[OpCost] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(op.read + op.written for op in self.ops)

    @property
    def launches(self) -> int:
        return sum(op.launches for op in self.ops)

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    def seconds(self, hw: Hardware = H100_SXM) -> float:
        """The roofline's time: each op at the higher of its two roofs, in sequence, plus launches."""
        return sum(op.seconds(hw) for op in self.ops)

    def by_op(self) -> dict[str, tuple[int, int]]:
        """(bytes, launches) per op name, largest traffic first (to see where the bytes go)."""
        out: dict[str, list[int]] = {}
        for op in self.ops:
            entry = out.setdefault(op.name, [0, 0])
            entry[0] += op.read + op.written
            entry[1] += op.launches
        return {k: (b, n) for k, (b, n) in sorted(out.items(), key=lambda kv: -kv[1][0])}


def tensor_bytes(t: torch.Tensor) -> int:
    """The bytes ``t`` spans: its elements at distinct addresses (a dimension of stride 0, from an
    ``expand``, counts once) times the element size."""
    distinct = math.prod(n for n, s in zip(t.shape, t.stride()) if s != 0)
    return distinct * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


aten = torch.ops.aten
#: ops that only allocate: no bytes, no launch
_ALLOCATIONS = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided}
#: views and metadata that ``OpOverload.is_view`` does not flag (a view of a fresh result, a no-op lift)
_METADATA = {aten._unsafe_view, aten.lift_fresh, aten.sym_size, aten.sym_stride, aten.sym_numel,
             aten.sym_storage_offset, aten.is_same_size, aten._reshape_alias}
#: ops that write their first argument without reading it
_WRITE_ONLY_DESTINATION = {aten.copy_, aten.fill_, aten.zero_}
#: factories that take a tensor only for its shape, dtype and device
_FACTORIES = {aten.zeros_like, aten.ones_like, aten.full_like, aten.new_zeros, aten.new_ones, aten.new_full,
              aten.rand_like, aten.randn_like}


def _chunk_outer_flops(a, b, chunk_size, scale=None):
    """Σ_{t ∈ n} a_tᵀ (scale_t b_t) per chunk: one outer product per token, 2·Da·Db FLOPs (the
    scale's Db multiplies per token are not matmul FLOPs)."""
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * a.shape[3] * b.shape[-1]


def causal_pairs(T: int, L: int) -> int:
    """The (s ≤ t) pairs inside the chunks of L tokens that tile T (a ragged last chunk)."""
    full, tail = divmod(T, L)
    return full * L * (L + 1) // 2 + tail * (tail + 1) // 2


def _chunk_read_flops(q, k, v, S, chunk_size, mask, value_dim, g=None, gate_values=False):
    """q_t S_{c(t)} (2·Dk·Dv per token) and, with a mask, the pairs it keeps inside the chunk:
    score (2·Dk) and weighted value (2·Dv) per pair."""
    B, H, T, DK = q.shape
    flops = 2 * B * H * T * DK * value_dim if S is not None else 0
    if mask:
        flops += 2 * B * H * causal_pairs(T, chunk_size) * (DK + value_dim)
    return flops


def _delta_block_sizes(U, W):
    BH, N, L, DV = U.shape
    return BH * N, L, W.shape[-1], DV


def _delta_scan_flops(U, W, Q, P, K, g, S0, has_decay):
    """Per block: W S, Q S, Kᵀ u (2·L·Dk·Dv each) and P u (2·L²·Dv)."""
    blocks, L, DK, DV = _delta_block_sizes(U, W)
    return blocks * (6 * L * DK * DV + 2 * L * L * DV)


def _delta_scan_backward_flops(U, W, Q, P, K, g, states, dO, dfinal, has_decay):
    """Per block: seven products of L·Dk·Dv (W S, K dS, du Sᵀ, u dSᵀ, dO Sᵀ, Qᵀ dO, Wᵀ du) and two of
    L²·Dv (Pᵀ dO, dO uᵀ), 2 FLOPs each."""
    blocks, L, DK, DV = _delta_block_sizes(U, W)
    return blocks * (14 * L * DK * DV + 4 * L * L * DV)


def _scan_fused_flops(q, k, v, g, initial, block_size, save_states=True, cu_seqlens=None, block_offsets=None):
    """Per token q̂ S and k̂ᵀ v̂ (2·Dk·Dv each); per (s ≤ t) pair of a block, the weighted value and the
    score, once per column block of the grid (``triton_scan.value_block``). Packed sequences counted as
    one row of T tokens (their blocks are as many or one more per sequence)."""
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    splits = -(-DV // value_block(B * H, DV))
    return B * H * (4 * T * DK * DV + 2 * causal_pairs(T, block_size) * (DK * splits + DV))


def _scan_fused_backward_flops(q, k, v, g, states, final, do, d_final, block_size, cu_seqlens=None,
                               block_offsets=None):
    """Per token dO Sᵀ, v̂ dSᵀ, k̂ dS and q̂ᵀ dO (2·Dk·Dv each); per pair six products of Dk or Dv
    (the scores, dO·v̂ twice, and the three intra-block gradients)."""
    B, H, T, DK = q.shape
    DV = v.shape[-1]
    return B * H * (8 * T * DK * DV + 6 * causal_pairs(T, block_size) * (DK + DV))


def _chunk_scan_flops(updates, coeff=None, initial=None, coeff_chunk_size=None, inclusive=True):
    """h_n = a_n h_{n−1} + U_n: a multiply-add per cell and chunk, 2·B·H·N·R·C."""
    return 2 * updates.numel()


def _chunk_scan_backward_flops(grad_states, grad_last, states, coeff, initial, coeff_chunk_size, inclusive,
                               updates_dtype, grad_coeff):
    """g ← a_n g + G_n per cell and chunk, and with ``grad_coeff`` ⟨g, h_{n−1}⟩: 2 (4) FLOPs per cell."""
    return (4 if grad_coeff else 2) * states.numel()


def _frobenius_normalize_flops(X, eps, out_dtype=None):
    """Σ x² (a multiply-add per entry) and a division per entry."""
    return 3 * X.numel()


def _frobenius_normalize_backward_flops(X, dY, eps):
    """Σ x² and Σ dy·x (two multiply-adds per entry), then (dy − c x) / s (three FLOPs per entry)."""
    return 7 * X.numel()


def _linear_features_flops(xs, weights, epilogue):
    """x W_i for every input x and weight W_i: 2·d·h per token and product."""
    B, H, T, D = xs[0].shape
    return 2 * len(xs) * len(weights) * B * H * T * D * weights[0].shape[-1]


#: the matmul FLOPs of an ideal kernel for each tttla custom op, from its arguments
KERNEL_FLOPS: dict[str, Callable[..., int]] = {
    "tttla::chunk_outer": _chunk_outer_flops,
    "tttla::chunk_read": _chunk_read_flops,
    "tttla::chunk_scan": _chunk_scan_flops,
    "tttla::chunk_scan_backward": _chunk_scan_backward_flops,
    "tttla::frobenius_normalize": _frobenius_normalize_flops,
    "tttla::frobenius_normalize_backward": _frobenius_normalize_backward_flops,
    "tttla::delta_scan": _delta_scan_flops,
    "tttla::linear_features": _linear_features_flops,
    "tttla::delta_scan_backward": _delta_scan_backward_flops,
    "tttla::scan_fused": _scan_fused_flops,
    "tttla::scan_fused_backward": _scan_fused_backward_flops,
}

#: the token operands a launcher copies when ``launcher_copies`` says so (channels not at unit
#: stride), by argument position: a, b of chunk_outer; q, k, v, g of chunk_read (chunk_outer's
#: scale and chunk_read's S are read through all their strides, never copied)
_LAUNCHER_COPIED = {"tttla::chunk_outer": (0, 1), "tttla::chunk_read": (0, 1, 2, 7)}
#: the operands a launcher makes contiguous (any non-contiguous one is copied), by argument position
_LAUNCHER_CONTIGUOUS = {"tttla::chunk_scan": (0,), "tttla::chunk_scan_backward": (0, 1),
                        "tttla::frobenius_normalize": (0,), "tttla::frobenius_normalize_backward": (0, 1)}


def _unread(name: str, full: list) -> set[int]:
    """Positions of operands a kernel is given but does not read: chunk_read's k and v without an
    intra-chunk mask."""
    return {1, 2} if name == "tttla::chunk_read" and full[5] == MASK_NONE else set()


def _kernel_costs(name: str, func, args, kwargs, out) -> list[OpCost]:
    """A tttla custom op: the launcher's copies of operands whose channels are not at unit stride,
    then the ideal kernel."""
    if name not in KERNEL_FLOPS:
        raise NotImplementedError(f"verify.cost: no FLOP formula for the custom op {name!r}; add it to KERNEL_FLOPS")
    bound = func._schema.arguments
    full = list(args) + [kwargs.get(a.name, a.default_value) for a in bound[len(args):]]
    dtype = _tensors(args)[0].dtype
    costs = []
    copied = [(i, launcher_copies) for i in _LAUNCHER_COPIED.get(name, ())] + \
        [(i, lambda t: not t.is_contiguous()) for i in _LAUNCHER_CONTIGUOUS.get(name, ())]
    for i, copies in copied:
        t = full[i]
        if isinstance(t, torch.Tensor) and copies(t):
            costs.append(OpCost(f"{name} (launcher copy)", tensor_bytes(t), t.numel() * t.element_size(), 0, 1,
                                t.dtype))
    unread = _unread(name, full)
    read = sum(tensor_bytes(t) for i, a in enumerate(full) if i not in unread for t in _tensors(a))  # lists too
    written = sum(tensor_bytes(t) for t in _tensors(out))
    costs.append(OpCost(name, read, written, KERNEL_FLOPS[name](*full), 1, dtype))
    return costs


def _aten_cost(func, args, kwargs, out) -> OpCost | None:
    """An aten op's cost, or None for a view, metadata or a bare allocation."""
    from torch.utils.flop_counter import flop_registry

    packet = func.overloadpacket
    outputs = _tensors(out)
    if func.is_view or packet in _METADATA or packet in _ALLOCATIONS or not outputs:  # no tensor out: metadata
        return None
    inputs = _tensors((args, kwargs))
    if packet in _FACTORIES:
        inputs = []
    elif packet in _WRITE_ONLY_DESTINATION:
        inputs = inputs[1:]
    formula = flop_registry.get(packet)
    flops = int(formula(*args, **kwargs, out_val=out)) if formula else 0
    dtype = (inputs or outputs)[0].dtype
    return OpCost(str(packet).removeprefix("aten."), sum(map(tensor_bytes, inputs)),
                  sum(map(tensor_bytes, outputs)), flops, 1, dtype)


class CostCounter(TorchDispatchMode):
    """Records an :class:`OpCost` per op dispatched under it into ``self.tally``."""

    def __init__(self):
        super().__init__()
        self.tally = Tally()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        namespace = func.namespace
        if namespace == "tttla":
            self.tally.ops.extend(_kernel_costs(func._schema.name, func, args, kwargs, out))
        elif namespace == "aten":
            cost = _aten_cost(func, args, kwargs, out)
            if cost is not None:
                self.tally.ops.append(cost)
        elif namespace != "prim":  # prim.device and the like: metadata
            raise NotImplementedError(f"verify.cost: no cost model for the op {func._schema.name} (only aten and "
                                      "tttla ops are counted)")
        return out


@contextmanager
def fake_tensors():
    """A FakeTensorMode in which tensors made on the ``meta`` device stand for GPU tensors.

    Why meta and not cuda: a CPU-only torch cannot move a fake tensor to "cuda" ("PyTorch is not
    linked with support for cuda devices"), and a backward over fake "cuda" tensors made in place
    aborts the process (the autograd engine asks for a CUDA device guard). On "meta" every op, the
    backward and the tttla custom ops' fake implementations run;
    ``triton_runtime.check_device`` refuses only CPU tensors (outside Triton's interpreter), so the
    Triton forms run without TRITON_INTERPRET and without a GPU, and no Triton kernel is launched.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        yield


def count(fn: Callable[[], object]) -> Tally:
    """The ops ``fn()`` dispatches, counted (run it inside :func:`fake_tensors` on fake inputs)."""
    counter = CostCounter()
    with counter:
        fn()
    return counter.tally


# --- a generated form at a benchmark shape ----------------------------------------------------

#: the passes a form is counted in: forward (no autograd), and forward plus the backward of
#: every output (o and the final states) to every input, given the outputs' gradients
PASSES = ("forward", "forward+backward")


def _fake_case(variant, shape: dict, dtype: torch.dtype, requires_grad: bool):
    """Inputs of ``shape`` (batch, heads, seq_len, dim: every named dimension, chunk) as fake
    ``meta`` tensors in ``dtype`` (call inside :func:`fake_tensors`)."""
    from verify.forms import cast_case
    from verify.inputs import make_case

    sizes = {k: shape["dim"] for k in (*variant.dims, variant.value_dim) if isinstance(k, str)}
    chunk = None if variant.schedule.fixed else shape["chunk"]
    case = make_case(variant, batch=shape["batch"], seq_len=shape["seq_len"], heads=shape["heads"], sizes=sizes,
                     chunk_size=chunk)
    return cast_case(case, dtype, requires_grad=requires_grad, device="meta")


def count_form(variant, fn: Callable, shape: dict, dtype: torch.dtype, pass_: str) -> Tally:
    """The ops of one call of the generated form ``fn`` at ``shape`` in ``pass_`` (see :data:`PASSES`),
    on fake tensors: the inputs are made outside the count, the outputs' gradients are bare
    allocations (no traffic), so only the layer's own work is counted."""
    from verify.forms import call_form

    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    takes_chunk = "chunk_size" in inspect.signature(fn).parameters  # not a one-step bidirectional layer
    compute_chunk = shape["chunk"] if variant.schedule.fixed and takes_chunk else None
    backward = pass_ == "forward+backward"
    with fake_tensors():
        case = _fake_case(variant, shape, dtype, requires_grad=backward)
        leaves = list(case.leaves().values())

        def forward():
            with torch.no_grad():
                call_form(variant, fn, case, compute_chunk)

        def forward_backward():
            o, final = call_form(variant, fn, case, compute_chunk)
            outputs = [t for t in (o, *final.values()) if t.requires_grad]
            torch.autograd.grad(outputs, leaves, grad_outputs=[torch.empty_like(t) for t in outputs],
                                allow_unused=True)

        return count(forward_backward if backward else forward)


def cost_row(variant: str, form: str, pass_: str, shape: dict, dtype: torch.dtype, tally: Tally,
             hw: Hardware = H100_SXM, largest: int = 6) -> dict:
    """One row of the cost model: per call and per head-token (B·H·T), the roofline's time on
    ``hw``, and the ``largest`` ops by traffic (bytes per head-token, launches)."""
    head_tokens = shape["batch"] * shape["heads"] * shape["seq_len"]
    return {
        "variant": variant, "form": form, "pass": pass_, "shape": dict(shape),
        "dtype": str(dtype).removeprefix("torch."), "head_tokens": head_tokens,
        "bytes": tally.bytes, "bytes_per_head_token": round(tally.bytes / head_tokens, 1),
        "launches": tally.launches, "flops": tally.flops,
        "predicted_seconds": tally.seconds(hw),
        "largest_ops": {name: [round(b / head_tokens, 1), n] for name, (b, n) in list(tally.by_op().items())[:largest]},
    }


def form_rows(variant, forms: dict, shape: dict, dtype: torch.dtype, passes=PASSES,
              hw: Hardware = H100_SXM) -> list[dict]:
    """A :func:`cost_row` for every form of ``forms`` (name → fn) in every pass."""
    return [cost_row(variant.name, name, pass_, shape, dtype, count_form(variant, fn, shape, dtype, pass_), hw)
            for name, fn in forms.items() for pass_ in passes]
