"""The generality campaign: N random declarations from the language's grammar, each refused at
declaration time or derived, certified, generated and verified (fp64 forward and backward, fp32).

    TRITON_INTERPRET=1 .venv/bin/python benchmarks/generality.py --declarations 300 [--triton] [--nonfinite]

The strategy and the check are ``tests/generality.py``'s (``tests/test_generality.py`` runs a
derandomised slice). Writes ``benchmarks/results/generality.json``: the counts, the settings, the
commit and the run time, every refusal with its message and every failure with its declaration and
the failed checks or traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TRITON_INTERPRET", "1")

from generality import check, declarations  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from verify.progress import Progress  # noqa: E402


def _commit() -> str:
    """The commit the campaign runs on (with ``+dirty`` when the work tree differs from it)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


COMMIT = _commit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--declarations", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed of the campaign")
    p.add_argument("--cases", type=int, default=2, help="fuzz cases per dtype")
    p.add_argument("--limit", type=float, default=90.0, help="seconds per declaration before it fails")
    p.add_argument("--triton", action="store_true", help="also fuzz the Triton form (slow in the interpreter)")
    p.add_argument("--nonfinite", action="store_true",
                   help="also check that a NaN or inf input reaches only the outputs that may depend on it")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generality.json")
    args = p.parse_args()

    records, started = [], time.monotonic()
    keep = None if args.triton else (lambda names: [n for n in names if n != "triton"])

    @seed(args.seed)
    @settings(max_examples=args.declarations, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(declarations())
    def campaign(decl):
        bar.step(", ".join(f"{status} {n}" for status, n in sorted(Counter(o.status for _, o in records).items())))
        with tempfile.TemporaryDirectory(prefix="tttla-generality-") as tmp:
            outcome = check(decl, Path(tmp), cases=args.cases, forms_filter=keep, limit_s=args.limit,
                            nonfinite=args.nonfinite)
        records.append((decl, outcome))
        summary(records, args, time.monotonic() - started)  # a partial campaign leaves its results too

    with Progress("generality", args.declarations, unit="decl") as bar:
        campaign()
    result = summary(records, args, time.monotonic() - started)
    print({k: result[k] for k in ("declarations", "refused", "verified", "failed", "tracebacks", "timed_out")})


def summary(records, args, elapsed_s: float) -> dict:
    """The counts, refusals and failures so far, also written to ``args.out``."""
    counts = Counter(o.status for _, o in records)
    result = {
        "declarations": len(records),
        "refused": counts["refused"],
        "verified": counts["verified"],
        "failed": counts["failed"],
        "tracebacks": sum(o.traceback for _, o in records),
        "timed_out": sum(o.timed_out for _, o in records),  # among the failed: ran past --limit
        "elapsed_s": round(elapsed_s, 1),
        "settings": {"seed": args.seed, "cases_per_dtype": args.cases, "limit_s": args.limit,
                     "forms": "all" if args.triton else "recurrent and chunk (Triton left out)",
                     "nonfinite_causality": args.nonfinite, "commit": COMMIT},
        "refusals": [{"declaration": d.source(), "message": o.message} for d, o in records if o.status == "refused"],
        "failures": [{"declaration": d.source(), "message": o.message, "traceback": o.traceback,
                      "timed_out": o.timed_out}
                     for d, o in records if o.status == "failed"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main()
