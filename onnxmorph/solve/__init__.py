"""Pure numpy/scipy math of network morphism. Knows nothing of ONNX."""
from .compose import compose, compose_grouped, composite_size, embed, relative_residual
from .factorize import (EXACT_RESIDUAL, Factorization, SolveError, factorize, identity_factorization,
                        layer_rank, minimum_width, nonzero_share)

__all__ = ["compose", "compose_grouped", "composite_size", "embed", "relative_residual", "EXACT_RESIDUAL",
           "Factorization", "SolveError", "factorize", "identity_factorization", "layer_rank", "minimum_width", "nonzero_share"]
