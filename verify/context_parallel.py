"""Run a generated form context-parallel on ``gloo`` and set it against the one-process form.

:func:`run_sharded` starts one process per rank (``torch.multiprocessing``, the ``gloo`` backend, so it
runs on the CPU), gives rank r the r-th slice of a call's tokens (q, k, v and every per-token input
cut along T; the slow weights and the initial state whole), runs the form with ``process_group``,
and takes the gradients of ⟨o_r, dO_r⟩ (+ ⟨final, dS⟩ on the last rank) on every rank. The parent
gets each rank's o, final state and gradients; :func:`one_process` computes the same quantities in
one process, and :func:`compare` sets them side by side (the slices' gradients concatenated, the
shared inputs' summed over the ranks). The ranks' collectives run behind a timeout, and a rank that
fails or hangs fails the run with every rank's traceback.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import torch

from verify.signature import OPTIONAL_INPUTS

__all__ = ["slice_lengths", "call_arguments", "run_sharded", "one_process", "compare"]

#: the optional inputs with one value per token (cut along T with q, k, v)
PER_TOKEN = frozenset({"q", "k", "v"} | {i.name for i in OPTIONAL_INPUTS if i.shape[1:2] == ("T",)})


def slice_lengths(T: int, world: int, multiple: int = 1) -> list[int]:
    """Contiguous slice lengths of T tokens over ``world`` ranks: as even as possible in whole
    ``multiple``s, the rest on the last rank."""
    units = max(1, T // multiple // world)
    lengths = [units * multiple] * (world - 1)
    lengths.append(T - sum(lengths))
    if lengths[-1] < 1:
        raise ValueError(f"T = {T} is too short for {world} slices of whole chunks of {multiple}")
    return lengths


def call_arguments(variant, case) -> dict:
    """Every argument of a generated form's call on ``case`` (q, k, v and the keywords), detached."""
    from verify.forms import form_kwargs  # the parent's side only: a rank imports no derivation engine

    args = {"q": case.q, "k": case.k, "v": case.v, **form_kwargs(variant, case)}
    return _map_tensors(args, lambda t: t.detach())


def _map_tensors(args: dict, fn) -> dict:
    return {k: (fn(v) if isinstance(v, torch.Tensor) else
                {n: fn(t) for n, t in v.items()} if isinstance(v, dict) else v) for k, v in args.items()}


def _slice(args: dict, start: int, n: int) -> dict:
    return {k: (_map_tensors({k: v}, lambda t: t[:, start:start + n])[k] if k in PER_TOKEN else v)
            for k, v in args.items()}


def _run(module: str, form: str, args: dict, dO, dS, process_group=None, last: bool = True) -> dict:
    """One call with gradients to every floating input: o, the final state(s) and the gradients."""
    args = _map_tensors(args, lambda t: t.clone().requires_grad_(t.is_floating_point()))
    leaves = {}
    for k, v in args.items():
        for name, t in ({k: v} if isinstance(v, torch.Tensor) else
                        {f"{k}[{n}]": t for n, t in v.items()} if isinstance(v, dict) else {}).items():
            if t.requires_grad:
                leaves[name] = t
    fn = importlib.import_module(module).FORMS[form]
    o, final = fn(**args, **({"process_group": process_group} if process_group is not None else {}))
    finals = final if isinstance(final, dict) else ({"state": final} if final is not None else {})
    outputs, grads = [o], [dO]
    if last:
        outputs += list(finals.values())
        grads += [dS[n] for n in finals]
    got = torch.autograd.grad(outputs, list(leaves.values()), grads, allow_unused=True)
    return {"o": o.detach(), "final": {n: s.detach() for n, s in finals.items()},
            "grads": {k: (g if g is not None else torch.zeros_like(t)) for (k, t), g in zip(leaves.items(), got)}}


def _grad_outputs(args: dict, seed: int):
    """dO ``[B, T, H, Dv]`` and dS of every final state (one tensor, or one per updated weight)."""
    g = torch.Generator().manual_seed(seed)
    q, v, initial = args["q"], args["v"], args["initial_state"]
    dO = torch.randn(*q.shape[:3], v.shape[-1], generator=g, dtype=q.dtype)
    states = initial if isinstance(initial, dict) else {"state": initial}
    dS = {n: torch.randn(s.shape if s.dim() == 4 else (q.shape[0], *s.shape), generator=g, dtype=torch.float64)
          for n, s in states.items()}
    return dO, dS


def _timed_run(repeats: int, *run_args, **run_kwargs) -> dict:
    """:func:`_run`, and with ``repeats`` the median seconds of that many more calls after it (forward and
    backward) as ``result["seconds"]``."""
    result = _run(*run_args, **run_kwargs)
    if repeats:
        from verify.bench import time_repeats  # the benchmark's side only: a test's rank imports no timer

        # exactly ``repeats`` calls (no time-adaptive count): every rank must make the same collectives
        timing = time_repeats(lambda: _run(*run_args, **run_kwargs), repeats, warmup=0, min_seconds=0.0)
        result["seconds"] = timing.median
    return result


