"""Channel coupling: every tensor that shares a layer's output channel dimension, and what must grow with it.

Widening a layer widens a *channel space*, not a tensor. Starting from the layer's output, one rule per op
family maps the space between inputs and outputs (DESIGN.md, "Width coupling"), both forwards (consumers) and
backwards (producers, through residual Adds and SE gates), until nothing changes. Adding an op is adding a
rule to RULES. Unknown ops and ops that mix channels are refused with the op and tensor named.

The space is cut into segments (conv groups, Split parts, shuffle groups, heads); new channels are appended
to segments, so a segment stays contiguous and a part of the space keeps its place in every tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import onnx

from ..errors import CannotMorph
from .edit import infer_shapes
from . import attention, norms, stream
from .layers import GraphIndex, attr, fold_constant_paths, node_name as _name
from .shape_source import ConstDim, DimRead, ShapeEdit, dims_read, entry_source, generic_shapes, shape_values

# Elementwise ops that keep channels apart; the flag says whether f(0) = 0 (needed for zeros on producers).
UNARY = {"Relu": True, "Tanh": True, "Sigmoid": False, "LeakyRelu": True, "Elu": True, "Selu": True,
         "Softplus": False, "HardSigmoid": False, "HardSwish": True, "Gelu": True, "Erf": True, "Clip": None,
         "Dropout": True, "Identity": True, "Cast": True, "Abs": True, "Neg": True, "Softsign": True,
         "Celu": True, "ThresholdedRelu": True, "Mish": True, "Sqrt": True}
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
BINARY = ("Add", "Sub", "Mul", "Div", "Sum", "Mean")
# Reductions keep channels apart when they reduce other axes (spatial means, as dynamo writes GAP).
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare")
MIXING = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "LpNormalization",
          "ReduceLogSumExp", "ReduceProd", "ReduceLogSum", "Hardmax")


@dataclass(frozen=True)
class Entry:
    """Where the space sits along one axis of a tensor.

    axis: the axis; offset: index of the space's first channel; block: consecutive indices per channel (an
    NCHW tensor flattened gives H·W). chunks > 1: the axis is `chunks` equal chunks with the space at `offset`
    in every one (channels-last flattened). part: only space channels [start, stop) lie here (Split/Slice),
    None for all. seg_axis: the space's segments lie along this other axis, `axis` holding the position
    inside a segment (a channel-shuffle Reshape to (N, g, C/g, ...)). interleaved: segment s's channel j is
    at j·segments + s (after a shuffle)."""
    axis: int
    offset: int = 0
    block: int = 1
    chunks: int = 1
    part: tuple[int, int] | None = None
    seg_axis: int | None = None
    interleaved: bool = False

    @property
    def groups(self) -> int:  # the name widen's older callers use for chunks
        return self.chunks

    @property
    def simple(self) -> bool:
        """The space sits on one axis in plain order (maybe a slice of it, maybe at an offset)."""
        return self.chunks == 1 and self.seg_axis is None and not self.interleaved


@dataclass
class ParamUse:
    """A constant input that has one value per channel of the space and must grow."""
    node: onnx.NodeProto
    input_index: int
    place: Entry  # its axis is the parameter's axis
    role: str     # bn_scale, bn_bias, bn_mean, bn_var, slope, add_const, mul_const, bias, inorm_scale, ...

    @property
    def axis(self):
        return self.place.axis

    @property
    def offset(self):
        return self.place.offset

    @property
    def block(self):
        return self.place.block


@dataclass
class BoundsEdit:
    """Split sizes or Slice starts/ends on the space's axis: positions that move when segments grow."""
    node: onnx.NodeProto
    entry: Entry                 # the space in the node's data input
    positions: list[int]         # old boundary positions along the axis (normalised, non-negative)
    kind: str                    # split_attr | split_input | split_equal | slice_attr | slice_input
    slot: int = 0                # Slice: which entry of starts/ends is the channel axis


