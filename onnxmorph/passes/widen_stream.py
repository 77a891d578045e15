"""Widening the residual stream of a transformer: the norms over it decide how (DESIGN.md, "Transformer math").

duplicate: x' = [x; x; ...] keeps mean, variance and RMS, so any norm, pre or post, at integer multiples only
(passes/widen.py does it). lemon (pre-norm, any width D' > D): the new stream channels carry the mean of the old
ones (LayerNorm) or zero (RMSNorm), so var' = η²·var (ms' = η²·ms) with η² = D/D'; each norm gets ε' = η²ε,
γ'_old = η·γ, β_new = 0 and outputs [norm(x); 0]. Readers of norm outputs see zeros on the new channels: their new
columns are free. --stream auto duplicates at integer multiples and uses lemon otherwise.

The group's tensors are classified in graph order: "stream" (written by producers, before norms) and "normed"
(norm outputs and what follows them). A normed tensor that reaches a norm's input or meets the stream is
post-norm: not exact at a non-integer width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from ..graph.coupling.elementwise import UNARY
from ..graph.proto import attr, node_name as _name, remove_unused_constants
from ..solve.transformer import grow_space, lemon_norm
from .channels import arange_grown, consumer_axis, grow_shape_constants, producer_axes, replace_input

STREAM_MODES = ("auto", "duplicate", "lemon")

# Ops that act the same way on every channel and linearly: the mean of the old channels goes through them.
_LINEAR = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Flatten", "Expand", "Gather",
           "Concat", "Slice", "Split", "Add", "Sub", "Sum", "Mean", "AveragePool", "GlobalAveragePool",
           "ReduceMean", "ReduceSum", "Pad", "Cast"}
# Ops that keep zero channels zero (the stream under RMSNorm; tensors after a norm).
_ZERO_KEEPING = _LINEAR | {"Mul", "Div", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"} | \
    {op for op, keeps in UNARY.items() if keeps}
# New entries of per-channel constants, by where they sit: (class, role) -> fill.
_PARAM_FILL = {("mean", "add_const"): "mean", ("mean", "concat_const"): "mean", ("mean", "embedding"): "mean",
               ("zeros", "add_const"): "zeros", ("zeros", "concat_const"): "zeros", ("zeros", "embedding"): "zeros",
               ("zeros", "mul_const"): "ones", ("zeros", "div_const"): "ones"}



@dataclass
class StreamPlan:
    strategy: str                                  # "duplicate" or "lemon"
    kind: str = ""                                 # "layer" or "rms" (lemon)
    normed: set = field(default_factory=set)       # member tensors at or after a norm output
    reads_stream: set = field(default_factory=set)  # id(consumer) of readers of the raw stream (zero columns)
    readers: list = field(default_factory=list)     # (consumer, Entry), each consumer once
    # LayerScale γ after a producer: id(producer) -> γ; its new rows (and biases) carry the γ-weighted mean
    row_weights: dict = field(default_factory=dict)
    weighted: dict = field(default_factory=dict)   # (id(node), input index) -> γ for those biases, None for γ


def plan_stream(index, group, channels: int, new: int, stream: str) -> StreamPlan | None:
    """How a group with norms over it grows; None when no norm is over it. Refuses what is not exact."""
    if stream not in STREAM_MODES:
        raise UsageError(f"unknown --stream {stream!r}: use {', '.join(STREAM_MODES)}")
    if not group.norms:
        if stream != "auto":
            raise UsageError(f"--stream {stream}: no norm is over these channels, so they are not a residual stream")
        return None
    integer = new % channels == 0 and len(group.segments()) == 1
    duplicate_only = (f"{group.norms[0].name!r} normalizes over the widened channels: only an integer multiple of "
                      f"{channels} (the stream duplicated) keeps it exact, not {new}")
    if stream == "duplicate" or (stream == "auto" and integer):
        if not integer:
            raise CannotMorph(duplicate_only)
        return StreamPlan("duplicate")
    try:
        return _classify(index, group)
    except CannotMorph as exc:
        if stream == "lemon":
            raise
        raise CannotMorph(f"{duplicate_only}; LEMON (any width) does not apply: {exc}") from None


def lemon_refusal(index, group) -> str | None:
    """Why LEMON cannot grow this stream (post-norm, an op the fill does not go through), or None (inspect)."""
    try:
        _classify(index, group)
    except CannotMorph as exc:
        return str(exc)
    return None


def _classify(index, group) -> StreamPlan:
    kinds = {n.kind for n in group.norms}
    if len(kinds) != 1:
        raise CannotMorph(f"norms of kinds {sorted(kinds)} over one stream")
    plan = StreamPlan("lemon", kinds.pop())
    fill = "mean" if plan.kind == "layer" else "zeros"
    if group.head_dim or len(group.segments()) > 1 or group.bounds:
        raise CannotMorph("the stream is cut into parts (heads, Split/Slice); LEMON grows it whole")
    if group.depthwise:
        raise CannotMorph(f"depthwise Conv {_name(group.depthwise[0])!r} acts on the stream channel by channel; "
                          "the LEMON fill does not go through it")
    places = [e for es in group.members.values() for e in es] + [e for _, e in group.producer_entries] + \
        [e for _, e in group.consumers]
    if any(not e.simple or e.block != 1 or e.part is not None for e in places):
        raise CannotMorph("the stream is flattened or shuffled somewhere; LEMON needs it on one plain axis")
    for node, entry in group.consumers:
        if any(n is node for n, _ in plan.readers):
            if (node, entry) not in plan.readers:
                raise CannotMorph(f"{node.op_type} {_name(node)!r} reads the stream at two places")
            continue
        if node.op_type == "Conv" and attr(node, "group", 1) != 1:
            raise CannotMorph(f"grouped Conv {_name(node)!r} reads the stream")
        plan.readers.append((node, entry))
    norm_of = {id(n): norm for norm in group.norms for n in norm.nodes}
    inside = {o for norm in group.norms for n in norm.nodes for o in n.output if o != norm.output}
    producers = {id(n) for n in group.producers}
    consumers = {id(n) for n, _ in group.consumers}
    members = group.members
    cls: dict[str, str] = {}
    for node in index.graph.node:
        ins = [t for t in node.input if t in members]
        outs = [t for t in node.output if t in members]
        if (not ins and not outs) or (node.op_type == "Shape" and not outs):  # coupling checked what Shape feeds
            continue
        norm = norm_of.get(id(node))
        if norm is not None:
            for t in ins:
                if cls.get(t) == "normed":
                    raise CannotMorph(f"{norm.name!r} normalizes {t!r}, which comes after a norm (post-norm: the "
                                      "stream is a norm's output, and new channels would have to carry a "
                                      "data-dependent mean)")
            if norm.output in outs:
                cls[norm.output] = "normed"
            continue
        if any(t in inside for t in ins):
            raise CannotMorph(f"{node.op_type} {_name(node)!r} reads {next(t for t in ins if t in inside)!r} "
                              "inside a norm")
        seen = {cls[t] for t in ins}
        if len(seen) > 1:
            raise CannotMorph(f"{node.op_type} {_name(node)!r} joins the stream and a norm's output (post-norm: the "
                              "stream is a norm's output, and new channels would have to carry a data-dependent mean)")
        where = seen.pop() if seen else "stream"
        if where == "stream" and fill == "mean" and _layer_scale(index, group, plan, node, ins):
            for t in outs:
                cls[t] = where
            continue
        if id(node) in consumers or id(node) in producers:  # a linear layer: reads and/or writes the stream
            if where == "stream" and ins:
                plan.reads_stream.add(id(node))
            for t in outs:  # what it writes is stream: new rows the mean (or 0) of the old ones
                cls[t] = "stream"
            continue
        _check_op(group, node, ins, "mean" if where == "stream" and fill == "mean" else "zeros")
        for t in outs:
            cls[t] = where
    plan.normed = {t for t, c in cls.items() if c == "normed"}
    for norm in group.norms:
        if norm.scale is None:
            raise CannotMorph(f"{norm.name!r} has no scale to carry the factor eta = sqrt(D/D')")
        from_end = norm.extra.get("from_end", 1)   # the normalised axis: last, or the channels of NCHW
        for name in (norm.scale, norm.bias):
            value = index.constant(name) if name else None
            if name and (value is None or value.ndim < from_end or value.size != value.shape[-from_end]):
                raise CannotMorph(f"{norm.name!r}: {name!r} is not a constant with one value per channel")
        if norm.input in plan.normed:
            raise CannotMorph(f"{norm.name!r} normalizes a norm's output (post-norm)")
    norm_params = {name for norm in group.norms for name in (norm.scale, norm.bias) if name}
    for p in group.params:
        if id(p.node) in norm_of or p.role in ("norm_scale", "norm_bias"):
            if p.node.input[p.input_index] not in norm_params:
                raise CannotMorph(f"{_name(p.node)!r}: a per-channel constant inside a norm that is neither its "
                                  "scale nor its bias")
            continue
        if (_param_class(plan, group, p, fill), p.role) not in _PARAM_FILL and p.role != "arange_index" and \
                (id(p.node), p.input_index) not in plan.weighted:
            raise CannotMorph(f"{p.node.op_type} {_name(p.node)!r}: a per-channel {p.role} on the stream; the "
                              "mean of the old channels does not go through it")
    return plan


def _layer_scale(index, group, plan, node, ins) -> bool:
    """timm's LayerScale: t·γ, γ per channel, t the output of one producer (through its bias Adds), read by nothing
    else. The mean fill goes through it when the producer's new rows and biases carry the γ-weighted mean of the
    old ones and γ's new entries are 1: then t·γ's new channels are the mean of its old ones. Records the plan."""
    gammas = list({p.input_index: p for p in group.params if p.node is node}.values())   # each param once
    if node.op_type != "Mul" or len(ins) != 1 or len(gammas) != 1 or gammas[0].role != "mul_const":
        return False
    gamma = gammas[0]
    value = np.asarray(index.constant(node.input[gamma.input_index]))
    d = group.channels
    if value.ndim == 0 or value.size != value.shape[gamma.axis] or gamma.place.offset + d > value.size:
        return False
    weights = value.reshape(-1)[gamma.place.offset:gamma.place.offset + d]
    tensor, biases = ins[0], []
    producers = {id(n) for n in group.producers}
    for _ in range(4):
        writer = index.producer.get(tensor)
        if writer is None or len(index.consumers.get(tensor, [])) != 1:
            return False
        if id(writer) in producers:
            if id(writer) in plan.row_weights:
                return False
            plan.row_weights[id(writer)] = weights
            plan.weighted.update({(id(b.node), b.input_index): weights for b in biases})
            plan.weighted[(id(node), gamma.input_index)] = None
            return True
        added = list({p.input_index: p for p in group.params if p.node is writer and p.role == "add_const"}.values())
        data = [t for t in writer.input if t in group.members]
        if writer.op_type != "Add" or len(added) != 1 or len(data) != 1:
            return False
        biases.append(added[0])
        tensor = data[0]
    return False


def _weighted_mean(array, axis, offset, d, extra, weights):
    """grow_space(..., "mean") whose new entries are the mean of the old ones each times its channel's weight."""
    old = [slice(None)] * array.ndim
    old[axis] = slice(offset, offset + d)
    new = list(old)
    new[axis] = slice(offset + d, offset + d + extra)
    shape = [1] * array.ndim
    shape[axis] = d
    scaled = np.array(array)
    scaled[tuple(old)] = scaled[tuple(old)] * weights.reshape(shape).astype(scaled.dtype)
    grown = grow_space(array, axis, offset, d, extra, "mean")
    grown[tuple(new)] = grow_space(scaled, axis, offset, d, extra, "mean")[tuple(new)]
    return grown


