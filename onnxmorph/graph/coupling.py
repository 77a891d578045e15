"""Channel coupling: every tensor that shares a layer's output channel dimension, and what must grow with it.

Widening a layer widens a *channel space*, not a tensor. Starting from the layer's output, rules at each op
map the space between inputs and outputs (DESIGN.md, "Width coupling"), both forwards (consumers) and
backwards (producers, through residual Adds and SE gates), until nothing changes. Unknown ops and ops that
mix channels are refused with the op and tensor named; nothing is skipped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..errors import CannotMorph
from .edit import infer_shapes
from .layers import GraphIndex, attr

# Elementwise ops that keep channels apart; the flag says whether f(0) = 0 (needed for zeros on producers).
UNARY = {"Relu": True, "Tanh": True, "Sigmoid": False, "LeakyRelu": True, "Elu": True, "Selu": True,
         "Softplus": False, "HardSigmoid": False, "HardSwish": True, "Gelu": True, "Erf": True, "Clip": None,
         "Dropout": True, "Identity": True, "Cast": True, "Abs": True, "Neg": True, "Softsign": True,
         "Celu": True, "ThresholdedRelu": True, "Mish": True, "Sqrt": True}
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
BINARY = ("Add", "Sub", "Mul", "Div")
# Reductions keep channels apart when they reduce other axes (spatial means, as dynamo writes GAP).
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare")


@dataclass(frozen=True)
class Entry:
    """Where the space sits in a tensor: its axis, first index, and columns per channel (Flatten of NCHW).

    groups > 1: the axis is (groups × D) with the space at `offset` inside every D-long chunk, as a
    channels-last tensor (NHWC, tf2onnx) flattens."""
    axis: int
    offset: int = 0
    block: int = 1
    groups: int = 1


@dataclass
class ParamUse:
    """A constant input that has one value per channel of the space and must grow."""
    node: onnx.NodeProto
    input_index: int
    axis: int
    offset: int
    block: int
    role: str     # bn_scale, bn_bias, bn_mean, bn_var, slope, add_const, mul_const, bias, inorm_scale, ...


@dataclass
class CouplingGroup:
    channels: int
    members: dict = field(default_factory=dict)            # tensor -> Entry
    producers: list = field(default_factory=list)          # linear layer nodes whose outputs grow
    consumers: list = field(default_factory=list)          # (node, Entry of its input) whose input columns grow
    depthwise: list = field(default_factory=list)          # depthwise Conv nodes that grow with the space
    params: list = field(default_factory=list)             # ParamUse
    reshapes: list = field(default_factory=list)           # (Reshape node, Entry of its output): shape grows
    zero_preserving: bool = True                           # every op on the space maps 0 to 0

    def summary(self) -> dict:
        return {"channels": self.channels,
                "producers": [n.name or n.output[0] for n in self.producers],
                "consumers": [n.name or n.output[0] for n, _ in self.consumers],
                "depthwise": [n.name or n.output[0] for n in self.depthwise],
                "parameters": sorted({f"{p.node.name or p.node.output[0]}:{p.role}" for p in self.params}),
                "tensors": sorted(self.members)}


def _name(node):
    return node.name or node.output[0]


class _Analysis:
    def __init__(self, index: GraphIndex, shapes: dict):
        self.index, self.shapes = index, shapes

    def rank(self, tensor):
        shape = self.shapes.get(tensor)
        return len(shape) if shape is not None else None

    def dim(self, tensor, axis):
        shape = self.shapes.get(tensor)
        if shape is None or axis >= len(shape) or shape[axis] is None:
            raise CannotMorph(f"the shape of tensor {tensor!r} is unknown, so its channels cannot be followed")
        return shape[axis]

    def refuse(self, node, tensor, why):
        raise CannotMorph(f"cannot widen through {node.op_type} {_name(node)!r} on tensor {tensor!r}: {why}")


def _norm_axis(axis, rank):
    return axis + rank if axis < 0 else axis


def analyse(index: GraphIndex, layer, shapes: dict | None = None) -> CouplingGroup:
    """The coupling group of `layer`'s output channels."""
    shapes = shapes if shapes is not None else infer_shapes(index.model)
    an = _Analysis(index, shapes)
    start = layer.output
    rank = an.rank(start)
    if layer.op == "Conv":
        axis = 1
    else:
        if rank is None:
            raise CannotMorph(f"the rank of {start!r} is unknown")
        axis = rank - 1
    group = CouplingGroup(layer.out_channels)
    group.producers.append(layer.node)
    work = []

    def add(tensor, entry):
        old = group.members.get(tensor)
        if old is not None:
            if old != entry:
                raise CannotMorph(f"tensor {tensor!r} meets the widened channels twice, at different places")
            return
        if tensor in index.graph_outputs:
            raise CannotMorph(f"widening changes graph output {tensor!r}; its shape would change")
        group.members[tensor] = entry
        work.append(tensor)

    add(start, Entry(axis))
    done_producers = {id(layer.node)}
    while work:
        tensor = work.pop()
        entry = group.members[tensor]
        # Backwards: whatever writes this tensor must write the space too.
        producer = index.producer.get(tensor)
        if producer is None:
            raise CannotMorph(f"tensor {tensor!r} is a graph input (or initializer) and cannot grow")
        if id(producer) not in done_producers:
            done_producers.add(id(producer))
            _backward(an, group, producer, tensor, entry, add)
        # Forwards: everything reading this tensor. A node handled forwards has its outputs placed already.
        for node in index.consumers.get(tensor, []):
            done_producers.add(id(node))
            _forward(an, group, node, tensor, entry, add)
    return group


