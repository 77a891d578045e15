"""Where the entries of a shape tensor come from: constants, or dims read at run time (Shape -> Gather/Slice ->
Squeeze/Unsqueeze -> Concat, as the legacy exporter writes them for dynamic sizes).

Widening changes a size in a shape: this finds the constant that holds it (so it can grow), or the run-time
read that follows the new size by itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx

from .external import tensor_array
from .fold import evaluate, static_shape_values
from .index import GraphIndex
from .proto import attr, constant_node_value
from .shape_eval import ShapeEvaluator, resolve_reshape
from .shapes import light_model

# Ops that pass a 1-D shape vector (or a scalar dim) through unchanged in value.
_PASS = ("Squeeze", "Unsqueeze", "Cast", "Identity")


@dataclass
class ShapeEdit:
    """A constant shape entry: input `input_index` of `node`, element `dim`, grows by per_channel × new channels."""
    node: onnx.NodeProto
    input_index: int
    dim: int
    per_channel: Fraction


@dataclass
class DimRead:
    """A shape entry read at run time: dim `axis` of `tensor`, times `factor` (GQA's repeat writes Mul(S[1], r))."""
    tensor: str
    axis: int
    factor: int = 1


@dataclass
class ConstDim:
    """A shape entry that is a constant, at element `dim` of input `input_index` of `node`."""
    node: onnx.NodeProto
    input_index: int
    dim: int
    value: int


def _norm(axis, rank):
    return axis + rank if axis < 0 else axis


def entry_source(index: GraphIndex, node: onnx.NodeProto, input_index: int, position: int, shapes: dict,
                 depth: int = 0):
    """The source of element `position` of input `input_index` of `node` (a 1-D int tensor): ConstDim, DimRead,
    or None when it cannot be traced."""
    name = node.input[input_index]
    if index.is_constant(name):
        value = np.asarray(index.constant(name)).reshape(-1)
        return ConstDim(node, input_index, position, int(value[position])) if position < value.size else None
    producer = index.producer.get(name)
    if producer is None or depth > 12:
        return None
    op = producer.op_type
    if op in _PASS:  # Squeeze/Unsqueeze turn a one-element vector into a scalar or back
        return entry_source(index, producer, 0, position if op in ("Cast", "Identity") else 0, shapes, depth + 1)
    if op == "Concat":
        offset = 0
        for j, part in enumerate(producer.input):
            length = _length(index, part, shapes)
            if length is None:
                return None
            if position < offset + length:
                return entry_source(index, producer, j, position - offset, shapes, depth + 1)
            offset += length
        return None
    if op == "Gather" and attr(producer, "axis", 0) == 0:
        which = index.constant(producer.input[1]) if index.is_constant(producer.input[1]) else None
        dims = _shape_read(index, producer.input[0], shapes)
        if which is None or dims is None:
            return None
        which = np.asarray(which).reshape(-1)
        k = int(which[0 if which.size == 1 else position])
        tensor, rank = dims
        return DimRead(tensor, _norm(k, rank))
    if op == "Slice":
        dims = _shape_read(index, producer.input[0], shapes)
        bounds = [index.constant(n) if n and index.is_constant(n) else None for n in producer.input[1:3]]
        if dims is None or any(b is None for b in bounds):
            return None
        tensor, rank = dims
        start = int(np.asarray(bounds[0]).reshape(-1)[0])
        start = min(max(start + rank if start < 0 else start, 0), rank)
        return DimRead(tensor, start + position)
    if op == "Mul":   # a dim read times a constant (the GQA repeat count)
        consts = [k for k in (0, 1) if index.is_constant(producer.input[k])]
        if len(consts) == 1 and np.asarray(index.constant(producer.input[consts[0]])).size == 1:
            c = int(np.asarray(index.constant(producer.input[consts[0]])).reshape(-1)[0])
            other = entry_source(index, producer, 1 - consts[0], position, shapes, depth + 1)
            if isinstance(other, DimRead) and c > 0:
                return DimRead(other.tensor, other.axis, other.factor * c)
        return None
    if op == "Reshape" and len(shapes.get(producer.input[0]) or ()) == 1:   # a vector stays a vector
        return entry_source(index, producer, 0, position, shapes, depth + 1)
    if op == "Where":   # Where(Equal(s, -1), 1, s): the legacy Expand shape; decided when s's entry is known
        pick = _where_condition(index, producer, position, shapes, depth)
        if pick is None:
            return None
        branch = producer.input[1 if pick else 2]
        size = _length(index, branch, shapes)
        return entry_source(index, producer, 1 if pick else 2, 0 if size == 1 else position, shapes, depth + 1)
    if op == "Shape" and not attr(producer, "start", 0) and attr(producer, "end", None) is None:
        rank = len(shapes.get(producer.input[0], ())) or None
        return DimRead(producer.input[0], position) if rank else None
    return None


def _length(index, name, shapes):
    if index.is_constant(name):
        return int(np.asarray(index.constant(name)).size)
    shape = shapes.get(name)
    return 1 if shape is not None and len(shape) == 0 else (shape[0] if shape else None)


def _where_condition(index, where, position, shapes, depth):
    """The value of Where's condition at `position` when it is Equal of two traced entries: constants compare,
    and a dim read at run time is never negative."""
    cond = index.producer.get(where.input[0])
    if cond is None or cond.op_type != "Equal":
        return None
    sides = [entry_source(index, cond, k, 0 if _length(index, cond.input[k], shapes) == 1 else position, shapes,
                          depth + 1) for k in (0, 1)]
    if all(isinstance(x, ConstDim) for x in sides):
        return sides[0].value == sides[1].value
    if any(isinstance(x, ConstDim) and x.value < 0 for x in sides) and any(isinstance(x, DimRead) for x in sides):
        return False
    return None


def _shape_read(index, name, shapes):
    """(tensor, rank) when `name` is Shape(tensor) of the whole tensor."""
    producer = index.producer.get(name)
    if producer is None or producer.op_type != "Shape" or attr(producer, "start", 0) or \
            attr(producer, "end", None) is not None:
        return None
    shape = shapes.get(producer.input[0])
    return (producer.input[0], len(shape)) if shape is not None else None


def dims_read(index: GraphIndex, shape_node: onnx.NodeProto, shapes: dict):
    """Where the dims a Shape node reads end up, following Gather/Slice/Squeeze/Unsqueeze/Cast: a list of
    (axis of the Shape's input, first node that uses the value otherwise, position in that node's input; for a
    Concat, in its output), or None when a read cannot be followed."""
    rank = len(shapes.get(shape_node.input[0], ()))
    reads = []

    def follow(tensor, axes, depth=0):
        for user in index.consumers.get(tensor, []):
            op = user.op_type
            if depth > 12:
                return False
            if op == "Gather" and user.input[0] == tensor and attr(user, "axis", 0) == 0:
                which = index.constant(user.input[1]) if index.is_constant(user.input[1]) else None
                if which is None:
                    return False
                picked = [axes[int(k)] for k in np.asarray(which).reshape(-1)]
                if not follow(user.output[0], picked, depth + 1):
                    return False
            elif op == "Slice" and user.input[0] == tensor:
                bounds = [index.constant(n) if n and index.is_constant(n) else None for n in user.input[1:]]
                if bounds[0] is None or bounds[1] is None:
                    return False
                start, stop = (int(np.asarray(b).reshape(-1)[0]) for b in bounds[:2])
                if not follow(user.output[0], axes[slice(start, stop)], depth + 1):
                    return False
            elif op in _PASS:
                if not follow(user.output[0], axes, depth + 1):
                    return False
            elif op == "Concat":
                offset = 0
                for part in user.input:
                    if part == tensor:
                        break
                    shape = shapes.get(part)
                    offset += 1 if shape is not None and len(shape) == 0 else (shape[0] if shape else 0)
                reads.extend((axis, user, offset + k) for k, axis in enumerate(axes))
            else:
                reads.extend((axis, user, k) for k, axis in enumerate(axes))
        return True

    if not follow(shape_node.output[0], list(range(rank))):
        return None
    return reads


def element_uses(index: GraphIndex, tensor: str, position: int, shapes: dict, factor: int = 1, depth: int = 0):
    """Where element `position` of the shape vector (or scalar) `tensor` ends up: [(node, entry, factor)] for
    the Reshape/Expand shape entries it sets (times `factor`), through Gather/Slice picks, Unsqueeze/Squeeze/Cast,
    Concat, a Reshape of the vector, Mul by a constant and the legacy Where(Equal(s, -1), 1, s); None when it is
    used any other way (a Range, a Slice bound, arithmetic onnxmorph does not follow)."""
    uses = []
    for node in index.consumers.get(tensor, []):
        op = node.op_type
        slots = [i for i, name in enumerate(node.input) if name == tensor]
        if depth > 16:
            return None
        if op in ("Reshape", "Expand") and slots == [1]:
            uses.append((node, position, factor))
            continue
        if op == "Equal":   # only decides whether the entry is the -1 placeholder (a read dim never is)
            continue
        found = None
        if op in _PASS or (op == "Reshape" and slots == [0] and len(shapes.get(node.output[0]) or ()) == 1):
            found = element_uses(index, node.output[0], position if op in ("Cast", "Identity", "Reshape") else 0,
                                 shapes, factor, depth + 1)
        elif op == "Where" and 0 not in slots:
            found = element_uses(index, node.output[0], position, shapes, factor, depth + 1)
        elif op == "Concat" and len(slots) == 1:
            offset = 0
            for part in node.input[:slots[0]]:
                length = _length(index, part, shapes)
                if length is None:
                    return None
                offset += length
            found = element_uses(index, node.output[0], offset + position, shapes, factor, depth + 1)
        elif op == "Gather" and slots == [0] and attr(node, "axis", 0) == 0 and index.is_constant(node.input[1]):
            picks = np.asarray(index.constant(node.input[1]))
            found = []
            for k in np.flatnonzero(picks.reshape(-1) == position):
                more = element_uses(index, node.output[0], int(k), shapes, factor, depth + 1)
                if more is None:
                    return None
                found += more
        elif op == "Slice" and slots == [0] and all(n and index.is_constant(n) for n in node.input[1:3]):
            start = int(np.asarray(index.constant(node.input[1])).reshape(-1)[0])
            stop = int(np.asarray(index.constant(node.input[2])).reshape(-1)[0])
            length = _length(index, tensor, shapes)
            if length is None:
                return None
            start, stop = (min(max(v + length if v < 0 else v, 0), length) for v in (start, stop))
            found = element_uses(index, node.output[0], position - start, shapes, factor, depth + 1) \
                if start <= position < stop else []
        elif op == "Mul" and len(slots) == 1 and index.is_constant(node.input[1 - slots[0]]) and \
                np.asarray(index.constant(node.input[1 - slots[0]])).size == 1:
            c = int(np.asarray(index.constant(node.input[1 - slots[0]])).reshape(-1)[0])
            found = element_uses(index, node.output[0], position, shapes, factor * c, depth + 1) if c > 0 else None
        if found is None:
            return None
        uses += found
    return uses


# Integer/bool shape arithmetic the legacy exporter writes around Expand and Reshape targets: Expand's shape as
# Where(Equal(s, -1), ConstantOfShape(1), s), ranks as ConstantOfShape, sizes as Gather/Mul/Concat of Shape reads,
# unflatten's target as Concat(Slice(Shape, 0, Reshape(Mod(dim, rank))), sizes, Slice(Shape, ...)).
_SHAPE_OPS = ("ConstantOfShape", "Equal", "Where", "Mul", "Add", "Sub", "Div", "Mod", "Concat", "Gather", "Unsqueeze",
              "Squeeze", "Cast", "Slice", "Identity", "Neg", "Abs", "Max", "Min", "Range", "Not", "And", "Or",
              "Reshape", "ReduceProd")
_SMALL = 64   # a shape vector, not data: at most this many elements


def shape_values(model: onnx.ModelProto, shapes: dict) -> dict:
    """Values of small integer (or bool) tensors computed from constants and static shape reads only: name ->
    value. Folding them turns a computed Expand/Reshape target into the constant it always is."""
    known = static_shape_values(model, shapes)
    small = {t.name: tensor_array(t) for t in model.graph.initializer if np.prod(t.dims) <= _SMALL}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None and value.size <= _SMALL:
                small[node.output[0]] = value
    found = {}
    for node in model.graph.node:
        if node.op_type not in _SHAPE_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        inputs = [known.get(i, found.get(i, small.get(i))) if i else None for i in node.input]
        if any(v is None for i, v in zip(node.input, inputs) if i):
            continue
        if not all(np.asarray(v).dtype.kind in "iub" or node.op_type == "ConstantOfShape" for v in inputs
                   if v is not None):
            continue
        try:
            result = np.asarray(evaluate(node, inputs, model.opset_import)[0])
        except Exception:
            continue
        if result.size <= _SMALL and result.dtype.kind in "iub":
            found[node.output[0]] = result
    known.update(found)
    return known


# Dynamic input dims are pinned to these (distinct primes far from any layer size) to read the sizes that do not
# depend on them: shape inference then carries H·d_h, H and d_h through the legacy Shape -> Gather -> Concat
# targets. A size that matches one of them is batch or sequence, never a channel count.
_GENERIC = (1009, 1013, 1019, 1021, 1031, 1033, 1039, 1049)


def generic_shapes(index: GraphIndex, shapes: dict) -> dict:
    """`shapes` with the dims it does not know filled in from shape inference (with data propagation) on a copy
    whose dynamic input dims are generic primes. Unchanged when the inputs are static. Kept on the index for the
    next layer analysed with the same `shapes`."""
    cached = getattr(index, "_generic_shapes", None)
    if cached is None or cached[0] is not shapes:
        index._generic_shapes = cached = (shapes, _generic_shapes(index, shapes))
    return cached[1]


def _generic_shapes(index: GraphIndex, shapes: dict) -> dict:
    if all(d.HasField("dim_value") for vi in index.graph.input for d in vi.type.tensor_type.shape.dim) and \
            not _computed_reshapes_unknown(index, shapes):
        return shapes
    light = onnx.ModelProto()
    light.CopyFrom(light_model(index.model))
    pinned, named = iter(_GENERIC), {}
    sums = []
    for vi in light.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                continue
            name = d.dim_param
            if name and "+" in name:   # "past_sequence_length + sequence_length": the sum of its parts
                sums.append((d, [p.strip() for p in name.split("+")]))
                continue
            if name and name not in named:
                named[name] = next(pinned, _GENERIC[-1])
            d.dim_value = named[name] if name else next(pinned, _GENERIC[-1])   # one name, one size
    for d, parts in sums:
        if all(p.isdigit() or p in named for p in parts):
            d.dim_value = sum(int(p) if p.isdigit() else named[p] for p in parts)
        else:
            d.dim_value = next(pinned, _GENERIC[-1])
    found = {}
    for _ in range(12):   # Expand and Reshape outputs whose shapes are traced give inference a hint, then again
        try:
            light = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
        except Exception:
            return shapes
        inputs = [vi for vi in light.graph.input if vi.name not in index.initializers]
        found = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
                 for vi in list(light.graph.value_info) + list(light.graph.output) + inputs
                 if vi.type.tensor_type.HasField("shape")}
        hinted = _expand_hints(index, light, found) | _reshape_hints(index, light, found)
        if not (_slice_hints(index, light, found) or hinted):
            break
    out = dict(shapes)
    for name, generic in found.items():
        known = out.get(name)
        if known is None or len(known) != len(generic):
            out[name] = generic
        elif None in known:
            out[name] = [k if k is not None else g for k, g in zip(known, generic)]
    return out