def _check_op(group, node, ins, fill):
    """An op between members: under the mean fill it must be linear and the same on every channel; under zeros
    it must keep zero channels zero (its other operands per-channel constants, which get zeros or ones)."""
    op = node.op_type
    params = {p.input_index for p in group.params if p.node is node}
    others = [i for i, t in enumerate(node.input) if t and t not in ins and i not in params]
    if fill == "mean":
        if op in ("Mul", "Div"):  # by a scalar or a tensor broadcast over channels: never per channel, never x·x
            ok = len(ins) == 1 and not params and (op == "Mul" or node.input[0] in ins)
        else:
            ok = op in _LINEAR
    else:
        ok = op in _ZERO_KEEPING and not (op in ("Add", "Sub", "Sum", "Mean") and others)
    if ok and op == "Pad":
        ok = attr(node, "mode", b"constant") in (b"constant", "constant")
    if not ok:
        what = "is not linear or not the same on every channel, so the new channels' mean does not go through it" \
            if fill == "mean" else "does not keep zero channels zero"
        raise CannotMorph(f"{op} {_name(node)!r} acts on the stream and {what}")


def _param_class(plan, group, p, fill) -> str:
    """'mean' or 'zeros': how the new channels of the tensor a constant acts on are filled."""
    outs = [t for t in p.node.output if t in group.members]
    return "zeros" if any(t in plan.normed for t in outs) else fill


