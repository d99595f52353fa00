"""Verification: the direct-TTT oracle, random cases, fuzz campaigns (verify.fuzz) and the CPU
benchmark (verify.bench)."""

from verify.fuzz import run_campaign
from verify.inputs import Case, make_case
from verify.oracle import newton_schulz, run_direct

__all__ = ["run_direct", "newton_schulz", "make_case", "Case", "run_campaign"]
