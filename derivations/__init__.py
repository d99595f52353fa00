"""tttla's variant language and (symbolic) derivation engine.

Declare an inner-loop update rule with :func:`variant`; the same Python function is
executed on torch tensors by :mod:`verify` (the oracle) and traced on SymPy matrices here.
"""

from derivations.derive import derive
from derivations.errors import DeclarationError, ReductionError, TTTLAError, VariantNotFound
from derivations.form import LinearAttentionForm
from derivations.functions import FUNCTIONS, gelu, gelu_tanh, identity, register, relu, rsqrt, sigmoid, silu, tanh
from derivations.mat import Mat, add_constant, broadcast, dot, row_mean, row_var, sq_norm, sum_all
from derivations.normalization import layer_norm
from derivations.spec import (
    FIXED_NS,
    LACT_NS5,
    bidirectional,
    chunked,
    column_clip,
    constant,
    decay,
    momentum,
    newton_schulz,
    per_token,
    token_level,
    weight_norm,
)
from derivations.structured import depthwise, depthwise_conv
from derivations.variant import Variant, variant

__all__ = [
    "variant", "Variant", "Mat", "derive", "LinearAttentionForm",
    "silu", "gelu", "gelu_tanh", "tanh", "sigmoid", "relu", "identity", "register", "FUNCTIONS",
    "dot", "sq_norm", "sum_all", "row_mean", "row_var", "broadcast", "add_constant", "layer_norm", "rsqrt",
    "constant", "per_token", "momentum", "newton_schulz", "weight_norm", "decay", "column_clip",
    "chunked", "token_level", "bidirectional", "LACT_NS5", "FIXED_NS", "depthwise", "depthwise_conv",
    "DeclarationError", "ReductionError", "TTTLAError", "VariantNotFound",
]
