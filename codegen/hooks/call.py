"""Hooks of the public functions: their signature and docstring, and ``prepare`` / ``finish``
in ``_common.py``, which check a call's inputs, lay them out heads first and return the results."""

from __future__ import annotations

from codegen.hooks._base import HookBase, call, lines


class CallHooks(HookBase):
    """The public functions (signature, docstring) and prepare / finish."""

    def call_inputs(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(name, kind, annotation, named sizes) of the variant's keyword inputs before ``initial_state``, in
        order. Kinds: "grid" (a spatial layer's token grid), "slow" (a slow weight, per head), "token" (one
        value per token and head: learning rate, momentum, decay) and "position" (per mini-batch position)."""
        c = self.c
        rows = [("grid", "grid", "tuple[int, int]", ("h", "w"))] if c.lowering else []
        rows += [(w, "slow", "torch.Tensor", ("H", r, cols)) for w, r, cols in c.slow_weights]
        if c.per_token_lr:
            rows.append(("lr", "token", "torch.Tensor" + (" | dict[str, torch.Tensor]" if c.multi_state else ""),
                         ("B", "T", "H")))
        if c.lr_position:
            rows.append(("lr_position", "position", "torch.Tensor", ("L",)))
        if c.momentum:
            rows.append(("momentum", "token", "torch.Tensor", ("B", "T", "H")))
        if c.decay is not None and c.decay_gate != "head":
            rows.append(("log_decay", "token", "torch.Tensor",
                         ("B", "T", "H", "Dk") if c.decay_gate == "channel" else ("B", "T", "H")))
        return rows

    def _keyword_inputs(self) -> list[tuple[str, str]]:
        """(name, annotation) of the variant's keyword inputs before ``initial_state``."""
        return [(name, annotation) for name, _, annotation, _ in self.call_inputs()]

    def _chunk_default(self) -> int | None:
        """The default of the chunk_size argument, or None when no form takes one. Every form of a
        variant takes the same arguments (they are swappable): where the schedule fixes the inner
        steps, the recurrence accepts the parallel forms' block size too and only checks it."""
        c = self.c
        return c.default_chunk if not c.fixed_chunk else c.plan.compute_chunk

    def _chunk_ignored(self) -> bool:
        """Whether chunk_size is a block size that cannot change the result (a fixed schedule)."""
        return self.c.fixed_chunk and self._chunk_default() is not None

    def _context_parallel(self) -> bool:
        """Whether the chunk form runs context-parallel: the form has a summary (derivations.shard) and the
        prefix-scan template computes it."""
        return self.c.shard is not None and self.c.plan.chunk_template in ("prefix_scan", "delta_chunk")

    def _one_process_reason(self, form: str) -> str | None:
        """Why ``form`` refuses a ``process_group`` (the whole sentence), or None when it runs context-parallel."""
        c = self.c
        if self._context_parallel():
            return None if form in ("chunk", "triton") else (f"the {form} form runs in one process; the chunk and "
                                                             f"Triton forms run context-parallel")
        if c.shard is None:
            return c.shard_reason
        return f"{c.name}'s chunk form is not the prefix-scan template: {c.plan.forms['chunk'].reason}"

    def _state_type(self) -> str:
        return "dict[str, torch.Tensor]" if self.c.multi_state else "torch.Tensor"

    def _function_name(self, form: str) -> str:
        return {"recurrent": "recurrent_", "chunk": "chunk_", "triton": "triton_"}[form] + self.c.name

    def _varlen(self) -> bool:
        """Whether the forms take packed sequences (``cu_seqlens``): every variant of sequences (a spatial
        variant's tokens are one grid)."""
        return not self.c.lowering

    def _scales(self) -> bool:
        """Whether the forms take fla's ``scale`` of the queries: every variant that reads queries."""
        return not self.c.lowering and not self.c.queries_from_keys

    def signature(self, form: str) -> str:
        state = self._state_type()
        params = ["q: torch.Tensor", "k: torch.Tensor", "v: torch.Tensor", "*",
                  *(f"{n}: {t}" for n, t in self._keyword_inputs()),
                  *(["scale: float = 1.0"] if self._scales() else []),
                  f"initial_state: {state} | None = None", "output_final_state: bool = False"]
        if self._varlen():
            params.append("cu_seqlens: torch.Tensor | None = None")
        default = self._chunk_default()
        if default is not None:
            params.append(f"chunk_size: int = {default}")
        params.append("process_group: object | None = None")
        return (f"def {self._function_name(form)}(\n" + "".join(f"    {p},\n" for p in params)
                + f") -> tuple[torch.Tensor, {state} | None]:")

    def _slow_role(self, w: str) -> str:
        c = self.c
        if w in c.feature_weights:
            return "slow weight inside the feature map φ"
        return "slow weight of the output head" if c.model is not None else "slow weight of the model"

    def docstring(self, form: str, summary: str) -> str:
        """The public function's docstring, every shape given."""
        c = self.c
        unread = " (not read: this variant reads with its keys)" if c.queries_from_keys else ""
        if c.lowering:
            ch = c.lowering.channels
            args = [f"q: queries ``[B, T, H, {ch}]``, T = h·w tokens of the grid, row-major{unread}.",
                    f"k: keys ``[B, T, H, {ch}]``.", f"v: values ``[B, T, H, {ch}]``.",
                    f"grid: ``(h, w)``, the token grid; each channel is convolved with its own "
                    f"{c.lowering.kernel}×{c.lowering.kernel} kernel, zero-padded."]
        else:
            args = [f"q: queries ``[B, T, H, {c.key_dim}]``{unread}, or ``[B, T, H/G, {c.key_dim}]`` with k:",
                    "    each query/key head then serves G consecutive value heads (grouped value heads, fla's GVA).",
                    f"k: keys ``[B, T, H, {c.key_dim}]`` (or ``[B, T, H/G, {c.key_dim}]``, as q).",
                    f"v: values ``[B, T, H, {c.value_dim}]``; H counts the value heads."]
        args += [f"{w}: {self._slow_role(w)}, ``[H, {r}, {cols}]`` or ``[B, H, {r}, {cols}]``."
                 for w, r, cols in c.slow_weights]
        if c.per_token_lr:
            each = (f" (or a dict with one per updated weight: {', '.join(w for w, _, _ in c.updated)})"
                    if c.multi_state else "")
            args.append(f"lr: per-token learning rates η ``[B, T, H]``{each}; token t's gradient is scaled by η_t.")
        if c.lr_position:
            args += ["lr_position: a ``[chunk_size]``, the learning-rate factor of each mini-batch position "
                     "(η_ij = a_i η_j):",
                     "    token i reads W_0 + a_i Σ_(j≤i) ΔW_j and the mini-batch leaves W_0 + a_last Σ_j ΔW_j."]
        if c.momentum:
            mean = "; chunk n uses their mean ᾱ_n" if c.momentum == "chunk" else ""
            args.append(f"momentum: per-token coefficients α ``[B, T, H]``{mean}.")
        if c.decay and c.decay_gate != "head":
            shape, fla = ("[B, T, H]", "g") if c.decay_gate == "token" else (f"[B, T, H, {c.key_dim}]", "gk")
            args.append(f"log_decay: g = log γ ``{shape}`` (fla's {fla}). {self.decay_sentence()}")
        if self._scales():
            args += ["scale: the queries are multiplied by it before the layer reads them (fla's ``scale``);",
                     "    1 is the layer as declared, fla's default is Dk ** -0.5."]
        args.append(self._initial_state_arg())
        args.append("output_final_state: also return the state after the last update.")
        if self._varlen():
            args += ["cu_seqlens: ``[N + 1]`` offsets of N sequences packed along T (B = 1), as in fla: each runs",
                     "    alone from its own initial state (``[N, H, ·, ·]``, or one ``[H, ·, ·]`` for all) and",
                     "    returns its own final state (``[N, H, ·, ·]``); see tttla_kernels/varlen.py."]
        if not c.fixed_chunk:
            args.append(f"chunk_size: tokens per inner step (default {c.default_chunk}); "
                        "T need not be a multiple of it.")
        elif self._chunk_ignored() and form == "recurrent":
            args += [f"chunk_size: checked (an integer >= 1, default {c.plan.compute_chunk}) but unused: the "
                     "recurrence steps once per token;", "    the parallel forms' block size, taken here too so that "
                     "every form has the same arguments."]
        elif self._chunk_ignored():
            args += [f"chunk_size: tokens per block of the parallel computation (default {c.plan.compute_chunk}); the",
                     "    result does not depend on it (the schedule steps once per token)."]
        if self._one_process_reason(form) is None:
            whole = " (whole chunks on every rank but the last)" if not c.fixed_chunk else ""
            args += ["process_group: a torch.distributed group for context parallelism, or None (one process):",
                     f"    each rank passes its slice of the sequence{whole}, in rank order, and gets its slice of o;",
                     "    initial_state is read on rank 0, the final state returned on the last rank (None on the "
                     "others).", "    Every rank must call the backward of its own slice's loss."]
        else:
            args.append("process_group: must be None (one process): context parallelism runs in "
                        + ("the chunk and Triton forms." if self._context_parallel() else "no form of this variant."))
        width = c.lowering.channels if c.lowering else c.value_dim
        rows = [f'"""{summary}', "", c.description, "", "Args:", *(f"    {a}" for a in args), "", "Returns:",
                f"    ``(o, final_state)``: o ``[B, T, H, {width}]`` in q's dtype; the final state (fp32,",
                "    or fp64 for fp64 inputs) when ``output_final_state``, else None.", '"""']
        return lines(rows)

    def _initial_state_arg(self) -> str:
        c = self.c
        if c.lowering:
            s = "s" if c.multi_state else ""
            a_dict = "a dict of " if c.multi_state else ""
            taps, ch = c.lowering.taps, c.lowering.channels
            return (f"initial_state: the depthwise kernel{s} at t = 0, {a_dict}``[B, H, {taps}, {ch}]`` or "
                    f"``[H, {taps}, {ch}]`` (column c: channel c's kernel, taps row-major); zeros when None.")
        if c.multi_state:
            entries = ", ".join(f"{w!r}: ``[B, H, {r}, {cols}]``" for w, r, cols in c.updated)
            return (f"initial_state: the updated fast weights at t = 0, a dict {{{entries}}} "
                    "(``[H, ...]`` is shared across the batch); zeros for a missing entry.")
        w, r, cols = c.updated[0]
        return (f"initial_state: the state {w} at t = 0, ``[B, H, {r}, {cols}]`` or ``[H, {r}, {cols}]``; "
                "zeros when None.")

    def _each_sequence_call(self, form: str) -> list[str]:
        """Packed sequences: this function again on every sequence alone (runtime.each_sequence)."""
        tokens = [n for n, kind, _, _ in self.call_inputs() if kind == "token"]
        slow = [n for n, kind, _, _ in self.call_inputs() if kind == "slow"]
        options = [f"{n}={n}" for n, kind, _, _ in self.call_inputs() if kind not in ("token", "slow")]
        if self._scales():
            options.append("scale=scale")
        if self._chunk_default() is not None:
            options.append("chunk_size=chunk_size")
        args = [self._function_name(form), "cu_seqlens", "q", "k", "v",
                "tokens={" + ", ".join(f'"{n}": {n}' for n in tokens) + "}",
                "slow={" + ", ".join(f'"{w}": {w}' for w in slow) + "}",
                "initial_state=initial_state", "output_final_state=output_final_state", *options,
                "process_group=process_group"]
        return call("return runtime.each_sequence", args, width=112)

    def packed_scan(self, form: str) -> bool:
        """Whether ``form`` runs packed sequences in one fused token scan (the Triton form of a plain
        per-token prefix scan without a bias row): one program per (sequence, head)."""
        c = self.c
        return form == "triton" and self._varlen() and c.plan.fused_scan == "tokens" and not c.bias

    def prepare_call(self, form: str) -> str:
        """``inputs = prepare(...)``: the form's inputs checked and laid out heads first (after running
        packed sequences one by one)."""
        c = self.c
        packed = self.packed_scan(form)
        initial = "None if packed else initial_state" if packed else "initial_state"
        args = ["q", "k", "v", *(f"{n}={n}" for n, _ in self._keyword_inputs()), f"initial_state={initial}"]
        if self._scales():
            args.append("scale=scale")
        steps = []
        if c.order != "bidirectional":
            given = self._chunk_default() is not None
            args.append("chunk_size=chunk_size" if given else f"chunk_size={c.default_chunk}")
            if form == "recurrent" and self._chunk_ignored():
                steps = [f"inputs = inputs._replace(chunk_size={c.default_chunk})  "
                         "# chunk_size was checked; the recurrence steps once per token"]
        if self._work_dtype_choice() and form != "recurrent":
            args.append("work_in_q_dtype=True")
        refusal = self._one_process_reason(form)
        if refusal is None:
            args.append("process_group=process_group")
        single = [f"runtime.single_process(process_group, {refusal!r})"] if refusal else []
        varlen = []
        if packed:
            varlen = ["# packed sequences: one fused scan over them (in one process), where the state fits",
                      "packed = cu_seqlens is not None and process_group is None",
                      "if packed:",
                      "    runtime.check_cu_seqlens(cu_seqlens, q)",
                      "elif cu_seqlens is not None:  # each run alone",
                      *("    " + row for row in self._each_sequence_call(form))]
        elif self._varlen():
            varlen = ["if cu_seqlens is not None:  # packed sequences, each run alone",
                      *("    " + row for row in self._each_sequence_call(form))]
        return lines([*varlen, *single, *call("inputs = prepare", args), *steps])

    def _work_dtype_choice(self) -> bool:
        """Whether prepare lets a form run its token-level work in q's dtype (the prefix-scan forms)."""
        return self.c.plan.chunk_template == "prefix_scan"

    def _input_fields(self) -> list[tuple[str, str, str]]:
        """(name, type and meaning, value in ``prepare``) of every field of ``Inputs``."""
        c = self.c
        keys = " (the keys)" if c.queries_from_keys else ""
        fields = [("T", "int  # tokens", "T"),
                  ("chunk_size", "int  # tokens per inner step, or per block of a parallel form", "chunk_size"),
                  ("dtype", "torch.dtype  # of the state: fp32, or fp64 for fp64 inputs", "dtype"),
                  ("work", "torch.dtype  # of the tokens and the chunk products", "work"),
                  ("Q", f"torch.Tensor  # queries [B, H, T, {c.key_dim}]{keys}", "Q"),
                  ("K", f"torch.Tensor  # keys [B, H, T, {c.key_dim}]", "K"),
                  ("V", f"torch.Tensor  # values [B, H, T, {c.value_dim}]", "V"),
                  ("slow", "dict[str, torch.Tensor]  # the slow weights, per head [B, H, ·, ·] (work dtype)", "slow"),
                  ("state", "dict[str, torch.Tensor]  # the updated weights at t = 0, per head [B, H, ·, ·]", "state")]
        each = " (one per updated weight)" if c.multi_state else ""
        optional = [
            (c.per_token_lr, "eta", f"torch.Tensor | dict[str, torch.Tensor]  # learning rates [B, H, T, 1]{each}",
             "eta"),
            (c.lr_position, "position", "torch.Tensor  # a_i per mini-batch position [chunk_size]",
             "lr_position.to(dtype)"),
            (c.momentum, "alpha", "torch.Tensor  # momentum coefficients [B, H, T, 1]",
             'runtime.token_coefficient("momentum", momentum, q, dtype)'),
            (c.decay, "log_gamma", f"torch.Tensor  # g = log γ {self._log_gamma_shape()}", self._log_gamma_value()),
            (True, "out_dtype", "torch.dtype  # q's dtype, the output's", "q.dtype"),
            (c.lowering, "heads", "int  # the layer's heads H (the forms run H·C per-channel heads)", "heads"),
            (self._context_parallel(), "shard",
             "object  # this rank's place in a context-parallel group (context_parallel.Shard), or None", "shard"),
        ]
        return fields + [(name, decl, value) for wanted, name, decl, value in optional if wanted]

    def _log_gamma_shape(self) -> str:
        channel = self.c.decay_gate == "channel"
        return f"[B, H, T, {self.c.key_dim}] (one per key channel)" if channel else "[B, H, T, 1]"

    def _log_gamma_value(self) -> str:
        """log γ of every token, heads first, from the caller's log_decay or the declared γ_h."""
        gate = self.c.decay_gate
        if gate == "head":
            return "log_decay_per_head(H, dtype, q.device).view(1, H, 1, 1).expand(B, H, T, 1)"
        if gate == "channel":
            return 'runtime.channel_coefficient("log_decay", log_decay, q, dtype)'
        return 'runtime.token_coefficient("log_decay", log_decay, q, dtype)'

    def inputs_fields(self) -> str:
        """The fields of the ``Inputs`` tuple ``prepare`` returns, each with its meaning and shape."""
        return lines([f"{name}: {decl}" for name, decl, _ in self._input_fields()])

    def prepare_signature(self) -> str:
        c = self.c
        params = ["q", "k", "v", "*", *(n for n, _ in self._keyword_inputs()), "initial_state"]
        if self._scales():
            params.append("scale=1.0")
        if c.order != "bidirectional":
            params.append("chunk_size")
        if self._work_dtype_choice():
            params.append("work_in_q_dtype=False")
        if self._context_parallel():
            params.append("process_group=None")
        return f"def prepare({', '.join(params)}) -> Inputs:"

    def prepare_body(self) -> str:
        """Check every input (each error names the argument) and lay them out heads first."""
        c = self.c
        rows = []
        if c.lowering:
            lr = "lr" if c.per_token_lr else "_"
            rows += [f"# one head per channel: each channel's {c.lowering.kernel}×{c.lowering.kernel} patches are its "
                     f"keys and queries, its kernel a {c.lowering.taps} × 1 state",
                     f"q, k, v, {lr}, initial_state, heads = runtime.lower_depthwise(",
                     f"    q, k, v, grid, {c.lowering.kernel}{', lr=lr' if c.per_token_lr else ''}, "
                     "initial_state=initial_state",
                     ")"]
        if not c.lowering:
            rows.append("q, k = runtime.grouped_heads(q, k, v)  # more value heads than query/key heads (GVA)")
        rows.append("B, T, H, Dk, Dv = runtime.check_qkv(q, k, v)")
        if self._scales():
            rows.append("q = runtime.scaled_queries(q, scale)  # fla's scale of the queries")
        if c.order == "bidirectional":
            rows.append("chunk_size = T  # one step on all tokens")
        else:
            rows.append("chunk_size = runtime.check_chunk_size(chunk_size)")
            if self._context_parallel():
                aligned = not c.fixed_chunk  # the schedule steps once per chunk: slices of whole chunks
                rows.append(f"shard = runtime.context_shard(process_group, q, v, chunk_size, aligned={aligned})")
        rows.append("dtype = runtime.state_dtype(q)")
        if self._work_dtype_choice():
            rows.append("work = runtime.work_dtype(q) if work_in_q_dtype else dtype  "
                        "# q's dtype for fp16/bf16 (tensor cores)")
        else:
            rows.append("work = dtype")
        if c.multi_state:
            rows += ["given = dict(initial_state or {})",
                     "unknown = sorted(set(given) - set(STATE_SHAPES))",
                     "if unknown:",
                     '    raise ValueError(f"initial_state: {unknown} are not updated weights '
                     '(expected keys {sorted(STATE_SHAPES)})")']
            states = '*((f"initial_state[{name!r}]", STATE_SHAPES[name], t) for name, t in given.items())'
            label = 'f"initial_state[{name!r}]"'
        else:
            first = c.updated[0][0]
            rows.append(f'given = {{}} if initial_state is None else {{"{first}": initial_state}}')
            states = f'("initial_state", STATE_SHAPES["{first}"], initial_state)'
            label = '"initial_state"'
        slow = "".join(f'("{w}", SLOW_WEIGHT_SHAPES["{w}"], {w}), ' for w, _, _ in c.slow_weights)
        rows += ["sizes = runtime.resolve_sizes(",
                 f'    [("q", "{c.key_dim}", Dk), ("v", "{c.value_dim}", Dv)],',
                 f"    [{slow}{states}],",
                 ")"]
        if c.slow_weights:
            given_slow = ", ".join(f'("{w}", {w})' for w, _, _ in c.slow_weights)
            rows += ["slow = {",
                     "    name: runtime.per_head(name, w, B, H, "
                     "runtime.shape_in(sizes, SLOW_WEIGHT_SHAPES[name], name), q.device, work)",
                     f"    for name, w in ({given_slow}{',' if len(c.slow_weights) == 1 else ''})",
                     "}"]
        else:
            rows.append("slow = {}")
        rows += ["state = {}",
                 "for name, shape in STATE_SHAPES.items():",
                 f"    label = {label}",
                 "    shape = runtime.shape_in(sizes, shape, label)",
                 "    state[name] = (",
                 "        runtime.per_head(label, given[name], B, H, shape, q.device, dtype, copy=True)",
                 "        if name in given",
                 "        else torch.zeros(B, H, *shape, dtype=dtype, device=q.device)",
                 "    )"]
        if c.queries_from_keys:
            rows.append(f"Q = K = runtime.heads_first(k, work)  # [B, H, T, {c.key_dim}]: the keys are read as queries")
        else:
            rows.append(f"Q, K = runtime.heads_first(q, work), runtime.heads_first(k, work)  # [B, H, T, {c.key_dim}]")
        rows.append(f"V = runtime.heads_first(v, work)  # [B, H, T, {c.value_dim}]")
        if c.per_token_lr and c.multi_state:
            rows += ["per_weight = lr if isinstance(lr, dict) else {name: lr for name in STATE_SHAPES}",
                     "eta = {",
                     '    name: runtime.token_coefficient(f"lr[{name!r}]" if isinstance(lr, dict) else "lr", '
                     "per_weight.get(name), q, dtype)",
                     "    for name in STATE_SHAPES",
                     "}  # each [B, H, T, 1]"]
        elif c.per_token_lr:
            rows.append('eta = runtime.token_coefficient("lr", lr, q, dtype)  # [B, H, T, 1]')
        if c.lr_position:
            rows.append("runtime.check_position(lr_position, chunk_size, q)")
        rows += call("return Inputs", [f"{name}={value}" for name, _, value in self._input_fields()])
        return lines(rows)

    def finish_body(self) -> str:
        c = self.c
        final = "state" if c.multi_state else f'state["{c.updated[0][0]}"]'
        last = " and (inputs.shard is None or inputs.shard.last)" if self._context_parallel() else ""
        rows = [f"final_state = {final} if output_final_state{last} else None"]
        if c.lowering:
            rows.append("return runtime.raise_depthwise(o.transpose(1, 2).to(inputs.out_dtype), final_state, "
                        "inputs.heads)  # channels back from heads")
        else:
            rows.append("return o.transpose(1, 2).to(inputs.out_dtype), final_state")
        return lines(rows)
