"""Coupling rules for attention heads: the space is counted in whole heads (or whole GQA groups: a KV head with
its query heads), each a block of d_h (or r·d_h) features of a projection's output.

Followed ops: the head split Reshape (..., H·d_h) -> (..., H, d_h) and the merge back, the fused QKV's unflatten
(..., 3·E) -> (..., 3, E) (the space on E, the same in every chunk), Transpose, the batched
MatMuls Q·Kᵀ and A·V (heads are a batch axis), the scale, the mask Add (broadcast over heads), Softmax over keys,
RoPE (Slice/Neg/Concat/Mul along d_h), and the GQA repeat (Unsqueeze -> Expand -> Reshape merging (G, r)).
Constant shape entries that count heads grow with them. DESIGN.md, "Transformer math": heads keep d_h, so the
1/sqrt(d_h) scale is unchanged.
"""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np

from .layers import attr
from .shape_source import ConstDim, DimRead, ShapeEdit, entry_source


def _norm(axis, rank):
    return axis + rank if axis < 0 else axis


def head_split(index, shapes, tensor, depth=0):
    """(d_h, parts) when `tensor` (..., F) reaches, through bias Adds, scale Muls (OPT scales Q before the split)
    and Reshapes that keep the last axis, a Reshape
    to (..., H, d_h) with H·d_h = F (parts 1), or a Split of the last axis into `parts` equal parts that each do
    so with the same d_h (GPT-2's fused QKV: parts 3), or a Reshape to (..., c, F/c) whose c chunks are picked
    out one by one and each do so (PyTorch's MultiheadAttention: parts 3). None otherwise."""
    shape = shapes.get(tensor)
    if not shape or depth > 4:
        return None
    for user in index.consumers.get(tensor, []):
        out = shapes.get(user.output[0])
        if user.op_type in ("Add", "Mul") and any(index.is_constant(i) for i in user.input):
            found = head_split(index, shapes, user.output[0], depth + 1)
            if found:
                return found
        if user.op_type in ("Squeeze", "Unsqueeze", "Identity") and out and shape[-1] and out[-1] == shape[-1] > 1:
            found = head_split(index, shapes, user.output[0], depth + 1)   # a picked chunk's axis squeezed away
            if found:
                return found
        if user.op_type != "Reshape" or user.input[0] != tensor or not out or not shape[-1]:
            if user.op_type == "Split" and user.input[0] == tensor:
                found = _split_heads(index, shapes, user, shape, depth)
                if found:
                    return found
            continue
        if len(out) >= 3 and out[-1] and out[-2] and out[-1] * out[-2] == shape[-1] and out[-2] > 1 and \
                _same_size(out[:-2], shape[:-1]) and _heads_first(index, user):   # (S, 1, F) -> (S, H, d_h) too
            return out[-1], 1
        if len(out) == len(shape) + 1:   # PyTorch's MultiheadAttention: (..., 3·E) -> (..., 3, E), then Q, K, V
            found = _chunk_heads(index, shapes, user, out, depth)
            if found:
                return found
        if len(out) == len(shape) + 2 and _same_size(out[-3:], shape[-1:]) and out[-3] > 1 and out[-2] > 1:
            picks = _chunk_picks(index, shapes, user.output[0], len(out) - 3, depth)   # timm: (..., 3, H, d_h)
            if picks and sorted(k for k, _ in picks) == list(range(out[-3])):
                return out[-1], out[-3]
        if out[-1] == shape[-1] and len(out) != len(shape):   # (B·S, F) <-> (B, S, F): the last axis kept
            found = head_split(index, shapes, user.output[0], depth + 1)
            if found:
                return found
    return None


def _same_size(a, b) -> bool:
    """Two runs of axes of known sizes with the same product."""
    return None not in a and None not in b and int(np.prod(a)) == int(np.prod(b))


