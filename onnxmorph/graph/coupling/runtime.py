"""Rules for shapes computed at run time from the dims of widened tensors: Shape reads of the space's axis, and
Reshape/Expand targets built from them (tf2onnx writes Keras' Tensordot and attention reshapes as Shape -> Gather ->
ReduceProd/Max -> Concat -> Reshape; ConvNeXt's 4-D Dense flattens (N, H, W, C) by ReduceProd of read dims).

Such a value follows the growth by itself when it is read from a tensor that grows the way the reshaped tensor
does. Rather than trace each formula, the walk records where those values are used, and when it is done
(check_runtime_shapes) evaluates every one of them (graph/shape_eval.py) twice, on the dims the widened tensors will
have with 1 and with 2 new units per segment (and the shape constants grown as the group grows them): a Reshape's
target must give its output's grown shape, an Expand's the grown broadcast (when they reshape a widened tensor),
and any other use must not change.

follows_at_run_time is the reshape family's fallback for a shape entry that is not a constant
(coupling/reshape.py, grow_shape_entry); shape_read is the first rule of Shape, before the reshape family's.
"""
from __future__ import annotations

import numpy as np

from ...errors import CannotMorph
from ..proto import attr, node_name
from ..shape_eval import ShapeEvaluator, resolve_reshape
from .table import forward

_TRIES = (1, 2)   # new units per segment the recorded targets are evaluated at


def _dims(an, tensor):
    if an.index.is_constant(tensor):
        return list(np.shape(an.index.constant(tensor)))
    return an.shapes.get(tensor)


def _evaluator(an) -> ShapeEvaluator:
    return ShapeEvaluator(an.index, lambda t: _dims(an, t))


def follows_at_run_time(an, node, input_index: int = 1) -> bool:
    """The shape input of `node` is computed at run time: True when it can be evaluated on the analysis' shapes;
    it is then checked with the grown sizes when the walk is done (check_runtime_shapes)."""
    if _evaluator(an).input(node, input_index) is None:
        return False
    an.runtime_uses.setdefault((id(node), input_index), (node, input_index))
    return True


def _uses(an, tensor):
    """(node, input index) of every use of a value computed from `tensor` (a shape vector) that is not itself
    more shape arithmetic; None when one cannot be evaluated."""
    evaluator, uses, todo, seen = _evaluator(an), [], [tensor], set()
    while todo:
        t = todo.pop()
        if t in an.index.graph_outputs:
            return None
        for user in an.index.consumers.get(t, []):
            for i, name in enumerate(user.input):
                if name != t:
                    continue
                out = user.output[0] if user.output else ""
                if out in seen:
                    continue
                if out and evaluator.value(out) is not None and user.op_type != "Shape":
                    seen.add(out)
                    todo.append(out)
                else:
                    uses.append((user, i))
    return uses


@forward("Shape")
def shape_read(an, node, tensor, entry, pos):
    """A Shape read that covers the space's axis: every value computed from it is recorded and checked when the
    walk is done. False (the reshape family's rule decides) when it reads only other axes or when the values it
    feeds cannot be evaluated."""
    shape = an.shapes.get(tensor)
    if shape is None or None in shape:
        return False
    start, end = attr(node, "start", 0), attr(node, "end", None)
    read = range(len(shape))[start:end]
    if entry.axis not in read and (entry.seg_axis is None or entry.seg_axis not in read):
        return False
    if _evaluator(an).value(node.output[0]) is None:
        return False
    uses = _uses(an, node.output[0])
    if uses is None:
        return False
    for user, i in uses:
        an.runtime_uses.setdefault((id(user), i), (user, i))
    return True


def _units(an, entry, per_segment: int) -> int:
    """New units of the space inside `entry` when every segment gets `per_segment`."""
    lo, hi = entry.part or (0, an.group.channels)
    return per_segment * sum(1 for a, b in an.group.segments() if lo <= a and b <= hi)


def _grown_dims(an, per_segment: int):
    """dims(tensor) as they will be once every segment of the space has `per_segment` new units."""
    def dims(tensor):
        shape = _dims(an, tensor)
        if shape is None or None in shape:
            return None
        out = list(shape)
        for e in an.group.members.get(tensor, ()):
            if e.interleaved:
                out[e.axis] += _units(an, e, per_segment) * e.block
            elif e.seg_axis is not None:   # the axis holds a place inside a segment: one segment's growth
                out[e.axis] += per_segment * e.block
            else:
                out[e.axis] += _units(an, e, per_segment) * e.block * e.chunks
        return out
    return dims


def _grown_constants(an, per_segment: int):
    """override(node, input index) -> the shape constant as grow_shape_constants (passes/channels.py) grows it."""
    extra = per_segment * len(an.group.segments())
    edits: dict = {}
    for edit in an.group.reshapes:
        edits.setdefault((id(edit.node), edit.input_index), []).append(edit)

    def override(node, i):
        found = edits.get((id(node), i))
        if not found:
            return None
        value = np.array(an.index.constant(node.input[i]), dtype=np.int64)
        flat = value.reshape(-1)
        for edit in found:
            if flat[edit.dim] > 0:
                flat[edit.dim] += int(extra * edit.per_channel)
        return value
    return override


def check_runtime_shapes(an) -> None:
    """Every recorded use of a shape computed at run time gives what the grown model needs (see the module)."""
    for node, i in list(an.runtime_uses.values()):
        before = _evaluator(an).input(node, i)
        for per_segment in _TRIES:
            dims = _grown_dims(an, per_segment)
            after = ShapeEvaluator(an.index, dims, _grown_constants(an, per_segment)).input(node, i)
            if before is None or after is None:
                an.refuse(node, node.input[i], "its shape input is computed at run time from sizes that cannot "
                                               "be followed")
            grows = node.input[0] in an.group.members or node.output[0] in an.group.members
            if node.op_type in ("Reshape", "Expand") and i == 1 and grows:
                data, out = dims(node.input[0]), dims(node.output[0])
                if data is None or out is None:
                    an.refuse(node, node.input[0], "its target shape is computed at run time and the sizes it "
                                                   "works on are unknown")
                if node.op_type == "Reshape":
                    got = resolve_reshape(data, after, attr(node, "allowzero", 0)) if data else None
                else:
                    got = _broadcast(data, after)
                if got != out:
                    raise CannotMorph(f"cannot widen through {node.op_type} {node_name(node)!r}: its target shape "
                                      f"is computed at run time and would give {got} where the widened "
                                      f"{node.output[0]!r} is {out}")
            elif not np.array_equal(before, after):
                an.refuse(node, node.input[i], "a value computed at run time from a widened tensor's shape would "
                                               "change")


def _broadcast(data, target):
    try:
        return list(np.broadcast_shapes(tuple(data), tuple(int(t) for t in np.reshape(target, -1))))
    except (ValueError, TypeError):
        return None