def _channel_param(an, group, node, i, entry, role, tensor_rank, param_axis=None):
    """Record constant input i of node as per-channel if its channel dim has the space's size.

    param_axis: the parameter's channel axis when it is not broadcast-aligned with the data (BatchNorm's 1-D
    parameters index axis 1 of the data)."""
    name = node.input[i] if i < len(node.input) else ""
    if not name:
        return
    value = an.index.constant(name) if an.index.is_constant(name) else None
    if value is None:
        an.refuse(node, name, "a per-channel operand that is neither constant nor in the widened space")
    if param_axis is not None:
        group.params.append(ParamUse(node, i, param_axis, entry.offset, entry.block, role))
        return
    # Broadcast: align trailing dims with the activation tensor.
    axis_from_end = tensor_rank - entry.axis
    if value.ndim < axis_from_end or value.shape[value.ndim - axis_from_end] == 1:
        return  # broadcast along channels: nothing grows
    group.params.append(ParamUse(node, i, value.ndim - axis_from_end, entry.offset, entry.block, role))


def _backward(an, group, node, tensor, entry, add):
    op = node.op_type
    index = an.index
    if op in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and index.is_constant(node.input[1]):
        if op == "Conv" and attr(node, "group", 1) != 1:
            w = index.constant(node.input[1])
            if w.shape[1] == 1 and attr(node, "group", 1) == w.shape[0]:
                _depthwise(an, group, node, entry, add)
                return
            an.refuse(node, tensor, "a grouped conv writes the widened channels")
        if entry.offset != 0 or entry.block != 1:
            an.refuse(node, tensor, "the layer writes only part of the widened tensor")
        group.producers.append(node)
        return
    if op == "Add" and any(index.is_constant(i) for i in node.input):  # a bias Add (MatMul+Add)
        _elementwise(an, group, node, tensor, entry, add, backward=True)
        return
    if op in UNARY or op in POOLS or op in ("BatchNormalization", "InstanceNormalization", "PRelu", "Resize",
                                             "Upsample", "Pad") or op in BINARY:
        _elementwise(an, group, node, tensor, entry, add, backward=True)
        return
    an.refuse(node, tensor, "this op writes the widened channels and onnxmorph cannot grow it")


def _depthwise(an, group, node, entry, add):
    if entry.offset != 0 or entry.block != 1:
        an.refuse(node, node.output[0], "a depthwise conv over part of a tensor")
    if node not in group.depthwise:
        group.depthwise.append(node)
    add(node.input[0], entry)
    add(node.output[0], entry)


