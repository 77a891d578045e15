"""Rules for norms over the residual stream: LayerNormalization and RMSNormalization whose normalised axis is the
space, and the decomposed norms graph/norms.py recognises, each taken as one op. A norm over the space is recorded
on the group (widen then duplicates the stream or grows it by LEMON: passes/widen_stream.py); a norm over another
axis acts on each channel of the space apart."""
from __future__ import annotations

from dataclasses import replace

from ...errors import CannotMorph
from ..proto import attr, norm_axis
from ..space import Entry, Norm, ParamUse
from .table import backward, forward, refusal

FUSED = {"LayerNormalization": ("layer", ((1, "norm_scale"), (2, "norm_bias"))),
         "RMSNormalization": ("rms", ((1, "norm_scale"),))}
refusal(*FUSED, forward="it mixes values across the channel axis")


def _fused_norm(an, node, tensor, entry):
    """LayerNormalization or RMSNormalization whose normalized axes are exactly the space (the last axis, whole)."""
    kind, params = FUSED[node.op_type]
    rank = an.rank(node.input[0])
    axis = norm_axis(attr(node, "axis", -1), rank) if rank is not None else None
    if axis is None or axis != rank - 1 or entry.axis != axis or not an.whole_axis(node.input[0], entry):
        an.refuse(node, tensor, "it normalizes over more than the widened channels")
    if any(o for o in node.output[1:]):
        an.refuse(node, tensor, "its mean and inverse deviation outputs are used")
    for i, role in params:
        if i < len(node.input) and node.input[i]:
            value = an.const(node, i)
            if value is None:
                an.refuse(node, node.input[i], "a norm parameter that is not a constant")
            if value.size != 1:
                an.group.params.append(ParamUse(node, i, Entry(value.ndim - 1), role))
    if not any(n.nodes[0] is node for n in an.group.norms):
        inputs = list(node.input) + ["", ""]
        an.group.norms.append(Norm(kind, [node], node.input[0], node.output[0], inputs[1] or None,
                                   inputs[2] if kind == "layer" and inputs[2] else None, (node, "epsilon")))


@forward(*FUSED)
def fused_norm(an, node, tensor, entry, pos):
    if pos != [0]:
        return False
    _fused_norm(an, node, tensor, entry)
    an.add(node.output[0], entry)
    return True


@backward(*FUSED)
def fused_norm_backward(an, node, tensor, entry):
    _fused_norm(an, node, tensor, entry)
    an.add(node.input[0], entry)
    return True


def enter_norm(an, norm, node, tensor, entry) -> bool:
    """The walk meets a decomposed norm (graph/norms.py) at `tensor`, read or written by `node` of it. With the
    space on the last axis, whole: every per-channel tensor of the norm carries it at the same place (the reduced
    ones never), gamma and beta grow, the norm is recorded once. With the space on another axis, the norm acts on
    each of its channels apart (_across). The normalised axis is the last one, or axis 1 of NCHW (from_end 3).
    False when the rank is unknown (the node's own rules apply then)."""
    rank = an.rank(tensor)
    if rank is None:
        return False
    from_end = norm.extra.get("from_end", 1)   # the normalised axis: the last, or the channels of NCHW
    if entry.axis != rank - from_end:
        return _across(an, norm, node, tensor, entry, rank)
    if not an.whole_axis(tensor, entry):
        an.refuse(node, tensor, f"it is part of the {norm.kind_name} {norm.name!r}, which normalizes over more "
                                "than the widened channels")
    if not any(n is norm for n in an.group.norms):
        for where, role in ((norm.extra["scale_at"], "norm_scale"), (norm.extra["bias_at"], "norm_bias")):
            if where is not None:
                user, i = where
                axis = an.index.constant(user.input[i]).ndim - from_end
                an.group.params.append(ParamUse(user, i, Entry(axis), role))
        an.group.norms.append(norm)
    for member in norm.extra["channels"]:
        member_rank = an.rank(member)
        if member_rank is None:
            raise CannotMorph(f"the shape of tensor {member!r} is unknown, so its channels cannot be followed")
        an.add(member, replace(entry, axis=member_rank - from_end))
    return True


def _across(an, norm, node, tensor, entry, rank) -> bool:
    """The space lies on another axis than the normalised one: the norm acts on each of its channels apart,
    so every tensor of it, reduced ones included, carries the space at the same place; gamma and beta, one value
    per normalised channel, stay. A zero channel stays zero unless beta is added (or epsilon is 0: 0/0)."""
    if entry.seg_axis == rank - norm.extra.get("from_end", 1):
        an.refuse(node, tensor, f"it is part of the {norm.kind_name} {norm.name!r}, which normalizes over the "
                                "groups of the widened channels")
    an.group.zero_preserving &= norm.bias is None and norm.epsilon_value(an.index) > 0
    for member in norm.extra["channels"] + norm.extra["reduced"]:
        shift = (an.rank(member) or rank) - rank
        an.add(member, replace(entry, axis=entry.axis + shift,
                               seg_axis=None if entry.seg_axis is None else entry.seg_axis + shift))
    return True


def decomposed_forward(an, node, tensor, entry, pos) -> bool:
    """The first rule of every node of a decomposed norm, whatever its op (coupling/analysis.py)."""
    return enter_norm(an, an.norm_at(node), node, tensor, entry)


def decomposed_backward(an, node, tensor, entry) -> bool:
    return enter_norm(an, an.norm_at(node), node, tensor, entry)
