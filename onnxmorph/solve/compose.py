"""Composition of two linear layers and the linear operators behind the morphism equation.

Shapes follow ONNX Conv weights: first layer F_l is (C_mid, C_in, *k1), second layer F_{l+1} is
(C_out, C_mid, *k2). A matrix is the case with no spatial dims. ONNX Conv is a cross-correlation, and the
composite of two cross-correlations (first at stride 1) is the cross-correlation with the *full convolution*
of the two kernels, of size k1 + k2 - 1 (network morphism paper, equation 6).
"""
from __future__ import annotations

import itertools
from math import prod

import numpy as np
import scipy.fft


def taps(shape: tuple[int, ...]):
    """All spatial tap indices of a kernel of this shape, row-major."""
    return list(itertools.product(*[range(k) for k in shape]))


def composite_size(k1: tuple[int, ...], k2: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a + b - 1 for a, b in zip(k1, k2))


def _compose_fft(first: np.ndarray, second: np.ndarray, kt: tuple[int, ...]) -> np.ndarray:
    """Full convolution over the spatial dims as products of spectra: one GEMM per frequency."""
    axes = tuple(range(2, 2 + len(kt)))
    fa = scipy.fft.rfftn(first, s=kt, axes=axes, workers=-1)     # (C_mid, C_in, *F)
    fb = scipy.fft.rfftn(second, s=kt, axes=axes, workers=-1)    # (C_out, C_mid, *F)
    fa = np.moveaxis(fa.reshape(fa.shape[:2] + (-1,)), 2, 0)
    fb = np.moveaxis(fb.reshape(fb.shape[:2] + (-1,)), 2, 0)
    prod_f = np.matmul(fb, fa)                    # (F, C_out, C_in)
    spec_shape = kt[:-1] + (kt[-1] // 2 + 1,)
    prod_f = np.moveaxis(prod_f, 0, 2).reshape(prod_f.shape[1:] + spec_shape)
    return scipy.fft.irfftn(prod_f, s=kt, axes=axes, workers=-1)


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """F_{l+1} ⊛ F_l: the single kernel (C_out, C_in, *(k1+k2-1)) the two layers compute together."""
    k1, k2 = first.shape[2:], second.shape[2:]
    kt = composite_size(k1, k2)
    n_freq = prod(kt[:-1]) * (kt[-1] // 2 + 1) if kt else 1
    # Direct: one GEMM per pair of taps. FFT: about 4 real GEMMs per frequency, so it wins for big kernels.
    if kt and 4 * n_freq < prod(k1) * prod(k2) and np.isrealobj(first) and np.isrealobj(second):
        return _compose_fft(first, second, kt)
    c_out, c_in = second.shape[0], first.shape[1]
    dtype = np.result_type(first, second)
    out = np.zeros((c_out, c_in) + kt, dtype=dtype)
    # Tap-major copies make every product one contiguous GEMM.
    first_t = np.ascontiguousarray(np.moveaxis(first.reshape(first.shape[0], c_in, -1), 2, 0))
    second_t = np.ascontiguousarray(np.moveaxis(second.reshape(c_out, second.shape[1], -1), 2, 0))
    out_t = np.zeros((prod(kt), c_out, c_in), dtype=dtype)
    taps1, taps2 = taps(k1), taps(k2)
    for iq, q in enumerate(taps2):
        for ir, r in enumerate(taps1):
            s = np.ravel_multi_index(tuple(a + b for a, b in zip(q, r)), kt) if kt else 0
            out_t[s] += second_t[iq] @ first_t[ir]
    out[...] = np.moveaxis(out_t, 0, 2).reshape(out.shape)
    return out


def compose_grouped(first: np.ndarray, second: np.ndarray, groups: int) -> np.ndarray:
    """Composite of two grouped layers with the same group count: (C_out, C_in/g, *kt)."""
    if groups == 1:
        return compose(first, second)
    mid_g = first.shape[0] // groups
    out_g = second.shape[0] // groups
    parts = [compose(first[g * mid_g:(g + 1) * mid_g], second[g * out_g:(g + 1) * out_g]) for g in range(groups)]
    return np.concatenate(parts, axis=0)


def embed(kernel: np.ndarray, size: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the spatial dims of `kernel` to `size`, with `offset` zeros before it in each dim."""
    out = np.zeros(kernel.shape[:2] + tuple(size), dtype=kernel.dtype)
    index = (slice(None), slice(None)) + tuple(slice(o, o + k) for o, k in zip(offset, kernel.shape[2:]))
    out[index] = kernel
    return out


def first_layer_operator(second: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """Matrix T with vec(compose(A, second)[:, c]) = T @ vec(A[:, c]) for every input channel c.

    Rows are (C_out, *kt) and columns (C_mid, *k1), both row-major. The same T serves all input channels,
    so the equation for F_l is one system with C_in right-hand sides.
    """
    c_out, c_mid = second.shape[:2]
    k2 = second.shape[2:]
    kt = composite_size(k1, k2)
    op = np.zeros((c_out,) + kt + (c_mid,) + tuple(k1), dtype=second.dtype)
    for q in taps(k2):
        for r in taps(k1):
            s = tuple(a + b for a, b in zip(q, r))
            op[(slice(None),) + s + (slice(None),) + r] = second[(slice(None), slice(None)) + q]
    return op.reshape(c_out * prod(kt), c_mid * prod(k1))


def _probe_inputs(kernel: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Contract the input-channel axis (1) with `probes` (C_in, p): a layer seen on p random input mixes."""
    return np.moveaxis(np.tensordot(kernel, probes, axes=([1], [0])), -1, 1)


def relative_residual(target: np.ndarray, first: np.ndarray, second: np.ndarray, groups: int = 1,
                      probes: int = 32) -> float:
    """‖target − F_{l+1} ⊛ F_l‖ / ‖target‖ (Frobenius), in float64.

    The composite is linear in the input channels, so for layers with many of them it is checked on `probes`
    Gaussian mixes of the inputs (Freivalds' check): E‖E·X‖² = p‖E‖², and with p = 32 the estimate falls
    below a tenth of the true value with probability under 1e-12. That turns the C_out×width×C_in product of a
    big fully connected layer into a C_out×width×p one."""
    c_in = target.shape[1]
    if probes and c_in > 2 * probes:
        mix = np.random.default_rng(c_in).standard_normal((c_in, probes)) / np.sqrt(probes)
        target, first = _probe_inputs(target, mix), _probe_inputs(first, mix)
    diff = compose_grouped(first, second, groups) - target
    norm = float(np.linalg.norm(target))
    return float(np.linalg.norm(diff)) / (norm if norm > 0 else 1.0)
