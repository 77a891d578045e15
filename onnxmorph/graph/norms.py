"""Decomposed LayerNorm and RMSNorm: the subgraphs exporters write for them (legacy torch.onnx below opset 17,
HF's RMSNorm everywhere, TF/keras), recognised as one norm over the last axis (or over the channels of an NCHW
tensor: tf2onnx moves Keras' channels-last LayerNorm of ConvNeXt to axis 1).

    LayerNorm  m = ReduceMean(a), d = a - m, v = ReduceMean(d²), y = d · 1/√(v + ε)
    RMSNorm    v = ReduceMean(a²), y = a · 1/√(v + ε)

a is the input after optional Casts (a converter's float32 island may Cast it twice, once for the square and once
for the product: both are part of the norm); the square is Pow(·, 2) or Mul(t, t); each mean is a ReduceMean of the
last axis alone (axes attribute or input), keepdims=1, or of axis 1 alone of a 4-D tensor, or a GlobalAveragePool of
a 3-D tensor (its last axis: tf2onnx writes Keras' moments that way); the mean may reach the Sub through a Reshape
that keeps its shape (tf2onnx's Transpose of a one-channel tensor); ε is a scalar constant added by an Add; d · 1/√ is Sqrt then
Div, Sqrt then Reciprocal or Div(1, ·) then Mul, Reciprocal then Sqrt then Mul, or Pow(·, -0.5) then Mul. After
y: optional Casts, a Mul by γ and an Add of β, each a constant with one value per channel. A LayerNorm may also be
folded as tf.nn.batch_normalization and keras write it: g = γ/√(v + ε), y = a·g + (β − m·g), or a·g + (−m·g + β).
Tensors of the norm with the normalised dim whole carry the channels; those with that dim 1 are reduced.

Pure pattern code: `find` returns the norms of a graph as space.Norm records, and for every ReduceMean over the
last axis that is not one, the reason, naming the node where the pattern breaks. Norm.extra holds channels (the
per-channel tensors, input and output included), reduced (last dim 1), scale_at / bias_at ((node, input index) of
gamma and beta, or None), folded (gamma and beta inside the tf.nn.batch_normalization form) and from_end (the
normalised axis counted from the end: 1 for the last axis, 3 for the channels of NCHW).
"""
from __future__ import annotations

import numpy as np
import onnx

from .index import GraphIndex
from .proto import attr, node_name as _name
from .space import Norm


class NotANorm(Exception):
    """The subgraph around a ReduceMean is not a norm; the message says where and why, in one line."""


def _label(node):
    return f"{node.op_type} {_name(node)!r}"


def find(index: GraphIndex, shapes: dict) -> tuple[dict, dict]:
    """({id(node): Norm} for every node of every decomposed norm, {id(ReduceMean): why it is not a norm})."""
    found, misses = {}, {}
    for node in index.graph.node:
        if not _mean_candidate(shapes, node) or id(node) in found or node.domain not in ("", "ai.onnx"):
            continue
        try:
            norm = match(index, shapes, node)
        except NotANorm as why:
            misses[id(node)] = str(why)
            continue
        for member in norm.nodes:
            found[id(member)] = norm
    return found, misses


def _mean_candidate(shapes, node) -> bool:
    """A node that may be a norm's mean: any ReduceMean, or a GlobalAveragePool of a 3-D tensor."""
    return node.op_type == "ReduceMean" or (node.op_type == "GlobalAveragePool" and
                                            len(shapes.get(node.input[0]) or ()) == 3)


