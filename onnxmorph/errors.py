"""Errors the CLI turns into one-line messages and exit codes (see DESIGN.md's contract)."""
from __future__ import annotations

import math

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_MORPH = 3
EXIT_INTERNAL = 4
EXIT_CANNOT_CONVERT = 5


class OnnxmorphError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(OnnxmorphError):
    """Bad option, unknown layer, unreadable or corrupt file, existing output without --force."""
    exit_code = EXIT_USAGE


class CannotMorph(OnnxmorphError):
    """This graph cannot be morphed that way; the message says why."""
    exit_code = EXIT_CANNOT_MORPH


class VerificationFailed(OnnxmorphError):
    """The child does not compute the parent's function within tolerance."""
    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class CannotConvert(OnnxmorphError):
    """The model cannot be handed to PyTorch (an op onnx2torch has no converter for); the message names it."""
    exit_code = EXIT_CANNOT_CONVERT


def one_line(text: str) -> str:
    """A message on one line, nothing dropped (ONNX Runtime's errors span several)."""
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def compact(value):
    """JSON-ready data without the fields that carry nothing (None, "", [], {}); False and 0 stay;
    non-finite floats become "inf", "-inf", "nan"."""
    if isinstance(value, dict):
        out = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v != "" and v != [] and v != {}}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no Infinity or NaN
        return str(value)
    return value
