"""Rules for the linear layers: Conv (grouped and depthwise), Gemm, MatMul and Einsum contractions with a constant
weight. A layer that
writes the space is a producer (its output rows grow), one that reads it a consumer (its input columns grow); a
depthwise conv grows with the space. Grouped convs cut the space into their groups, each growing alike."""
from __future__ import annotations

from dataclasses import replace

from ..einsum import contraction
from ..proto import attr, node_name
from .table import backward, forward, refusal


def producer(an, node, tensor, entry):
    """A linear layer writes the space: its output rows grow (at the space's offset when its other rows are
    not in the space, as when a Split part of its output is the space; only a part's rows when it writes a
    part, as a residual branch added to a Split part does)."""
    last = (an.rank(tensor) or 0) - 1
    chunked = entry.chunks > 1 and entry.seg_axis is None and not entry.interleaved  # a fused QKV's Q, K, V
    if not (entry.simple or chunked) or ((entry.block != 1 or chunked) and (node.op_type == "Conv" or
                                                                           entry.axis != last)):
        an.refuse(node, tensor, "the layer writes a flattened or shuffled space")
    if (node, entry) in an.group.producer_entries:
        return
    if any(n is node for n, _ in an.group.producer_entries):
        an.refuse(node, tensor, "the layer writes the widened channels at two places")
    an.group.producers.append(node)
    an.group.producer_entries.append((node, entry))


def _depthwise(an, node, tensor, entry):
    if (not entry.simple and not _whole_interleaved(an, tensor, entry)) or entry.block != 1:
        an.refuse(node, node.output[0], "a depthwise conv over a flattened or shuffled space")
    if entry.offset != 0 or an.space_size(entry) != an.dim(tensor, entry.axis):
        an.refuse(node, node.output[0], "a depthwise conv over part of a tensor")
    if id(node) not in an.group.depthwise_entries:
        an.group.depthwise.append(node)
        an.group.depthwise_entries[id(node)] = entry
    an.add(node.input[0], entry)
    an.add(node.output[0], entry)
    return True


def _whole_interleaved(an, tensor, entry) -> bool:
    """The space fills the axis, shuffled (channel j of shuffle group s at j·g + s): a depthwise conv acts on each
    channel apart wherever it is."""
    return entry.interleaved and entry.chunks == 1 and entry.seg_axis is None and entry.offset == 0 and \
        entry.part is None and an.space_size(entry) == an.dim(tensor, entry.axis)


@backward("Conv")
def conv_backward(an, node, tensor, entry):
    """A Conv writes the space: a producer (a grouped conv gets new filters in every group), or a depthwise
    conv, whose input carries the space too."""
    w = an.const(node, 1)
    if w is None:
        an.refuse(node, tensor, "this op writes the widened channels and its weight is not a constant")
    g = attr(node, "group", 1)
    if g != 1 and w.shape[1] == 1 and g == w.shape[0]:
        return _depthwise(an, node, node.input[0], entry)
    producer(an, node, tensor, entry)
    if g != 1:   # its part of the space (all of it, unless it writes one input of a Concat) in g groups
        lo, hi = entry.part or (0, an.group.channels)
        an.group.grow_alike(f"grouped Conv {node_name(node)!r} (group {g}) writes the space: every group gets the "
                            "same number of new filters", _groups_of(lo, hi, g))
    return True