def _elementwise(an, group, node, tensor, entry, add, backward=False):
    """Ops whose output channels are their input channels."""
    op = node.op_type
    out = node.output[0]
    rank = an.rank(out) or an.rank(tensor)
    if op in UNARY:
        zero = UNARY[op]
        if op == "Clip":
            lo = attr(node, "min", None) if an.index.opset < 11 else None
            if an.index.opset >= 11 and len(node.input) > 1 and node.input[1]:
                v = an.index.constant(node.input[1])
                lo = float(v) if v is not None else None
            zero = lo is None or lo <= 0
            hi_ok = True
            if an.index.opset >= 11 and len(node.input) > 2 and node.input[2]:
                v = an.index.constant(node.input[2])
                hi_ok = v is None or float(v) >= 0
            zero = zero and hi_ok
        group.zero_preserving &= bool(zero)
        add(node.input[0], entry)
        add(out, entry)
        return
    if op in POOLS or op in ("Resize", "Upsample"):
        add(node.input[0], entry)
        add(out, entry)
        return
    if op == "Pad":
        mode = attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = attr(node, "pads", None) if an.index.opset < 11 else (
            an.index.constant(node.input[1]) if len(node.input) > 1 else None)
        value = attr(node, "value", 0.0) if an.index.opset < 11 else (
            an.index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0)
        if mode != "constant" or pads is None or float(value) != 0.0:
            an.refuse(node, tensor, "only zero-valued constant Pad is supported")
        pads = list(pads)
        if len(node.input) > 3 and node.input[3]:
            an.refuse(node, tensor, "Pad with axes is not supported")
        r = len(pads) // 2
        if pads[entry.axis] or pads[r + entry.axis]:
            an.refuse(node, tensor, "Pad pads the channel axis")
        add(node.input[0], entry)
        add(out, entry)
        return
    if op == "BatchNormalization":
        for i, role in ((1, "bn_scale"), (2, "bn_bias"), (3, "bn_mean"), (4, "bn_var")):
            _channel_param(an, group, node, i, entry, role, rank, param_axis=0)
        add(node.input[0], entry)
        add(out, entry)
        return
    if op == "InstanceNormalization":
        for i, role in ((1, "inorm_scale"), (2, "inorm_bias")):
            _channel_param(an, group, node, i, entry, role, rank, param_axis=0)
        add(node.input[0], entry)
        add(out, entry)
        return
    if op == "PRelu":
        _channel_param(an, group, node, 1, entry, "slope", rank)
        add(node.input[0], entry)
        add(out, entry)
        return
    if op in BINARY:
        for i, operand in enumerate(node.input):
            if an.index.is_constant(operand):
                role = {"Add": "add_const", "Sub": "add_const", "Mul": "mul_const", "Div": "div_const"}[op]
                _channel_param(an, group, node, i, entry, role, rank)
                continue
            other_rank = an.rank(operand)
            shape = an.shapes.get(operand)
            if shape is not None and other_rank is not None:
                a = entry.axis - (rank - other_rank)
                if a < 0 or shape[a] == 1:
                    continue  # broadcast along channels
            if op == "Div" and i == 1:
                an.refuse(node, operand, "the widened channels would be a divisor")
            add(operand, entry)
        add(out, entry)
        return
    an.refuse(node, tensor, "unsupported op")


def _flattened(an, node, tensor, entry) -> Entry:
    """Where the space lands when `tensor` (N, ...) is flattened to (N, rest)."""
    rank = an.rank(tensor)
    if rank is None:
        raise CannotMorph(f"the shape of tensor {tensor!r} is unknown, so its channels cannot be followed")
    if entry.groups != 1 or entry.block != 1 or entry.axis == 0:
        an.refuse(node, tensor, "flattening an already flattened space")
    inner = 1
    for d in range(entry.axis + 1, rank):
        inner *= an.dim(tensor, d)
    outer = 1
    for d in range(1, entry.axis):
        outer *= an.dim(tensor, d)
    if outer == 1:  # channels first: channel c owns a block of `inner` columns
        return Entry(1, entry.offset * inner, inner)
    if inner == 1:  # channels last: the space repeats in every chunk of the last dim
        return Entry(1, entry.offset, 1, groups=outer)
    an.refuse(node, tensor, "flattening with the channel axis in the middle")


