"""Coupling rules for the residual stream of a transformer (d_model): a norm over the channel axis is part of the
space (LayerNormalization, RMSNormalization, or the decomposed subgraphs graph/norms.py recognises), embedding
tables (Gather of a constant) write it, a Gather that selects tokens reads it.

The group records the norms (Norm records). widen grows the stream by duplication at integer multiples,
x' = [x; x; ...]: mean, variance and RMS are unchanged, γ and β are copied, ε is unchanged; at any other width a
pre-norm stream grows by LEMON (passes/widen_stream.py; DESIGN.md, "Transformer math").
"""
from __future__ import annotations

import numpy as np
import onnx

from dataclasses import dataclass, field, replace

from ..errors import CannotMorph
from .layers import attr, node_name


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
        return node_name(node)

    def epsilon_value(self, index) -> float:
        node, where = self.epsilon
        if isinstance(where, str):
            return float(attr(node, where, 1e-5))
        return float(np.asarray(index.constant(node.input[where])).reshape(-1)[0])


def _norm(axis, rank):
    return axis + rank if axis < 0 else axis


FUSED = {"LayerNormalization": ("layer", ((1, "norm_scale"), (2, "norm_bias"))),
         "RMSNormalization": ("rms", ((1, "norm_scale"),))}


def _fused_norm(an, group, node, tensor, entry):
    """LayerNormalization or RMSNormalization whose normalized axes are exactly the space (the last axis, whole)."""
    kind, params = FUSED[node.op_type]
    rank = an.rank(node.input[0])
    axis = _norm(attr(node, "axis", -1), rank) if rank is not None else None
    if axis is None or axis != rank - 1 or entry.axis != axis or not an.whole_axis(node.input[0], entry):
        an.refuse(node, tensor, "it normalizes over more than the widened channels")
    if any(o for o in node.output[1:]):
        an.refuse(node, tensor, "its mean and inverse deviation outputs are used")
    from .coupling import Entry, ParamUse
    for i, role in params:
        if i < len(node.input) and node.input[i]:
            value = an.index.constant(node.input[i]) if an.index.is_constant(node.input[i]) else None
            if value is None:
                an.refuse(node, node.input[i], "a norm parameter that is not a constant")
            if value.size != 1:
                group.params.append(ParamUse(node, i, Entry(value.ndim - 1), role))
    if not any(n.nodes[0] is node for n in group.norms):
        inputs = list(node.input) + ["", ""]
        group.norms.append(Norm(kind, [node], node.input[0], node.output[0], inputs[1] or None,
                                inputs[2] if kind == "layer" and inputs[2] else None, (node, "epsilon")))


def enter_norm(an, group, norm, node, tensor, entry, add) -> bool:
    """The walk meets a decomposed norm (graph/norms.py) at `tensor`, read or written by `node` of it. With the
    space on the last axis, whole: every per-channel tensor of the norm carries it at the same place (the reduced
    ones never), gamma and beta grow, the norm is recorded once. With the space on another axis, the norm acts on
    each of its channels apart (_across). False when the rank is unknown (the node's own rule applies then)."""
    rank = an.rank(tensor)
    if rank is None:
        return False
    if entry.axis != rank - 1:
        return _across(an, group, norm, node, tensor, entry, add, rank)
    if not an.whole_axis(tensor, entry):
        an.refuse(node, tensor, f"it is part of the {kind_name(norm)} {norm.name!r}, which normalizes over more "
                                "than the widened channels")
    if not any(n is norm for n in group.norms):
        from .coupling import Entry, ParamUse
        for where, role in ((norm.extra["scale_at"], "norm_scale"), (norm.extra["bias_at"], "norm_bias")):
            if where is not None:
                user, i = where
                group.params.append(ParamUse(user, i, Entry(an.index.constant(user.input[i]).ndim - 1), role))
        group.norms.append(norm)
    for member in norm.extra["channels"]:
        member_rank = an.rank(member)
        if member_rank is None:
            raise CannotMorph(f"the shape of tensor {member!r} is unknown, so its channels cannot be followed")
        add(member, replace(entry, axis=member_rank - 1))
    return True


def _across(an, group, norm, node, tensor, entry, add, rank) -> bool:
    """The space lies on another axis than the normalised (last) one: the norm acts on each of its channels apart,
    so every tensor of it, reduced ones included, carries the space at the same place; gamma and beta, one value
    per normalised channel, stay. A zero channel stays zero unless beta is added (or epsilon is 0: 0/0)."""
    if entry.seg_axis == rank - 1:
        an.refuse(node, tensor, f"it is part of the {kind_name(norm)} {norm.name!r}, which normalizes over the "
                                "groups of the widened channels")
    group.zero_preserving &= norm.bias is None and norm.epsilon_value(an.index) > 0
    for member in norm.extra["channels"] + norm.extra["reduced"]:
        shift = (an.rank(member) or rank) - rank
        add(member, replace(entry, axis=entry.axis + shift,
                            seg_axis=None if entry.seg_axis is None else entry.seg_axis + shift))
    return True


def kind_name(norm) -> str:
    return {"layer": "LayerNorm", "rms": "RMSNorm"}[norm.kind]


def forward(an, group, node, tensor, entry, add, pos) -> bool:
    op = node.op_type
    if op in FUSED and pos == [0]:
        _fused_norm(an, group, node, tensor, entry)
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
    if op in FUSED:
        _fused_norm(an, group, node, tensor, entry)
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