def apply_lemon(model, index, group, plan: StreamPlan, channels: int, new: int, method: str, noise: float,
                rng: np.random.Generator, report) -> None:
    """Grow the stream from `channels` to `new` with the LEMON fill, in place."""
    extra = new - channels
    fill = "mean" if plan.kind == "layer" else "zeros"
    free = "copy" if method == "net2net" else "random"
    old_names: list[str] = []
    for node, entry in group.producer_entries:
        w_axis, b_idx = producer_axes(node)
        w = index.constant(node.input[1])
        weights = plan.row_weights.get(id(node))

        def rows(value, axis):
            if weights is None:
                return grow_space(value, axis, entry.offset, channels, extra, fill)
            return _weighted_mean(value, axis, entry.offset, channels, extra, weights)
        replace_input(index, node, 1, rows(w, w_axis), "weight", old_names)
        if b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
            b = index.constant(node.input[b_idx])
            if b is None or (b.size != 1 and b.shape[-1] != w.shape[w_axis]):
                raise CannotMorph(f"the bias of {_name(node)} is not a per-channel constant")
            if b.size != 1:
                replace_input(index, node, b_idx, rows(b, b.ndim - 1), "bias", old_names)
    for node, entry in plan.readers:
        w = index.constant(node.input[1])
        axis = consumer_axis(node, entry)
        how = "zeros" if id(node) in plan.reads_stream else free
        grown = grow_space(w, axis, entry.offset, channels, extra, how, rng)
        if noise and how != "zeros":  # the new columns multiply zeros: any values are exact
            is_new = grow_space(np.zeros(w.shape), axis, entry.offset, channels, extra, "ones", rng) > 0
            scale = (float(np.std(w)) or 1.0) * noise
            grown = np.where(is_new, grown + rng.standard_normal(grown.shape) * scale, grown).astype(w.dtype)
        replace_input(index, node, 1, grown, "weight", old_names)
    norm_of = {id(n): norm for norm in group.norms for n in norm.nodes}
    done = set()
    for p in group.params:
        key = (id(p.node), p.input_index)
        if key in done or id(p.node) in norm_of or p.role in ("norm_scale", "norm_bias"):
            continue
        done.add(key)
        value = index.constant(p.node.input[p.input_index])
        if p.role == "arange_index":   # a Gather moving the channel axis: indices 0..C'-1
            grown = arange_grown(value, p.axis, extra)
        elif key in plan.weighted and plan.weighted[key] is not None:   # a bias before a LayerScale
            grown = _weighted_mean(value, p.axis, p.place.offset, channels, extra, plan.weighted[key])
        else:   # a LayerScale's γ gets ones
            how = "ones" if key in plan.weighted else _PARAM_FILL[(_param_class(plan, group, p, fill), p.role)]
            grown = grow_space(value, p.axis, p.place.offset, channels, extra, how)
        replace_input(index, p.node, p.input_index, grown, p.role, old_names)
    for norm in group.norms:
        _lemon_norm(index, norm, new, old_names)
    grow_shape_constants(index, group, extra, old_names)
    remove_unused_constants(model, old_names)
    kind = "LN(x)" if plan.kind == "layer" else "RMSNorm(x)"
    carry = "the mean of the old ones" if plan.kind == "layer" else "zero"
    report.notes.append(
        f"LEMON any-width: eta^2 = D/D' = {channels}/{new}; new stream channels carry {carry} (producers' new rows, "
        f"embeddings, added constants), each of the {len(group.norms)} norms gets eps' = eta^2 eps, gamma scaled by "
        f"eta, new beta 0, and outputs [{kind}; 0]; readers of norm outputs get "
        f"{'copies of existing columns' if method == 'net2net' else 'random columns'} for the new channels")


