"""Helpers that write a grown channel space into a model, shared by widen (passes/widen.py) and the residual stream's
LEMON growth (passes/widen_stream.py)."""
from __future__ import annotations

import numpy as np

from ..graph.edit import set_constant
from ..graph.einsum import contraction
from ..graph.index import GraphIndex
from ..graph.proto import attr, node_name


def replace_input(index: GraphIndex, node, i: int, array: np.ndarray, what: str, old_names: list):
    """The tensor keeps its name; only one shared with a node widen leaves alone gets a new one."""
    old_names.append(node.input[i])
    set_constant(index, node, i, array, f"{node_name(node)}/morph_widen.{what}")


def arange_grown(indices: np.ndarray, axis: int, extra: int) -> np.ndarray:
    """Indices 0..C-1 laid along `axis` (every other axis of size 1), as 0..C+extra-1."""
    shape = list(indices.shape)
    shape[axis] += extra
    return np.arange(shape[axis], dtype=indices.dtype).reshape(shape)


def producer_axes(node) -> tuple[int, int | None]:
    """(weight axis of output channels, bias input index or None)."""
    if node.op_type == "Conv":
        return 0, 2
    if node.op_type == "Gemm":
        return (0 if attr(node, "transB", 0) else 1), 2
    if node.op_type == "Einsum":   # a layer writes one output letter, the weight's last axis
        return len(contraction(node).w) - 1, None
    return 1, None  # MatMul (K, N)


def consumer_axis(node, entry=None) -> int:
    """The weight axis of the input channels; an Einsum's is the letter of the input axis the space is on."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if attr(node, "transB", 0) else 0
    if node.op_type == "Einsum":
        found = contraction(node)
        return found.weight_axis(found.x[entry.axis])
    return 0  # MatMul (K, N)


def grow_shape_constants(index: GraphIndex, group, extra: int, old_names: list) -> None:
    """Every shape constant that counts the space (group.reshapes) grows by `extra` new units times its rate."""
    for edit in group.reshapes:  # once per place of the space in the reshaped tensor
        shape = index.constant(edit.node.input[edit.input_index]).copy()
        flat = shape.reshape(-1)
        if flat[edit.dim] > 0:  # -1 and 0 adapt by themselves
            flat[edit.dim] += int(extra * edit.per_channel)
            replace_input(index, edit.node, edit.input_index, shape, "shape", old_names)