def match(index: GraphIndex, shapes: dict, reduce: onnx.NodeProto) -> Norm:
    """The norm this mean is part of (either of a LayerNorm's two), or NotANorm."""
    from_end = _check_channel_mean(index, shapes, reduce)
    base = _squared(index, reduce.input[0])
    if base is not None:
        return _from_variance(index, shapes, reduce, base, from_end)
    # the mean of a LayerNorm: subtracted from its input (maybe through a Reshape that keeps its shape), the
    # difference squared and averaged
    a, mean = reduce.input[0], reduce.output[0]
    subs = [u for u in index.consumers.get(mean, []) if u.op_type == "Sub" and list(u.input) == [a, mean]]
    subs += [u for r in _kept_reshapes(index, shapes, mean) for u in index.consumers.get(r.output[0], [])
             if u.op_type == "Sub" and list(u.input) == [a, r.output[0]]]
    if len(subs) != 1:
        raise NotANorm(f"the mean {mean!r} of {_label(reduce)} is not subtracted from {a!r} by one Sub")
    sub = subs[0]
    for square in index.consumers.get(sub.output[0], []):
        if _squared(index, square.output[0], square) == sub.output[0]:
            for var in index.consumers.get(square.output[0], []):
                if _mean_candidate(shapes, var):
                    if _check_channel_mean(index, shapes, var) != from_end:
                        raise NotANorm(f"{_label(var)} averages another axis than {_label(reduce)}")
                    return _from_variance(index, shapes, var, sub.output[0], from_end)
    raise NotANorm(f"the centred {sub.output[0]!r} of {_label(sub)} is not squared and averaged over the "
                   "normalised axis")


def _kept_reshapes(index, shapes, tensor) -> list:
    """Reshapes of `tensor` to a constant shape that leave its shape as it is (tf2onnx writes the transpose of a
    one-channel tensor that way)."""
    shape = shapes.get(tensor)
    return [r for r in index.consumers.get(tensor, []) if r.op_type == "Reshape" and r.input[0] == tensor and
            index.is_constant(r.input[1]) and _keeps(shape, np.asarray(index.constant(r.input[1])).reshape(-1))]


def _keeps(shape, target) -> bool:
    """A Reshape to `target` gives back `shape` (each entry that size, 0, or the one -1)."""
    if shape is None or len(target) != len(shape) or sum(int(t) == -1 for t in target) > 1:
        return False
    return all(int(t) in (0, -1) or (d is not None and int(t) == d) for t, d in zip(target, shape))


def _mean_of(index, shapes, tensor):
    """The ReduceMean/GlobalAveragePool that computes `tensor`, looking through a Reshape that keeps the shape:
    (the mean node, the Reshape or None)."""
    node = index.producer.get(tensor)
    if node is not None and node.op_type == "Reshape" and node in _kept_reshapes(index, shapes, node.input[0]):
        return index.producer.get(node.input[0]), node
    return node, None


def _check_channel_mean(index, shapes, node) -> int:
    """A mean over the last axis alone (a ReduceMean with keepdims=1, or a GlobalAveragePool of a 3-D tensor), or
    over axis 1 alone of a 4-D tensor. Returns that axis counted from the end (1, or 3)."""
    shape = shapes.get(node.input[0])
    if node.op_type == "GlobalAveragePool":
        if shape is None or len(shape) != 3:
            raise NotANorm(f"{_label(node)} averages the spatial axes of a tensor of rank "
                           f"{len(shape) if shape is not None else '?'}")
        if shape[-1] is None:
            raise NotANorm(f"the last dim of {node.input[0]!r} is unknown")
        return 1
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = index.constant(node.input[1]) if index.is_constant(node.input[1]) else None
        if axes is None:
            raise NotANorm(f"{_label(node)} reduces axes computed at run time")
    if shape is None or axes is None:
        raise NotANorm(f"{_label(node)} reduces {'all axes' if axes is None else 'a tensor of unknown rank'}")
    rank = len(shape)
    axes = sorted({int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)})
    if axes != [rank - 1] and not (rank == 4 and axes == [1]):
        raise NotANorm(f"{_label(node)} reduces axes {axes}, not the last axis alone (nor the channels of NCHW)")
    if not attr(node, "keepdims", 1):
        raise NotANorm(f"{_label(node)} drops the reduced axis (keepdims=0)")
    if shape[axes[0]] is None:
        raise NotANorm(f"dim {axes[0]} of {node.input[0]!r} is unknown")
    return rank - axes[0]