def one_process(module: str, args: dict, seed: int = 0, form: str = "chunk", repeats: int = 0) -> dict:
    """The one-process form's o, final state and gradients (and ``seconds``, see :func:`_timed_run`)."""
    dO, dS = _grad_outputs(args, seed)
    return _timed_run(repeats, module, form, args, dO, dS)


class _SentBytes:
    """Counts the bytes this rank sends through torch.distributed's all_gather (its tensor to each other
    rank), all_reduce (2 (w − 1)/w of the buffer: a ring) and broadcast (the root's buffer to each other
    rank), by wrapping those three functions in this process."""

    def __init__(self, dist):
        self.total, self.dist = 0, dist
        self.originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "broadcast")}

    def __enter__(self):
        dist, world = self.dist, self.dist.get_world_size()

        def all_gather(parts, tensor, *a, **k):
            self.total += (world - 1) * tensor.numel() * tensor.element_size()
            return self.originals["all_gather"](parts, tensor, *a, **k)

        def all_reduce(tensor, *a, **k):
            self.total += 2 * (world - 1) * tensor.numel() * tensor.element_size() // world
            return self.originals["all_reduce"](tensor, *a, **k)

        def broadcast(tensor, src, *a, **k):
            if dist.get_rank() == src:
                self.total += (world - 1) * tensor.numel() * tensor.element_size()
            return self.originals["broadcast"](tensor, src, *a, **k)

        for name, fn in (("all_gather", all_gather), ("all_reduce", all_reduce), ("broadcast", broadcast)):
            setattr(dist, name, fn)
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(self.dist, name, fn)


def _worker(rank: int, world: int, port: int, module: str, form: str, args: dict, lengths: list[int], seed: int,
            out: str, repeats: int, count_bytes: bool) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback interface: no network needed
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the ranks share this machine's cores
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        start = sum(lengths[:rank])
        dO, dS = _grad_outputs(args, seed)
        call = (module, form, _slice(args, start, lengths[rank]), dO[:, start:start + lengths[rank]], dS)
        with _SentBytes(dist) as sent:
            result = _run(*call, process_group=dist.group.WORLD, last=rank == world - 1)
        if count_bytes:
            result["bytes_sent"] = sent.total
        if repeats:
            result["seconds"] = _timed_run(repeats, *call, process_group=dist.group.WORLD,
                                           last=rank == world - 1)["seconds"]
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 — the parent reports every rank's failure
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sharded(module: str, args: dict, lengths: list[int], seed: int = 0, timeout: float = 120.0,
                form: str = "chunk", repeats: int = 0, count_bytes: bool = False) -> list[dict]:
    """Every rank's result (see the module docstring) of ``module``'s ``form`` over ``len(lengths)`` ranks
    (the Triton form on a CPU needs TRITON_INTERPRET=1, which the ranks inherit); a RuntimeError with the
    ranks' tracebacks if one fails or the run takes over ``timeout`` s. ``repeats``: each rank also times
    that many more calls (``seconds``, the median); ``count_bytes``: the bytes it sent in the first call
    (``bytes_sent``, :class:`_SentBytes`)."""
    import torch.multiprocessing as mp

    world = len(lengths)
    if sum(lengths) != args["q"].shape[1]:
        raise ValueError(f"lengths {lengths} do not cover T = {args['q'].shape[1]}")
    with tempfile.TemporaryDirectory(prefix="tttla-cp-") as out:
        worker_args = (world, _free_port(), module, form, args, lengths, seed, out, repeats, count_bytes)
        context = mp.start_processes(_worker, args=worker_args, nprocs=world, join=False, start_method="spawn")
        waited = 0.0
        try:
            while not context.join(timeout=0.5):
                waited += 0.5
                if waited > timeout:
                    raise TimeoutError(f"the run over {world} ranks took over {timeout} s")
        except Exception as error:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            errors = "\n".join(f"rank {r}:\n{(Path(out) / f'rank{r}.err').read_text()}"
                               for r in range(world) if (Path(out) / f"rank{r}.err").exists())
            raise RuntimeError(f"context-parallel run failed: {error}\n{errors}") from error
        return [torch.load(Path(out) / f"rank{r}.pt") for r in range(world)]


def compare(ranks: list[dict], whole: dict) -> dict[str, float]:
    """The largest difference of each output and gradient between the ranks (o and the per-token
    inputs' gradients concatenated along T, the shared inputs' gradients summed) and one process."""
    diffs = {"o": (torch.cat([r["o"] for r in ranks], 1) - whole["o"]).abs().max().item()}
    for n, s in whole["final"].items():
        diffs[f"final {n}"] = (ranks[-1]["final"][n] - s).abs().max().item()
    for name, g in whole["grads"].items():
        cut = name.split("[")[0] in PER_TOKEN
        got = torch.cat([r["grads"][name] for r in ranks], 1) if cut else sum(r["grads"][name] for r in ranks)
        diffs[f"grad {name}"] = (got - g).abs().max().item()
    return diffs
