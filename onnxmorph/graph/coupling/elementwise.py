"""Rules for ops that act on each channel apart: activations, pooling and resizing, zero Pad, LRN, per-channel
parameters (BatchNorm, InstanceNorm, PRelu), elementwise ops of several operands (residual Adds, SE gates) and
reductions over other axes. Ops that mix channels are refused."""
from __future__ import annotations

from dataclasses import replace

from ..proto import attr, node_name, norm_axis
from ..space import ParamUse
from .table import forward, refusal

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
refusal(*MIXING, forward="it mixes values across the channel axis")


def _same_place(an, node, tensor, entry):
    an.add(node.input[0], entry)
    an.add(node.output[0], entry)
    return True


def _clip_keeps_zero(an, node) -> bool:
    if an.index.opset < 11:
        lo, hi = attr(node, "min", None), attr(node, "max", None)
    else:
        lo_v, hi_v = an.const(node, 1), an.const(node, 2)
        lo = float(lo_v) if lo_v is not None else None
        hi = float(hi_v) if hi_v is not None else None
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


@forward(*UNARY, both_ways=True)
def unary(an, node, tensor, entry, pos):
    zero = _clip_keeps_zero(an, node) if node.op_type == "Clip" else UNARY[node.op_type]
    an.group.zero_preserving &= bool(zero)
    return _same_place(an, node, tensor, entry)


@forward("Pow", both_ways=True)
def power(an, node, tensor, entry, pos):
    """x ** c with one constant exponent acts channel by channel (the space never enters as the exponent)."""
    exponent = an.const(node, 1)
    if (pos is not None and pos != [0]) or exponent is None or exponent.size != 1:
        an.refuse(node, tensor, "Pow with a per-channel or computed exponent")
    an.group.zero_preserving &= float(exponent) > 0
    return _same_place(an, node, tensor, entry)


@forward(*POOLS, "Resize", "Upsample", both_ways=True)
def pool(an, node, tensor, entry, pos):
    an.data_only(node, tensor, pos)
    return _same_place(an, node, tensor, entry)


@forward("Pad", both_ways=True)
def pad(an, node, tensor, entry, pos):
    an.data_only(node, tensor, pos)
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
    return _same_place(an, node, tensor, entry)


@forward("LRN", both_ways=True)
def lrn(an, node, tensor, entry, pos):
    """LRN divides by a sum of squares over neighbouring channels: channels that are exactly zero at its input
    change nothing, provided they come after every old channel (no neighbour is pushed out of a window)."""
    if not an.whole_axis(tensor, entry) and not (entry.simple and entry.block == 1 and entry.part is None and
                                                 entry.offset + an.group.channels == an.dim(tensor, entry.axis)):
        an.refuse(node, tensor, "LRN rule: the widened channels must be the last channels of its input")
    group = an.group
    group.zero_new_channels_required = f"LRN {node_name(node)!r} sums squares over neighbouring channels"
    group.keep_order = group.zero_new_channels_required
    group.net2net_refused = (f"LRN {node_name(node)!r}: replicated channels change its neighbouring sums of squares; "
                             "use netmorph (zeros on the producer side are exact through LRN)")
    return _same_place(an, node, tensor, entry)


def channel_param(an, node, i, entry, role, rank, param_axis=None):
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


_PER_CHANNEL = {"BatchNormalization": ((1, "bn_scale"), (2, "bn_bias"), (3, "bn_mean"), (4, "bn_var")),
                "InstanceNormalization": ((1, "inorm_scale"), (2, "inorm_bias"))}


@forward("BatchNormalization", "InstanceNormalization", "PRelu", both_ways=True)
def per_channel(an, node, tensor, entry, pos):
    an.data_only(node, tensor, pos)
    rank = an.rank(node.output[0]) or an.rank(tensor)
    if node.op_type in _PER_CHANNEL:
        for i, role in _PER_CHANNEL[node.op_type]:
            channel_param(an, node, i, entry, role, rank, param_axis=0)
    else:
        channel_param(an, node, 1, entry, "slope", rank)
    return _same_place(an, node, tensor, entry)


@forward("IsNaN", "IsInf", both_ways=True)
def guard(an, node, tensor, entry, pos):
    """IsNaN/IsInf test each value apart (SDPA's Where(IsNaN(p), 0, p) after the softmax): the mask keeps the space."""
    return _same_place(an, node, tensor, entry)


@forward(*BINARY, "Where", both_ways=True)
def binary(an, node, tensor, entry, pos):
    """Elementwise ops of several operands couple every operand that carries the channel axis (Where's condition
    too); a constant Where operand must be the same for every channel (a fill value)."""
    op = node.op_type
    out = node.output[0]
    rank = an.rank(out) or an.rank(tensor)
    for i, operand in enumerate(node.input):
        if an.index.is_constant(operand):
            if op == "Where":
                _where_fill(an, node, i, entry, rank)
                continue
            role = {"Mul": "mul_const", "Div": "div_const"}.get(op, "add_const")
            channel_param(an, node, i, entry, role, rank)
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
    return True


def _where_fill(an, node, i, entry, rank):
    """A constant operand of Where broadcast along the channels (a scalar 0 or -inf): nothing grows; it maps new
    zero channels to itself only when it is zero."""
    value = an.const(node, i)
    axis_from_end = rank - entry.axis
    if value.ndim >= axis_from_end and value.shape[value.ndim - axis_from_end] != 1:
        an.refuse(node, node.input[i], "a per-channel constant in Where")
    if i > 0 and value.size and (value != 0).any():
        an.group.zero_preserving = False


@forward(*REDUCE)
def reduce(an, node, tensor, entry, pos):
    rank = an.rank(tensor)
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = an.const(node, 1)
    if axes is None or rank is None:
        an.refuse(node, tensor, "a reduction over all axes (or unknown axes) mixes channels")
    axes = [norm_axis(int(a), rank) for a in axes]
    if entry.axis in axes or (entry.seg_axis is not None and entry.seg_axis in axes):
        an.refuse(node, tensor, "it reduces over the channel axis" +
                  (an.not_a_norm(node) if node.op_type == "ReduceMean" else ""))
    keep = attr(node, "keepdims", 1)
    an.add(node.output[0], entry.moved(lambda x: x if keep else x - sum(a < x for a in axes)))
    return True