def _split_heads(index, shapes, split, shape, depth):
    """A Split of the last axis into equal parts, each split into heads of the same d_h: (d_h, parts)."""
    if _norm(attr(split, "axis", 0), len(shape)) != len(shape) - 1 or len(split.output) < 2:
        return None
    found = {head_split(index, shapes, out, depth + 1) for out in split.output}
    sizes = {(shapes.get(out) or [None])[-1] for out in split.output}
    if len(found) != 1 or None in found or len(sizes) != 1 or None in sizes:
        return None
    (d_h, parts), = found
    return (d_h, len(split.output)) if parts == 1 and sizes == {shape[-1] // len(split.output)} else None


def _chunk_heads(index, shapes, reshape, out, depth):
    """A Reshape of the last axis into (c, E) whose c chunks are each picked out (a Gather of one index on that
    axis, after Unsqueeze/Transpose/Squeeze moves) and split into heads of the same d_h: (d_h, c)."""
    c = out[-2]
    if not c or c < 2 or not out[-1]:
        return None
    picks = _chunk_picks(index, shapes, reshape.output[0], len(out) - 2, depth)
    if not picks or sorted(k for k, _ in picks) != list(range(c)):
        return None
    found = {head_split(index, shapes, part, depth + 1) for _, part in picks}
    if len(found) != 1 or None in found:
        return None
    (d_h, parts), = found
    return (d_h, c) if parts == 1 else None


def _axes(index, node):
    """The axes of an Unsqueeze/Squeeze (attribute, or constant input from opset 13), or None."""
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and index.is_constant(node.input[1]):
        axes = index.constant(node.input[1])
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _moved_axis(index, node, axis, rank):
    """Where `axis` of node's data input lands in its output through Unsqueeze, Squeeze, Transpose or Identity;
    None when the node removes it or is none of these."""
    if node.op_type == "Identity":
        return axis
    if node.op_type == "Transpose":
        perm = list(attr(node, "perm", None) or reversed(range(rank)))
        return perm.index(axis)
    axes = _axes(index, node) if node.op_type in ("Unsqueeze", "Squeeze") else None
    if axes is None:
        return None
    if node.op_type == "Squeeze":
        axes = [_norm(a, rank) for a in axes]
        return None if axis in axes else axis - sum(a < axis for a in axes)
    for a in sorted(_norm(a, rank + len(axes)) for a in axes):
        axis += a <= axis
    return axis


def _chunk_picks(index, shapes, tensor, axis, depth):
    """[(chunk index, tensor holding that chunk)] for every use of `tensor`, whose `axis` indexes chunks: Gathers
    of one constant index on it, after moves of it; None when a use is something else."""
    rank = len(shapes.get(tensor) or ())
    picks = []
    for user in index.consumers.get(tensor, []):
        if depth > 8 or not rank or user.input[0] != tensor:
            return None
        if user.op_type == "Gather" and _norm(attr(user, "axis", 0), rank) == axis and \
                index.is_constant(user.input[1]) and np.asarray(index.constant(user.input[1])).ndim == 0:
            picks.append((int(index.constant(user.input[1])), user.output[0]))
            continue
        one = _one_slice(index, user, axis, rank)
        if one is not None:
            picks.append((one, user.output[0]))
            continue
        ones = _split_ones(index, shapes, user, axis, rank)
        if ones is not None:   # each part a Slice of one
            picks += list(enumerate(ones))
            continue
        moved = _moved_axis(index, user, axis, rank)
        found = None if moved is None else _chunk_picks(index, shapes, user.output[0], moved, depth + 1)
        if found is None:
            return None
        picks += found
    return picks


def _one_slice(index, node, axis, rank):
    """k when `node` is a Slice of [k, k + 1) on `axis` only (constant bounds, step 1), else None."""
    if node.op_type != "Slice" or len(node.input) < 4 or \
            not all(index.is_constant(i) for i in node.input[1:4]) or (len(node.input) > 4 and node.input[4]):
        return None
    starts, ends, axes = (np.asarray(index.constant(i)).reshape(-1) for i in node.input[1:4])
    if len(axes) != 1 or _norm(int(axes[0]), rank) != axis or int(starts[0]) < 0 or int(ends[0]) != starts[0] + 1:
        return None
    return int(starts[0])


def _split_ones(index, shapes, node, axis, rank):
    """The outputs of a Split of `axis` into parts of size 1 (timm's unbind of Q, K, V, legacy export), else None."""
    if node.op_type != "Split" or _norm(attr(node, "axis", 0), rank) != axis:
        return None
    sizes = [(shapes.get(out) or [None] * rank)[axis] for out in node.output]
    return list(node.output) if sizes and all(size == 1 for size in sizes) else None


def _heads_first(index, reshape) -> bool:
    """The split is followed by a Transpose that moves the heads axis before the sequence axis (..., H, S, d_h)."""
    for user in index.consumers.get(reshape.output[0], []):
        perm = list(attr(user, "perm", []) or []) if user.op_type == "Transpose" else []
        r = len(perm)
        if r >= 3 and perm.index(r - 2) < perm.index(r - 3):
            return True
    return False


def _shape_edit(an, group, node, position, per_unit):
    """The entry `position` of a Reshape/Expand shape counts the space: grow it when it is a constant."""
    source = entry_source(an.index, node, 1, position, an.shapes)
    if isinstance(source, ConstDim):
        if source.value > 0:
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim, Fraction(per_unit)), None)
        return source.value in (-1,) or source.value > 0
    return False