def _groups_of(lo, hi, g) -> list:
    """[[range of group k]] for g equal groups of [lo, hi)."""
    return [[(lo + (hi - lo) * k // g, lo + (hi - lo) * (k + 1) // g)] for k in range(g)]


@forward("Conv")
def grouped_conv_after_shuffle(an, node, tensor, entry, pos):
    """A grouped conv reads a shuffled space (ShuffleNet: the 1x1 group conv after the shuffle and the depthwise
    conv). Its group k reads channel range k of every shuffle group, so each shuffle group is cut into as many
    parts as the conv has groups, and every part grows by the same number: then each conv group gets the same
    new channels and keeps its own old ones."""
    g = attr(node, "group", 1)
    w = an.const(node, 1)
    if pos != [0] or not entry.interleaved or g == 1 or w is None or (w.shape[1] == 1 and g == w.shape[0]):
        return False
    if not _whole_interleaved(an, tensor, entry) or not an.group.interleave:
        an.refuse(node, tensor, "a grouped Conv reads part of a shuffled space")
    shuffle = an.group.interleave
    per_group = an.group.channels // shuffle
    if per_group % g:
        an.refuse(node, tensor, f"grouped conv rule: group {g} does not divide the {per_group} channels of each "
                                f"of the shuffle's {shuffle} groups")
    parts = [part for s in range(shuffle) for part in _groups_of(s * per_group, (s + 1) * per_group, g)]
    an.group.grow_alike(f"grouped Conv {node_name(node)!r} (group {g}) reads the {shuffle} shuffled groups: each "
                        f"of their {g} parts grows by the same number", parts, first=True)
    an.group.consumers.append((node, entry))
    return True


@forward("Conv")
def conv_forward(an, node, tensor, entry, pos):
    if pos != [0]:
        an.refuse(node, tensor, "the widened tensor is a Conv weight or bias")
    w = an.const(node, 1)
    if w is None:
        an.refuse(node, tensor, "Conv weight is not a constant")
    g = attr(node, "group", 1)
    c_in = an.dim(tensor, 1)
    if g != 1 and w.shape[1] == 1 and g == c_in and w.shape[0] == c_in:
        return _depthwise(an, node, tensor, entry)
    if entry.chunks != 1 or entry.seg_axis is not None or entry.block != 1 or (entry.interleaved and g != 1):
        an.refuse(node, tensor, "a Conv reads a flattened space, or a grouped Conv a shuffled one")
    if g != 1:
        # grouped conv: group k reads input channels [k·C/g, (k+1)·C/g); the space's channels there grow
        # by the same number in every group, so the group count stays and each group's width grows.
        per = c_in // g
        lo, hi = entry.part or (0, an.group.channels)
        if an.space_size(entry) != c_in or entry.offset != 0:
            an.refuse(node, tensor, _partial_groups(an, entry, g, c_in))
        an.group.grow_alike(f"grouped Conv {node_name(node)!r} (group {g}, {per} channels each) reads the space: "
                            "every group grows by the same number", _groups_of(lo, hi, g))
    an.group.consumers.append((node, entry))
    return True


def _partial_groups(an, entry, g, c_in) -> str:
    """Why a grouped conv that reads the space together with other channels cannot grow: its groups must stay
    equal, and a group that holds none of the widened channels gets no new ones."""
    begin, end = entry.offset, entry.offset + an.space_size(entry) * entry.block
    per = c_in // g
    empty = [k for k in range(g) if (k + 1) * per <= begin or k * per >= end]
    holds = f"the widened channels are its inputs [{begin}, {end}) of {c_in}"
    if empty:
        which = f"group {empty[0]}" if len(empty) == 1 else f"groups {', '.join(map(str, empty))}"
        return (f"grouped conv rule: group {g} ({per} channels each) reads the widened channels together with "
                f"others ({holds}): {which} hold{'s' * (len(empty) == 1)} none of them, so its groups cannot all "
                "grow by the same number")
    return (f"grouped conv rule: group {g} ({per} channels each) reads the widened channels together with others "
            f"({holds}); every group must grow by the same number, which onnxmorph does not place yet when the "
            "groups hold different numbers of them")


@backward("Gemm", "MatMul")
def linear_backward(an, node, tensor, entry):
    if node.op_type == "MatMul" and not an.has_const(node, 0) and not an.has_const(node, 1):
        return False   # a product of two activations (attention's rule)
    if not an.has_const(node, 1):
        an.refuse(node, tensor, "this op writes the widened channels and its weight is not a constant")
    producer(an, node, tensor, entry)
    return True


def _not_data_input(an, node) -> str:
    return f"the widened tensor is not the data input of a {node.op_type} with a constant weight"


refusal("MatMul", forward=_not_data_input)


@forward("Gemm", "MatMul")
def linear_forward(an, node, tensor, entry, pos):
    op = node.op_type
    if op == "MatMul" and not an.has_const(node, 1):
        return False   # a product of two activations (attention's rule)
    if pos != [0] or not an.has_const(node, 1):
        an.refuse(node, tensor, _not_data_input(an, node))
    rank = an.rank(tensor)
    features_axis = 0 if op == "Gemm" and attr(node, "transA", 0) else (rank - 1 if rank is not None else None)
    if features_axis is None or entry.axis != features_axis:
        an.refuse(node, tensor, "the widened channels are not the features axis")
    if entry.seg_axis is not None:
        an.refuse(node, tensor, "a half-shuffled space read by a matrix product")
    an.group.consumers.append((node, entry))
    return True


# --- Einsum contractions (graph/einsum.py): the weight's axes are named by the equation's letters -------------

def _letter(an, node, tensor, axis):
    """(contraction, the letter of `axis` of `tensor`, an input or the output of the Einsum)."""
    found = contraction(node)
    if found is None or not an.index.is_constant(node.input[1]):
        return None, None
    term = found.y if tensor == node.output[0] else found.x
    return found, (term[axis] if axis < len(term) else None)


@backward("Einsum")
def einsum_backward(an, node, tensor, entry):
    """The space is written on an output axis: a producer whose weight grows on that letter; on a free axis it
    comes from the same axis of the input."""
    found, letter = _letter(an, node, tensor, entry.axis)
    if letter is None:
        return False
    if letter in found.out:
        producer(an, node, tensor, entry)
        return True
    an.add(node.input[0], replace(entry, axis=found.x.index(letter)))
    return True


@forward("Einsum")
def einsum_forward(an, node, tensor, entry, pos):
    """The space is read on a contracted axis: a consumer whose weight grows on that letter; on a free axis it
    stays on the same axis of the output."""
    found, letter = _letter(an, node, tensor, entry.axis)
    if letter is None:
        return False
    if pos != [0]:
        an.refuse(node, tensor, "the widened tensor is the Einsum's weight")
    if entry.seg_axis is not None or entry.interleaved:
        an.refuse(node, tensor, "an Einsum reads a shuffled space")
    if letter in found.contracted:
        an.group.consumers.append((node, entry))
    else:
        an.add(node.output[0], replace(entry, axis=found.y.index(letter)))
    return True