def _squared(index, tensor, node=None):
    """t when `tensor` is Pow(t, 2) or Mul(t, t); None when it is no square. A Pow by another constant is a
    near miss, refused."""
    node = node if node is not None else index.producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow" and index.is_constant(node.input[1]):
        exponent = np.asarray(index.constant(node.input[1]))
        if exponent.size == 1 and float(exponent) == 2.0:
            return node.input[0]
        raise NotANorm(f"{_label(node)} raises to {exponent.reshape(-1)[:3].tolist()}, not 2")
    return None


def _same_value(index, tensor, other) -> bool:
    """The same tensor, or two Casts of one tensor to one type."""
    if tensor == other:
        return True
    a, b = index.producer.get(tensor), index.producer.get(other)
    return a is not None and b is not None and a.op_type == b.op_type == "Cast" and a.input[0] == b.input[0] \
        and attr(a, "to") == attr(b, "to")


def _only_consumer(index, tensor, what) -> onnx.NodeProto:
    users = index.consumers.get(tensor, [])
    if len(users) != 1 or tensor in index.graph_outputs:
        also = " and is a graph output" if tensor in index.graph_outputs else ""
        raise NotANorm(f"{what} is read by {len(users)} nodes{also}, not by the norm alone")
    return users[0]


def _scalar(index, name):
    if not index.is_constant(name):
        return None
    value = np.asarray(index.constant(name))
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _from_variance(index, shapes, var, base, from_end=1):
    """The norm whose mean of squares is `var`, the mean of base² over the axis `from_end` from the end."""
    nodes = [index.producer[var.input[0]], var]
    center = index.producer.get(base)
    mean, kept = _mean_of(index, shapes, center.input[1]) if center is not None and center.op_type == "Sub" \
        else (None, None)
    if mean is not None and _mean_candidate(shapes, mean) and mean.input[0] == center.input[0]:
        if _check_channel_mean(index, shapes, mean) != from_end:
            raise NotANorm(f"{_label(mean)} averages another axis than {_label(var)}")
        kind, a = "layer", center.input[0]
        nodes[:0] = [mean] + ([kept] if kept is not None else []) + [center]
    else:
        kind, a, mean = "rms", base, None
    # + ε
    add = _only_consumer(index, var.output[0], f"the mean of squares {var.output[0]!r} of {_label(var)}")
    other = [i for i, name in enumerate(add.input) if name != var.output[0]]
    if add.op_type != "Add" or len(other) != 1 or _scalar(index, add.input[other[0]]) is None:
        raise NotANorm(f"the mean of squares {var.output[0]!r} is read by {_label(add)}, not added to a scalar "
                       "constant epsilon")
    epsilon = (add, other[0])
    nodes.append(add)
    # 1/√(v + ε), times the numerator; or folded as tf.nn.batch_normalization and keras write it
    width = shapes[var.input[0]][-from_end]
    if width == 1:
        raise NotANorm(f"{_label(var)} averages a single channel")
    (y, divided), scale, bias, folded = _inverse_root(index, add, base, nodes), None, None, False
    users = index.consumers.get(y, [])
    if divided:
        pass
    elif len(users) == 1 and users[0].op_type == "Mul" and y in users[0].input and \
            _same_value(index, users[0].input[1 - list(users[0].input).index(y)], base):
        twin = users[0].input[1 - list(users[0].input).index(y)]
        if twin != base:   # a second Cast of the input (a converter's float32 island casts it once per reader)
            nodes.insert(0, index.producer[twin])
        nodes.append(users[0])
        y = users[0].output[0]
    elif kind == "layer":
        y, scale, bias = _folded(index, y, a, mean.output[0], nodes, width, from_end)
        folded = True
    else:
        raise NotANorm(f"the inverse root {y!r} is read by {', '.join(_label(u) for u in users) or 'nothing'}, "
                       f"not multiplied by {base!r}")
    # leading Casts: part of the norm when nothing else reads their output
    inside = {id(n) for n in nodes}
    while True:
        cast = index.producer.get(a)
        users = index.consumers.get(a, [])
        if cast is None or cast.op_type != "Cast" or a in index.graph_outputs or \
                not all(id(u) in inside for u in users):
            break
        nodes.insert(0, cast)
        inside.add(id(cast))
        a = cast.input[0]
    # trailing Casts, then (unless folded in already) γ and β
    out = y
    while True:
        users = index.consumers.get(out, [])
        if len(users) != 1 or out in index.graph_outputs:
            break
        user = users[0]
        if user.op_type == "Cast":
            pass
        elif not folded and user.op_type in ("Mul", "Add") and (scale if user.op_type == "Mul" else bias) is None:
            slot = _per_channel_operand(index, user, out, width, from_end)
            if slot is None:
                break
            if user.op_type == "Mul":
                scale = (user, slot)
            else:
                bias = (user, slot)
        else:
            break
        nodes.append(user)
        out = user.output[0]
        if bias is not None:
            break
    _check_closed(index, nodes, out)
    channels, reduced = _split_by_width(shapes, [a] + [o for n in nodes for o in n.output], width, from_end)
    norm = Norm(kind, nodes, a, out, scale[0].input[scale[1]] if scale else None,
                       bias[0].input[bias[1]] if bias else None, epsilon)
    norm.extra.update(channels=channels, reduced=reduced, scale_at=scale, bias_at=bias, folded=folded,
                      from_end=from_end)
    return norm