def _axis_runs(src, out):
    """[(src axes, out axes)]: consecutive runs of axes with equal sizes' products, as a Reshape pairs them
    ((1, 8, 4, 8) -> (8, 32): ([0, 1], [0]), ([2, 3], [1])), or None when a size is unknown or nothing pairs."""
    if not src or not out or None in src or None in out:
        return None
    runs, i, j = [], 0, 0
    while i < len(src) and j < len(out):
        if (src[i] == 1) != (out[j] == 1):   # an axis of size 1 that only one side has pairs with nothing
            runs.append(([i], []) if src[i] == 1 else ([], [j]))
            i, j = (i + 1, j) if src[i] == 1 else (i, j + 1)
            continue
        a, b, pa, pb = [i], [j], src[i], out[j]
        while pa != pb:
            if pa < pb and i + 1 < len(src):
                i += 1
                a.append(i)
                pa *= src[i]
            elif pb < pa and j + 1 < len(out):
                j += 1
                b.append(j)
                pb *= out[j]
            else:
                return None
        runs.append((a, b))
        i, j = i + 1, j + 1
    if any(d != 1 for d in list(src[i:]) + list(out[j:])):
        return None
    if runs:  # trailing axes of size 1 join the last run
        runs[-1] = (runs[-1][0] + list(range(i, len(src))), runs[-1][1] + list(range(j, len(out))))
    return runs