@dataclass
class CouplingGroup:
    channels: int
    members: dict = field(default_factory=dict)            # tensor -> tuple of Entry (a tensor may hold a part twice)
    producers: list = field(default_factory=list)          # linear layer nodes whose outputs grow
    producer_entries: list = field(default_factory=list)   # (node, Entry of its output)
    consumers: list = field(default_factory=list)          # (node, Entry of its input) whose input columns grow
    depthwise: list = field(default_factory=list)          # depthwise Conv nodes that grow with the space
    depthwise_entries: dict = field(default_factory=dict)  # id(node) -> Entry of its input
    params: list = field(default_factory=list)             # ParamUse
    reshapes: list = field(default_factory=list)           # ShapeEdit (graph/shape_source.py)
    bounds: list = field(default_factory=list)             # BoundsEdit
    cuts: set = field(default_factory=set)                 # channel indices where a segment starts
    equal_growth: list = field(default_factory=list)       # why every segment must grow by the same number
    zero_preserving: bool = True                           # every op on the space maps 0 to 0
    zero_new_channels_required: str | None = None          # why new channels must be exactly 0 (zeros on producers)
    keep_order: str | None = None                          # why new channels must follow the old ones, unpermuted
    net2net_refused: str | None = None                     # why replication is not exact here
    head_dim: int | None = None                            # the space counts attention heads (or GQA groups)
    norms: list = field(default_factory=list)              # stream.Norm records: norms over the space

    def segments(self) -> list[tuple[int, int]]:
        """The space's segments as (start, stop) channel ranges."""
        edges = sorted({0, self.channels} | {c for c in self.cuts if 0 < c < self.channels})
        return list(zip(edges[:-1], edges[1:]))

    def cut(self, start: int, stop: int, pieces: int = 1):
        for k in range(pieces + 1):
            self.cuts.add(start + (stop - start) * k // pieces)

    def summary(self) -> dict:
        out = {"channels": self.channels,
               "producers": [_name(n) for n in self.producers],
               "consumers": [_name(n) for n, _ in self.consumers],
               "depthwise": [_name(n) for n in self.depthwise],
               "parameters": sorted({f"{_name(p.node)}:{p.role}" for p in self.params}),
               "tensors": sorted(self.members)}
        if len(self.segments()) > 1:
            out["segments"] = [b - a for a, b in self.segments()]
        if self.equal_growth:
            out["equal_growth"] = sorted(set(self.equal_growth))
        if self.zero_new_channels_required:
            out["zero_new_channels_required"] = self.zero_new_channels_required
        if self.norms:
            out["norms"] = [n.name for n in self.norms]
        if self.head_dim:
            out["head_dim"] = self.head_dim
        if self.reshapes:
            out["shape_constants"] = sorted({_name(e.node) for e in self.reshapes})
        if self.bounds:
            out["bounds"] = sorted({_name(e.node) for e in self.bounds})
        return out



def _norm_axis(axis, rank):
    return axis + rank if axis < 0 else axis


class _Analysis:
    """The worklist state the rules act on."""

    def __init__(self, index: GraphIndex, shapes: dict, group: CouplingGroup):
        self.index, self.shapes, self.group = index, shapes, group
        self.work: list[tuple[str, Entry]] = []
        self.written: set = set()   # (id(node), tensor, entry): the node is known to write the space there
        self.current = None         # the node a forward rule is placing outputs for
        self.shape_edits: set = set()
        self._norms = self._norm_misses = None
        self.whole_last: list = []  # (tensor, node): the space must fill tensor's last axis (same_last_dim)

    def norm_at(self, node):
        """The decomposed norm (graph/norms.py) that node is part of, or None."""
        if self._norms is None:
            self._norms, self._norm_misses = norms.find(self.index, self.shapes)
        return self._norms.get(id(node))

    def not_a_norm(self, node) -> str:
        """Why a ReduceMean over the channel axis is not part of a norm ('' when no reason is known)."""
        self.norm_at(node)
        why = self._norm_misses.get(id(node))
        return f" and is no norm ({why})" if why else ""

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

    def const(self, node, i):
        """Constant input i of node (None when absent or not constant)."""
        if i < len(node.input) and node.input[i] and self.index.is_constant(node.input[i]):
            return self.index.constant(node.input[i])
        return None

    def add(self, tensor, entry):
        group = self.group
        if entry.part == (0, group.channels):
            entry = replace(entry, part=None)
        places = group.members.get(tensor, ())
        if entry in places:
            return
        for other in places:
            if self._overlap(tensor, entry, other):
                raise CannotMorph(f"tensor {tensor!r} meets the widened channels twice, at overlapping places")
        if tensor in self.index.graph_outputs:
            raise CannotMorph(f"widening changes graph output {tensor!r}; its shape would change")
        group.members[tensor] = places + (entry,)
        if self.current is not None and self.index.producer.get(tensor) is self.current:
            self.written.add((id(self.current), tensor, entry))
        self.work.append((tensor, entry))

    def _overlap(self, tensor, a, b) -> bool:
        """Two places of the space in one tensor must be disjoint runs of the same axis."""
        if not (a.simple and b.simple and a.axis == b.axis):
            return True
        (a0, a1), (b0, b1) = ((e.offset, e.offset + self.space_size(e) * e.block) for e in (a, b))
        return a0 < b1 and b0 < a1

    def shape_edit(self, edit: ShapeEdit, place):
        """Record a shape entry to grow, once per place of the space in the reshaped tensor."""
        key = (id(edit.node), edit.input_index, edit.dim, place)
        if key not in self.shape_edits:
            self.shape_edits.add(key)
            self.group.reshapes.append(edit)

    def same_last_dim(self, read, data, node) -> bool:
        """The last dim of `read` stands for the last dim of `data` in a shape `node` uses: the same tensor, or two
        the space fills whole on their last axis (GPT-2's opset-14 ln_f Reshape reads the embedding sum), checked
        when the walk is done."""
        if read == data:
            return True
        a, b = self.shapes.get(read), self.shapes.get(data)
        if not a or not b or a[-1] is None or a[-1] != b[-1]:
            return False
        self.whole_last.extend([(read, node), (data, node)])
        return True

    def check_whole_last(self):
        for tensor, node in self.whole_last:
            rank = self.rank(tensor)
            if not any(e.axis == rank - 1 and self.whole_axis(tensor, e) for e in self.group.members.get(tensor, ())):
                self.refuse(node, tensor, "its shape reads the last dim of a tensor that does not grow with it")

    def space_size(self, entry) -> int:
        lo, hi = entry.part or (0, self.group.channels)
        return hi - lo

    def whole_axis(self, tensor, entry) -> bool:
        return entry.simple and entry.offset == 0 and entry.block == 1 and \
            self.space_size(entry) == self.dim(tensor, entry.axis)


# --- the rule table ---------------------------------------------------------------------------------------

@dataclass
class Rule:
    """forward(an, node, tensor, entry, positions): the space is read at input `tensor`.
    backward(an, node, tensor, entry): the space is written at output `tensor`; None refuses."""
    forward: object
    backward: object = None


RULES: dict[str, Rule] = {}


def rule(*ops, backward=False):
    """Register a forward rule for ops; backward=True uses the same function backwards (channel-preserving
    ops, which place the same entry on inputs and output), or pass a function."""
    def register(fn):
        back = (lambda an, node, tensor, entry: fn(an, node, tensor, entry, None)) if backward is True else (
            backward or None)
        for op in ops:
            RULES[op] = Rule(fn, back)
        return fn
    return register


def _same_place(an, node, tensor, entry):
    an.add(node.input[0], entry)
    an.add(node.output[0], entry)


def _data_only(an, node, tensor, pos):
    if pos is not None and pos != [0]:
        an.refuse(node, tensor, "the widened tensor is a parameter of this op")


def _clip_keeps_zero(an, node) -> bool:
    if an.index.opset < 11:
        lo, hi = attr(node, "min", None), attr(node, "max", None)
    else:
        lo_v, hi_v = an.const(node, 1), an.const(node, 2)
        lo = float(lo_v) if lo_v is not None else None
        hi = float(hi_v) if hi_v is not None else None
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


@rule(*UNARY, backward=True)
def _unary(an, node, tensor, entry, pos):
    zero = _clip_keeps_zero(an, node) if node.op_type == "Clip" else UNARY[node.op_type]
    an.group.zero_preserving &= bool(zero)
    _same_place(an, node, tensor, entry)


@rule("Pow", backward=True)
def _pow(an, node, tensor, entry, pos):
    """x ** c with one constant exponent acts channel by channel (the space never enters as the exponent)."""
    exponent = an.const(node, 1)
    if (pos is not None and pos != [0]) or exponent is None or exponent.size != 1:
        an.refuse(node, tensor, "Pow with a per-channel or computed exponent")
    an.group.zero_preserving &= float(exponent) > 0
    _same_place(an, node, tensor, entry)


@rule(*POOLS, "Resize", "Upsample", backward=True)
def _pool(an, node, tensor, entry, pos):
    _data_only(an, node, tensor, pos)
    _same_place(an, node, tensor, entry)


@rule("Pad", backward=True)
def _pad(an, node, tensor, entry, pos):
    _data_only(an, node, tensor, pos)
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    old = an.index.opset < 11
    pads = attr(node, "pads", None) if old else an.const(node, 1)
    value = attr(node, "value", 0.0) if old else (an.const(node, 2) if len(node.input) > 2 and node.input[2] else 0.0)
    if mode != "constant" or pads is None or value is None or float(value) != 0.0:
        an.refuse(node, tensor, "only zero-valued constant Pad is supported")
    if len(node.input) > 3 and node.input[3]:
        an.refuse(node, tensor, "Pad with axes is not supported")
    pads = [int(p) for p in pads]
    if pads[entry.axis] or pads[len(pads) // 2 + entry.axis]:
        an.refuse(node, tensor, "Pad pads the channel axis")
    _same_place(an, node, tensor, entry)


@rule("LRN", backward=True)
def _lrn(an, node, tensor, entry, pos):
    """LRN divides by a sum of squares over neighbouring channels: channels that are exactly zero at its input
    change nothing, provided they come after every old channel (no neighbour is pushed out of a window)."""
    if not an.whole_axis(tensor, entry) and not (entry.simple and entry.block == 1 and entry.part is None and
                                                 entry.offset + an.group.channels == an.dim(tensor, entry.axis)):
        an.refuse(node, tensor, "LRN rule: the widened channels must be the last channels of its input")
    group = an.group
    group.zero_new_channels_required = f"LRN {_name(node)!r} sums squares over neighbouring channels"
    group.keep_order = group.zero_new_channels_required
    group.net2net_refused = (f"LRN {_name(node)!r}: replicated channels change its neighbouring sums of squares; "
                             "use netmorph (zeros on the producer side are exact through LRN)")
    _same_place(an, node, tensor, entry)


def _channel_param(an, node, i, entry, role, rank, param_axis=None):
    """Record constant input i of node as per-channel if its channel dim has the space's size.

    param_axis: the parameter's channel axis when it is not broadcast-aligned with the data (BatchNorm's 1-D
    parameters index axis 1 of the data)."""
    name = node.input[i] if i < len(node.input) else ""
    if not name:
        return
    value = an.const(node, i)
    if value is None:
        an.refuse(node, name, "a per-channel operand that is neither constant nor in the widened space")
    # A chunked space (a fused QKV's bias) grows in every chunk: fine when broadcast, so the constant spans the axis.
    if (entry.chunks != 1 and param_axis is not None) or entry.seg_axis is not None:
        if value.size == 1:
            return
        an.refuse(node, name, "a per-channel constant on a flattened or half-shuffled space")
    if param_axis is None:  # broadcast: align trailing dims with the activation tensor
        axis_from_end = rank - entry.axis
        if value.ndim < axis_from_end or value.shape[value.ndim - axis_from_end] == 1:
            return  # broadcast along channels: nothing grows
        param_axis = value.ndim - axis_from_end
    an.group.params.append(ParamUse(node, i, replace(entry, axis=param_axis), role))


@rule("BatchNormalization", "InstanceNormalization", "PRelu", backward=True)
def _per_channel(an, node, tensor, entry, pos):
    _data_only(an, node, tensor, pos)
    rank = an.rank(node.output[0]) or an.rank(tensor)
    if node.op_type == "BatchNormalization":
        for i, role in ((1, "bn_scale"), (2, "bn_bias"), (3, "bn_mean"), (4, "bn_var")):
            _channel_param(an, node, i, entry, role, rank, param_axis=0)
    elif node.op_type == "InstanceNormalization":
        for i, role in ((1, "inorm_scale"), (2, "inorm_bias")):
            _channel_param(an, node, i, entry, role, rank, param_axis=0)
    else:
        _channel_param(an, node, 1, entry, "slope", rank)
    _same_place(an, node, tensor, entry)


@rule(*BINARY, backward=True)
def _binary(an, node, tensor, entry, pos):
    """Elementwise ops of several operands couple every operand that carries the channel axis."""
    op = node.op_type
    out = node.output[0]
    rank = an.rank(out) or an.rank(tensor)
    for i, operand in enumerate(node.input):
        if an.index.is_constant(operand):
            role = {"Mul": "mul_const", "Div": "div_const"}.get(op, "add_const")
            _channel_param(an, node, i, entry, role, rank)
            continue
        other_rank = an.rank(operand)
        shape = an.shapes.get(operand)
        if shape is not None and other_rank is not None:
            a = entry.axis - (rank - other_rank)
            if a < 0 or shape[a] == 1:
                continue  # broadcast along channels
            operand_entry = replace(entry, axis=a, seg_axis=None if entry.seg_axis is None else
                                    entry.seg_axis - (rank - other_rank))
        else:
            operand_entry = entry
        if op == "Div" and i == 1:
            an.refuse(node, operand, "the widened channels would be a divisor")
        an.add(operand, operand_entry)
    an.add(out, entry)


def _conv_backward(an, node, tensor, entry):
    """A Conv writes the space: a producer (a grouped conv gets new filters in every group), or a depthwise
    conv, whose input carries the space too."""
    w = an.const(node, 1)
    if w is None:
        an.refuse(node, tensor, "this op writes the widened channels and its weight is not a constant")
    g = attr(node, "group", 1)
    if g != 1 and w.shape[1] == 1 and g == w.shape[0]:
        _depthwise(an, node, node.input[0], entry)
        return
    _producer(an, node, tensor, entry)
    if g != 1:
        an.group.cut(0, an.group.channels, g)
        an.group.equal_growth.append(f"grouped Conv {_name(node)!r} (group {g}) writes the space: every "
                                     "group gets the same number of new filters")


def _producer(an, node, tensor, entry):
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
    if not entry.simple or entry.block != 1:
        an.refuse(node, node.output[0], "a depthwise conv over a flattened or shuffled space")
    if entry.offset != 0 or an.space_size(entry) != an.dim(tensor, entry.axis):
        an.refuse(node, node.output[0], "a depthwise conv over part of a tensor")
    if id(node) not in an.group.depthwise_entries:
        an.group.depthwise.append(node)
        an.group.depthwise_entries[id(node)] = entry
    an.add(node.input[0], entry)
    an.add(node.output[0], entry)


@rule("Conv", backward=_conv_backward)
def _conv_forward(an, node, tensor, entry, pos):
    if pos != [0]:
        an.refuse(node, tensor, "the widened tensor is a Conv weight or bias")
    w = an.const(node, 1)
    if w is None:
        an.refuse(node, tensor, "Conv weight is not a constant")
    g = attr(node, "group", 1)
    c_in = an.dim(tensor, 1)
    if g != 1 and w.shape[1] == 1 and g == c_in and w.shape[0] == c_in:
        _depthwise(an, node, tensor, entry)
        return
    if entry.chunks != 1 or entry.seg_axis is not None or entry.block != 1 or (entry.interleaved and g != 1):
        an.refuse(node, tensor, "a Conv reads a flattened space, or a grouped Conv a shuffled one")
    if g != 1:
        # grouped conv: group k reads input channels [k·C/g, (k+1)·C/g); the space's channels there grow
        # by the same number in every group, so the group count stays and each group's width grows.
        per = c_in // g
        lo, hi = entry.part or (0, an.group.channels)
        if an.space_size(entry) != c_in or entry.offset != 0:
            an.refuse(node, tensor, f"grouped conv rule: group {g} reads the widened channels together with "
                                    "others; every group must grow by the same number")
        an.group.cut(lo, hi, g)
        an.group.equal_growth.append(f"grouped Conv {_name(node)!r} (group {g}, {per} channels each) reads "
                                     "the space: every group grows by the same number")
    an.group.consumers.append((node, entry))


def _linear_backward(an, node, tensor, entry):
    if an.const(node, 1) is None:
        an.refuse(node, tensor, "this op writes the widened channels and its weight is not a constant")
    _producer(an, node, tensor, entry)


@rule("Gemm", "MatMul", backward=_linear_backward)
def _linear_forward(an, node, tensor, entry, pos):
    op = node.op_type
    if pos != [0] or an.const(node, 1) is None:
        an.refuse(node, tensor, f"the widened tensor is not the data input of a {op} with a constant weight")
    rank = an.rank(tensor)
    features_axis = 0 if op == "Gemm" and attr(node, "transA", 0) else (rank - 1 if rank is not None else None)
    if features_axis is None or entry.axis != features_axis:
        an.refuse(node, tensor, "the widened channels are not the features axis")
    if entry.seg_axis is not None:
        an.refuse(node, tensor, "a half-shuffled space read by a matrix product")
    an.group.consumers.append((node, entry))


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


@rule("Flatten")
def _flatten(an, node, tensor, entry, pos):
    if _norm_axis(attr(node, "axis", 1), an.rank(tensor)) != 1:
        an.refuse(node, tensor, "Flatten does not keep the batch axis alone")
    an.add(node.output[0], _flattened(an, node, tensor, entry))


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
        kept = isinstance(source, DimRead) and source.axis == len(an.shapes.get(source.tensor) or ()) - 1 and \
            an.same_last_dim(source.tensor, node.input[0], node)
    return moved if kept else None


def _reshape_backward(an, node, tensor, entry):
    kept = _keeps_last_axis(an, node, tensor, node.input[0], entry)
    if kept is not None:
        an.add(node.input[0], kept)
    elif not _attention_backward(an, node, tensor, entry):
        if an.const(node, 1) is None:
            an.refuse(node, tensor, "it writes the widened channels and its shape is read at run time")
        an.refuse(node, tensor, "this op writes the widened channels and onnxmorph cannot grow it")


@rule("Reshape", backward=_reshape_backward)
def _reshape(an, node, tensor, entry, pos):
    _data_only(an, node, tensor, pos)
    src, out = an.shapes.get(tensor), an.shapes.get(node.output[0])
    if src is None or out is None:
        an.refuse(node, tensor, "a Reshape that mixes the channel axis with others, or whose shapes are unknown")
    shape = an.const(node, 1)
    if shape is None:
        kept = _keeps_last_axis(an, node, tensor, node.output[0], entry)
        if kept is None and _attention_forward(an, node, tensor, entry, pos):   # heads: its entries are traced
            return
        if kept is None:
            an.refuse(node, tensor, "its target shape is read at run time and would not follow the growth")
        an.add(node.output[0], kept)
        return
    shape = [int(s) for s in shape]
    space = an.group.channels
    a = entry.axis
    if len(out) == 2 and len(shape) == 2 and out[0] == src[0]:  # flatten to (N, features)
        out_entry = _flattened(an, node, tensor, entry)
        an.shape_edit(ShapeEdit(node, 1, 1, Fraction(out_entry.block * out_entry.chunks)), (tensor, entry))
        an.add(node.output[0], out_entry)
        return
    if len(out) == 1 and entry.simple and entry.block == 1 and an.whole_axis(tensor, entry) and \
            all(d == 1 for i, d in enumerate(src) if i != a):   # (1, C, 1, 1) -> (C,): only the channel axis
        if shape[0] > 0:
            an.shape_edit(ShapeEdit(node, 1, 0, Fraction(1)), (tensor, entry))
        an.add(node.output[0], replace(entry, axis=0))
        return
    if out == src and entry.simple:  # a no-op reshape (dynamo writes them)
        an.shape_edit(ShapeEdit(node, 1, a, Fraction(entry.block)), (tensor, entry))
        an.add(node.output[0], entry)
        return
    kept = _keeps_last_axis(an, node, tensor, node.output[0], entry)
    if kept is not None:
        an.add(node.output[0], kept)
        return
    if len(out) == len(src) + 1 and out[:a] == src[:a] and out[a + 2:] == src[a + 1:] and entry.simple and \
            out[a] and out[a + 1] and out[a] * out[a + 1] == src[a] and _shuffles(an, node, a):
        # channel shuffle, first half: (N, C, ...) -> (N, g, C/g, ...)
        g = out[a]
        if not an.whole_axis(tensor, entry):
            an.refuse(node, tensor, f"channel shuffle rule: Reshape splits the channel axis into {g} groups, "
                                    "and the widened channels fill only part of it; every group must grow")
        an.group.cut(0, space, g)
        an.group.equal_growth.append(f"channel shuffle Reshape {_name(node)!r} ({g} groups): every group "
                                     "grows by the same number")
        an.shape_edit(ShapeEdit(node, 1, a + 1, Fraction(1, g)), (tensor, entry))
        an.add(node.output[0], Entry(a + 1, seg_axis=a))
        return
    if len(out) + 1 == len(src) and entry.seg_axis is not None and abs(entry.seg_axis - a) == 1:
        # channel shuffle, second half: (N, C/g, g, ...) or (N, g, C/g, ...) -> (N, C, ...)
        first = min(a, entry.seg_axis)
        if out[:first] == src[:first] and out[first + 1:] == src[first + 2:] and \
                out[first] == src[first] * src[first + 1]:
            an.shape_edit(ShapeEdit(node, 1, first, Fraction(1)), (tensor, entry))
            an.add(node.output[0], Entry(first, interleaved=entry.seg_axis > a))
            return
    if not _attention_forward(an, node, tensor, entry, pos):
        an.refuse(node, tensor, "a Reshape that mixes the channel axis with others")


def _shuffles(an, node, a) -> bool:
    """Reshape (N, g, C/g, ...) -> Transpose swapping those two axes -> Reshape back: a channel shuffle."""
    users = an.index.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Transpose":
        return False
    perm = list(attr(users[0], "perm", []))
    return len(perm) > a + 1 and perm[a] == a + 1 and perm[a + 1] == a


@rule(*REDUCE)
def _reduce(an, node, tensor, entry, pos):
    rank = an.rank(tensor)
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = an.const(node, 1)
    if axes is None or rank is None:
        an.refuse(node, tensor, "a reduction over all axes (or unknown axes) mixes channels")
    axes = [_norm_axis(int(a), rank) for a in axes]
    if entry.axis in axes or (entry.seg_axis is not None and entry.seg_axis in axes):
        an.refuse(node, tensor, "it reduces over the channel axis" +
                  (an.not_a_norm(node) if node.op_type == "ReduceMean" else ""))
    keep = attr(node, "keepdims", 1)
    an.add(node.output[0], _moved(entry, lambda x: x if keep else x - sum(a < x for a in axes)))


def _moved(entry, move):
    return replace(entry, axis=move(entry.axis), seg_axis=None if entry.seg_axis is None else move(entry.seg_axis))


@rule("Squeeze", "Unsqueeze")
def _squeeze(an, node, tensor, entry, pos):
    op = node.op_type
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1:
        axes = an.const(node, 1)
    if axes is None:
        an.refuse(node, tensor, f"{op} without axes")
    rank, out_rank = an.rank(tensor), an.rank(node.output[0])
    axes = [_norm_axis(int(a), rank if op == "Squeeze" else out_rank) for a in axes]
    if op == "Squeeze":
        if entry.axis in axes or entry.seg_axis in axes:
            an.refuse(node, tensor, "Squeeze removes the channel axis")
        an.add(node.output[0], _moved(entry, lambda x: x - sum(a < x for a in axes)))
        return

    def unsqueezed(x):
        for a in sorted(axes):
            if a <= x:
                x += 1
        return x
    an.add(node.output[0], _moved(entry, unsqueezed))


@rule("Transpose")
def _transpose(an, node, tensor, entry, pos):
    perm = attr(node, "perm", None)
    if perm is None:
        perm = list(reversed(range(an.rank(tensor))))
    an.add(node.output[0], _moved(entry, lambda x: list(perm).index(x)))


@rule("Concat")
def _concat(an, node, tensor, entry, pos):
    axis = _norm_axis(attr(node, "axis", 1), an.rank(tensor))
    if axis not in (entry.axis, entry.seg_axis):
        for i, operand in enumerate(node.input):
            if an.index.is_constant(operand):  # a constant piece (ViT's class token) grows like a parameter
                an.group.params.append(ParamUse(node, i, entry, "concat_const"))
            else:
                an.add(operand, entry)
        an.add(node.output[0], entry)
        return
    if len(pos) != 1:
        an.refuse(node, tensor, "the same tensor is concatenated twice")
    if not entry.simple:
        an.refuse(node, tensor, "concatenating a flattened or shuffled space")
    offset = sum(an.dim(node.input[i], axis) for i in range(pos[0]))
    an.add(node.output[0], replace(entry, offset=entry.offset + offset))


def _cut_along(an, node, tensor, entry, bounds: list[tuple[int, int]], kind: str, slot: int = 0):
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


def _split_backward(an, node, tensor, entry):
    """The space is one output of a Split on its axis: it sits at that output's start in the input (the
    forward rule then moves the sizes)."""
    if not entry.simple or entry.part is not None:
        an.refuse(node, tensor, "a part of a part of the widened channels")
    bounds = _split_bounds(an, node, node.input[0])
    for (axis, start, _), out in zip(bounds, node.output):
        if out == tensor:
            an.add(node.input[0], entry if axis != entry.axis else replace(entry, offset=entry.offset + start))


def _split_bounds(an, node, tensor) -> list:
    """[(axis, start, stop)] per output of a Split."""
    axis = _norm_axis(attr(node, "axis", 0), an.rank(tensor))
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


@rule("Split", backward=_split_backward)
def _split(an, node, tensor, entry, pos):
    """Split on the channel axis: every output is a part of the space; the sizes follow the growth."""
    _data_only(an, node, tensor, pos)
    bounds = _split_bounds(an, node, tensor)
    axis = bounds[0][0]
    if axis != entry.axis and axis != entry.seg_axis:
        for out in node.output:
            an.add(out, entry)
        return
    kind = "split_attr" if attr(node, "split", None) is not None else (
        "split_input" if len(node.input) > 1 and node.input[1] else "split_equal")
    if entry.chunks > 1 and attention.split_chunks(an, an.group, node, tensor, entry, bounds, kind, an.add):
        return
    _cut_along(an, node, tensor, entry, [(a, b) for _, a, b in bounds], kind)


def _slice_bounds(an, node, tensor):
    """(axes, starts, ends, steps) of a Slice, from attributes (opset < 10) or constant inputs."""
    rank = an.rank(tensor)
    if an.index.opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes", None), None
    else:
        starts, ends, axes, steps = (an.const(node, i) for i in (1, 2, 3, 4))
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) or (
                len(node.input) > 4 and node.input[4] and steps is None):
            an.refuse(node, tensor, "Slice bounds computed at run time")
    axes = list(range(len(starts))) if axes is None else [_norm_axis(int(a), rank) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    return axes, [int(v) for v in starts], [int(v) for v in ends], steps


def _slice_range(an, node, tensor, axis):
    """(start, stop) of the Slice along axis, normalised; None when the Slice leaves that axis whole."""
    axes, starts, ends, steps = _slice_bounds(an, node, tensor)
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


def _slice_backward(an, node, tensor, entry):
    _data_only(an, node, node.input[0], [0])
    if not entry.simple or entry.part is not None:
        an.refuse(node, tensor, "a part of a part of the widened channels")
    found = _slice_range(an, node, node.input[0], entry.axis)
    an.add(node.input[0], entry if found is None else replace(entry, offset=entry.offset + found[0]))


@rule("Slice", backward=_slice_backward)
def _slice(an, node, tensor, entry, pos):
    """Slice of the channel axis (step 1): a part of the space; the bounds follow the growth."""
    _data_only(an, node, tensor, pos)
    axes = _slice_bounds(an, node, tensor)[0]
    if entry.seg_axis in axes:
        an.refuse(node, tensor, "slicing the groups of a shuffled space")
    found = _slice_range(an, node, tensor, entry.axis)
    if found is None:
        an.add(node.output[0], entry)
        return
    start, stop, k = found
    if entry.chunks > 1 and _slice_chunk(an, node, tensor, entry, start, stop, k):
        return
    _cut_along(an, node, tensor, entry, [(start, stop)], "slice_attr" if an.index.opset < 10 else "slice_input", k)


def _slice_chunk(an, node, tensor, entry, start, stop, k) -> bool:
    """A Slice that is chunk j of a chunked axis (the legacy exporter's chunk(2) of a fused gate_up): its output
    holds the whole space; start and end grow by j and j + 1 blocks per new channel."""
    size = an.dim(tensor, entry.axis) // entry.chunks
    j = start // size
    if entry.offset or start != j * size or stop != start + size or an.index.opset < 10:
        return False
    for input_index, units in ((1, j), (2, j + 1)):
        source = entry_source(an.index, node, input_index, k, an.shapes)
        if not isinstance(source, ConstDim) or source.value != units * size:
            an.refuse(node, tensor, "its bounds are computed at run time or clamped")
        if units:
            an.shape_edit(ShapeEdit(source.node, source.input_index, source.dim, Fraction(units * entry.block)),
                          (tensor, input_index))
    an.add(node.output[0], replace(entry, chunks=1))
    return True


def _refuse_rule(why):
    def refuse(an, node, tensor, entry, pos):
        an.refuse(node, tensor, why)
    return refuse


@rule("Shape")
def _shape(an, node, tensor, entry, pos):
    """A Shape read of a widened tensor is harmless when the dims it reads are other axes, or when the channel
    dim only feeds the last entry of the shape of a Reshape of that same tensor which keeps the last axis (it
    then follows the new size)."""
    reads = dims_read(an.index, node, an.shapes)
    if reads is None:
        an.refuse(node, tensor, "the tensor's shape is read at run time and would change")
    rank = an.rank(tensor)
    for axis, user, position in reads:
        if axis != entry.axis and axis != entry.seg_axis:
            continue
        targets = an.index.consumers.get(user.output[0], []) if user.op_type == "Concat" else [user]
        if user.op_type != "Concat" or not targets:
            an.refuse(node, tensor, "the tensor's shape is read at run time and would change")
        for reshape in targets:
            out_rank = an.rank(reshape.output[0])
            if reshape.op_type != "Reshape" or reshape.input[1] != user.output[0] or entry.axis != rank - 1 \
                    or position != (out_rank or 0) - 1 or not an.same_last_dim(tensor, reshape.input[0], reshape):
                an.refuse(node, tensor, "the tensor's shape is read at run time and would change")


RULES["Size"] = Rule(_refuse_rule("the tensor's size is read at run time and would change"))
for _op in MIXING:
    RULES[_op] = Rule(_refuse_rule("it mixes values across the channel axis"))


# Attention heads (graph/attention.py): heads are a batch axis of the batched MatMuls, Softmax runs over the keys,
# the GQA repeat expands. Each op falls back to its table rule (or a refusal) when attention's does not apply.
def _attention_forward(an, node, tensor, entry, pos) -> bool:
    return attention.forward(an, an.group, node, tensor, entry, an.add, pos)


def _attention_backward(an, node, tensor, entry) -> bool:
    return attention.backward(an, an.group, node, tensor, entry, an.add)


def _attention_or(rule_fn, why):
    """Attention's rule for the op first, else `rule_fn` (None: refuse with `why`)."""
    def forward(an, node, tensor, entry, pos):
        if not _attention_forward(an, node, tensor, entry, pos):
            if rule_fn is None:
                an.refuse(node, tensor, why)
            rule_fn(an, node, tensor, entry, pos)
    return forward


def _attention_backward_or_refuse(an, node, tensor, entry):
    if not _attention_backward(an, node, tensor, entry):
        an.refuse(node, tensor, "this op writes the widened channels and onnxmorph cannot grow it")


def _linear_or_batched_backward(an, node, tensor, entry):
    if an.const(node, 1) is None and an.const(node, 0) is None:
        _attention_backward_or_refuse(an, node, tensor, entry)
    else:
        _linear_backward(an, node, tensor, entry)


RULES["MatMul"] = Rule(_attention_or(_linear_forward, None), _linear_or_batched_backward)
for _op in ("Softmax", "LogSoftmax"):
    RULES[_op] = Rule(_attention_or(None, "it mixes values across the channel axis"), _attention_backward_or_refuse)
RULES["Expand"] = Rule(_attention_or(None, "unsupported op"), _attention_backward_or_refuse)
for _op in ("Transpose", "Unsqueeze", "Squeeze", "Concat"):
    if RULES[_op].backward is None:
        RULES[_op] = Rule(RULES[_op].forward, _attention_backward_or_refuse)


# The residual stream (graph/stream.py): LayerNormalization over the space, embedding tables, token selection.
def _stream_rule(why):
    def forward(an, node, tensor, entry, pos):
        if not stream.forward(an, an.group, node, tensor, entry, an.add, pos):
            an.refuse(node, tensor, why)

    def backward(an, node, tensor, entry):   # attention's: a Gather that picks one chunk of a fused QKV
        if not stream.backward(an, an.group, node, tensor, entry, an.add) and \
                not _attention_backward(an, node, tensor, entry):
            an.refuse(node, tensor, "this op writes the widened channels and onnxmorph cannot grow it")
    return Rule(forward, backward)


RULES["LayerNormalization"] = _stream_rule("it mixes values across the channel axis")
RULES["RMSNormalization"] = _stream_rule("it mixes values across the channel axis")
_GATHER_STREAM = _stream_rule("unsupported op")


def _arange_gather(an, node, tensor, entry, pos):
    """Gather of the whole channel axis by constant indices 0..C-1 laid along one axis of the index tensor (dynamo's
    as_strided, ConvNeXt's head): a move of the channel axis. The indices grow as 0..C'-1."""
    indices = an.const(node, 1)
    axis = _norm_axis(attr(node, "axis", 0), an.rank(tensor) or 1)
    if pos != [0] or indices is None or axis != entry.axis or not entry.simple or entry.block != 1 or \
            not an.whole_axis(tensor, entry) or indices.size != an.dim(tensor, axis):
        return False
    along = [q for q, d in enumerate(indices.shape) if d != 1]
    if len(along) != 1 or not (indices.reshape(-1) == np.arange(indices.size)).all():
        return False
    an.group.params.append(ParamUse(node, 1, Entry(along[0]), "arange_index"))
    an.add(node.output[0], replace(entry, axis=axis + along[0]))
    return True


def _gather(an, node, tensor, entry, pos):
    if not _arange_gather(an, node, tensor, entry, pos):
        _GATHER_STREAM.forward(an, node, tensor, entry, pos)


RULES["Gather"] = Rule(_gather, _GATHER_STREAM.backward)


# Decomposed norms (graph/norms.py): every node of one follows the norm's rule, whatever its op; the node's own rule
# applies when the space lies on another axis than the normalised one.
def _own_rule(an, node, tensor, backward):
    found = RULES.get(node.op_type)
    fn = None if found is None else (found.backward if backward else found.forward)
    if fn is None:
        an.refuse(node, tensor, "this op writes the widened channels and onnxmorph cannot grow it" if backward
                  else "unsupported op")
    return fn


def _norm_forward(an, node, tensor, entry, pos):
    if not stream.enter_norm(an, an.group, an.norm_at(node), node, tensor, entry, an.add):
        _own_rule(an, node, tensor, False)(an, node, tensor, entry, pos)


def _norm_backward(an, node, tensor, entry):
    if not stream.enter_norm(an, an.group, an.norm_at(node), node, tensor, entry, an.add):
        _own_rule(an, node, tensor, True)(an, node, tensor, entry)


NORM_RULE = Rule(_norm_forward, _norm_backward)


def _rule_for(an, node) -> Rule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return NORM_RULE if an.norm_at(node) is not None else RULES.get(node.op_type)


# --- the walk ---------------------------------------------------------------------------------------------

def widen_index(model: onnx.ModelProto) -> GraphIndex:
    """The index widen analyses: shapes read at run time whose dims are static are folded to constants first
    (the legacy exporter's chunk writes Slice bounds as Shape -> Gather -> Div, Expand shapes as Where(Equal(s,
    -1), 1, s)), so their bounds and sizes can follow (graph/shape_source.py, shape_values)."""
    index = GraphIndex(model)
    if fold_constant_paths(model, shape_values(model, infer_shapes(model))):
        index = GraphIndex(model)
    return index


def analyse(index: GraphIndex, layer, shapes: dict | None = None) -> CouplingGroup:
    """The coupling group of `layer`'s output channels (of its input channels, for a depthwise conv). A
    projection whose output is split into attention heads grows by whole heads: the space then counts heads, or
    GQA groups of r query heads (tried r = 1, 2, ...); a fused projection (GPT-2's QKV) writes Q, K and V as
    equal chunks of its output, the heads at the same place in each."""
    shapes = generic_shapes(index, shapes if shapes is not None else infer_shapes(index.model))
    start = layer.output
    if layer.op == "Conv":
        axis = 1
    else:
        rank = len(shapes[start]) if shapes.get(start) is not None else None
        if rank is None:
            raise CannotMorph(f"the rank of {start!r} is unknown")
        axis = rank - 1
    found = attention.head_split(index, shapes, start) if layer.op != "Conv" else None
    if not found:
        try:
            return _walk(index, layer, shapes, layer.out_channels, Entry(axis))
        except CannotMorph:
            parts = _fused_parts(index, shapes, start, axis) if layer.op != "Conv" else None
            if not parts:
                _refuse_uneven_qkv(index, shapes, layer, axis)
                raise
        # A fused projection cut into equal parts read side by side (Phi-3's gate_up_proj: act(gate) * up): the
        # space is a channel of every part, at the same place in each.
        return _walk(index, layer, shapes, layer.out_channels // parts, Entry(axis, chunks=parts))
    head_dim, parts = found
    heads = layer.out_channels // head_dim // parts
    first = None
    for r in (r for r in range(1, heads + 1) if heads % r == 0):
        try:
            group = _walk(index, layer, shapes, heads // r, Entry(axis, 0, r * head_dim, chunks=parts))
        except CannotMorph as exc:
            first = first or exc
            continue
        group.head_dim = head_dim
        return group
    raise first


def _fused_parts(index, shapes, tensor, axis) -> int | None:
    """k when `tensor` is read (besides Shape) only by one Split of `axis` into k >= 2 equal parts or by k Slices
    of it that are its k equal parts in order; None otherwise."""
    length = (shapes.get(tensor) or [None] * (axis + 1))[axis]
    readers = [n for n in index.consumers.get(tensor, []) if n.op_type != "Shape"]
    if not length or not readers:
        return None
    an = _Analysis(index, shapes, CouplingGroup(length))
    try:
        if len(readers) == 1 and readers[0].op_type == "Split":
            bounds = [(a, b) for ax, a, b in _split_bounds(an, readers[0], tensor) if ax == axis]
        elif all(n.op_type == "Slice" and n.input[0] == tensor for n in readers):
            bounds = sorted(_slice_range(an, n, tensor, axis)[:2] for n in readers)
        else:
            return None
    except (CannotMorph, TypeError):
        return None
    k = len(bounds)
    size = length // k if k >= 2 else 0
    return k if size and bounds == [(j * size, (j + 1) * size) for j in range(k)] else None


def _refuse_uneven_qkv(index, shapes, layer, axis):
    """A fused QKV cut into parts of different sizes that each split into heads (Phi-3's qkv_proj under GQA: Q
    is r times K and V): a GQA group is r heads in Q and one in K and V, a layout the space cannot hold yet."""
    readers = [n for n in index.consumers.get(layer.output, []) if n.op_type != "Shape"]
    if len(readers) < 2 or any(n.op_type != "Slice" or n.input[0] != layer.output for n in readers):
        return
    an = _Analysis(index, shapes, CouplingGroup(layer.out_channels))
    try:
        sizes = [stop - start for start, stop, _ in (_slice_range(an, n, layer.output, axis) for n in readers)]
    except (CannotMorph, TypeError):
        return
    if len(set(sizes)) > 1 and all(attention.head_split(index, shapes, n.output[0]) for n in readers):
        raise CannotMorph(f"{layer.id} is a fused QKV of uneven parts {sizes} (GQA): widening it by whole GQA "
                          "groups is not supported yet; widen the residual stream or the MLP instead") from None


def _walk(index, layer, shapes, channels: int, start_entry: Entry) -> CouplingGroup:
    """Run the rules from the layer's output to a fixed point."""
    start = layer.output
    group = CouplingGroup(channels)
    an = _Analysis(index, shapes, group)
    an.add(start, start_entry)
    while an.work:
        tensor, entry = an.work.pop()
        # Backwards: whatever writes this tensor must write the space too.
        producer = index.producer.get(tensor)
        if producer is None:
            raise CannotMorph(f"tensor {tensor!r} is a graph input (or initializer) and cannot grow")
        if (id(producer), tensor, entry) not in an.written:
            an.written.add((id(producer), tensor, entry))
            found = _rule_for(an, producer)
            if found is None or found.backward is None:
                an.refuse(producer, tensor, "this op writes the widened channels and onnxmorph cannot grow it")
            found.backward(an, producer, tensor, entry)
        # Forwards: everything reading this tensor (once per node, when it reads the tensor twice).
        for node in {id(n): n for n in index.consumers.get(tensor, [])}.values():
            found = _rule_for(an, node)
            if found is None:
                an.refuse(node, tensor, "unsupported op")
            an.current = node
            found.forward(an, node, tensor, entry, [i for i, name in enumerate(node.input) if name == tensor])
            an.current = None
    an.check_whole_last()
    return group
