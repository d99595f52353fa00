"""A curated mutation campaign over the checkers: does the suite fail when a checker is wrong?

    .venv/bin/python benchmarks/mutation.py [--only N ...] [--list] [--jobs 1]

Each mutant is one small, realistic fault (file, exact old text, new text) and the targeted test
selection that should kill it. The tracked tree is copied once into a temporary folder (the
working tree is never touched); each mutant is written there, its tests run with a timeout,
and the file restored. A mutant is *killed* when its tests fail (or time out), *equivalent*
when it is marked so with the reason it cannot change behaviour, else a *survivor*.
Writes ``benchmarks/results/mutation.json``; not part of CI (minutes), run before a release.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutant:
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    #: why the mutant cannot change behaviour (an equivalent mutant), or "" when it must be killed
    equivalent: str = ""

    def where(self) -> str:
        return f"{self.file}: {self.old.strip().splitlines()[0][:80]}"


def _m(file, old, new, *tests, equivalent=""):
    return Mutant(file, old, new, tuple(tests), equivalent)


CERT = "tests/test_certificate.py"
GUARDS = "tests/test_certificate_guards.py"
BOUNDS = "tests/test_verify_bounds.py"
AUTODIFF = "tests/test_autodiff.py"
PRINTER = "tests/test_printer.py"
LOOP = "tests/test_inner_loop.py"
ORACLE = "tests/test_oracle.py"
DELTA = "tests/test_delta_family.py"
#: the Triton interpreter on the two fastest cases that cross chunk and row-block boundaries
TRITON = ("tests/test_triton.py", "-k", "compute_chunk or (matches_oracle and 37-3-16)")

MUTANTS: list[Mutant] = [
    # --- the seven faults of issue 20 ----------------------------------------------------------------
    _m("derivations/certificate.py", "            if e != 0:\n                return e\n    return None",
       "            if e != 0:\n                return e\n        break\n    return None", GUARDS, CERT),
    _m("derivations/certificate.py", 'failure = f"could not be computed: {type(e).__name__}: {e}"',
       "failure = None", GUARDS),
    _m("verify/tolerances.py", 'torch.float64: Tolerance("max_rel", 1e-9)', 'torch.float64: Tolerance("max_rel", 1e-7)',
       BOUNDS),
    _m("verify/tolerances.py", 'torch.float32: Tolerance("rms_ratio", 1e-4)',
       'torch.float32: Tolerance("rms_ratio", 1e-2)', BOUNDS),
    _m("verify/fuzz.py", '    out.update({f"∂{n}": t for n, t in grads.items()})\n', "", BOUNDS),
    _m("derivations/autodiff.py",
       "cot = kappa if others == 1 else sympy.MatMul(others, kappa)", "cot = kappa", AUTODIFF),
    _m("codegen/printer.py",
       's = f"{wrap(scalar.code)}.sum(-2, keepdim=True)" if scalar.kind in PER_TOKEN else scalar.code',
       "s = scalar.code", PRINTER),
    _m("tttla_kernels/triton_runtime.py", "    rows = offs_t < end\n", "    rows = offs_t < T\n", *TRITON),
    # --- its three partial catches -------------------------------------------------------------------
    _m("derivations/classify.py",
       '        ("weight_norm", variant.weight_norm is not None),',
       '        ("weight_norm", False),', GUARDS, DELTA),
    _m("derivations/inner_loop.py",
       "            if v.momentum is not None:\n                self.buffers[name] = inc + alpha * self.buffers[name]\n"
       "                inc = self.buffers[name]\n            if v.orthogonalize is not None:\n"
       "                inc = b.orthogonalize(name, inc)\n",
       "            if v.orthogonalize is not None:\n                inc = b.orthogonalize(name, inc)\n"
       "            if v.momentum is not None:\n                self.buffers[name] = inc + alpha * self.buffers[name]\n"
       "                inc = self.buffers[name]\n", ORACLE),
    _m("derivations/functions.py",
       "return -Rsqrt(self.args[0]) ** 3 / 2", "return -Rsqrt(self.args[0]) ** 3", AUTODIFF),
    # --- derivations/autodiff.py and the element-wise derivatives ------------------------------------
    _m("derivations/autodiff.py", "return [(expr.arg, sympy.Transpose(G))]", "return [(expr.arg, G)]", AUTODIFF),
    _m("derivations/autodiff.py",
       "for j, b in enumerate(expr.args) if j != i)", "for j, b in enumerate(expr.args) if j == i)",
       AUTODIFF),
    _m("derivations/autodiff.py", "return [(expr.expr, sympy.HadamardProduct(G, type(expr)(fprime, expr.expr)))]",
       "return [(expr.expr, G)]", AUTODIFF),
    _m("derivations/autodiff.py", "parts = [sympy.Transpose(_matmul(*left))] if left else []",
       "parts = [_matmul(*left)] if left else []", AUTODIFF),
    _m("derivations/autodiff.py", "out.append((A, sympy.MatMul(c, cot) if c != 1 else cot))", "out.append((A, cot))",
       AUTODIFF),
    _m("derivations/autodiff.py", "return [(term, G) for term in expr.args if depends[term]]",
       "return [(term, G) for term in expr.args[:1] if depends[term]]", AUTODIFF),
    _m("derivations/autodiff.py", "int((i, j) == (el.i, el.j))", "int((i, j) == (el.j, el.i))", AUTODIFF),
    _m("derivations/autodiff.py", "ds = sympy.diff(s, el)", "ds = sympy.Integer(1)", AUTODIFF),
    _m("derivations/functions.py", "return s * (1 + x * (1 - s))", "return s * (1 + x * s)", AUTODIFF),
    # --- derivations/certificate.py ------------------------------------------------------------------
    _m("derivations/certificate.py", "for t, (der, lit) in enumerate(zip(outputs(), literal, strict=True)):",
       "for t, (der, lit) in enumerate(zip(outputs()[:1], literal[:1], strict=True)):", CERT),
    _m("derivations/certificate.py", "return sympy.Integer(1 if j == m else 0)", "return sympy.Integer(1)", CERT),
    _m("derivations/certificate.py", "beta = [-p.sign * p.eta[t] * c for t in toks]",
       "beta = [p.sign * p.eta[t] * c for t in toks]", GUARDS),
    _m("derivations/certificate.py", "* (K[i, :] * K[j, :].T)[0, 0] if j < i else 0)",
       "* (K[i, :] * K[j, :].T)[0, 0] if j <= i else 0)", GUARDS),
    _m("derivations/certificate.py", '{"apply_then_update": c - 1, "block_inclusive": c, "bidirectional": 0}',
       '{"apply_then_update": c - 1, "block_inclusive": c - 1, "bidirectional": 0}', CERT),
    _m("derivations/certificate.py", "run_inner_loop(p.variant, _Literal(p), p.initial, T, p.L)",
       "run_inner_loop(p.variant, _Literal(p), p.initial, T, 1)", CERT),
    _m("derivations/certificate.py", "    if p.normalising and blocked:\n", "    if False:\n", GUARDS),
    _m("derivations/certificate.py", "return sum(self.p.alpha[t] for t in tokens) / len(tokens)",
       "return self.p.alpha[tokens[0]]", CERT,
       equivalent="at the certificate's T = 3 a step of several tokens is always the first step, whose α "
                  "multiplies the zero momentum buffer; every later step has one token, whose mean α is its α"),
    # --- derivations/inner_loop.py -------------------------------------------------------------------
    _m("derivations/inner_loop.py", "                if n == len(chunks) - 1:\n                    break",
       "                if False:\n                    break", LOOP, ORACLE),
    _m("derivations/inner_loop.py", "self.buffers[name] = inc + alpha * self.buffers[name]",
       "self.buffers[name] = inc + self.buffers[name]", LOOP, ORACLE),
    _m("derivations/inner_loop.py", "w = self.weights[name] if gamma is None else gamma * self.weights[name]",
       "w = self.weights[name]", LOOP, ORACLE),
    _m("derivations/inner_loop.py", "start[n] + a * total[n] if n in total", "start[n] + total[n] if n in total",
       LOOP, ORACLE),
    _m("derivations/inner_loop.py", 'size = n_tokens if order == "bidirectional" else chunk_size', "size = chunk_size",
       LOOP, ORACLE),
    # --- verify/oracle.py ----------------------------------------------------------------------------
    _m("verify/oracle.py", "sign = 1.0 if variant.ascent else -1.0", "sign = -1.0", ORACLE),
    _m("verify/oracle.py", "        A = X @ X.mT\n", "        A = X.mT @ X\n", ORACLE),
    _m("verify/oracle.py", "X = X / (torch.linalg.matrix_norm(X, keepdim=True) + ortho.eps)",
       "X = X / (torch.linalg.matrix_norm(X, keepdim=True) + 1e-3)", ORACLE),
    _m("verify/oracle.py", "return inc / (_column_norms(inc) + 1.0)", "return inc / (_column_norms(inc) + 1e-6)",
       ORACLE, DELTA),
    _m("verify/oracle.py", "+ self.variant.weight_norm.eps) * self.target_norms[name]",
       "+ self.variant.weight_norm.eps)", ORACLE),
    _m("verify/oracle.py", "return self.alpha[:, :, tokens.start:tokens.stop].mean(dim=2)",
       "return self.alpha[:, :, tokens.start]", ORACLE),
    _m("verify/oracle.py", "return W.norm(dim=-2, keepdim=True)", "return W.norm(dim=-1, keepdim=True)", ORACLE),
    _m("verify/oracle.py", "chunk_size = T  # one step on all tokens", "pass  # one step on all tokens", ORACLE,
       equivalent="run_inner_loop itself takes one chunk of all tokens for a bidirectional schedule; the oracle's "
                  "chunk_size = T only feeds the position factors, which need update_then_apply (variant.py)"),
    _m("verify/oracle.py", 'Q=K if variant.queries == "key" else Q', "Q=Q", ORACLE),
    # --- verify/tolerances.py and verify/fuzz.py -----------------------------------------------------
    _m("verify/tolerances.py", "num, den = diff.abs().max(), ref.abs().max()",
       "num, den = diff.abs().mean(), ref.abs().max()", BOUNDS),
    _m("verify/tolerances.py", "return float(num / den) if den > 0 else float(num)",
       "return float(num / den) if den > 0 else 0.0", BOUNDS),
    _m("verify/tolerances.py", '        return float("inf")\n', "        return 0.0\n", BOUNDS),
    _m("verify/fuzz.py", "return self.exception is None and all(", "return all(", BOUNDS),
    _m("verify/fuzz.py", "loss = loss + (t * weights[n].to(t.dtype)).sum()", "loss = loss", BOUNDS,
       "tests/test_verify.py"),
    _m("verify/fuzz.py", "return all(t is None or bool(torch.isfinite(t).all()) for t in ref.quantities().values())",
       "return True", "tests/test_verify.py"),
    # --- codegen/printer.py --------------------------------------------------------------------------
    _m("codegen/printer.py", '.sum(-2, keepdim=True)", WEIGHT, (1, b.shape[1]))',
       '.sum(-1, keepdim=True)", WEIGHT, (1, b.shape[1]))', PRINTER),
    _m("codegen/printer.py", '.sum(-2, keepdim=True).mT", row)', '.mT", row)', PRINTER),
    _m("codegen/printer.py", 'f"{wrap(row.code)}.sum(-2, keepdim=True)", left, left_side=True)',
       'f"{wrap(row.code)}", left, left_side=True)', PRINTER),
    _m("codegen/printer.py", 'code = f"{wrap(left.code)}.mT @ {wrap(row.code)}"',
       'code = f"{wrap(left.code)} @ {wrap(row.code)}.mT"', PRINTER),
    _m("codegen/printer.py", '.sum(-1, keepdim=True)", kind, (a.shape[0], 1))',
       '.sum(-2, keepdim=True)", kind, (a.shape[0], 1))', PRINTER),
    # --- tttla_kernels/triton_runtime.py -------------------------------------------------------------
    _m("tttla_kernels/triton_runtime.py", "            sources = offs_s < end\n", "            sources = offs_s < T\n",
       *TRITON),
    _m("tttla_kernels/triton_runtime.py", "keep = offs_s[None, :] <= offs_t[:, None]",
       "keep = offs_s[None, :] < offs_t[:, None]", *TRITON),
    _m("tttla_kernels/triton_runtime.py",
       "        in_chunk = offs_t < end\n", "        in_chunk = offs_t < T\n", *TRITON),
    # --- derivations/classify.py ---------------------------------------------------------------------
    _m("derivations/classify.py", '        ("momentum", variant.momentum is not None),\n        ("not_token_steps"',
       '        ("momentum", False),\n        ("not_token_steps"', DELTA, GUARDS),
    _m("derivations/classify.py",
       "        if term == y:\n            c += 1\n", "        if term == y:\n            c += 2\n",
       DELTA, GUARDS),
    _m("derivations/classify.py",
       '("not_token_steps", not (sched.order == "update_then_apply" and sched.fixed and sched.chunk_size == 1)),',
       '("not_token_steps", not (sched.order == "update_then_apply")),', DELTA, GUARDS),
]


def _tracked_files() -> list[str]:
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # new files too
    out = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _copy_tree(dest: Path) -> None:
    for f in _tracked_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def _run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """``(failed, last line)`` of pytest on ``tests`` in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CI": "true"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return True, f"timed out after {TIMEOUT_S} s"
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    return done.returncode != 0, lines[-1] if lines else f"exit {done.returncode}"