def _lemon_norm(index, norm, new: int, old_names: list) -> None:
    """γ·η, β extended by zeros, ε·η² on one norm (fused or decomposed; γ, β of shape (..., D), or (1, D, 1, 1)
    for a norm over the channels of NCHW)."""

    def place(key, name):  # (node, input index) of gamma or beta
        return norm.extra.get(key) or next((n, i) for n in norm.nodes for i, x in enumerate(n.input) if x == name)
    gamma = index.constant(norm.scale)
    beta = index.constant(norm.bias) if norm.bias else None
    eps = norm.epsilon_value(index) if norm.epsilon else 0.0
    g, b, eps_new = lemon_norm(gamma.reshape(-1), None if beta is None else beta.reshape(-1), eps, new)

    def grown(shape):
        out = list(shape)
        out[len(out) - norm.extra.get("from_end", 1)] = new
        return tuple(out)
    if beta is not None:
        replace_input(index, *place("bias_at", norm.bias), b.reshape(grown(beta.shape)), "norm_bias", old_names)
    replace_input(index, *place("scale_at", norm.scale), g.reshape(grown(gamma.shape)), "norm_scale", old_names)
    node, where = norm.epsilon or (None, None)
    if node is None:
        return
    if isinstance(where, str):
        for a in node.attribute:
            if a.name == where:
                a.f = eps_new
                break
        else:
            node.attribute.append(onnx.helper.make_attribute(where, eps_new))
    else:
        old = np.asarray(index.constant(node.input[where]))
        replace_input(index, node, where, np.full_like(old, eps_new), "epsilon", old_names)
