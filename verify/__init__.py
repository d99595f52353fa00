"""Verification: the direct-TTT oracle, random cases, fuzz campaigns (verify.fuzz) and the CPU
benchmark (verify.bench).

The names below load on first use (PEP 562), so a process that needs one submodule — a
context-parallel rank runs ``verify.context_parallel`` alone — does not import the fuzzer."""

from importlib import import_module

__all__ = ["run_direct", "newton_schulz", "make_case", "Case", "run_campaign"]

_HOME = {"run_campaign": "verify.fuzz", "Case": "verify.inputs", "make_case": "verify.inputs",
         "newton_schulz": "verify.oracle", "run_direct": "verify.oracle"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'verify' has no attribute {name!r}")
