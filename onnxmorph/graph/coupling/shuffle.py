"""Rules for channel shuffles walked backwards (the reshape family has them forwards): a space written at the
output of a shuffle's merge Reshape ((N, C/g, g, ...) -> (N, C, ...), ShuffleNet's depthwise conv after the
shuffle) lies on the two split axes before it, and on the channel axis before the split Reshape ((N, C, ...) ->
(N, g, C/g, ...)). The entries, cuts and shape edits are the ones the forward rules make, so the walk meets the
same places from either side."""
from __future__ import annotations

from fractions import Fraction

from ..proto import attr, node_name
from ..shape_source import ShapeEdit
from ..space import Entry
from .table import backward


def _split_pair(src, out, axis) -> bool:
    """`src` is `out` with axis `axis` split into two axes."""
    return bool(src and out) and len(src) == len(out) + 1 and None not in src and None not in out and \
        out[:axis] == src[:axis] and out[axis + 1:] == src[axis + 2:] and src[axis] * src[axis + 1] == out[axis]


def _whole(an, tensor, entry) -> bool:
    return entry.chunks == 1 and entry.block == 1 and entry.offset == 0 and entry.part is None and \
        an.space_size(entry) == an.dim(tensor, entry.axis)


def _groups(an, node, g, edit_axis, rate, data, entry):
    c = an.group.channels
    an.group.interleave = g
    an.group.grow_alike(f"channel shuffle Reshape {node_name(node)!r} ({g} groups): every group grows by the same "
                        "number", [[(c * k // g, c * (k + 1) // g)] for k in range(g)])
    an.shape_edit(ShapeEdit(node, 1, edit_axis, rate), (data, entry))


@backward("Reshape")
def shuffle_merge_backward(an, node, tensor, entry):
    """(N, C/g, g, ...) -> (N, C, ...) after the Transpose of a shuffle, the space interleaved on C."""
    a = entry.axis
    src, out = an.shapes.get(node.input[0]), an.shapes.get(tensor)
    swap = an.index.producer.get(node.input[0])
    perm = list(attr(swap, "perm", []) or []) if swap is not None and swap.op_type == "Transpose" else []
    if not entry.interleaved or not _split_pair(src, out, a) or len(perm) <= a + 1 or \
            perm[a] != a + 1 or perm[a + 1] != a or not _whole(an, tensor, entry):
        return False
    g = src[a + 1]
    if an.group.interleave not in (None, g) or an.group.channels % g:
        return False
    place = Entry(a, seg_axis=a + 1)
    _groups(an, node, g, a, Fraction(1), node.input[0], place)
    an.add(node.input[0], place)
    return True


@backward("Reshape")
def shuffle_split_backward(an, node, tensor, entry):
    """(N, C, ...) -> (N, g, C/g, ...) before the Transpose of a shuffle, the space on C/g, its groups on g."""
    s = entry.seg_axis
    src, out = an.shapes.get(tensor), an.shapes.get(node.input[0])
    if s is None or entry.axis != s + 1 or entry.interleaved or entry.chunks != 1 or entry.block != 1 or \
            entry.offset or entry.part is not None or not _split_pair(out, src, s):
        return False
    g = src[s]
    if out[s] != an.group.channels or an.group.interleave not in (None, g):
        return False
    place = Entry(s)
    _groups(an, node, g, s + 1, Fraction(1, g), node.input[0], place)
    an.add(node.input[0], place)
    return True
