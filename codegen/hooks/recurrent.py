"""Hooks of recurrent.py: its summary, the state its steps carry, the step and the schedule's loop."""

from __future__ import annotations

from codegen.hooks._base import INNER, HookBase, column_clip, lines


class RecurrentHooks(HookBase):
    """The recurrence's pieces."""

    def recurrent_summary(self) -> str:
        c = self.c
        order = {
            "update_then_apply": "One step per token (gradients taken at the chunk-start weights), each token read "
                                 "right after\nits own step.",
            "apply_then_update": "One step per chunk; chunk n reads the state left by chunk n − 1; the last chunk is "
                                 "apply-only.",
            "block_inclusive": "One step per chunk; chunk n reads the state after its own step.",
        }.get(c.order, "One step on all tokens; every token reads the updated state.")
        sign = "+" if c.sign == "+" else "−"
        rows = [order,
                f"Each step adds the increments ΔU = {sign}Σ_i η_i ∇_U ℓ_i of the updated weights;",
                f"for the state {c.state} that is Σ_i k̂_iᵀ v̂_i with k̂ = φ(k) and v̂ = {c.sign}η ∂L/∂f",
                "(Theorems 5.1–5.2)."]
        extra = []
        if c.momentum:
            extra.append("Momentum accumulates increments before they are applied (Theorem 5.3).")
        if c.ns_coefficients:
            extra.append("Newton–Schulz orthogonalises each step.")
        if c.decay:
            extra.append(self.decay_sentence())
        if c.weight_norm_eps is not None:
            extra.append("Weight norm rescales every output channel after each step.")
        return "\n".join(rows + extra)

    def recurrent_state(self) -> str:
        """The token rows the steps read, and the state they carry: the weights, and the target column
        norms and momentum buffers."""
        c = self.c
        size = "1" if c.order == "update_then_apply" else "inputs.chunk_size"
        tensors = ["Q=inputs.Q", "K=inputs.K", "V=inputs.V"] + [f"{n}=inputs.{n}" for n, on in (
            ("eta", c.per_token_lr), ("alpha", c.momentum), ("log_gamma", c.decay)) if on]
        rows = ["# the tokens split once (one slice per step would make autograd write a full-length gradient "
                "per step)",
                f"tokens = runtime.token_rows({size}, {', '.join(tensors)})",
                "state = inputs.state"]
        if self.c.weight_norm_eps is not None:
            rows += ["# the column norms of the state at t = 0, which weight norm restores after every step",
                     "target_norms = carry[\"target_norms\"] if carry else "
                     "{name: W.norm(dim=-2, keepdim=True) for name, W in state.items()}"]
        if self.c.momentum:
            rows += ["# momentum buffers, pre-orthogonalisation",
                     "buffers = dict(carry[\"momentum\"]) if carry else "
                     "{name: torch.zeros_like(W) for name, W in state.items()}"]
        return lines(rows)

    def _carried(self) -> list[tuple[str, str, str]]:
        """(key, variable, meaning) of what the steps carry besides the state."""
        c = self.c
        return [row for row, on in ((("momentum", "buffers", "the momentum buffers"), c.momentum),
                                    (("target_norms", "target_norms", "the column norms weight norm restores"),
                                     c.weight_norm_eps is not None)) if on]

    def carry_doc(self) -> str:
        carried = self._carried()
        return ", ".join(f'"{key}": {meaning}' for key, _, meaning in carried) if carried else "nothing: {}"

    def carry_start_doc(self) -> str:
        return ": zero buffers" if self.c.momentum else ""

    def carry_out(self) -> str:
        return "{" + ", ".join(f'"{key}": {var}' for key, var, _ in self._carried()) + "}"

    def uses_step(self) -> bool:
        """Whether the recurrence takes steps (a rank-1 learning rate reads partial sums instead)."""
        return not self.c.lr_position

    def read_body(self) -> str:
        c = self.c
        if c.model is not None:
            return lines([f"return model(rows, **weights(state))  # the whole model: its head is not φ(x)·{c.state}"],
                          INNER)
        weights = "".join(f', W["{w}"]' for w in c.feature_weights)
        return lines(["W = weights(state)", f'return feature_map(rows{weights}) @ W["{c.state}"]'], INNER)

    def read_doc(self) -> str:
        c = self.c
        return "f(rows; Θ) (the whole model)" if c.model is not None else f"φ(rows; Θ) · {c.state}"

    def increments_args(self) -> str:
        """The arguments of chunk_increments for tokens [start, end): keys, values, learning rates, weights."""
        c = self.c
        rows = ["tokens.K[start:end]", "tokens.V[start:end]"]
        if c.per_token_lr and c.multi_state:
            rows += [f'tokens.eta["{w}"][start:end]' for w, _, _ in c.updated]
        elif c.per_token_lr:
            rows.append("tokens.eta[start:end]")
        rows.append("**weights(state)")
        return lines([f"{row}," for row in rows], " " * 12)

    def decay_sentence(self) -> str:
        """What the decay does at each step (the docstrings of the recurrence and the chunk forms)."""
        c = self.c
        gamma = {"token": "γ = exp(g)", "channel": "γ = exp(g), one factor per key channel scaling a row",
                 "head": f"γ = γ_h = {c.decay_per_head_text}"}[c.decay_gate]
        per = "token" if c.order == "update_then_apply" else "chunk (γ the product over its tokens)"
        if c.decay == "decay_then_gradient":
            return f"Each step (one per {per}) first decays the state, S ← γ S ({gamma}), and takes its gradient there."
        return f"Each step (one per {per}) decays the weights after the gradient: W ← γ W + ΔW ({gamma})."

    def decay_factor(self, start: str, end: str, single: bool = False) -> str:
        """γ of the tokens [start, end) as a factor of a state ``[B, H, rows, cols]``: exp(Σ g), shaped
        ``[B, H, 1, 1]`` (one per head) or ``[B, H, rows, 1]`` (per key channel)."""
        g = f"tokens.log_gamma[{start}:{end}]"
        return f"{g}.mT.exp()" if single else f"{g}.sum(dim=2, keepdim=True).mT.exp()"

    def step_params(self) -> str:
        return "state, increments, alpha_now" + (", gamma_now" if self.c.decay == "gradient_then_decay" else "")

    def step_doc(self) -> str:
        c = self.c
        parts = [p for p, on in (("clip", c.clip), ("momentum", c.momentum), ("Newton–Schulz", c.ns_coefficients))
                 if on]
        parts.append("update")
        if c.weight_norm_eps is not None:
            parts.append("weight norm")
        return ", ".join(parts)

    def step_body(self) -> str:
        """One inner step of one updated weight: ``increment`` → ``new[name]``."""
        c = self.c
        rows = []
        if c.clip:
            rows.append(column_clip("increment"))
        if c.momentum:
            rows += ["buffers[name] = increment + alpha_now * buffers[name]", "increment = buffers[name]"]
        if c.ns_coefficients:
            rows.append("increment = runtime.newton_schulz(increment, NS_COEFFICIENTS, NS_EPS)")
        if c.decay == "gradient_then_decay":
            rows.append("new[name] = gamma_now * state[name] + increment  "
                        "# W ← γ W + ΔW (gradient taken before the decay)")
        else:
            rows.append("new[name] = state[name] + increment")
        if c.weight_norm_eps is not None:
            rows.append("new[name] = runtime.renormalize_columns(new[name], target_norms[name], WEIGHT_NORM_EPS)")
        return lines(rows, " " * 12)

    def schedule_loop(self) -> str:
        """The body of the loop over chunks ``[start, end)``: steps and reads in the schedule's order."""
        c = self.c
        chunk_alpha = "tokens.alpha[start:end].mean(dim=2, keepdim=True)" if c.momentum else "None"
        chunk_step = [f"state = step(state, increments(start, end, state), {chunk_alpha})"]
        if c.decay == "gradient_then_decay":
            chunk_step = [f"state = step(state, increments(start, end, state), {chunk_alpha}, "
                          f"{self.decay_factor('start', 'end')})"]
        elif c.decay:  # S ← Γ S, Γ the product of the chunk's factors, before the step's gradient
            chunk_step = [f"state = {{name: {self.decay_factor('start', 'end')} * W for name, W in state.items()}}  "
                          "# S ← Γ S before the gradient", *chunk_step]
        if c.order == "apply_then_update":
            rows = ["outputs.append(read(tokens.Q[start:end], state))",
                    "if end == inputs.T and not last_step_applies:",
                    "    break  # the last chunk is apply-only",
                    *chunk_step]
        elif c.order != "update_then_apply":
            rows = [*chunk_step, "outputs.append(read(tokens.Q[start:end], state))"]
        else:
            rows = ["# every token's increment at the chunk-start weights, then one step per token"]
            if c.decay == "decay_then_gradient":
                rows += ["# S ← γ_t S before the step's gradient (one token per step)",
                         f"state = {{name: {self.decay_factor('start', 'end', single=True)} * W "
                         "for name, W in state.items()}"]
            rows.append("per_token = [increments(t, t + 1, state) for t in range(start, end)]")
            if c.lr_position:
                rows += ["# η_ij = a_i η_j: token t reads W_0 + a_(t−start) Σ_(j≤t) ΔW_j (not a sequence of steps)",
                         "chunk_start, total = state, {}",
                         "for t, increment in zip(range(start, end), per_token):",
                         "    total = {name: total[name] + d if name in total else d for name, d in increment.items()}",
                         "    state = {name: chunk_start[name] + inputs.position[t - start] * total[name] "
                         "for name in chunk_start}",
                         "    outputs.append(read(tokens.Q[t:t + 1], state))"]
            else:
                alpha = "tokens.alpha[t:t + 1]" if c.momentum else "None"
                gamma = f", {self.decay_factor('t', 't + 1', single=True)}" if c.decay == "gradient_then_decay" else ""
                rows += ["for t, increment in zip(range(start, end), per_token):",
                         f"    state = step(state, increment, {alpha}{gamma})",
                         "    outputs.append(read(tokens.Q[t:t + 1], state))"]
        return lines(rows, INNER)
