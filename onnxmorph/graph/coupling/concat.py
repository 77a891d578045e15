"""Rules for joining and cutting the channel axis: Concat places the space at its offset (a constant piece on
another axis grows like a parameter), Split cuts it into parts whose sizes follow the growth, and a Split of a
chunked axis into its chunks (GPT-2's fused QKV into Q, K and V) gives every part the whole space."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from ..proto import attr, norm_axis
from ..shape_source import ConstDim, ShapeEdit, entry_source
from ..space import BoundsEdit, ParamUse
from .table import backward, forward


def _concat_axis(an, node, tensor):
    return norm_axis(attr(node, "axis", 1), an.rank(tensor))


def _pieces(an, node, entry):
    """Concat on another axis than the space's: every operand carries the space; a constant one (ViT's class
    token) grows like a parameter."""
    for i, operand in enumerate(node.input):
        if an.index.is_constant(operand):
            an.group.params.append(ParamUse(node, i, entry, "concat_const"))
        else:
            an.add(operand, entry)


@forward("Concat")
def concat(an, node, tensor, entry, pos):
    axis = _concat_axis(an, node, tensor)
    if axis not in (entry.axis, entry.seg_axis):
        _pieces(an, node, entry)
        an.add(node.output[0], entry)
        return True
    if len(pos) != 1:
        an.refuse(node, tensor, "the same tensor is concatenated twice")
    if not entry.simple:
        an.refuse(node, tensor, "concatenating a flattened or shuffled space")
    offset = sum(an.dim(node.input[i], axis) for i in range(pos[0]))
    an.add(node.output[0], replace(entry, offset=entry.offset + offset))
    return True


@backward("Concat")
def concat_backward(an, node, tensor, entry):
    if norm_axis(attr(node, "axis", 0), an.rank(tensor)) == entry.axis:
        return False
    _pieces(an, node, entry)
    return True


@backward("Concat")
def concat_parts_backward(an, node, tensor, entry):
    """The space lies on the Concat's axis of its output: each input writes the part of the space inside its
    range (ShuffleNet's stride-2 unit: the pooled input and the branch make one stream), at the same place the
    forward rule puts it."""
    axis = norm_axis(attr(node, "axis", 0), an.rank(tensor))
    if axis != entry.axis or not entry.simple:
        return False
    lo, hi = entry.part or (0, an.group.channels)
    begin, end = entry.offset, entry.offset + (hi - lo) * entry.block
    start = 0
    for operand in node.input:
        size = an.dim(operand, axis)
        a, b = max(start, begin), min(start + size, end)
        if a < b:
            if (a - begin) % entry.block or (b - begin) % entry.block:
                an.refuse(node, tensor, "a Concat input holds part of a channel's block of columns")
            if an.index.is_constant(operand):
                an.refuse(node, operand, "a constant input of the Concat holds widened channels")
            part = (lo + (a - begin) // entry.block, lo + (b - begin) // entry.block)
            an.group.cut(*part)
            an.add(operand, replace(entry, offset=a - start, part=part))
        start += size
    return True


def cut_along(an, node, tensor, entry, bounds: list[tuple[int, int]], kind: str, slot: int = 0):
    """Outputs reading [start, stop) of the axis: each gets the part of the space inside its range."""
    if not entry.simple:
        an.refuse(node, tensor, "cutting a flattened or shuffled space")
    lo, hi = entry.part or (0, an.group.channels)
    begin, end = entry.offset, entry.offset + (hi - lo) * entry.block
    edges = []
    for (start, stop), out in zip(bounds, node.output):
        edges += [start, stop]
        a, b = max(start, begin), min(stop, end)
        if not out or a >= b:
            continue
        if (a - begin) % entry.block or (b - begin) % entry.block:
            an.refuse(node, tensor, "cuts inside a channel's block of columns")
        part = (lo + (a - begin) // entry.block, lo + (b - begin) // entry.block)
        an.group.cut(*part)
        an.add(out, replace(entry, offset=max(0, begin - start), part=part))
    if any(edit.node is node and edit.entry == entry for edit in an.group.bounds):
        return
    if any(edit.node is node for edit in an.group.bounds):
        an.refuse(node, tensor, "a Split/Slice reads the widened channels at two places")
    an.group.bounds.append(BoundsEdit(node, entry, edges, kind, slot))


def split_bounds(an, node, tensor) -> list:
    """[(axis, start, stop)] per output of a Split."""
    axis = norm_axis(attr(node, "axis", 0), an.rank(tensor))
    sizes = attr(node, "split", None)
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = an.const(node, 1)
        if sizes is None:
            an.refuse(node, tensor, "Split sizes computed at run time")
    if sizes is None:
        n, length = len(node.output), an.dim(tensor, axis)
        each = -(-length // n)
        sizes = [min(each, length - k * each) for k in range(n)]
    sizes = [int(s) for s in sizes]
    return [(axis, sum(sizes[:k]), sum(sizes[:k + 1])) for k in range(len(sizes))]


@backward("Split")
def split_backward(an, node, tensor, entry):
    """The space is one output of a Split on its axis: it sits at that output's start in the input (the
    forward rule then moves the sizes)."""
    if not entry.simple or entry.part is not None:
        an.refuse(node, tensor, "a part of a part of the widened channels")
    for (axis, start, _), out in zip(split_bounds(an, node, node.input[0]), node.output):
        if out == tensor:
            an.add(node.input[0], entry if axis != entry.axis else replace(entry, offset=entry.offset + start))
    return True


@forward("Split")
def split(an, node, tensor, entry, pos):
    """Split on the channel axis: every output is a part of the space; the sizes follow the growth."""
    an.data_only(node, tensor, pos)
    bounds = split_bounds(an, node, tensor)
    axis = bounds[0][0]
    if axis != entry.axis and axis != entry.seg_axis:
        for out in node.output:
            an.add(out, entry)
        return True
    kind = "split_attr" if attr(node, "split", None) is not None else (
        "split_input" if len(node.input) > 1 and node.input[1] else "split_equal")
    if entry.chunks > 1 and _split_chunks(an, node, tensor, entry, bounds, kind):
        return True
    cut_along(an, node, tensor, entry, [(a, b) for _, a, b in bounds], kind)
    return True


def _split_chunks(an, node, tensor, entry, bounds, kind) -> bool:
    """A Split of a chunked axis into its chunks (GPT-2's fused QKV into Q, K and V): every output holds the
    space, heads at the same place, so each chunk grows the same way; its size grows by block per new unit."""
    length = an.dim(tensor, entry.axis)
    size = length // entry.chunks
    if len(bounds) != entry.chunks or any((start, stop) != (k * size, (k + 1) * size)
                                          for k, (_, start, stop) in enumerate(bounds)):
        return False
    if kind == "split_attr":
        an.refuse(node, tensor, "its sizes are an attribute (opset < 13); onnxmorph grows them as an input only")
    if kind == "split_input":
        for k in range(entry.chunks):
            source = entry_source(an.index, node, 1, k, an.shapes)
            if not isinstance(source, ConstDim):
                an.refuse(node, tensor, "its sizes are computed at run time")
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim, Fraction(entry.block)), (tensor, k))
    for out in node.output:
        an.add(out, replace(entry, chunks=1))
    return True
