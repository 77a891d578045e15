"""Scales of existing weights, for drawing new entries of the same size."""
from __future__ import annotations

import math

import numpy as np

SAMPLES = 1 << 20


def typical_std(array: np.ndarray, samples: int = SAMPLES) -> float:
    """The std of `array`'s entries, from at most about `samples` of them on an even grid (a strided view: a weight
    of hundreds of MB is read in part, never copied whole); 1.0 for an all-zero or empty array."""
    a = np.asarray(array)
    excess, index = a.size / samples, []
    for size in a.shape:
        step = max(1, min(size, math.ceil(excess)))
        index.append(slice(None, None, step))
        excess /= step
    return float(np.std(a[tuple(index)])) or 1.0
