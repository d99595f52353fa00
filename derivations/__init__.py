"""tttla's variant language and (symbolic) derivation engine.

Declare an inner-loop update rule with :func:`variant`; the same Python function is
executed on torch tensors by :mod:`verify` (the oracle) and traced on SymPy matrices here.
"""

from derivations.derive import derive
from derivations.errors import DeclarationError, ReductionError, TTTLAError, VariantNotFound
from derivations.form import LinearAttentionForm
from derivations.functions import FUNCTIONS, gelu, gelu_tanh, identity, register, relu, sigmoid, silu, tanh
from derivations.mat import Mat, dot, sq_norm, sum_all
from derivations.spec import (
    FIXED_NS,
    LACT_NS5,
    bidirectional,
    chunked,
    constant,
    momentum,
    newton_schulz,
    per_token,
    token_level,
    weight_norm,
)
from derivations.variant import Variant, variant

__all__ = [
    "variant", "Variant", "Mat", "derive", "LinearAttentionForm",
    "silu", "gelu", "gelu_tanh", "tanh", "sigmoid", "relu", "identity", "register", "FUNCTIONS",
    "dot", "sq_norm", "sum_all",
    "constant", "per_token", "momentum", "newton_schulz", "weight_norm",
    "chunked", "token_level", "bidirectional", "LACT_NS5", "FIXED_NS",
    "DeclarationError", "ReductionError", "TTTLAError", "VariantNotFound",
]
