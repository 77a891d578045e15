"""Rules for ops that move, cut or broadcast the channel axis without mixing channels: Reshape (flatten into a
linear layer, no-op reshapes, channel shuffles, reshapes that keep the last axis), Flatten, Squeeze/Unsqueeze,
Transpose, Slice, Gather by constant indices, Expand, and Shape reads of widened tensors. Shape entries that count
the space grow with it (graph/shape_source.py traces them to their constants)."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np

from ...errors import CannotMorph
from ..proto import attr, node_name, norm_axis
from ..shape_source import ConstDim, DimRead, ShapeEdit, element_uses, entry_source
from ..space import Entry, ParamUse
from .concat import cut_along
from .runtime import follows_at_run_time
from .table import WRITES, backward, forward, refusal


def squeeze_axes(index, node):
    """The axes of an Unsqueeze/Squeeze (attribute, or constant input from opset 13), or None."""
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and index.is_constant(node.input[1]):
        axes = index.constant(node.input[1])
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def grow_shape_entry(an, node, position, per_unit) -> bool:
    """Entry `position` of a Reshape/Expand shape counts the space: a constant grows by per_unit per new unit, -1
    follows by itself, one computed at run time is checked when the walk is done (coupling/runtime.py). False
    when the entry is 0 or cannot be evaluated."""
    source = entry_source(an.index, node, 1, position, an.shapes)
    if isinstance(source, ConstDim):
        if source.value > 0:
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim, Fraction(per_unit)), None)
        return source.value == -1 or source.value > 0
    if isinstance(source, DimRead) and an.follows_read(node, position, source, per_unit):
        return True   # (S[0], Mul(S[1], 2), S[2], S[3]): follows if S[1] grows with the space
    return follows_at_run_time(an, node)   # a shape computed otherwise: checked by evaluation at the end (runtime.py)


# --- Flatten and Reshape ------------------------------------------------------------------------------------

def _flattened(an, node, tensor, entry) -> Entry:
    """Where the space lands when `tensor` (N, ...) is flattened to (N, rest)."""
    rank = an.rank(tensor)
    if rank is None:
        raise CannotMorph(f"the shape of tensor {tensor!r} is unknown, so its channels cannot be followed")
    if not entry.simple or entry.block != 1 or entry.axis == 0:
        an.refuse(node, tensor, "flattening an already flattened or shuffled space")
    inner = 1
    for d in range(entry.axis + 1, rank):
        inner *= an.dim(tensor, d)
    outer = 1
    for d in range(1, entry.axis):
        outer *= an.dim(tensor, d)
    if outer == 1:  # channels first: channel c owns a block of `inner` columns
        return replace(entry, axis=1, offset=entry.offset * inner, block=inner)
    if inner == 1:  # channels last: the space repeats in every chunk of the last dim
        return replace(entry, axis=1, chunks=outer)
    an.refuse(node, tensor, "flattening with the channel axis in the middle")


@forward("Flatten")
def flatten(an, node, tensor, entry, pos):
    if norm_axis(attr(node, "axis", 1), an.rank(tensor)) != 1:
        an.refuse(node, tensor, "Flatten does not keep the batch axis alone")
    an.add(node.output[0], _flattened(an, node, tensor, entry))
    return True


def _keeps_last_axis(an, node, known, other, entry):
    """A Reshape whose channel axis is the last axis of both sides, whole (GPT-2's Conv1D: (B, S, D) ->
    (-1, D) -> Gemm -> (B, S, D')): only the axes before it merge or split. The space keeps its place on the last
    axis; the shape entry for it grows if it is a constant, follows by itself if it is -1 or read from the data
    at run time. `known` is the side where the space is placed already; returns its entry on `other`, or None."""
    s_in, s_out = an.shapes.get(node.input[0]), an.shapes.get(node.output[0])
    if not s_in or not s_out or entry.seg_axis is not None or entry.interleaved or \
            entry.axis != len(an.shapes.get(known) or ()) - 1:
        return None
    source = entry_source(an.index, node, 1, len(s_out) - 1, an.shapes)
    moved = replace(entry, axis=len(an.shapes[other]) - 1)
    if isinstance(source, ConstDim):
        kept = s_in[-1] is not None and (source.value == s_in[-1] or (
            source.value == 0 and len(s_in) == len(s_out)) or (source.value == -1 and s_out[-1] == s_in[-1]))
        if kept and source.value > 0:
            data_place = entry if known == node.input[0] else moved
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim,
                                    Fraction(entry.block * entry.chunks)), (node.input[0], data_place))
    else:  # read at run time from the last dim of the data, or of a tensor the space fills as well: it follows
        kept = isinstance(source, DimRead) and source.factor == 1 and \
            source.axis == len(an.shapes.get(source.tensor) or ()) - 1 and \
            an.same_last_dim(source.tensor, node.input[0], node)
        if kept:
            an.followed_reads.add((id(node), len(s_out) - 1))
    return moved if kept else None


def _reshape_refusal(an, node) -> str:
    if an.const(node, 1) is None:
        return "its target shape is read at run time and would not follow the growth"
    return "a Reshape that mixes the channel axis with others"


def _reshape_writes_refusal(an, node) -> str:
    if an.const(node, 1) is None:
        return "it writes the widened channels and its shape is read at run time"
    return WRITES


refusal("Reshape", forward=_reshape_refusal, backward=_reshape_writes_refusal)


@backward("Reshape")
def reshape_keeps_last_backward(an, node, tensor, entry):
    kept = _keeps_last_axis(an, node, tensor, node.input[0], entry)
    if kept is None:
        return False
    an.add(node.input[0], kept)
    return True


@forward("Reshape")
def reshape(an, node, tensor, entry, pos):
    """The Reshapes that keep channels apart; False leaves the rest to attention's head reshapes."""
    an.data_only(node, tensor, pos)
    src, out = an.shapes.get(tensor), an.shapes.get(node.output[0])
    if src is None or out is None:
        an.refuse(node, tensor, "a Reshape that mixes the channel axis with others, or whose shapes are unknown")
    shape = an.const(node, 1)
    if shape is None:
        kept = _keeps_last_axis(an, node, tensor, node.output[0], entry)
        if kept is not None:
            an.add(node.output[0], kept)
        return kept is not None
    shape = [int(s) for s in shape]
    space = an.group.channels
    a = entry.axis
    if len(out) == 2 and len(shape) == 2 and out[0] == src[0]:  # flatten to (N, features)
        out_entry = _flattened(an, node, tensor, entry)
        an.shape_edit(ShapeEdit(node, 1, 1, Fraction(out_entry.block * out_entry.chunks)), (tensor, entry))
        an.add(node.output[0], out_entry)
        return True
    if len(out) == 1 and entry.simple and entry.block == 1 and an.whole_axis(tensor, entry) and \
            all(d == 1 for i, d in enumerate(src) if i != a):   # (1, C, 1, 1) -> (C,): only the channel axis
        if shape[0] > 0:
            an.shape_edit(ShapeEdit(node, 1, 0, Fraction(1)), (tensor, entry))
        an.add(node.output[0], replace(entry, axis=0))
        return True
    if out == src and entry.simple:  # a no-op reshape (dynamo writes them)
        an.shape_edit(ShapeEdit(node, 1, a, Fraction(entry.block)), (tensor, entry))
        an.add(node.output[0], entry)
        return True
    kept = _keeps_last_axis(an, node, tensor, node.output[0], entry)
    if kept is not None:
        an.add(node.output[0], kept)
        return True
    if len(out) == len(src) + 1 and out[:a] == src[:a] and out[a + 2:] == src[a + 1:] and entry.simple and \
            out[a] and out[a + 1] and out[a] * out[a + 1] == src[a] and _shuffles(an, node, a):
        # channel shuffle, first half: (N, C, ...) -> (N, g, C/g, ...)
        g = out[a]
        if not an.whole_axis(tensor, entry):
            an.refuse(node, tensor, f"channel shuffle rule: Reshape splits the channel axis into {g} groups, "
                                    "and the widened channels fill only part of it; every group must grow")
        an.group.cut(0, space, g)
        an.group.equal_parts.append([[(space * k // g, space * (k + 1) // g)] for k in range(g)])
        an.group.interleave = g
        an.group.equal_growth.append(f"channel shuffle Reshape {node_name(node)!r} ({g} groups): every group "
                                     "grows by the same number")
        an.shape_edit(ShapeEdit(node, 1, a + 1, Fraction(1, g)), (tensor, entry))
        an.add(node.output[0], Entry(a + 1, seg_axis=a))
        return True
    if len(out) + 1 == len(src) and entry.seg_axis is not None and abs(entry.seg_axis - a) == 1:
        # channel shuffle, second half: (N, C/g, g, ...) or (N, g, C/g, ...) -> (N, C, ...)
        first = min(a, entry.seg_axis)
        if out[:first] == src[:first] and out[first + 1:] == src[first + 2:] and \
                out[first] == src[first] * src[first + 1]:
            an.shape_edit(ShapeEdit(node, 1, first, Fraction(1)), (tensor, entry))
            an.add(node.output[0], Entry(first, interleaved=entry.seg_axis > a))
            return True
    return False


def _shuffles(an, node, a) -> bool:
    """Reshape (N, g, C/g, ...) -> Transpose swapping those two axes -> Reshape back: a channel shuffle."""
    users = an.index.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Transpose":
        return False
    perm = list(attr(users[0], "perm", []))
    return len(perm) > a + 1 and perm[a] == a + 1 and perm[a + 1] == a


# --- axis moves ----------------------------------------------------------------------------------------------

def _inserted(axes):
    """Where axis x of an Unsqueeze's input lands, `axes` being the output axes it inserts."""
    def move(x):
        for a in sorted(axes):
            if a <= x:
                x += 1
        return x
    return move


@forward("Squeeze", "Unsqueeze")
def squeeze(an, node, tensor, entry, pos):
    op = node.op_type
    axes = squeeze_axes(an.index, node)
    if axes is None:
        an.refuse(node, tensor, f"{op} without axes")
    rank, out_rank = an.rank(tensor), an.rank(node.output[0])
    axes = [norm_axis(a, rank if op == "Squeeze" else out_rank) for a in axes]
    if op == "Squeeze":
        if entry.axis in axes or entry.seg_axis in axes:
            an.refuse(node, tensor, "Squeeze removes the channel axis")
        an.add(node.output[0], entry.moved(lambda x: x - sum(a < x for a in axes)))
    else:
        an.add(node.output[0], entry.moved(_inserted(axes)))
    return True


@backward("Squeeze")
def squeeze_backward(an, node, tensor, entry):
    """The space on a squeezed tensor sits on the same axis before the squeezed ones were removed (a picked
    chunk's axis squeezed away)."""
    axes, rank = squeeze_axes(an.index, node), an.rank(node.input[0])
    if axes is None or rank is None:
        return False
    an.add(node.input[0], entry.moved(_inserted([norm_axis(a, rank) for a in axes])))
    return True


@backward("Unsqueeze")
def unsqueeze_backward(an, node, tensor, entry):
    axes, rank = squeeze_axes(an.index, node), an.rank(tensor)
    if axes is None or rank is None:
        return False
    axes = [norm_axis(a, rank) for a in axes]
    if entry.axis in axes or entry.seg_axis in axes:
        return False
    an.add(node.input[0], entry.moved(lambda x: x - sum(a < x for a in axes)))
    return True


def _perm(an, node, tensor):
    perm = attr(node, "perm", None)
    return list(perm) if perm is not None else list(reversed(range(an.rank(tensor))))


@forward("Transpose")
def transpose(an, node, tensor, entry, pos):
    perm = _perm(an, node, tensor)
    an.add(node.output[0], entry.moved(lambda x: perm.index(x)))
    return True


@backward("Transpose")
def transpose_backward(an, node, tensor, entry):
    perm = _perm(an, node, tensor)
    an.add(node.input[0], entry.moved(lambda x: perm[x]))
    return True


# --- Slice ---------------------------------------------------------------------------------------------------

def slice_bounds(an, node, tensor):
    """(axes, starts, ends, steps) of a Slice, from attributes (opset < 10) or constant inputs."""
    rank = an.rank(tensor)
    if an.index.opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes", None), None
    else:
        starts, ends, axes, steps = (an.const(node, i) for i in (1, 2, 3, 4))
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) or (
                len(node.input) > 4 and node.input[4] and steps is None):
            an.refuse(node, tensor, "Slice bounds computed at run time")
    axes = list(range(len(starts))) if axes is None else [norm_axis(int(a), rank) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    return axes, [int(v) for v in starts], [int(v) for v in ends], steps


def slice_axes(an, node, tensor):
    """The axes a Slice cuts (normalised), known even when its bounds are computed at run time (RoPE's
    rotate_half cuts the head size at Div(Shape(x)[3], 2)); None when they are computed too."""
    rank = an.rank(tensor)
    if rank is None:
        return None
    if an.index.opset < 10:
        axes, starts = attr(node, "axes", None), attr(node, "starts")
        return [norm_axis(int(a), rank) for a in (axes if axes is not None else range(len(starts)))]
    if len(node.input) > 3 and node.input[3]:
        axes = an.const(node, 3)
        return None if axes is None else [norm_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)]
    starts = an.shapes.get(node.input[1]) if not an.index.is_constant(node.input[1]) else \
        [np.asarray(an.index.constant(node.input[1])).size]
    return list(range(starts[0])) if starts and starts[0] is not None else None


def _other_axes(an, node, tensor, entry) -> bool:
    """The Slice cuts only axes the space is not on: it passes the space through whatever its bounds."""
    axes = slice_axes(an, node, tensor)
    return axes is not None and entry.axis not in axes and entry.seg_axis not in axes


def slice_range(an, node, tensor, axis):
    """(start, stop, k) of the Slice along axis, normalised (k: the axis' place in the Slice's lists); None when
    the Slice leaves that axis whole."""
    axes, starts, ends, steps = slice_bounds(an, node, tensor)
    if axis not in axes:
        return None
    k = axes.index(axis)
    if steps[k] != 1:
        an.refuse(node, tensor, "a strided Slice of the channel axis")
    length = an.dim(tensor, axis)
    start, stop = starts[k], ends[k]
    start = min(max(start + length if start < 0 else start, 0), length)
    stop = min(max(stop + length if stop < 0 else stop, 0), length)
    return start, stop, k


@backward("Slice")
def slice_backward(an, node, tensor, entry):
    an.data_only(node, node.input[0], [0])
    if _other_axes(an, node, node.input[0], entry):
        an.add(node.input[0], entry)
        return True
    if not entry.simple or entry.part is not None:
        an.refuse(node, tensor, "a part of a part of the widened channels")
    found = slice_range(an, node, node.input[0], entry.axis)
    an.add(node.input[0], entry if found is None else replace(entry, offset=entry.offset + found[0]))
    return True


@forward("Slice")
def slice_(an, node, tensor, entry, pos):
    """Slice of the channel axis (step 1): a part of the space; the bounds follow the growth."""
    an.data_only(node, tensor, pos)
    if _other_axes(an, node, tensor, entry):
        an.add(node.output[0], entry)
        return True
    axes = slice_bounds(an, node, tensor)[0]
    if entry.seg_axis in axes:
        an.refuse(node, tensor, "slicing the groups of a shuffled space")
    found = slice_range(an, node, tensor, entry.axis)
    if found is None:
        an.add(node.output[0], entry)
        return True
    start, stop, k = found
    if entry.chunks > 1 and _slice_chunk(an, node, tensor, entry, start, stop, k):
        return True
    cut_along(an, node, tensor, entry, [(start, stop)], "slice_attr" if an.index.opset < 10 else "slice_input", k)
    return True


def _slice_chunk(an, node, tensor, entry, start, stop, k) -> bool:
    """A Slice that is chunk j of a chunked axis (the legacy exporter's chunk(2) of a fused gate_up): its output
    holds the whole space; start and end grow by j and j + 1 blocks per new channel."""
    size = an.dim(tensor, entry.axis) // entry.chunks
    j = start // size
    if entry.offset or start != j * size or stop != start + size or an.index.opset < 10:
        return False
    for input_index, units in ((1, j), (2, j + 1)):
        source = entry_source(an.index, node, input_index, k, an.shapes)
        if input_index == 2 and units == entry.chunks and isinstance(source, ConstDim) and \
                source.value >= 2**31 - 1:
            continue   # the last chunk runs to the end (INT64_MAX): its end follows by itself
        if not isinstance(source, ConstDim) or source.value != units * size:
            an.refuse(node, tensor, "its bounds are computed at run time or clamped")
        if units:
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim, Fraction(units * entry.block)),
                          (tensor, input_index))
    an.add(node.output[0], replace(entry, chunks=1))
    return True


# --- Gather by constant indices ------------------------------------------------------------------------------

@forward("Gather")
def arange_gather(an, node, tensor, entry, pos):
    """Gather of the whole channel axis by constant indices 0..C-1 laid along one axis of the index tensor (dynamo's
    as_strided, ConvNeXt's head): a move of the channel axis. The indices grow as 0..C'-1."""
    indices = an.const(node, 1)
    axis = norm_axis(attr(node, "axis", 0), an.rank(tensor) or 1)
    if pos != [0] or indices is None or axis != entry.axis or not entry.simple or entry.block != 1 or \
            not an.whole_axis(tensor, entry) or indices.size != an.dim(tensor, axis):
        return False
    along = [q for q, d in enumerate(indices.shape) if d != 1]
    if len(along) != 1 or not (indices.reshape(-1) == np.arange(indices.size)).all():
        return False
    an.group.params.append(ParamUse(node, 1, Entry(along[0]), "arange_index"))
    an.add(node.output[0], replace(entry, axis=axis + along[0]))
    return True


@backward("Gather")
def pick_backward(an, node, tensor, entry):
    """A Gather of one chunk (constant indices on another axis than the space's, a fused QKV's Q, K or V): every
    chunk holds the space at the same place, on the same axis of the input."""
    if not an.index.is_constant(node.input[1]) or an.index.is_constant(node.input[0]):
        return False
    rank = an.rank(node.input[0])
    picked = np.asarray(an.index.constant(node.input[1])).ndim
    axis = norm_axis(attr(node, "axis", 0), rank) if rank is not None else None
    if axis is None or axis <= entry.axis < axis + picked:
        return False
    an.add(node.input[0], replace(entry, axis=entry.axis if entry.axis < axis else entry.axis - picked + 1))
    return True


# --- Expand --------------------------------------------------------------------------------------------------

def _dims(an, name):
    """The shape of an activation or of a constant."""
    shape = an.shapes.get(name)
    if shape is None and an.index.is_constant(name):
        shape = list(an.index.constant(name).shape)
    return shape


def _expand_follows(an, node, entry) -> bool:
    """Expand that broadcasts other axes (GQA's repeat, ViT's class token). On the space's axis the shape entry is
    1 (the input's size is kept, so it follows) or that size (a constant: it grows)."""
    s_in, s_out = _dims(an, node.input[0]), an.shapes.get(node.output[0])
    if not s_in or not s_out or len(s_in) != len(s_out) or s_in[entry.axis] != s_out[entry.axis] or \
            s_in[entry.axis] == 1:
        return False
    source = entry_source(an.index, node, 1, entry.axis, an.shapes)
    kept = isinstance(source, ConstDim) and source.value == 1
    read_back = isinstance(source, DimRead) and (source.tensor, source.axis, source.factor) == \
        (node.input[0], entry.axis, 1)
    if kept or read_back:   # the output's size on the axis is the input's: it follows
        if read_back:
            an.followed_reads.add((id(node), entry.axis))
        return True
    return grow_shape_entry(an, node, entry.axis, entry.block)


_EXPAND_COMPUTED = "the Expand's shape is read at run time (computed, not a constant)"


@forward("Expand")
def expand(an, node, tensor, entry, pos):
    if pos != [0]:
        return False
    if not _expand_follows(an, node, entry):
        an.refuse(node, tensor, _EXPAND_COMPUTED)
    an.add(node.output[0], entry)
    return True


@backward("Expand")
def expand_backward(an, node, tensor, entry):
    if not _expand_follows(an, node, entry):
        if not an.index.is_constant(node.input[1]):
            an.refuse(node, tensor, _EXPAND_COMPUTED)
        return False
    if an.index.is_constant(node.input[0]):   # a constant broadcast into the space (ViT's class token)
        an.group.params.append(ParamUse(node, 0, entry, "concat_const"))
    else:
        an.add(node.input[0], entry)
    return True


# --- Shape reads ---------------------------------------------------------------------------------------------

_SHAPE_READ = "the tensor's shape is read at run time and would change"
refusal("Size", forward="the tensor's size is read at run time and would change")


@forward("Shape")
def shape(an, node, tensor, entry, pos):
    """A Shape read of a widened tensor is harmless when the dims it reads are other axes. A read of the space's
    axis must only set Reshape/Expand shape entries (through picks, Concat, Mul by a constant, ...) that follow the
    growth: the Reshape and Expand rules say so when they meet them, checked when the walk is done."""
    rank = an.rank(tensor)
    start = attr(node, "start", 0) or 0
    start = start + rank if start < 0 and rank else start
    for axis in {entry.axis, entry.seg_axis} - {None}:
        if axis < start or (attr(node, "end", None) is not None and rank and
                            axis >= norm_axis(attr(node, "end", None), rank)):
            continue
        uses = element_uses(an.index, node.output[0], axis - start, an.shapes)
        if uses is None:
            an.refuse(node, tensor, _SHAPE_READ)
        an.expect_read(node, tensor, uses)
    return True
