"""onnxmorph: grow a trained ONNX network into a larger one that computes exactly the same function."""
from .api import MorphResult, deepen, export_torch, grow, inspect, kernel, subnet, verify, widen
from .errors import CannotMorph, OnnxmorphError, UsageError, VerificationFailed
from .version import __version__

__all__ = ["deepen", "export_torch", "grow", "kernel", "subnet", "widen", "inspect", "verify", "MorphResult", "OnnxmorphError",
           "UsageError", "CannotMorph", "VerificationFailed", "__version__"]