def _chunk_reshape(an, group, node, entry, forward):
    """A Reshape that splits a chunked axis into (k, rest) (PyTorch's unflatten of the fused in_proj into (3, E)):
    k of the chunks go to the new outer axis, the space stays on the inner one, at the same place in every
    chunk; or merges (k, rest) back (the other way round). Returns the space's entry on the other side, or None."""
    s_in, s_out = an.shapes.get(node.input[0]), an.shapes.get(node.output[0])
    runs = _axis_runs(s_in, s_out)
    if runs is None or entry.seg_axis is not None or entry.interleaved or entry.part is not None:
        return None
    known, other_side = (0, 1) if forward else (1, 0)   # forward: the space is known on the input
    sizes = (s_in, s_out)
    mine, theirs = next(((run[known], run[other_side]) for run in runs if entry.axis in run[known]), ([], []))
    if len(mine) == 1 and len(theirs) == 2 and entry.chunks > 1 and entry.chunks % sizes[other_side][theirs[0]] == 0:
        other = replace(entry, axis=theirs[1], chunks=entry.chunks // sizes[other_side][theirs[0]])
    elif len(mine) == 2 and len(theirs) == 1 and entry.axis == mine[1]:   # (k, rest) -> k·rest: k more chunks
        other = replace(entry, axis=theirs[0], chunks=entry.chunks * sizes[known][mine[0]])
    elif len(mine) == 1 and len(theirs) == 3 and entry.chunks == sizes[other_side][theirs[0]] and \
            entry.block % sizes[other_side][theirs[2]] == 0:   # timm's 3·H·d_h -> (3, H, d_h): the space on H
        other = replace(entry, axis=theirs[1], chunks=1, block=entry.block // sizes[other_side][theirs[2]])
    elif len(mine) == 3 and len(theirs) == 1 and entry.axis == mine[1] and entry.chunks == 1:   # and back
        other = replace(entry, axis=theirs[0], chunks=sizes[known][mine[0]], block=entry.block * sizes[known][mine[2]])
    else:
        return None
    out_entry = other if forward else entry
    return other if _shape_edit(an, group, node, out_entry.axis, out_entry.block * out_entry.chunks) else None


def _reshape(an, group, node, entry, forward):
    """A Reshape that merges adjacent axes (or splits one, the other way round), the space on the first of two:
    heads (H, d_h) <-> H·d_h, GQA's (G, r) -> G·r, possibly with batch and sequence merged at the same time.
    Returns the space's entry on the other side, or None."""
    s_in, s_out = an.shapes.get(node.input[0]), an.shapes.get(node.output[0])
    runs = _axis_runs(s_in, s_out)
    if entry.groups != 1 or entry.offset != 0 or runs is None:
        return None
    known, other_side = (0, 1) if forward else (1, 0)   # forward: the space is known on the input
    sizes = (s_in, s_out)
    mine, theirs = next(((run[known], run[other_side]) for run in runs if entry.axis in run[known]), ([], []))
    if not theirs:
        return None
    if len(mine) == 1 and len(theirs) == 1:   # the space only changes its axis index
        other = replace(entry, axis=theirs[0])
    elif len(mine) == 2 and len(theirs) == 1 and entry.axis == mine[0]:   # (U, k) -> U·k: blocks k times longer
        other = replace(entry, axis=theirs[0], block=entry.block * sizes[known][mine[1]])
    elif len(mine) == 1 and len(theirs) == 2:   # U·k -> (U, k)
        k = sizes[other_side][theirs[1]]
        if entry.block % k:
            return None
        other = replace(entry, axis=theirs[0], block=entry.block // k)
    else:
        return None
    out_entry = other if forward else entry
    return other if _shape_edit(an, group, node, out_entry.axis, out_entry.block) else None


def _dims(an, name):
    """The shape of an activation or of a constant."""
    shape = an.shapes.get(name)
    if shape is None and an.index.is_constant(name):
        shape = list(an.index.constant(name).shape)
    return shape


def _expand(an, group, node, entry):
    """Expand that broadcasts other axes (GQA's repeat, ViT's class token). On the space's axis the shape entry is
    1 (the input's size is kept, so it follows) or that size (a constant: it grows)."""
    s_in, s_out = _dims(an, node.input[0]), an.shapes.get(node.output[0])
    if not s_in or not s_out or len(s_in) != len(s_out) or s_in[entry.axis] != s_out[entry.axis] or \
            s_in[entry.axis] == 1:
        return False
    source = entry_source(an.index, node, 1, entry.axis, an.shapes)
    kept = isinstance(source, ConstDim) and source.value == 1
    read_back = isinstance(source, DimRead) and (source.tensor, source.axis) == (node.input[0], entry.axis)
    if kept or read_back:   # the output's size on the axis is the input's: it follows
        return True
    return _shape_edit(an, group, node, entry.axis, entry.block)


def forward(an, group, node, tensor, entry, add, pos) -> bool:
    """The rules below for `node` reading the space at `tensor`; False when none applies."""
    op = node.op_type
    rank = an.rank(tensor)
    if op == "Reshape" and pos == [0]:
        out_entry = _reshape(an, group, node, entry, True) or _chunk_reshape(an, group, node, entry, True)
        if out_entry is not None:
            add(node.output[0], out_entry)
        return out_entry is not None
    if op == "MatMul" and len(pos) == 1 and not an.index.is_constant(node.input[1 - pos[0]]):
        return _batched(an, node, tensor, entry, add)
    if op in ("Softmax", "LogSoftmax") and rank is not None:
        if _norm(attr(node, "axis", -1), rank) == entry.axis or an.index.opset < 13:
            return False
        add(node.output[0], entry)
        return True
    if op == "Slice" and pos == [0] and _slice_elsewhere(an, node, rank, entry):
        add(node.output[0], entry)
        return True
    if op == "Expand" and pos == [0]:
        if not _expand(an, group, node, entry):
            an.refuse(node, tensor, "the Expand's shape is read at run time (computed, not a constant)")
        add(node.output[0], entry)
        return True
    return False


def _slice_elsewhere(an, node, rank, entry) -> bool:
    axes = an.index.constant(node.input[3]) if len(node.input) > 3 and an.index.is_constant(node.input[3]) else None
    return axes is not None and entry.axis not in [_norm(int(a), rank) for a in axes]


def backward(an, group, node, tensor, entry, add) -> bool:
    """The space is written at output `tensor` of `node`: place it on the inputs; False when no rule applies."""
    op = node.op_type
    rank = an.rank(tensor)
    if op == "Reshape":
        in_entry = _reshape(an, group, node, entry, False) or _chunk_reshape(an, group, node, entry, False)
        if in_entry is not None:
            add(node.input[0], in_entry)
        return in_entry is not None
    if op == "Transpose":
        perm = list(attr(node, "perm", None) or reversed(range(rank)))
        add(node.input[0], type(entry)(perm[entry.axis], entry.offset, entry.block, entry.groups))
        return True
    if op == "MatMul" and not any(an.index.is_constant(i) for i in node.input):
        return _batched(an, node, tensor, entry, add)
    if op in ("Softmax", "LogSoftmax") and rank is not None and an.index.opset >= 13 and \
            _norm(attr(node, "axis", -1), rank) != entry.axis:
        add(node.input[0], entry)
        return True
    if op == "Unsqueeze":
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = an.index.constant(node.input[1])
        if axes is None:
            return False
        axes = sorted(_norm(int(a), rank) for a in axes)
        if entry.axis in axes:
            return False
        add(node.input[0], type(entry)(entry.axis - sum(a < entry.axis for a in axes), entry.offset, entry.block))
        return True
    if op in CHUNK_BACKWARD:
        return CHUNK_BACKWARD[op](an, node, entry, add)
    if op == "Expand":
        if not _expand(an, group, node, entry):
            if not an.index.is_constant(node.input[1]):
                an.refuse(node, tensor, "the Expand's shape is read at run time (computed, not a constant)")
            return False
        if an.index.is_constant(node.input[0]):
            from .coupling import ParamUse   # a constant broadcast into the space (ViT's class token) grows like one
            group.params.append(ParamUse(node, 0, entry, "concat_const"))
        else:
            add(node.input[0], entry)
        return True
    if op == "Slice" and _slice_elsewhere(an, node, rank, entry):
        add(node.input[0], entry)
        return True
    if op == "Concat" and _norm(attr(node, "axis", 0), rank) != entry.axis:
        from .coupling import ParamUse
        for i, operand in enumerate(node.input):
            if an.index.is_constant(operand):  # a constant piece (ViT's class token) grows like a parameter
                group.params.append(ParamUse(node, i, entry, "concat_const"))
            else:
                add(operand, entry)
        return True
    return False


def _squeeze_backward(an, node, entry, add) -> bool:
    """A picked chunk's axis squeezed away: the space sits on the same axis before it."""
    axes, rank = _axes(an.index, node), an.rank(node.input[0])
    if axes is None or rank is None:
        return False
    axis = entry.axis
    for a in sorted(_norm(a, rank) for a in axes):
        axis += a <= axis
    add(node.input[0], replace(entry, axis=axis))
    return True


def _pick_backward(an, node, entry, add) -> bool:
    """A Gather of one chunk (constant indices on another axis than the space's): every chunk holds the space at
    the same place, on the same axis of the input."""
    if not an.index.is_constant(node.input[1]) or an.index.is_constant(node.input[0]):
        return False
    rank = an.rank(node.input[0])
    picked = np.asarray(an.index.constant(node.input[1])).ndim
    axis = _norm(attr(node, "axis", 0), rank) if rank is not None else None
    if axis is None or axis <= entry.axis < axis + picked:
        return False
    add(node.input[0], replace(entry, axis=entry.axis if entry.axis < axis else entry.axis - picked + 1))
    return True


# Backward rules of the moves and picks of a fused QKV's chunks (forward, coupling's own rules apply).
CHUNK_BACKWARD = {"Squeeze": _squeeze_backward, "Gather": _pick_backward}


def _batched(an, node, tensor, entry, add) -> bool:
    """A MatMul of two activations (Q·Kᵀ, A·V): the space on a batch axis is on the same batch axis of both
    operands and the output (an operand of size 1 there broadcasts)."""
    rank = an.rank(tensor)
    if rank is None or rank - entry.axis <= 2:
        return False  # the space is on a matrix axis: a real contraction, not heads
    from_end = rank - entry.axis
    for name in list(node.input) + [node.output[0]]:
        r = an.rank(name)
        if r is None:
            return False
        axis = r - from_end
        if axis < 0 or (name != node.output[0] and an.shapes[name][axis] == 1):
            continue
        add(name, type(entry)(axis, entry.offset, entry.block, entry.groups))
    return True


def split_chunks(an, group, node, tensor, entry, bounds, kind, add) -> bool:
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
        add(out, replace(entry, chunks=1))
    return True