def _slice_hints(index, light, shapes) -> bool:
    """Sizes of Slice outputs that inference left unknown because the bounds are computed at run time: the axes
    the Slice does not cut keep the input's sizes (the causal mask sliced to the key length keeps its head axis)."""
    infos = {vi.name: vi for vi in light.graph.value_info}
    changed = False
    for node in index.graph.node:
        if node.op_type != "Slice" or len(node.input) < 4 or not node.input[3] or \
                not index.is_constant(node.input[3]) or node.output[0] not in infos:
            continue
        data, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not data or not out or len(data) != len(out):
            continue
        cut = {int(a) + len(data) if int(a) < 0 else int(a) for a in np.asarray(index.constant(node.input[3])).reshape(-1)}
        dims = infos[node.output[0]].type.tensor_type.shape.dim
        for k in range(len(out)):
            if out[k] is None and k not in cut and data[k] is not None:
                dims[k].Clear()
                dims[k].dim_value = data[k]
                changed = True
    return changed


def _expand_hints(index, light, shapes) -> bool:
    """Sizes of Expand outputs that inference left unknown, from the traced entries of the Expand's shape (an
    entry 1 keeps the input's size; a constant or a dim read sets it), written to `light` as value_info."""
    infos = {vi.name: vi for vi in light.graph.value_info}
    changed = False
    for node in index.graph.node:
        if node.op_type != "Expand":
            continue
        out, data = shapes.get(node.output[0]), shapes.get(node.input[0])
        if data is None and index.is_constant(node.input[0]):   # a constant broadcast (a class token)
            data = list(index.constant(node.input[0]).shape)
        if not out or None not in out or data is None or len(data) != len(out) or node.output[0] not in infos:
            continue
        for k in range(len(out)):
            source = entry_source(index, node, 1, k, shapes)
            size = shapes.get(source.tensor, [None] * (source.axis + 1))[source.axis] if \
                isinstance(source, DimRead) else (source.value if isinstance(source, ConstDim) else None)
            if isinstance(source, DimRead) and size is not None:
                size *= source.factor
            if out[k] is None and size is not None and data[k] is not None and size >= 0:
                dim = infos[node.output[0]].type.tensor_type.shape.dim[k]
                dim.Clear()
                dim.dim_value = max(size, data[k])
                changed = True
    return changed


