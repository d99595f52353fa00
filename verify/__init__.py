"""Verification: the direct-TTT oracle, random cases, and (later) fuzz campaigns."""

from verify.inputs import Case, make_case
from verify.oracle import newton_schulz, run_direct

__all__ = ["run_direct", "newton_schulz", "make_case", "Case"]
