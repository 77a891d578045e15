"""Coupling rules for the residual stream of a transformer (d_model): LayerNormalization over the channel axis
is part of the space, embedding tables (Gather of a constant) write it, a Gather that selects tokens reads it.

A norm over the widened channels keeps the function only when the stream is duplicated, x' = [x; x; ...]: mean,
variance and RMS are unchanged, γ and β are copied, ε is unchanged (DESIGN.md, "Transformer math"). The group
records the norms; widen then grows by integer multiples only.
"""
from __future__ import annotations

import numpy as np
import onnx

from dataclasses import dataclass, field, replace

from .layers import attr


@dataclass
class Norm:
    """One normalisation over the space, fused or decomposed.

    kind: "layer" (mean and variance) or "rms" (root mean square). nodes: every node of it (one for the fused
    ops). input: the tensor it normalises; output: the normalised tensor after scale and bias. scale, bias: the
    input names of gamma and beta (None when absent). epsilon: where epsilon lives, (node, "epsilon") for an
    attribute, (node, input_index) for a constant input of an Add."""
    kind: str
    nodes: list
    input: str
    output: str
    scale: str | None = None
    bias: str | None = None
    epsilon: tuple | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        node = self.nodes[0]
        return node.name or node.output[0]

    def epsilon_value(self, index) -> float:
        node, where = self.epsilon
        if isinstance(where, str):
            return float(attr(node, where, 1e-5))
        return float(np.asarray(index.constant(node.input[where])).reshape(-1)[0])


def _norm(axis, rank):
    return axis + rank if axis < 0 else axis


def _layer_norm(an, group, node, tensor, entry):
    """LayerNormalization whose normalized axes are exactly the space (the last axis, whole)."""
    rank = an.rank(node.input[0])
    axis = _norm(attr(node, "axis", -1), rank) if rank is not None else None
    if axis is None or axis != rank - 1 or entry.axis != axis or not an.whole_axis(node.input[0], entry):
        an.refuse(node, tensor, "it normalizes over more than the widened channels")
    if any(o for o in node.output[1:]):
        an.refuse(node, tensor, "its mean and inverse deviation outputs are used")
    from .coupling import Entry, ParamUse
    for i, role in ((1, "norm_scale"), (2, "norm_bias")):
        if i < len(node.input) and node.input[i]:
            value = an.index.constant(node.input[i]) if an.index.is_constant(node.input[i]) else None
            if value is None:
                an.refuse(node, node.input[i], "a norm parameter that is not a constant")
            if value.size != 1:
                group.params.append(ParamUse(node, i, Entry(value.ndim - 1), role))
    if not any(n.nodes[0] is node for n in group.norms):
        inputs = list(node.input) + ["", ""]
        group.norms.append(Norm("layer", [node], node.input[0], node.output[0], inputs[1] or None,
                                inputs[2] or None, (node, "epsilon")))


def forward(an, group, node, tensor, entry, add, pos) -> bool:
    op = node.op_type
    if op == "LayerNormalization" and pos == [0]:
        _layer_norm(an, group, node, tensor, entry)
        add(node.output[0], entry)
        return True
    if op == "Gather" and pos == [0] and an.index.is_constant(node.input[1]):
        rank = an.rank(tensor)
        axis = _norm(attr(node, "axis", 0), rank)
        if axis == entry.axis:
            return False
        picked = np.asarray(an.index.constant(node.input[1]))
        moved = entry.axis if entry.axis < axis else entry.axis + picked.ndim - 1
        add(node.output[0], replace(entry, axis=moved))
        return True
    return False


def backward(an, group, node, tensor, entry, add) -> bool:
    op = node.op_type
    if op == "LayerNormalization":
        _layer_norm(an, group, node, tensor, entry)
        add(node.input[0], entry)
        return True
    if op == "Gather" and an.index.is_constant(node.input[0]) and attr(node, "axis", 0) == 0:
        table = an.index.constant(node.input[0])
        rank = an.rank(tensor)
        if table.ndim != 2 or rank is None or entry.axis != rank - 1 or not an.whole_axis(tensor, entry):
            return False
        from .coupling import Entry, ParamUse
        group.params.append(ParamUse(node, 0, Entry(1), "embedding"))
        return True
    return False
