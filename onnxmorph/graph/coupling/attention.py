"""Rules for attention heads: the space is counted in whole heads (or whole GQA groups: a KV head with its query
heads), each a block of d_h (or r·d_h) features of a projection's output.

Followed ops: the head split Reshape (..., H·d_h) -> (..., H, d_h) and the merge back, the fused QKV's unflatten
(..., 3·E) -> (..., 3, E) (the space on E, the same in every chunk), the batched MatMuls Q·Kᵀ and A·V (heads are a
batch axis) and Softmax over the keys. Transposes, the scale, the mask Add, RoPE's Slice/Neg/Concat/Mul along d_h
and the GQA repeat (Unsqueeze -> Expand -> Reshape merging (G, r)) are the other families' rules. Constant shape
entries that count heads grow with them. DESIGN.md, "Transformer math": heads keep d_h, so the 1/sqrt(d_h) scale is
unchanged.

head_split finds whether a projection's output is split into heads at all (coupling/analysis.py asks it first).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..proto import attr, norm_axis
from ..space import Entry
from .reshape import grow_shape_entry, squeeze_axes
from .table import backward, forward


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
        found = _unit_padded_heads(index, shapes, user, out, shape)
        if found:
            return found
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
    return _slice_heads(index, shapes, tensor, shape, depth)


def _slice_heads(index, shapes, tensor, shape, depth):
    """Slices of the last axis into k >= 2 equal consecutive parts (Phi-3's qkv_proj under MHA: q, k, v), each
    split into heads of the same d_h: (d_h, k). The last part may run to the end (INT64_MAX)."""
    users = [u for u in index.consumers.get(tensor, []) if u.op_type != "Shape"]
    if len(users) < 2 or not shape[-1] or any(u.op_type != "Slice" or u.input[0] != tensor for u in users):
        return None
    parts = []
    for user in users:
        if len(user.input) < 4 or not all(index.is_constant(i) for i in user.input[1:4]) or \
                (len(user.input) > 4 and user.input[4] and not (index.is_constant(user.input[4]) and
                                                               (np.asarray(index.constant(user.input[4])) == 1).all())):
            return None
        starts, ends, axes = (np.asarray(index.constant(i)).reshape(-1) for i in user.input[1:4])
        if len(axes) != 1 or norm_axis(int(axes[0]), len(shape)) != len(shape) - 1:
            return None
        parts.append((int(starts[0]), min(int(ends[0]), shape[-1]), user.output[0]))
    parts.sort()
    size = shape[-1] // len(parts)
    if [(a, b) for a, b, _ in parts] != [(k * size, (k + 1) * size) for k in range(len(parts))]:
        return None
    found = {head_split(index, shapes, out, depth + 1) for _, _, out in parts}
    if len(found) != 1 or None in found:
        return None
    (d_h, one), = found
    return (d_h, len(parts)) if one == 1 else None


def _same_size(a, b) -> bool:
    """Two runs of axes of known sizes with the same product."""
    return None not in a and None not in b and int(np.prod(a)) == int(np.prod(b))


def _split_heads(index, shapes, split, shape, depth):
    """A Split of the last axis into equal parts, each split into heads of the same d_h: (d_h, parts)."""
    if norm_axis(attr(split, "axis", 0), len(shape)) != len(shape) - 1 or len(split.output) < 2:
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


def _moved_axis(index, node, axis, rank):
    """Where `axis` of node's data input lands in its output through Unsqueeze, Squeeze, Transpose or Identity;
    None when the node removes it or is none of these."""
    if node.op_type == "Identity":
        return axis
    if node.op_type == "Transpose":
        perm = list(attr(node, "perm", None) or reversed(range(rank)))
        return perm.index(axis)
    axes = squeeze_axes(index, node) if node.op_type in ("Unsqueeze", "Squeeze") else None
    if axes is None:
        return None
    if node.op_type == "Squeeze":
        axes = [norm_axis(a, rank) for a in axes]
        return None if axis in axes else axis - sum(a < axis for a in axes)
    for a in sorted(norm_axis(a, rank + len(axes)) for a in axes):
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
        if user.op_type == "Gather" and norm_axis(attr(user, "axis", 0), rank) == axis and \
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
    if len(axes) != 1 or norm_axis(int(axes[0]), rank) != axis or int(starts[0]) < 0 or int(ends[0]) != starts[0] + 1:
        return None
    return int(starts[0])


def _split_ones(index, shapes, node, axis, rank):
    """The outputs of a Split of `axis` into parts of size 1 (timm's unbind of Q, K, V, legacy export), else None."""
    if node.op_type != "Split" or norm_axis(attr(node, "axis", 0), rank) != axis:
        return None
    sizes = [(shapes.get(out) or [None] * rank)[axis] for out in node.output]
    return list(node.output) if sizes and all(size == 1 for size in sizes) else None


def _unit_padded_heads(index, shapes, reshape, out, shape):
    """(d_h, 1) for tf2onnx's split of Keras' EinsumDense into heads: a Reshape to (B, S, H, d_h, 1) whose unit
    axis is squeezed away, the heads later moved before the sequence by a Transpose (after the bias Add, the
    query's scale Mul and an Unsqueeze); None otherwise."""
    core = list(out)
    while core and core[-1] == 1:
        core.pop()
    if len(core) == len(out) or len(core) < 3 or None in core or core[-1] * core[-2] != shape[-1] or \
            core[-2] < 2 or not _same_size(core[:-2], shape[:-1]):
        return None
    return (core[-1], 1) if _heads_moved_first(index, reshape.output[0], len(core) - 2, len(core) - 3, len(out)) \
        else None


def _heads_moved_first(index, tensor, heads, seq, rank, depth=0) -> bool:
    """`tensor` (rank `rank`, heads on axis `heads`, the sequence on axis `seq`) reaches, through Squeeze of other
    axes, Unsqueeze, Identity and Add/Mul by constants, a Transpose that puts the heads before the sequence."""
    if depth > 6:
        return False
    for user in index.consumers.get(tensor, []):
        op, out = user.op_type, user.output[0]
        if op in ("Add", "Mul"):
            if any(index.is_constant(i) for i in user.input) and \
                    _heads_moved_first(index, out, heads, seq, rank, depth + 1):
                return True
            continue
        if user.input[0] != tensor:
            continue
        if op == "Transpose":
            perm = list(attr(user, "perm", []) or [])
            if len(perm) == rank and perm.index(heads) < perm.index(seq):
                return True
            continue
        if op not in ("Squeeze", "Unsqueeze", "Identity"):
            continue
        moved, moved_seq = _moved_axis(index, user, heads, rank), _moved_axis(index, user, seq, rank)
        if moved is None or moved_seq is None:
            continue
        count = len(squeeze_axes(index, user) or [])
        new_rank = rank + (count if op == "Unsqueeze" else -count if op == "Squeeze" else 0)
        if _heads_moved_first(index, out, moved, moved_seq, new_rank, depth + 1):
            return True
    return False


def _heads_first(index, reshape) -> bool:
    """The split is followed by a Transpose that moves the heads axis before the sequence axis (..., H, S, d_h)."""
    for user in index.consumers.get(reshape.output[0], []):
        perm = list(attr(user, "perm", []) or []) if user.op_type == "Transpose" else []
        r = len(perm)
        if r >= 3 and perm.index(r - 2) < perm.index(r - 3):
            return True
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


def _without_units(axes, sizes, keep=None):
    """The axes of a run but those of size 1 (tf2onnx's (B, S, H, d_h, 1)), `keep` kept in any case."""
    return [a for a in axes if sizes[a] != 1 or a == keep]


def _chunk_reshape(an, node, entry, forward):
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
    return other if grow_shape_entry(an, node, out_entry.axis, out_entry.block * out_entry.chunks) else None


def _head_reshape(an, node, entry, forward):
    """A Reshape that merges adjacent axes (or splits one, the other way round), the space on the first of two:
    heads (H, d_h) <-> H·d_h, GQA's (G, r) -> G·r, possibly with batch and sequence merged at the same time.
    Returns the space's entry on the other side, or None."""
    s_in, s_out = an.shapes.get(node.input[0]), an.shapes.get(node.output[0])
    runs = _axis_runs(s_in, s_out)
    if entry.chunks != 1 or entry.offset != 0 or runs is None:
        return None
    known, other_side = (0, 1) if forward else (1, 0)   # forward: the space is known on the input
    sizes = (s_in, s_out)
    mine, theirs = next(((run[known], run[other_side]) for run in runs if entry.axis in run[known]), ([], []))
    mine, theirs = _without_units(mine, sizes[known], entry.axis), _without_units(theirs, sizes[other_side])
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
    return other if grow_shape_entry(an, node, out_entry.axis, out_entry.block) else None


@forward("Reshape")
def head_reshape(an, node, tensor, entry, pos):
    if pos != [0]:
        return False
    out_entry = _head_reshape(an, node, entry, True) or _chunk_reshape(an, node, entry, True)
    if out_entry is not None:
        an.add(node.output[0], out_entry)
    return out_entry is not None


@backward("Reshape")
def head_reshape_backward(an, node, tensor, entry):
    in_entry = _head_reshape(an, node, entry, False) or _chunk_reshape(an, node, entry, False)
    if in_entry is not None:
        an.add(node.input[0], in_entry)
    return in_entry is not None


def _batched(an, node, tensor, entry) -> bool:
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
        an.add(name, Entry(axis, entry.offset, entry.block, entry.chunks))
    return True


@forward("MatMul")
def batched_matmul(an, node, tensor, entry, pos):
    if len(pos) != 1 or an.index.is_constant(node.input[1 - pos[0]]):
        return False
    return _batched(an, node, tensor, entry)


@backward("MatMul")
def batched_matmul_backward(an, node, tensor, entry):
    if any(an.index.is_constant(i) for i in node.input):
        return False
    return _batched(an, node, tensor, entry)


def _over_keys(an, node, tensor, entry) -> bool:
    """Softmax over another axis than the space's (the keys), at opset 13+ where it normalizes one axis only."""
    rank = an.rank(tensor)
    return rank is not None and an.index.opset >= 13 and norm_axis(attr(node, "axis", -1), rank) != entry.axis


@forward("Softmax", "LogSoftmax")
def softmax(an, node, tensor, entry, pos):
    if not _over_keys(an, node, tensor, entry):
        return False
    an.add(node.output[0], entry)
    return True


@backward("Softmax", "LogSoftmax")
def softmax_backward(an, node, tensor, entry):
    if not _over_keys(an, node, tensor, entry):
        return False
    an.add(node.input[0], entry)
    return True