def _computed_reshapes_unknown(index, shapes) -> bool:
    """Some Reshape with a target computed at run time has an output whose dims inference left unknown."""
    return any(n.op_type == "Reshape" and not index.is_constant(n.input[1]) and
               None in (shapes.get(n.output[0]) or [None]) for n in index.graph.node)


def _reshape_hints(index, light, shapes) -> bool:
    """Sizes of Reshape outputs that inference left unknown, from their targets evaluated on the dims known so far
    (graph/shape_eval.py: ReduceProd and Max of dims read at run time, which ONNX's data propagation does not
    follow), written to `light` as value_info."""
    infos = {vi.name: vi for vi in light.graph.value_info}

    def dims(tensor):
        if index.is_constant(tensor):
            return list(np.shape(index.constant(tensor)))
        return shapes.get(tensor)
    evaluator = ShapeEvaluator(index, dims)
    changed = False
    for node in index.graph.node:
        out = shapes.get(node.output[0]) if node.op_type == "Reshape" else [0]
        if out is not None and None not in out:
            continue
        data = dims(node.input[0])
        target = evaluator.value(node.input[1])
        size = None if data is None or target is None else resolve_reshape(data, target, attr(node, "allowzero", 0))
        if size is None or any(d < 0 for d in size):
            continue
        info = infos.get(node.output[0])
        if info is None:
            elem = infos.get(node.input[0])
            elem_type = elem.type.tensor_type.elem_type if elem is not None else onnx.TensorProto.FLOAT
            info = onnx.helper.make_tensor_value_info(node.output[0], elem_type, size)
            light.graph.value_info.append(info)
            infos[node.output[0]] = light.graph.value_info[-1]
        else:
            info.type.tensor_type.ClearField("shape")
            info.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in size)
        changed = True
    return changed
