"""Function-preserving growth of transformer parts: the residual stream under LayerNorm/RMSNorm, attention
heads (with grouped-query attention), in pure numpy. DESIGN.md, "Transformer math"; tests/test_solve_transformer.py
checks each rule numerically on a reference block.

Arrays grow along one axis; "rows" of a producer are its output features, "columns" of a consumer its input
features, wherever they sit in the weight.
"""
from __future__ import annotations

import numpy as np

from .stats import normal_like, typical_std


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma


def extend(array: np.ndarray, axis: int, new: np.ndarray) -> np.ndarray:
    """`array` with `new` appended along `axis`."""
    return np.concatenate([np.asarray(array), np.asarray(new, dtype=np.asarray(array).dtype)], axis=axis)


# --- the residual stream ------------------------------------------------------------------------------------------

def stream_fill(array: np.ndarray, axis: int, extra: int, how: str) -> np.ndarray:
    """New stream entries of a producer's rows (weights, biases, embedding tables, added constants) along `axis`.

    how: "mean" (LayerNorm at any width: each new channel carries the mean of the old ones), "zeros" (RMSNorm at
    any width), "copy" (duplication x' = [x; x; ...]: `extra` must be a multiple of the old size)."""
    x = np.moveaxis(np.asarray(array), axis, 0)
    d = x.shape[0]
    if how == "mean":
        new = np.repeat(x.mean(0, keepdims=True), extra, axis=0)
    elif how == "zeros":
        new = np.zeros((extra,) + x.shape[1:], dtype=x.dtype)
    elif how == "copy":
        if extra % d:
            raise ValueError(f"duplication needs a multiple of {d} new channels, not {extra}")
        new = np.concatenate([x] * (extra // d))
    else:
        raise ValueError(how)
    return np.moveaxis(extend(x, 0, new.astype(x.dtype)), 0, axis)


def split_columns(w: np.ndarray, axis: int, copies: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A consumer's columns for a duplicated input [x; x; ...] (`copies` blocks in all): blocks that sum to the
    original. With rng they differ (exact symmetry breaking): w/k + r_i with sum r_i = 0."""
    w = np.asarray(w)
    blocks = [w / copies for _ in range(copies)]
    if rng is not None and copies > 1:
        scale = (float(np.std(w)) or 1.0) / copies
        noise = [rng.standard_normal(w.shape) * scale for _ in range(copies - 1)]
        noise.append(-np.sum(noise, axis=0))
        blocks = [b + n.astype(w.dtype) for b, n in zip(blocks, noise)]
    return np.concatenate(blocks, axis=axis).astype(w.dtype)


def lemon_norm(gamma: np.ndarray, beta: np.ndarray | None, eps: float, d_new: int, new_gamma: float = 1.0):
    """Pre-norm LayerNorm/RMSNorm at any width D' (LEMON). The stream's new channels carry mean(x) (LayerNorm) or
    0 (RMSNorm); then var' = η²var (or ms' = η²ms) with η² = D/D'. Returns (γ', β', ε'): γ_old·η, β_new = 0,
    ε' = η²ε, so the norm's output is [norm(x); 0] (the new γ entries multiply 0 and are free)."""
    d = gamma.shape[-1]
    eta2 = d / d_new
    eta = np.sqrt(eta2)
    g = extend(gamma * eta, -1, np.full(d_new - d, new_gamma, dtype=gamma.dtype)).astype(gamma.dtype)
    b = None if beta is None else extend(beta, -1, np.zeros(d_new - d, dtype=beta.dtype))
    return g, b, eps * eta2


def grow_space(array: np.ndarray, axis: int, offset: int, d: int, extra: int, how: str,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """`array` with `extra` entries inserted after the space's d entries at [offset, offset + d) of `axis`.

    how: "mean" / "zeros" (stream_fill: LEMON's new stream rows), "ones", "random" (normal, the old entries'
    std) or "copy" (random existing entries): the last two for columns that only ever multiply zeros. The result
    is written once, in place (a weight of the stream can be hundreds of MB)."""
    x = np.asarray(array)
    end = offset + d

    def along(lo, hi):
        index = [slice(None)] * x.ndim
        index[axis] = slice(lo, hi)
        return tuple(index)
    shape = list(x.shape)
    shape[axis] += extra
    out = np.empty(shape, dtype=x.dtype)
    out[along(0, end)] = x[along(0, end)]
    out[along(end + extra, None)] = x[along(end, None)]
    body = x[along(offset, end)]
    new = out[along(end, end + extra)]
    if how == "mean":
        new[...] = body.mean(axis, keepdims=True)
    elif how in ("zeros", "ones"):
        new[...] = 0 if how == "zeros" else 1
    elif how == "random":   # drawn with the space's axis first
        moved = (extra,) + tuple(np.delete(body.shape, axis))
        new[...] = np.moveaxis(normal_like(rng, moved, typical_std(body), x.dtype), 0, axis)
    elif how == "copy":
        new[...] = np.take(body, rng.integers(0, d, size=extra), axis=axis)
    else:
        raise ValueError(how)
    return out


# --- attention heads ----------------------------------------------------------------------------------------------

def head_order(q_heads: int, kv_heads: int, new_groups: int, layout: str = "interleave") -> np.ndarray:
    """Where the old query heads go among q_heads' = q_heads + new_groups·r (r = q_heads / kv_heads query heads
    per KV head) when new_groups whole groups are added and the KV heads grow from kv_heads to kv_heads +
    new_groups, appended. layout: how the graph repeats KV heads for the query heads:
    "interleave" (repeat_interleave, HF repeat_kv: query head i reads KV head i // r) or
    "tile" (query head i reads KV head i % kv_heads).
    Returns old_position[i] for i < q_heads; the other positions are the new heads."""
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads do not split into {kv_heads} groups")
    i = np.arange(q_heads)
    if layout == "interleave":
        return i
    if layout == "tile":
        return (i // kv_heads) * (kv_heads + new_groups) + i % kv_heads
    raise ValueError(layout)


def grow_heads(w: np.ndarray, axis: int, head_dim: int, old_position: np.ndarray, heads_new: int,
               fill: str, rng: np.random.Generator) -> np.ndarray:
    """Heads along `axis` (H blocks of head_dim) placed at old_position among heads_new; the new heads' blocks
    are random (Q/K/V rows) or zeros (output-projection columns)."""
    x = np.moveaxis(np.asarray(w), axis, 0)
    heads = x.reshape((x.shape[0] // head_dim, head_dim) + x.shape[1:])
    shape = (heads_new,) + heads.shape[1:]
    if fill == "zeros":
        out = np.zeros(shape, dtype=x.dtype)
    elif fill == "random":
        out = (rng.standard_normal(shape) * (float(np.std(heads)) or 1.0)).astype(x.dtype)
    else:
        raise ValueError(fill)
    out[old_position] = heads
    return np.moveaxis(out.reshape((heads_new * head_dim,) + x.shape[1:]), 0, axis)
