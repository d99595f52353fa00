"""tttla: test-time training layers, derived as linear attention.

The ``tttla`` command lives in :mod:`tttla.cli`; the toolkit itself is in the packages
``derivations`` (language, derivation engine, catalog), ``codegen`` (code generation),
``verify`` (oracle and fuzzing) and ``tttla_kernels`` (generated runtime modules).
"""

__version__ = "0.1.0"