def run(selected: list[int]) -> dict:
    killed, equivalent, survivors, log = 0, 0, [], []
    with tempfile.TemporaryDirectory(prefix="tttla-mutation-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for i in selected:
            m = MUTANTS[i]
            path = tree / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                raise SystemExit(f"mutant {i}: the old text occurs {original.count(m.old)} times in {m.file}")
            if m.equivalent:
                equivalent += 1
                log.append({"mutant": i, "where": m.where(), "equivalent": m.equivalent})
                continue
            path.write_text(original.replace(m.old, m.new))
            start = time.perf_counter()
            try:
                failed, last = _run_tests(tree, m.tests)
            finally:
                path.write_text(original)
            seconds = round(time.perf_counter() - start, 1)
            print(f"[{i:2d}] {'killed ' if failed else 'SURVIVED'} {seconds:6.1f} s  {m.where()}  — {last}",
                  flush=True)
            log.append({"mutant": i, "where": m.where(), "killed": failed, "seconds": seconds, "tests": list(m.tests),
                        "last_line": last})
            if failed:
                killed += 1
            else:
                survivors.append({"where": m.where(), "change": f"{m.old!r} → {m.new!r}",
                                  "why": "not killed by " + ", ".join(m.tests)})
    return {"mutants": len(selected), "killed": killed, "equivalent": equivalent, "survivors": survivors,
            "score": round(killed / max(1, len(selected) - equivalent), 3), "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="indices of the mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/mutation.json")
    args = parser.parse_args()
    if args.list:
        for i, m in enumerate(MUTANTS):
            print(f"[{i:2d}] {m.where()}  → {' '.join(m.tests)}")
        return
    result = run(args.only if args.only is not None else list(range(len(MUTANTS))))
    print(f"{result['killed']} of {result['mutants'] - result['equivalent']} non-equivalent mutants killed "
          f"(score {result['score']:.1%}), {len(result['survivors'])} survivors")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
