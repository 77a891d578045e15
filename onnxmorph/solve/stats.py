"""Scales of existing weights, for drawing new entries of the same size."""
from __future__ import annotations

import math

import numpy as np

SAMPLES = 1 << 20


def typical_std(array: np.ndarray, samples: int = SAMPLES) -> float:
    """The std of `array`'s entries, from about `samples` of them: whole slices along the axis that is outermost in
    memory (a view's moved axis is not), evenly spaced, so that a memory-mapped weight of hundreds of MB is read in
    part; 1.0 for an all-zero or empty array."""
    a = np.asarray(array)
    if a.ndim and a.size > samples:
        outer = max(range(a.ndim), key=lambda d: (a.shape[d] > 1, abs(a.strides[d]), -d))
        if a.shape[outer] > 1:
            a = a[(slice(None),) * outer + (slice(None, None, math.ceil(a.size / samples)),)]
        if a.size > samples:   # a few huge rows: thin them too
            a = a.reshape(-1)[::math.ceil(a.size / samples)]
    return (float(np.std(a)) or 1.0) if a.size else 1.0


def normal_like(rng: np.random.Generator, shape, std: float, dtype) -> np.ndarray:
    """N(0, std²) entries of `dtype`, drawn in float32 (float64 for a float64 array): new weights of the size of
    old ones, without a float64 draw of hundreds of MB."""
    draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return (rng.standard_normal(shape, dtype=draw) * draw(std)).astype(dtype, copy=False)
