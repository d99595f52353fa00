"""Errors a user can act on: each names what is wrong and what was expected."""


class TTTLAError(Exception):
    """Base class for every error tttla raises on purpose."""


class DeclarationError(TTTLAError, ValueError):
    """A variant declaration is malformed (raised at declaration time)."""


class ReductionError(TTTLAError, ValueError):
    """A variant cannot be rewritten as linear attention; names the sub-expression."""


class VariantNotFound(TTTLAError, LookupError):
    """A variant reference (catalog name or FILE.py[:ATTR]) could not be resolved."""