def _inverse_root(index, add, numerator, nodes) -> tuple[str, bool]:
    """Follow v + ε to numerator / √(v + ε) or to the inverse root 1/√(v + ε): (that tensor, whether divided)."""
    what = f"the variance plus epsilon {add.output[0]!r}"
    step = _only_consumer(index, add.output[0], what)
    if step.op_type == "Sqrt":
        nodes.append(step)
        root = step.output[0]
        step = _only_consumer(index, root, f"the root {root!r}")
        if step.op_type == "Div" and list(step.input) == [numerator, root]:
            nodes.append(step)
            return step.output[0], True
        if not (step.op_type == "Reciprocal" or (step.op_type == "Div" and step.input[1] == root and
                                                 _scalar(index, step.input[0]) == 1.0)):
            raise NotANorm(f"the root {root!r} is read by {_label(step)}, not a division of {numerator!r}")
    elif step.op_type == "Reciprocal":   # 1/(v + ε), then its square root
        nodes.append(step)
        reciprocal = step.output[0]
        step = _only_consumer(index, reciprocal, f"the reciprocal {reciprocal!r}")
        if step.op_type != "Sqrt":
            raise NotANorm(f"the reciprocal {reciprocal!r} is read by {_label(step)}, not a Sqrt")
    elif not (step.op_type == "Pow" and step.input[0] == add.output[0] and _scalar(index, step.input[1]) == -0.5):
        raise NotANorm(f"{what} is read by {_label(step)}, not a Sqrt, Reciprocal or Pow(., -0.5)")
    nodes.append(step)
    return step.output[0], False


