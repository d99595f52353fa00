"""Hooks of the parallel forms: the pieces of ``_common.py`` that chunk.py and triton_chunk.py
share (features, chunk states, WY/UT blocks) and their docstrings."""

from __future__ import annotations

import textwrap

from codegen.hooks._base import HookBase, column_clip, lines


class ParallelHooks(HookBase):
    """The parallel forms' shared pieces and docstrings."""

    def phi(self, rows: str) -> str:
        """The call of φ on ``rows`` with the slow weights it reads from ``inputs``."""
        weights = "".join(f', inputs.slow["{w}"]' for w in self.c.feature_weights)
        return f"feature_map({rows}{weights})"

    def features_body(self) -> str:
        """φ(Q), φ(K) and V̂ of every token (the prefix-scan forms)."""
        c = self.c
        eta = ", inputs.eta" if c.per_token_lr else ""
        if c.queries_from_keys:
            rows = [f"q_hat = k_hat = {self.phi('inputs.K')}  # [B, H, T, {c.state_rows}]: the keys read as queries"]
        else:
            rows = [f"q_hat = {self.phi('inputs.Q')}  # [B, H, T, {c.state_rows}]",
                    f"k_hat = {self.phi('inputs.K')}  # [B, H, T, {c.state_rows}]"]
        if c.bias:
            rows += self._bias_features()
        else:
            rows.append(f"v_hat = effective_value(inputs.V{eta}).to(inputs.work)  # [B, H, T, {c.value_dim}]")
        rows.append("return q_hat, k_hat, v_hat")
        return lines(rows)

    def _bias_features(self) -> list[str]:
        """A layer φ(x)·W + b: the bias is a key constantly 1, so q̂ and k̂ get a column of ones and the
        state is [W; b]; per-token rates η_W, η_b scale the key's two parts (v̂ = ∓∂L/∂f without η)."""
        c = self.c
        rows = ["ones = torch.ones_like(k_hat[..., :1])",
                "q_hat = torch.cat([q_hat, ones], dim=-1)  # [φ(q), 1]"]
        if c.per_token_lr:
            rows += [f'eta_W, eta_b = inputs.eta["{c.state}"].to(inputs.work), inputs.eta["{c.bias}"].to(inputs.work)',
                     "k_hat = torch.cat([eta_W * k_hat, eta_b], dim=-1)  # [η_W φ(k), η_b]: each rate on its rows",
                     f"v_hat = effective_value(inputs.V, torch.ones_like(eta_W)).to(inputs.work)  # ∓∂L/∂f: "
                     f"[B, H, T, {c.value_dim}]"]
        else:
            rows += ["k_hat = torch.cat([k_hat, ones], dim=-1)  # [φ(k), 1]",
                     f"v_hat = effective_value(inputs.V).to(inputs.work)  # [B, H, T, {c.value_dim}]"]
        return rows

    def initial_state(self) -> str:
        """The state the parallel forms scan: W, or the stacked [W; b] of a biased layer."""
        c = self.c
        if c.bias:
            return f'torch.cat([inputs.state["{c.state}"], inputs.state["{c.bias}"]], dim=-2)'
        return f'inputs.state["{c.state}"]'

    def final_state(self) -> str:
        """The final state as the caller's dict entries (``last`` split back into W and b)."""
        c = self.c
        if c.bias:
            return f'{{**inputs.state, "{c.state}": last[..., :-1, :], "{c.bias}": last[..., -1:, :]}}'
        return f'{{**inputs.state, "{c.state}": last}}'


    def chunk_states_body(self, triton: bool = False) -> str:
        """From the chunk increments to the states the chunks read (the prefix-scan forms); ``triton``: the
        Triton pipeline's, whose scans over chunks are ``chunk_scan`` launches (see :meth:`triton_scans`)."""
        c = self.c
        rows = []
        if c.lr_position:
            rows.append("updates = runtime.last_position_factors(inputs.position, inputs.T) * updates  "
                        "# a_last ΔS_n: chunk n leaves S + a_last Σ_j ΔW_j")
        if c.clip:
            rows.append(column_clip("updates"))
        if c.momentum and triton:
            rows.append("updates, _ = chunk_scan(updates, inputs.alpha[..., 0], coeff_chunk_size=inputs.chunk_size)  "
                        "# momenta M_n")
        elif c.momentum:
            rows += ["abar = runtime.chunk_means(inputs.alpha, inputs.chunk_size)[..., None, None]  # [B, H, N, 1, 1]",
                     f"updates = runtime.linear_scan(abar, updates{self._shard()})  # M_n = ᾱ_n M_{{n−1}} + ΔS_n"]
        if c.ns_coefficients and triton:
            rows += ["X = frobenius_normalize(updates, NS_EPS, inputs.work)  # M_n / (‖M_n‖ + ε) in the work dtype",
                     "updates = runtime.newton_schulz_steps(X, NS_COEFFICIENTS)  # U_n = 𝓜(M_n), batched over chunks"]
        elif c.ns_coefficients:
            rows.append("updates = runtime.newton_schulz(updates, NS_COEFFICIENTS, NS_EPS, dtype=inputs.work)  "
                        "# U_n = 𝓜(M_n), batched over chunks")
        rows += self._triton_prefix() if triton else self._torch_prefix()
        return lines(rows)

    def _states_function(self) -> str:
        """The function triton_chunk.py calls for the chunk states: its own scans, or _common's."""
        return "scan_chunks" if self.triton_scans() else "chunk_states"

    def _shard(self) -> str:
        """The keyword that continues a scan from the ranks before this one (context-parallel forms)."""
        return ", shard=inputs.shard" if self._context_parallel() else ""

    def triton_scans(self) -> bool:
        """Whether the Triton pipeline runs its own ``chunk_states`` (scans over chunks as ``chunk_scan``
        launches): all but a per-channel decay, whose row factors stay a torch linear scan."""
        return self.c.decay_gate != "channel"

    def _triton_prefix(self) -> list[str]:
        """The Triton pipeline's states: one ``chunk_scan`` of the (decayed) increments from the initial state."""
        c = self.c
        coeff, rows = "None", []
        if c.decay:
            coeff = "decays"
            rows.append("decays = runtime.chunk_decay(inputs.log_gamma, inputs.chunk_size)[..., 0, 0]  "
                        "# Γ_n = exp(Σ_(t ∈ n) g_t): [B, H, N]")
        initial = self.initial_state()
        step = "Γ_n S^(n−1) + U_n" if c.decay else "S^(n−1) + U_n"
        if c.order == "apply_then_update":
            return rows + [f"reads, _ = chunk_scan(updates, {coeff}, {initial}, inclusive=False)  "
                           f"# S^(n−1), S^(n) = {step}",
                           "return reads, reads[:, :, -1]  # the last chunk is apply-only"]
        if c.order == "update_then_apply":
            return rows + [f"reads, last = chunk_scan(updates, {coeff}, {initial}, inclusive=False)  "
                           f"# S^(n−1), S^(n) = {step}",
                           "return reads, last  # chunk n reads S^(n−1) (and its own tokens), S^(N)"]
        return rows + [f"reads, last = chunk_scan(updates, {coeff}, {initial}, inclusive=True)  # S^(n) = {step}",
                       "return reads, last  # chunk n reads the state after its own step"]

    def _torch_prefix(self) -> list[str]:
        """The torch forms' states: a cumulative sum (or a linear scan of the decays) from the initial state,
        continued from the ranks before this one under context parallelism."""
        c = self.c
        initial = self.initial_state()
        if c.decay:
            rows = ["decays = runtime.chunk_decay(inputs.log_gamma, inputs.chunk_size)  "
                    f"# Γ_n = exp(Σ_(t ∈ n) g_t): {self._row_factor_shape()}",
                    f"states = runtime.scan_states(updates, {initial}, decays{self._shard()})  "
                    "# S^(0), …, S^(N), S^(n) = Γ_n S^(n−1) + U_n"]
        else:
            rows = [f"states = runtime.scan_states(updates, {initial}{self._shard()})  # S^(0), …, S^(N): one scan"]
        if c.order == "apply_then_update":
            rows += ["reads = states[:, :, :-1]  # S^{(n−1)}: chunk n reads the state before its own step",
                     "return reads, reads[:, :, -1]  # the last chunk is apply-only"]
        elif c.order == "update_then_apply":
            rows += ["reads = states[:, :, :-1]  # S^{(n−1)}: chunk n reads the state before it (plus its own tokens)",
                     "return reads, states[:, :, -1]"]
        else:
            rows += [f"reads = states[:, :, 1:]  # S^{{(n)}}: chunk n reads the state after its own step "
                     f"[B, H, N, {c.state_rows}, {c.value_dim}]",
                     "return reads, reads[:, :, -1]"]
        return rows

    def _token_momentum_products(self) -> str:
        """Per-token momentum: the chunk's weights C_tj, then two scans over chunks (the buffer, then the state)."""
        c = self.c
        shape = f"[B, H, N, {c.state_rows}, {c.value_dim}]"
        return lines([
            "C, c, P_last, A_last = runtime.token_momentum_weights(inputs.alpha, chunk_size)  # see runtime",
            f"buffer_updates = ((k_chunks * P_last.unsqueeze(-1).to(work)).mT @ v_chunks).to(inputs.dtype)  # {shape}",
            "state_updates = ((k_chunks * C[..., -1, :].unsqueeze(-1).to(work)).mT @ v_chunks).to(inputs.dtype)",
            "# M^(n) = A_L M^(n−1) + ΔM_n from a zero buffer, then S^(n) = S^(n−1) + c_L M^(n−1) + ΔS_n",
            f"buffers = runtime.scan_states(buffer_updates, None, A_last[..., None, None]{self._shard()})[:, :, :-1]  "
            "# M^(n−1)",
            "steps = c[..., -1, :, None] * buffers + state_updates",
            f"states = runtime.scan_states(steps, {self.initial_state()}{self._shard()})  # S^(0), …, S^(N)",
            "reads, last = states[:, :, :-1], states[:, :, -1]",
            "o = q_chunks @ reads.to(work) + c.to(work) * (q_chunks @ buffers.to(work))  # q_t S_0 + c_t q_t M_0",
            "weights = C.to(work) * (q_chunks @ k_chunks.mT)  # C_tj q̂_t·k̂_j",
            "o = o + runtime.causal_product(weights, v_chunks)  # the chunk's own tokens j ≤ t",
        ])

    def triton_body(self) -> str:
        """triton_chunk.py's work after ``prepare``: the fused scan, or the three-phase pipeline."""
        c = self.c
        if not c.plan.fused_scan:
            return lines(self._pipeline_features()) + "\n" + self._pipeline(c.value_on_load or None)
        packed = self.packed_scan("triton")
        if c.plan.fused_scan == "tokens":
            gate = ("None" if not c.decay else
                    "runtime.chunk_log_decay(inputs.log_gamma, block)[..., 0].flatten(2, 3)[:, :, :inputs.T]")
            scan = ["    block = runtime.scan_block(inputs.chunk_size)  # a power of two, which does not change o",
                    *(["    # G_t = Σ_(s≤t in its block) g_s, [B, H, T]"] if c.decay else []),
                    f"    G = {gate}"]
            call_packed = ("    o, last = fused_scan(q_hat, k_hat, v_hat, G, first, block, "
                           "cu_seqlens if packed else None)")
            one_each = "runtime.packed_initial_states(initial_state, cu_seqlens, first)"
            if packed and not c.decay:
                scan += ["    # one state per packed sequence, [N, H, ·, ·]", f"    first = {self.initial_state()}",
                         "    if packed:", f"        first = {one_each}", call_packed]
            elif packed:
                scan = [*scan[:1],
                        "    if packed:  # blocks from each sequence's first token; a state per sequence [N, H, ·, ·]",
                        "        G = runtime.block_log_decay(inputs.log_gamma, block, cu_seqlens)",
                        f"        first = runtime.packed_initial_states(initial_state, cu_seqlens, "
                        f"{self.initial_state()})",
                        "    else:",
                        *("    " + row for row in scan[1:]),
                        f"        first = {self.initial_state()}",
                        call_packed]
            else:
                scan.append(f"    o, last = fused_scan(q_hat, k_hat, v_hat, G, {self.initial_state()}, block)")
        else:
            gate = ("None" if not c.decay else
                    "runtime.chunk_log_decay_totals(inputs.log_gamma, inputs.chunk_size)[..., 0]  # [B, H, N]")
            inclusive = c.order != "apply_then_update"
            scan = [f"    gc = {gate}" + ("  # no decay" if not c.decay else ""),
                    f"    o, last = fused_chunk_scan(q_hat, k_hat, v_hat, gc, {self.initial_state()}, "
                    f"inputs.chunk_size, inclusive={inclusive})"]
        sharded = self._context_parallel()  # then a rank takes the pipeline: the fused scan runs one process
        guard, why = ("inputs.shard is None and ", "one process, and ") if sharded else ("", "")
        other = " or a slice of a context-parallel group" if sharded else ""
        fused = lines([
            "q_hat, k_hat, v_hat = features(inputs)  # φ(Q), φ(K), V̂ (views of the caller's tensors where φ is the "
            "identity)",
            f"if {guard}max(k_hat.shape[-1], v_hat.shape[-1]) <= MAX_WIDTH:  # {why}the state fits in one program's "
            "registers",
            *scan,
            f"    return finish(o, {self.final_state()}, output_final_state, inputs)",
            *(["if packed:  # a wider state: each sequence alone, through the pipeline",
               *("    " + row for row in self._each_sequence_call("triton"))] if packed else []),
            f"# a wider state{other}: the three-phase pipeline, from the same features"])
        return fused + "\n" + self._pipeline(None)

    def _pipeline_features(self) -> list[str]:
        """The pipeline's φ(Q), φ(K) and V̂: one feature kernel for φ where it is a linear layer, and v read
        in place (η applied on load) where V̂ = c·η·V; else the torch ``features``."""
        c = self.c
        if c.value_on_load is None:
            return ["q_hat, k_hat, v_hat = features(inputs)  # φ(Q), φ(K), V̂ of every token (work dtype)"]
        kernel = c.feature_kernel
        if kernel is not None:
            weights = ", ".join(f'inputs.slow["{w}"]' for w in kernel.weights)
            if c.queries_from_keys:
                rows = [f"q_hat = k_hat = linear_features([inputs.K], [{weights}], PHI)[0]  # the keys read as queries"]
            else:
                rows = [f"q_hat, k_hat = linear_features([inputs.Q, inputs.K], [{weights}], PHI)  # one launch"]
        elif c.feature_map.returns == "x":
            rows = ["q_hat = k_hat = inputs.K  # φ is the identity; the keys are read as queries"
                    if c.queries_from_keys else
                    "q_hat, k_hat = inputs.Q, inputs.K  # φ is the identity: views of the caller's tensors"]
        elif c.queries_from_keys:
            rows = [f"q_hat = k_hat = {self.phi('inputs.K')}  # the keys read as queries"]
        else:
            rows = [f"q_hat, k_hat = {self.phi('inputs.Q')}, {self.phi('inputs.K')}"]
        on_load = "  # V̂ = η ⊙ V: η is applied on load by chunk_outer" if c.value_on_load else "  # V̂ = V"
        return rows + ["v_hat = inputs.V" + on_load]

    def _pipeline(self, scale: str | None) -> str:
        """The pipeline from q̂, k̂, v̂: the chunk increments (v̂ scaled on load by ``scale``), the states, the read."""
        return "\n".join([self.triton_updates(scale),
                          lines([f"reads, last = {self._states_function()}(updates, inputs)  "
                                 "# the state each chunk reads; the state after the last step"]),
                          self.triton_read()])

    def triton_updates(self, scale: str | None = None) -> str:
        """triton_chunk.py's chunk increments (``chunk_outer``), with a per-token decay's (Γ_L/Γ_i) on the keys
        and the values scaled on load by ``scale`` (the code of a ``[B, H, T]`` factor)."""
        c = self.c
        shape = f"[B, H, N, {c.state_rows}, {c.value_dim}]"
        if not (c.decay and c.order == "update_then_apply"):
            if scale:
                return lines([f"updates = chunk_outer(k_hat, v_hat, inputs.chunk_size, scale={scale})  "
                              f"# {shape}"])
            return lines([f"updates = chunk_outer(k_hat, v_hat, inputs.chunk_size)  # ΔS_n = φ(K_n)ᵀ V̂_n: {shape}"])
        g = "[B, H, T]" if c.decay_gate != "channel" else f"[B, H, T, {c.key_dim}]"
        return lines([
            "G = runtime.chunk_log_decay(inputs.log_gamma, inputs.chunk_size)  # G_t = Σ_(s≤t in its chunk) g_s",
            "tail = (G[..., -1:, :] - G).flatten(2, 3)[:, :, :inputs.T]  # log Γ_L/Γ_i of every token",
            "decayed_keys = (k_hat * tail.exp().to(k_hat.dtype)).contiguous()",
            f"updates = chunk_outer(decayed_keys, v_hat, inputs.chunk_size)  # Σ_i (Γ_L/Γ_i) k̂_iᵀ v̂_i: {shape}",
            f"G = G.flatten(2, 3)[:, :, :inputs.T]{'[..., 0]' if c.decay_gate != 'channel' else ''}  "
            f"# the read kernel's gate: {g}"])

    def triton_read(self) -> str:
        """triton_chunk.py's read of every token: the state term and, per order, the intra-chunk term."""
        c = self.c
        state_only = "o = chunk_read(q_hat, None, None, reads, inputs.chunk_size, MASK_NONE, v_hat.shape[-1])"
        if c.decay and c.order == "update_then_apply":
            return lines(["# Γ_t q̂_t S^(n−1) + Σ_(i≤t) (Γ_t/Γ_i) (q̂_t·k̂_i) v̂_i, the ratios formed on chip",
                          "o = chunk_read(q_hat, k_hat, v_hat, reads, inputs.chunk_size, MASK_CAUSAL, "
                          "v_hat.shape[-1], g=G.contiguous())"])
        if c.lr_position:
            return lines([f"{state_only}  # φ(Q_n) S^(n−1)",
                          "n_chunks = -(-inputs.T // inputs.chunk_size)",
                          "a = inputs.position.repeat(n_chunks)[:inputs.T, None].to(q_hat.dtype)  # a_p of every token",
                          "# token p of a chunk reads a_p Σ_(j≤p) ΔW_j: its query scaled by a_p",
                          "o = o + chunk_read((a * q_hat).contiguous(), k_hat, v_hat, None, inputs.chunk_size, "
                          "MASK_CAUSAL, v_hat.shape[-1])"])
        if c.order == "update_then_apply":
            return lines(["# the chunk's own tokens i ≤ t too: tril(φ(Q_n) φ(K_n)ᵀ) V̂_n",
                          "o = chunk_read(q_hat, k_hat, v_hat, reads, inputs.chunk_size, MASK_CAUSAL, "
                          f"v_hat.shape[-1])  # [B, H, T, {c.value_dim}]"])
        return lines([f"{state_only}  # [B, H, T, {c.value_dim}]"])

    def triton_imports(self) -> str:
        """triton_chunk.py's imports: triton (for a feature kernel's epilogue), the runtime and the kernels it
        calls, read off the code it holds."""
        c = self.c
        code = self.triton_code()
        masks = sorted(m for m in ("MASK_ANTICAUSAL", "MASK_CAUSAL", "MASK_NONE") if m in code)
        modules = {
            "triton_chunks": [n for n in ("chunk_scan", "frobenius_normalize") if f"{n}(" in code],
            "triton_features": [n for n in ("linear_features", "register_epilogue") if f"{n}(" in code],
            "triton_runtime": [*masks, "chunk_outer", "chunk_read"],
            "triton_scan": ["MAX_WIDTH", {"tokens": "fused_scan", "chunks": "fused_chunk_scan"}[c.plan.fused_scan]]
            if c.plan.fused_scan else [],
        }
        kernels = [f"from tttla_kernels.{m} import {', '.join(names)}" for m, names in modules.items() if names]
        runtime = "runtime." in code
        head = self.imports(runtime=runtime, triton=c.feature_kernel is not None)
        # the kernels join the first-party block that follows torch's (or open it)
        return head + ("\n" if runtime else "\n\n") + "\n".join(kernels)

    def triton_code(self) -> str:
        """triton_chunk.py's code after its imports (prepare's call, the body, the definitions) without its
        comments: what the imports are read off."""
        code = self.prepare_call("triton") + self.triton_body() + self.triton_definitions()
        return "\n".join(line.split("  # ")[0] for line in code.splitlines())

    def triton_definitions(self) -> str:
        """What triton_chunk.py defines before its function: the feature kernel's epilogue (printed from φ)
        and the pipeline's own ``chunk_states`` (scans over chunks as ``chunk_scan`` launches); each block
        opens with the two blank lines that separate top-level definitions."""
        c = self.c
        blocks = []
        kernel = c.feature_kernel
        if kernel is not None:
            args = ", ".join(f"a{i}" for i in range(len(kernel.weights)))
            products = ", ".join(f"a{i} = x·{w}" for i, w in enumerate(kernel.weights))
            blocks += ["@triton.jit\n"
                       f"def phi_epilogue({args}):\n"
                       f'    """φ(x) = {c.feature_text} from the products {products} (fp32)."""\n'
                       f"    return {kernel.body}",
                       "PHI = register_epilogue(__name__, phi_epilogue, feature_map, "
                       f"n_products={len(kernel.weights)})"]
        if self.triton_scans():
            doc = textwrap.fill(self.chunk_states_doc(triton=True), 110, initial_indent="    ",
                                subsequent_indent="    ")
            sharded = ("    if inputs.shard is not None:  # context-parallel: _common's scans continue the ranks "
                       "before this one\n        return chunk_states(updates, inputs)\n") if self._context_parallel() \
                else ""
            blocks.append("def scan_chunks(updates, inputs):\n"
                          '    """The states the chunks read and the state after the last update, from the chunk '
                          "increments\n"
                          f"    ``updates`` ΔS_n ``[B, H, N, {c.state_rows}, {c.value_dim}]`` (fp32).\n\n"
                          f'{doc}\n    """\n' + sharded + self.chunk_states_body(triton=True))
        return "".join("\n\n\n" + b for b in blocks)

    def chunk_states_doc(self, triton: bool = False) -> str:
        c = self.c
        steps = [s for s, on in (("the clip rescales each step", c.clip),
                                 ("momentum mixes the increments", c.momentum),
                                 ("Newton–Schulz orthogonalises them, batched over chunks", c.ns_coefficients)) if on]
        scan = "a linear scan of the chunk decays" if c.decay else "one prefix sum"
        if triton:
            scan = f"{scan} (one ``chunk_scan`` launch)"
        text = "; ".join(steps) + f", then {scan} gives the states" if steps else f"{scan} gives them"
        return text[0].upper() + text[1:] + "."

    def _row_factor_shape(self) -> str:
        return f"[B, H, N, {self.c.key_dim}, 1]" if self.c.decay_gate == "channel" else "[B, H, N, 1, 1]"

    def chunk_products(self) -> str:
        """chunk.py's chunk increments and reads (after the chunks are split, before the flatten)."""
        c = self.c
        if c.momentum == "token":
            return self._token_momentum_products()
        token_decay = c.decay and c.order == "update_then_apply"
        if token_decay:
            g = "[B, H, N, L, 1]" if c.decay_gate != "channel" else f"[B, H, N, L, {c.key_dim}]"
            rows = [f"G = runtime.chunk_log_decay(inputs.log_gamma, chunk_size)  # G_t = Σ_(s≤t in its chunk) g_s: {g}",
                    "decayed_keys = k_chunks * (G[..., -1:, :] - G).exp().to(work)  # (Γ_L/Γ_i) k̂_i",
                    "updates = (decayed_keys.mT @ v_chunks).to(inputs.dtype)  "
                    f"# ΔS_n = Σ_i (Γ_L/Γ_i) k̂_iᵀ v̂_i: [B, H, N, {c.state_rows}, {c.value_dim}]"]
        else:
            rows = ["updates = (k_chunks.mT @ v_chunks).to(inputs.dtype)  "
                    f"# ΔS_n = φ(K_n)ᵀ V̂_n: [B, H, N, {c.state_rows}, {c.value_dim}]"]
        rows.append("reads, last = chunk_states(updates, inputs)  # the state each chunk reads; the state after the "
                    "last step")
        if token_decay:
            rows += ["o = (q_chunks * G.exp().to(work)) @ reads.to(work)  "
                     f"# Γ_t q̂_t S^(n−1): [B, H, N, L, {c.value_dim}]",
                     "scores = runtime.decayed_scores(q_chunks, k_chunks, G)  # (Γ_t/Γ_i) q̂_t·k̂_i for i ≤ t",
                     "o = o + runtime.causal_product(scores, v_chunks)  # the chunk's own tokens i ≤ t"]
        else:
            rows.append(f"o = q_chunks @ reads.to(work)  # [B, H, N, L, {c.value_dim}]")
            if c.lr_position:
                rows += ["own = runtime.causal_product(q_chunks @ k_chunks.mT, v_chunks)  # its own tokens i ≤ t",
                         "o = o + inputs.position.to(work)[:, None] * own  # token p reads a_p Σ_(j≤p) ΔW_j"]
            elif c.order == "update_then_apply":
                rows.append("o = o + runtime.causal_product(q_chunks @ k_chunks.mT, v_chunks)  "
                            "# the chunk's own tokens i ≤ t")
        return lines(rows)

    def wy_blocks_body(self) -> str:
        """Every block's matrices at once (the delta rule's WY/UT forms)."""
        c = self.c
        eta = ", inputs.eta" if c.per_token_lr else ""
        zero_g = " and g = 0" if c.decay else ""
        rows = ["L = inputs.chunk_size",
                f"q_hat = {self.phi('inputs.Q')}  # [B, H, T, {c.state_rows}]",
                f"k_hat = {self.phi('inputs.K')}  # [B, H, T, {c.state_rows}]",
                f"b, beta = delta_terms(inputs.V{eta})  # [B, H, T, {c.value_dim}], [B, H, T, 1]",
                f"# Blocks [B, H, N, L, ·]; the padded tail has k̂ = b = β = 0{zero_g}, so it changes nothing.",
                "q_blocks = runtime.split_chunks(q_hat, L)",
                "k_blocks = runtime.split_chunks(k_hat, L)",
                "b_blocks = runtime.split_chunks(b, L)",
                "beta_blocks = runtime.split_chunks(beta, L)  # [B, H, N, L, 1]",
                "causal = torch.ones(L, L, dtype=torch.bool, device=q_hat.device).tril()",
                "strict = causal.tril(-1)",
                "scores = q_blocks @ k_blocks.mT  # Q̂K̂ᵀ: [B, H, N, L, L]",
                "gram = k_blocks @ k_blocks.mT  # K̂K̂ᵀ: [B, H, N, L, L]"]
        if c.decay:
            rows += ["G = runtime.split_chunks(inputs.log_gamma, L)[..., 0].cumsum(-1)  "
                     "# log Γ_t within each block: [B, H, N, L]",
                     'D = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()  '
                     "# Γ_t/Γ_i, i ≤ t",
                     "scores, gram = scores * D, gram * D",
                     "Gamma = G.exp().unsqueeze(-1)  # Γ_t: [B, H, N, L, 1]",
                     "q_blocks = Gamma * q_blocks  # reads Γ_t q̂_t S of the block-start state",
                     "k_tail = (G[..., -1:] - G).exp().unsqueeze(-1) * k_blocks  # Γ_L/Γ_i k̂_i",
                     "block_decay = G[..., -1].exp()[..., None, None]  # Γ_L: [B, H, N, 1, 1]",
                     "rhs = torch.cat([b_blocks, beta_blocks * Gamma * k_blocks], dim=-1)  # [B | diag(βΓ) K̂]"]
        else:
            rows += ["k_tail = k_blocks",
                     "block_decay = None  # no decay",
                     "rhs = torch.cat([b_blocks, beta_blocks * k_blocks], dim=-1)  # [B | diag(β) K̂]"]
        rows += ["A = (beta_blocks * gram).masked_fill(~strict, 0.0)  # strictly lower: [B, H, N, L, L]",
                 "unit = torch.eye(L, dtype=A.dtype, device=A.device)",
                 "solved = torch.linalg.solve_triangular(unit + A, rhs, upper=False, unitriangular=True)",
                 "U, W = solved.split([b.shape[-1], k_hat.shape[-1]], dim=-1)  "
                 f"# [B, H, N, L, {c.value_dim}], [B, H, N, L, {c.state_rows}]",
                 "scores = scores.masked_fill(~causal, 0.0)",
                 "return q_blocks, scores, U, W, k_tail, block_decay"]
        return lines(rows)

    def prefix_scan_summary(self) -> str:
        c = self.c
        rows = ["The layer is an associative prefix scan: the feature map is static and the values do not",
                "depend on the state, so every chunk's increment ΔS_n = φ(K_n)ᵀ V̂_n is computed at once;"]
        if c.bias:
            rows.append(f"the bias {c.bias} is a key constantly 1, so the scan runs on the stacked state "
                        f"[{c.state}; {c.bias}] with keys and queries [φ(x), 1];")
        if c.momentum:
            rows.append("momentum mixes them, M_n = ᾱ_n M_{n−1} + ΔS_n, by a linear scan over chunks (Theorem 5.3);")
        if c.ns_coefficients:
            rows.append("Newton–Schulz orthogonalises each chunk's update, batched over chunks;")
        rows.append({
            "apply_then_update": "chunk n reads S_0 + Σ_{j<n} U_j (an exclusive prefix sum): O_n = φ(Q_n) S^{(n−1)}.",
            "update_then_apply": "token t reads S^{(n−1)} plus its own chunk's tokens i ≤ t: "
                                 "O_n = φ(Q_n) S^{(n−1)} + tril(φ(Q_n) φ(K_n)ᵀ) V̂_n.",
        }.get(c.order, "chunk n reads S_0 + Σ_{j≤n} U_j (an inclusive prefix sum): O_n = φ(Q_n) S^{(n)}."))
        return "\n".join(rows)

    def triton_pipeline(self) -> str:
        c = self.c
        if c.plan.fused_scan:
            return self._fused_scan_doc()
        read = {
            "apply_then_update": "O_n = φ(Q_n) S^{(n−1)} (block-exclusive: no intra-chunk term).",
            "update_then_apply": "O_n = φ(Q_n) S^{(n−1)} + tril(φ(Q_n) φ(K_n)ᵀ) V̂_n (token-inclusive).",
            "block_inclusive": "O_n = φ(Q_n) S^{(n)} (block-inclusive: no intra-chunk term).",
        }.get(c.order, "O = φ(Q) S^{(1)} (bidirectional: one update on all tokens).")
        grads = "q, k, v" + (", lr" if c.per_token_lr else "") + (", momentum" if c.momentum else "") + \
            "".join(f", {w}" for w in c.feature_weights)
        return "\n".join([
            "Pipeline, in three phases (flash-linear-attention's split into a state pass and an output pass,",
            "with the work across chunks between them):",
            "",
            *self._phase_one(),
            *self._phase_two(),
            f"3. ``chunk_read`` (Triton): {read}",
            "",
            "The kernels are torch.library custom ops shared by every variant (``tttla_kernels/triton_*.py``),",
            f"each with an explicit backward pass, so gradients reach {grads} and the initial",
            "state, and ``torch.compile`` traces the whole layer. Token-level work runs in q's dtype for",
            "fp16/bf16 (tensor cores), else in the state dtype; states and accumulators are fp32 (fp64 for",
            "fp64 inputs)."])

    def _phase_one(self) -> list[str]:
        """The pipeline docstring's first phase: the features and the chunk increments."""
        c = self.c
        if c.feature_kernel is not None:
            products = ", ".join(f"x·{w}" for w in c.feature_kernel.weights)
            phi = ["1. φ(Q), φ(K) in one ``linear_features`` launch (``triton_features.py``): the products",
                   f"   {products} accumulate in fp32 and φ's element-wise part (``phi_epilogue``, printed from",
                   "   the derivation) runs before the store; its backward recomputes φ in torch."]
        elif c.feature_map.returns == "x":
            phi = ["1. φ is the identity: q̂, k̂ are views of the caller's tensors, read in place."]
        else:
            why = f" ({c.feature_kernel_reason})" if c.feature_kernel_reason else ""
            phi = ["1. φ(Q), φ(K) in torch, with autograd: φ is not one linear layer with an element-wise",
                   f"   epilogue{why}."]
        value = {None: f"V̂ = {c.sign}η ∂L/∂f is computed in torch",
                 "": "v is read in place (V̂ = V)"}.get(c.value_on_load, "v is read in place with η applied on load "
                                                                          "(V̂ never materialised)")
        return phi + [f"   ``chunk_outer`` (Triton): ΔS_n = φ(K_n)ᵀ V̂_n ``[B, H, N, {c.state_rows}, {c.value_dim}]``;",
                      f"   {value}."]

    def _phase_two(self) -> list[str]:
        """The pipeline docstring's second phase: the work across chunks (``chunk_states``)."""
        c = self.c
        if not self.triton_scans():
            return ["2. Across chunks, in torch (``_common.chunk_states``): a linear scan of the per-channel",
                    "   chunk decays gives the state each chunk reads."]
        steps = []
        if c.momentum:
            steps.append("momentum M_n = ᾱ_n M_{n−1} + ΔS_n in one ``chunk_scan`` launch (ᾱ_n averaged on chip),")
        if c.ns_coefficients:
            steps += ["Newton–Schulz batched over chunks: one ``frobenius_normalize`` launch, then three cuBLAS",
                      "products per step (``bmm``, ``baddbmm``, ``baddbmm``: no element-wise pass between them),"]
        if c.clip or c.lr_position:
            steps.append("the per-chunk factors in torch,")
        scan = "the decayed states" if c.decay else "the states"
        steps.append(f"then {scan} in one ``chunk_scan`` launch from the initial state.")
        text = "2. Across chunks (``scan_chunks`` below): " + " ".join(steps)
        return textwrap.wrap(text, 100, subsequent_indent="   ")

    def _fused_scan_doc(self) -> str:
        c = self.c
        if c.plan.fused_scan == "tokens":
            gate = (" and the block-cumulative log decay G_t,\n   decayed on chip by e^{G_t − G_s} under the mask"
                    if c.decay else "")
            step = ["2. ``fused_scan`` (Triton, ``tttla_kernels/triton_scan.py``): one program per (batch, head) walks "
                    "the",
                    f"   blocks with the state in fp32 registers; per block it reads q̂, k̂, v̂{gate},",
                    "   writes o_t = q̂_t S + Σ_(s≤t) (q̂_t·k̂_s) v̂_s in the caller's [B, T, H, D] layout, then "
                    "S ← S + K̂ᵀV̂.",
                    "   Its backward runs the blocks in reverse with ∂L/∂S in registers, from the block states the",
                    "   forward saved when a gradient can flow (``tttla::scan_fused`` and its backward op)."]
        else:
            read = "S_(n−1)" if c.order == "apply_then_update" else "S_n"
            step = ["2. ``fused_chunk_scan`` (Triton, ``tttla_kernels/triton_scan.py``): one program per "
                    "(batch, head)",
                    "   walks the chunks with the state in fp32 registers, reading each chunk's q̂, k̂, v̂ once in tiles:",
                    f"   o_t = q̂_t {read} in the caller's [B, T, H, D] layout, S_n = Γ_n S_(n−1) + K̂_nᵀ V̂_n.",
                    "   Its backward runs the chunks in reverse with ∂L/∂S in registers (``tttla::scan_chunks``)."]
        return "\n".join([
            "The fused scan:",
            "",
            f"1. φ(Q), φ(K) and V̂ = {c.sign}η ∂L/∂f in torch (views of the caller's tensors where φ is the identity).",
            *step,
            "",
            "A state wider than MAX_WIDTH (Dk or Dv > 256) falls back to the two-kernel pipeline of",
            "``triton_runtime.py`` (``chunk_outer`` for the chunk increments, a torch scan, ``chunk_read``).",
            "Token-level work runs in q's dtype for fp16/bf16 (tensor cores), else in the state dtype."])

    def delta_math(self) -> str:
        """The WY/UT form's maths (both delta forms' docstrings)."""
        c = self.c
        if c.decay:
            step = "S_t = γ_t S_{t−1} + k̂_tᵀ (b_t − β_t k̂_t γ_t S_{t−1}) with γ_t = exp(g_t)."
            within = ", with Γ_t = Π_{s≤t} γ_s inside the block and D_ti = Γ_t/Γ_i"
            blocks = ["    A = strict_lower(diag(β) (K̂K̂ᵀ ⊙ D)),  (I + A) [U | W] = [B | diag(βΓ) K̂]  "
                      "(one triangular solve)",
                      "    u = U − W S,  O = diag(Γ) Q̂ S + (tril(Q̂K̂ᵀ) ⊙ D) u,  S ← Γ_L S + K̂ᵀ diag(Γ_L/Γ) u"]
        else:
            step = "S_t = S_{t−1} + k̂_tᵀ (b_t − β_t k̂_t S_{t−1})."
            within = ""
            blocks = ["    A = strict_lower(diag(β) K̂K̂ᵀ),  (I + A) [U | W] = [B | diag(β) K̂]  (one triangular solve)",
                      "    u = U − W S,  O = Q̂ S + tril(Q̂K̂ᵀ) u,  S ← S + K̂ᵀ u"]
        return "\n".join([
            "∂L/∂f is affine in the prediction with Jacobian c·I, so the effective value at the state S is",
            "v̂_t = b_t − β_t k̂_t S and every per-token step is an affine map of the state:",
            step,
            f"Within a block of ``chunk_size`` tokens that starts from the state S{within}:",
            "", *blocks, "",
            "(T = (I + A)⁻¹ diag(β) is the UT transform: W = T K̂ and, for ½‖f − v‖², U = T V.) The blocks'",
            "matrices are computed for all blocks at once; only the block states run in sequence. The",
            "semantic step is one per token whatever ``chunk_size`` is."])