def _forward(an, group, node, tensor, entry, add):
    op = node.op_type
    index = an.index
    pos = [i for i, name in enumerate(node.input) if name == tensor]
    if op == "Conv":
        if pos != [0]:
            an.refuse(node, tensor, "the widened tensor is a Conv weight or bias")
        g = attr(node, "group", 1)
        if g != 1:
            w = index.constant(node.input[1]) if index.is_constant(node.input[1]) else None
            c_in = an.dim(tensor, 1)
            if w is not None and w.shape[1] == 1 and g == c_in and w.shape[0] == c_in:
                _depthwise(an, group, node, entry, add)
                return
            an.refuse(node, tensor, f"a grouped conv (group {g}) reads the widened channels")
        if not index.is_constant(node.input[1]):
            an.refuse(node, tensor, "Conv weight is not a constant")
        group.consumers.append((node, entry))
        return
    if op in ("Gemm", "MatMul"):
        if pos != [0] or not index.is_constant(node.input[1]):
            an.refuse(node, tensor, f"the widened tensor is not the data input of a {op} with a constant weight")
        rank = an.rank(tensor)
        features_axis = 0 if op == "Gemm" and attr(node, "transA", 0) else (rank - 1 if rank is not None else None)
        if features_axis is None or entry.axis != features_axis:
            an.refuse(node, tensor, "the widened channels are not the features axis")
        group.consumers.append((node, entry))
        return
    if op == "Flatten":
        rank = an.rank(tensor)
        axis = _norm_axis(attr(node, "axis", 1), rank)
        if axis != 1:
            an.refuse(node, tensor, "Flatten does not keep the batch axis alone")
        add(node.output[0], _flattened(an, node, tensor, entry))
        return
    if op == "Reshape":
        rank, out_rank = an.rank(tensor), an.rank(node.output[0])
        shape = index.constant(node.input[1]) if pos == [0] and index.is_constant(node.input[1]) else None
        batch_kept = an.shapes.get(node.output[0], [None, None])[0] == an.shapes.get(tensor, [None])[0]
        if out_rank == 2 and batch_kept and shape is not None and shape.size == 2:
            out_entry = _flattened(an, node, tensor, entry)
            group.reshapes.append((node, out_entry))  # an explicit size in the shape must grow too
            add(node.output[0], out_entry)
            return
        an.refuse(node, tensor, "a Reshape that mixes the channel axis with others")
    if op in REDUCE:
        rank = an.rank(tensor)
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = index.constant(node.input[1]) if index.is_constant(node.input[1]) else None
        if axes is None or rank is None:
            an.refuse(node, tensor, "a reduction over all axes (or unknown axes) mixes channels")
        axes = [_norm_axis(int(a), rank) for a in axes]
        if entry.axis in axes:
            an.refuse(node, tensor, "it reduces over the channel axis")
        keep = attr(node, "keepdims", 1)
        new_axis = entry.axis if keep else entry.axis - sum(a < entry.axis for a in axes)
        add(node.output[0], Entry(new_axis, entry.offset, entry.block))
        return
    if op in ("Squeeze", "Unsqueeze"):
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = index.constant(node.input[1])
        rank = an.rank(tensor)
        if axes is None:
            an.refuse(node, tensor, f"{op} without axes")
        out_rank = an.rank(node.output[0])
        axes = [_norm_axis(int(a), rank if op == "Squeeze" else out_rank) for a in axes]
        if op == "Squeeze":
            if entry.axis in axes:
                an.refuse(node, tensor, "Squeeze removes the channel axis")
            new_axis = entry.axis - sum(a < entry.axis for a in axes)
        else:
            new_axis = entry.axis
            for a in sorted(axes):
                if a <= new_axis:
                    new_axis += 1
        add(node.output[0], Entry(new_axis, entry.offset, entry.block))
        return
    if op == "Transpose":
        perm = attr(node, "perm", None)
        if perm is None:
            perm = list(reversed(range(an.rank(tensor))))
        add(node.output[0], Entry(list(perm).index(entry.axis), entry.offset, entry.block))
        return
    if op == "Concat":
        rank = an.rank(tensor)
        axis = _norm_axis(attr(node, "axis", 1), rank)
        if axis != entry.axis:
            for operand in node.input:
                add(operand, entry)
            add(node.output[0], entry)
            return
        if len(pos) != 1:
            an.refuse(node, tensor, "the same tensor is concatenated twice")
        offset = sum(an.dim(node.input[i], axis) for i in range(pos[0]))
        add(node.output[0], Entry(axis, entry.offset + offset, entry.block))
        return
    if op in UNARY or op in POOLS or op in BINARY or op in ("BatchNormalization", "InstanceNormalization", "PRelu",
                                                            "Resize", "Upsample", "Pad"):
        if op in ("BatchNormalization", "InstanceNormalization", "PRelu", "Resize", "Upsample", "Pad") and pos != [0]:
            an.refuse(node, tensor, "the widened tensor is a parameter of this op")
        _elementwise(an, group, node, tensor, entry, add)
        return
    if op in ("Shape", "Size"):
        an.refuse(node, tensor, "the tensor's shape is read at run time and would change")
    if op in ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "LpNormalization", "LRN",
              "ReduceLogSumExp", "ReduceProd", "ReduceLogSum"):
        an.refuse(node, tensor, "it mixes values across the channel axis")
    an.refuse(node, tensor, "unsupported op")