def _folded(index, inverse, a, mean, nodes, width, from_end=1):
    """x·g + (β − m·g) with g = γ/√(v + ε) (tf.nn.batch_normalization), or x·g + (−m·g + β) (keras 3); γ and β
    optional. Returns (y, scale, bias)."""
    scale = bias = None
    g = inverse
    users = index.consumers.get(g, [])
    if len(users) == 1 and users[0].op_type == "Mul":      # γ folded into the inverse root
        slot = _per_channel_operand(index, users[0], g, width, from_end)
        if slot is None:
            raise NotANorm(f"the inverse root {g!r} is read by {_label(users[0])}, not multiplied by the input or "
                           "by a per-channel gamma")
        scale = (users[0], slot)
        nodes.append(users[0])
        g = users[0].output[0]
        users = index.consumers.get(g, [])
    by_x = [u for u in users if u.op_type == "Mul" and sorted(u.input) == sorted([a, g])]
    by_mean = [u for u in users if u.op_type == "Mul" and sorted(u.input) == sorted([mean, g])]
    if len(users) != 2 or len(by_x) != 1 or len(by_mean) != 1:
        raise NotANorm(f"{g!r} is read by {', '.join(_label(u) for u in users) or 'nothing'}, not multiplied by "
                       f"the input {a!r} and by its mean")
    nodes += [by_x[0], by_mean[0]]
    shifted = by_mean[0].output[0]
    step = _only_consumer(index, shifted, f"the scaled mean {shifted!r}")
    if step.op_type == "Sub" and step.input[1] == shifted:    # β − m·g
        if _per_channel_operand(index, step, shifted, width, from_end) != 0:
            raise NotANorm(f"{_label(step)} subtracts the scaled mean from {step.input[0]!r}, not from a per-channel "
                           "beta")
        bias = (step, 0)
    elif step.op_type == "Neg":                              # −m·g, then maybe + β
        nodes.append(step)
        shifted = step.output[0]
        step = _only_consumer(index, shifted, f"the negated mean {shifted!r}")
        slot = _per_channel_operand(index, step, shifted, width, from_end) if step.op_type == "Add" else None
        if slot is not None:
            bias = (step, slot)
        else:
            step = None
    else:
        raise NotANorm(f"the scaled mean {shifted!r} is read by {_label(step)}, not subtracted or negated")
    if step is not None:
        nodes.append(step)
        shifted = step.output[0]
    total = _only_consumer(index, by_x[0].output[0], f"the scaled input {by_x[0].output[0]!r}")
    if total.op_type != "Add" or sorted(total.input) != sorted([by_x[0].output[0], shifted]):
        raise NotANorm(f"the scaled input {by_x[0].output[0]!r} is read by {_label(total)}, not added to "
                       f"{shifted!r}")
    nodes.append(total)
    return total.output[0], scale, bias


def _split_by_width(shapes, tensors, width, from_end=1):
    """(tensors with one value per channel, reduced tensors) by their normalised dim."""
    channels, reduced = [], []
    for tensor in dict.fromkeys(tensors):
        shape = shapes.get(tensor)
        last = shape[-from_end] if shape and len(shape) >= from_end else None
        if last not in (1, width):
            raise NotANorm(f"the normalised dim of {tensor!r} inside the norm is {last}, not {width} or 1")
        (channels if last == width else reduced).append(tensor)
    return channels, reduced


def _per_channel_operand(index, node, tensor, width, from_end=1):
    """The input index of node's constant operand with one value per channel (shape (..., 1, width), or
    (1, width, 1, 1) for a norm over the channels of NCHW), else None."""
    if len(node.input) != 2 or node.input[0] == node.input[1]:
        return None
    slot = 1 if node.input[0] == tensor else 0
    name = node.input[slot]
    if not index.is_constant(name):
        return None
    value = np.asarray(index.constant(name))
    if value.ndim < from_end or value.shape[-from_end] != width or value.size != width:
        return None
    return slot


def _check_closed(index, nodes, out):
    """Nothing outside the norm reads a tensor inside it (its output aside)."""
    inside = {id(n) for n in nodes}
    for node in nodes:
        for tensor in node.output:
            if tensor == out:
                continue
            if tensor in index.graph_outputs:
                raise NotANorm(f"{tensor!r} inside the norm is a graph output")
            for user in index.consumers.get(tensor, []):
                if id(user) not in inside:
                    raise NotANorm(f"{tensor!r} inside the norm is also read by {_label(user)}")
