"""Width morphing: more output channels for a layer, the function unchanged.

netmorph (paper, section 3.4.1): the new channels get random values on one side of the space and zeros on the
other (the side with fewer parameters gets the zeros, eq. 18), then one random permutation of the widened
channel dimension is applied to every tensor that shares it.
net2net (Net2WiderNet): new channels replicate random existing ones; consumers' columns are divided by each
source's replication count. One map for the whole coupled group.
The coupled group (graph/coupling.py) says which producers, consumers and per-channel parameters grow.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from ..graph.coupling import analyse
from ..graph.edit import add_initializer, infer_shapes, remove_unused_constants, weight_dtype
from ..graph.layers import GraphIndex, attr, find_layer, fold_constant_paths, static_shape_values
from .common import parse_width


@dataclass
class WidenReport:
    layer: str
    method: str
    channels_from: int
    channels_to: int
    zeros_on: str                      # "consumers" or "producers" (netmorph), "-" (net2net)
    noise: float
    group: dict = field(default_factory=dict)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        from ..inspect import GroupReport
        verb = "dry run: widening" if self.dry_run else "widened"
        out = [f"{verb} {self.layer} from {self.channels_from} to {self.channels_to} channels with {self.method}"
               + (f" (zeros on the {self.zeros_on})" if self.method == "netmorph" and not self.dry_run else "")]
        out.extend(GroupReport(self.layer, self.group).lines()[1:])
        out.extend(f"  note: {n}" for n in self.notes)
        return out


class _Grower:
    """Grows arrays along the widened channel dimension, the same way on every tensor of the group.

    The space is a list of segments (start, stop); segment s gets growth[s] new channels, appended to it, so
    segments stay contiguous. netmorph permutes inside each segment (unless keep_order); net2net replicates
    channels of the same segment."""

    def __init__(self, segments, growth, method: str, rng: np.random.Generator, keep_order: bool = False):
        self.c, self.extra, self.method, self.rng = segments[-1][1], sum(growth), method, rng
        order, source, self.new_start = [], [], {}
        for (a, b), e in zip(segments, growth):
            self.new_start[a] = len(order)
            ids = list(range(a, b)) + [-(len(source) + k + 1) for k in range(e)]
            source.extend(int(v) for v in rng.integers(a, b, size=e))
            if method != "net2net" and not keep_order:
                ids = [ids[i] for i in rng.permutation(len(ids))]
            order.extend(ids)
        self.new_start[self.c] = len(order)
        self.order = np.array(order, dtype=np.int64)
        self.source = np.array(source, dtype=np.int64)
        self.count = np.bincount(np.concatenate([np.arange(self.c), self.source]), minlength=self.c)
        self.segments = len(segments)

    def grow(self, array: np.ndarray, axis: int, offset: int, block: int, fill: str, groups: int = 1,
             part: tuple[int, int] | None = None) -> np.ndarray:
        """fill: zeros | random | copy | divide | ones | typical (a copy of random existing values)."""
        if groups > 1:  # (groups × D) along axis: grow D inside every chunk the same way
            x = np.moveaxis(np.asarray(array), axis, 0)
            x = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
            grown = self.grow(np.moveaxis(x, 1, 0), 0, offset, block, fill, part=part)      # (D', groups, ...)
            grown = np.moveaxis(grown, 0, 1)
            return np.moveaxis(grown.reshape((-1,) + grown.shape[2:]), 0, axis)
        lo, hi = part or (0, self.c)
        x = np.moveaxis(np.asarray(array), axis, 0)
        n = hi - lo
        head, body, tail = x[:offset], x[offset:offset + n * block], x[offset + n * block:]
        body = body.reshape((n, block) + body.shape[1:])
        sel = self.order[self.new_start[lo]:self.new_start[hi]]
        old = sel >= 0
        new_ids = -sel[~old] - 1
        shape = (len(new_ids),) + body.shape[1:]
        if fill == "zeros":
            new = np.zeros(shape, dtype=body.dtype)
        elif fill == "ones":
            new = np.ones(shape, dtype=body.dtype)
        elif fill == "random":
            std = float(np.std(body)) or 1.0
            new = (self.rng.standard_normal(shape) * std).astype(body.dtype)
        elif fill in ("copy", "typical"):
            new = body[self.source[new_ids] - lo]
        elif fill == "divide":
            scale = self.count[lo:hi].reshape((n,) + (1,) * (body.ndim - 1)).astype(body.dtype)
            body = body / scale
            new = body[self.source[new_ids] - lo]
        else:
            raise ValueError(fill)
        full = np.empty((len(sel),) + body.shape[1:], dtype=body.dtype)
        full[old] = body[sel[old] - lo]
        full[~old] = new
        full = full.reshape((full.shape[0] * block,) + full.shape[2:])
        return np.moveaxis(np.concatenate([head, full, tail]), 0, axis)

    def grow_at(self, array: np.ndarray, axis: int, entry, fill: str) -> np.ndarray:
        """Grow along `axis`, where the space sits as `entry` says (its own axis ignored)."""
        if entry.interleaved:  # channel j of segment s at j·g + s: regroup segment-major, grow, interleave back
            g = self.segments
            x = np.moveaxis(np.asarray(array), axis, 0)
            x = np.swapaxes(x.reshape((x.shape[0] // g, g) + x.shape[1:]), 0, 1).reshape(x.shape)
            x = self.grow(x, 0, 0, 1, fill)
            x = np.swapaxes(x.reshape((g, x.shape[0] // g) + x.shape[1:]), 0, 1).reshape(x.shape)
            return np.moveaxis(x, 0, axis)
        return self.grow(array, axis, entry.offset, entry.block, fill, entry.chunks, entry.part)

    def new_position(self, entry, position: int) -> int:
        """Where an index along the axis (a boundary between segments or outside the space) moves to."""
        lo, hi = entry.part or (0, self.c)
        end = entry.offset + (hi - lo) * entry.block
        if position <= entry.offset:
            return position
        if position >= end:
            return position + (self.new_start[hi] - self.new_start[lo] - (hi - lo)) * entry.block
        channel = lo + (position - entry.offset) // entry.block
        return entry.offset + (self.new_start[channel] - self.new_start[lo]) * entry.block


def _replace_input(index: GraphIndex, node, i: int, array: np.ndarray, base: str, old_names: list):
    old_names.append(node.input[i])
    node.input[i] = add_initializer(index, base, array)


def _producer_axes(node) -> tuple[int, int | None]:
    """(weight axis of output channels, bias input index or None)."""
    if node.op_type == "Conv":
        return 0, 2
    if node.op_type == "Gemm":
        return (0 if attr(node, "transB", 0) else 1), 2
    return 1, None  # MatMul (K, N)


def _consumer_axis(node) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if attr(node, "transB", 0) else 0
    return 0  # MatMul (K, N)


def _by_node(pairs):
    """[(node, [entries, last place first])] from (node, entry) pairs, in first-seen order."""
    out = {}
    for node, entry in pairs:
        out.setdefault(id(node), (node, {}))[1][entry] = None
    return [(node, sorted(entries, key=lambda e: -e.offset)) for node, entries in out.values()]


def _grow_consumer(grower: _Grower, node, w: np.ndarray, entry, fill: str) -> np.ndarray:
    """A consumer's weight with columns for the new channels; a grouped conv's group k reads segment k."""
    g = attr(node, "group", 1) if node.op_type == "Conv" else 1
    if g == 1:
        return grower.grow_at(w, _consumer_axis(node), entry, fill)
    lo, hi = entry.part or (0, grower.c)
    per = (hi - lo) // g
    return np.concatenate([grower.grow(w_k, 1, 0, 1, fill, part=(lo + k * per, lo + (k + 1) * per))
                           for k, w_k in enumerate(np.split(w, g, axis=0))], axis=0)


def _segment_growth(group, segments, channels: int, new: int, report) -> list[int]:
    """New channels per segment: equal where the group demands it (conv groups, shuffles), else as even as
    the width allows, the remainder to the first segments (said in a note)."""
    n, extra = len(segments), new - channels
    if n == 1:
        return [extra]
    sizes = {b - a for a, b in segments}
    if group.equal_growth:
        why = group.equal_growth[0]
        if len(sizes) != 1:
            raise CannotMorph(f"{why}, but the space is cut into parts of unequal sizes {[b - a for a, b in segments]}")
        if extra % n:
            below, above = new - extra % n, new + n - extra % n
            valid = f"{below} or {above}" if below > channels else f"{above}"
            raise CannotMorph(f"{why}: the width must grow by a multiple of {n}; nearest valid widths: {valid}")
        return [extra // n] * n
    growth = [extra // n + (1 if k < extra % n else 0) for k in range(n)]
    if extra % n:
        report.notes.append(f"the space is cut into {n} parts (Split/Slice) of {[b - a for a, b in segments]} "
                            f"channels; {extra} new channels do not divide evenly, so they grow by {growth}")
    return growth


def _zeros_required_on_producers(group, report) -> str:
    """New channels must be exactly zero where the group says so (LRN): zeros on the producer side."""
    if not group.zero_preserving:
        raise CannotMorph(f"{group.zero_new_channels_required}: new channels must be exactly zero there, but an "
                          "activation on the space maps 0 to a non-zero value")
    report.notes.append(f"zeros on the producers: {group.zero_new_channels_required}, so new channels must be "
                        "exactly zero at its input (and keep their place after the old ones)")
    return "producers"


def _move_bounds(index: GraphIndex, edit, grower: _Grower, old_names: list):
    """Split sizes / Slice bounds on the space's axis, moved to where the grown segments put them."""
    node, name = edit.node, edit.node.name or edit.node.output[0]
    edges = [grower.new_position(edit.entry, p) for p in edit.positions]
    if edit.kind.startswith("split"):
        sizes = np.array([b - a for a, b in zip(edges[::2], edges[1::2])], dtype=np.int64)
        keep = [a for a in node.attribute if a.name not in ("split", "num_outputs")]
        if index.opset < 13:
            keep.append(onnx.helper.make_attribute("split", [int(v) for v in sizes]))
            node.ClearField("attribute")
            node.attribute.extend(keep)
            return
        node.ClearField("attribute")
        node.attribute.extend(keep)
        if len(node.input) > 1 and node.input[1]:
            _replace_input(index, node, 1, sizes, f"{name}/widen.split", old_names)
        else:
            node.input.append(add_initializer(index, f"{name}/widen.split", sizes))
        return
    start, stop = edges
    if edit.kind == "slice_attr":
        for a in node.attribute:
            if a.name in ("starts", "ends"):
                a.ints[edit.slot] = start if a.name == "starts" else stop
        return
    for i, value in ((1, start), (2, stop)):
        bounds = index.constant(node.input[i]).astype(np.int64).copy()
        bounds[edit.slot] = value
        _replace_input(index, node, i, bounds, f"{name}/widen.{'starts' if i == 1 else 'ends'}", old_names)


def widen_model(model: onnx.ModelProto, layer: str, width=None, method: str = "netmorph", noise: float = 0.0,
                seed: int = 0, dry_run: bool = False):
    """Widen `layer` to `width` output channels. Returns (child, WidenReport)."""
    if method not in ("netmorph", "net2net"):
        raise UsageError(f"unknown method {method!r}: use netmorph or net2net")
    if noise and method != "net2net":
        raise UsageError("--noise applies to net2net only")
    if noise < 0:
        raise UsageError("--noise must be non-negative")
    index = GraphIndex(model)
    if fold_constant_paths(model, static_shape_values(model, infer_shapes(model))):
        index = GraphIndex(model)  # shapes read at run time are constants here (Slice bounds of a chunk)
    target = find_layer(index, layer)
    weight_dtype(target)
    channels = target.out_channels
    new = parse_width(width, channels) if width is not None else None
    if new is None:
        raise UsageError("--width is required")
    if new < channels:
        raise UsageError(f"--width {new} is fewer than the {channels} channels {target.id} has; widen only grows")
    group = analyse(index, target, infer_shapes(model))
    report = WidenReport(target.id, method, channels, new, "-", noise, group.summary(), dry_run=dry_run)
    if dry_run or new == channels:
        if new == channels:
            report.notes.append("width unchanged: nothing to do")
        return model, report
    if method == "net2net" and group.net2net_refused:
        raise CannotMorph(group.net2net_refused)
    segments = group.segments()
    growth = _segment_growth(group, segments, channels, new, report)
    rng = np.random.default_rng(seed)
    grower = _Grower(segments, growth, method, rng, keep_order=bool(group.keep_order))
    extra = new - channels
    zeros_on = "-"
    if method == "netmorph":
        producer_params = sum(int(np.prod(index.constant(n.input[1]).shape)) // channels for n in group.producers)
        consumer_params = sum(int(np.prod(index.constant(n.input[1]).shape)) // channels for n, _ in group.consumers)
        zeros_on = "producers" if producer_params <= consumer_params and group.zero_preserving else "consumers"
        if producer_params <= consumer_params and not group.zero_preserving:
            report.notes.append("an activation on the space maps 0 to a non-zero value, so the consumers get the zeros")
        if group.zero_new_channels_required:
            zeros_on = _zeros_required_on_producers(group, report)
        report.zeros_on = zeros_on
    fill_producer = {"netmorph": "zeros" if zeros_on == "producers" else "random", "net2net": "copy"}[method]
    fill_consumer = {"netmorph": "random" if zeros_on == "producers" else "zeros", "net2net": "divide"}[method]
    old_names: list[str] = []
    for node, entry in group.producer_entries:
        w_axis, b_idx = _producer_axes(node)
        w = index.constant(node.input[1])
        rows = w.shape[w_axis]
        _replace_input(index, node, 1, grower.grow_at(w, w_axis, entry, fill_producer), f"{node.name or node.output[0]}/widen.weight", old_names)
        if b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
            b = index.constant(node.input[b_idx])
            if b is None:
                raise CannotMorph(f"the bias of {node.name or node.output[0]} is not a constant")
            if b.ndim >= 1 and b.shape[-1] == rows:
                fill = "zeros" if fill_producer == "zeros" else ("copy" if method == "net2net" else "random")
                _replace_input(index, node, b_idx, grower.grow_at(b, b.ndim - 1, entry, fill),
                               f"{node.name or node.output[0]}/widen.bias", old_names)
            elif b.size != 1:
                raise CannotMorph(f"the bias of {node.name or node.output[0]} has shape {b.shape}, not per channel")
    for node, entries in _by_node(group.consumers):
        w = index.constant(node.input[1])
        grown, new_cols = w, np.zeros_like(w)
        for entry in entries:  # the last place first, so earlier places keep their offsets
            grown = _grow_consumer(grower, node, grown, entry, fill_consumer)
            new_cols = _grow_consumer(grower, node, new_cols, entry, "ones")
        if noise:  # Net2Net's symmetry breaking, on the new channels' columns only
            std = float(np.std(w)) or 1.0
            grown = grown + (new_cols * rng.standard_normal(grown.shape) * noise * std).astype(grown.dtype)
        _replace_input(index, node, 1, grown, f"{node.name or node.output[0]}/widen.weight", old_names)
    for node in group.depthwise:
        place = replace(group.depthwise_entries[id(node)], offset=0)
        w = index.constant(node.input[1])
        fill = "copy" if method == "net2net" else "random"
        _replace_input(index, node, 1, grower.grow_at(w, 0, place, fill), f"{node.name or node.output[0]}/widen.weight", old_names)
        if len(node.input) > 2 and node.input[2]:
            b = index.constant(node.input[2])
            _replace_input(index, node, 2, grower.grow_at(b, 0, place, "copy" if method == "net2net" else "zeros"),
                           f"{node.name or node.output[0]}/widen.bias", old_names)
        for a in node.attribute:
            if a.name == "group":
                a.i = int(index.constant(node.input[1]).shape[0])
    netmorph_fill = {"bn_scale": "ones", "bn_var": "ones", "bn_bias": "zeros", "bn_mean": "zeros", "slope": "typical",
                     "add_const": "zeros", "mul_const": "ones", "div_const": "ones", "inorm_scale": "ones",
                     "inorm_bias": "zeros"}
    params = {}
    for p in group.params:
        params.setdefault((id(p.node), p.input_index), {})[p.place] = p
    for found in params.values():
        uses = list(found.values())
        p = uses[0]
        value = index.constant(p.node.input[p.input_index])
        fill = "copy" if method == "net2net" else netmorph_fill[p.role]
        for use in sorted(uses, key=lambda u: -u.place.offset):
            value = grower.grow_at(value, use.axis, use.place, fill)
        _replace_input(index, p.node, p.input_index, value,
                       f"{p.node.name or p.node.output[0]}/widen.{p.role}", old_names)
    for edit in group.reshapes:
        shape = index.constant(edit.node.input[edit.input_index]).copy()
        if shape[edit.dim] > 0:  # -1 and 0 adapt by themselves
            shape[edit.dim] += int(extra * edit.per_channel)
            _replace_input(index, edit.node, edit.input_index, shape,
                           f"{edit.node.name or edit.node.output[0]}/widen.shape", old_names)
    for edit in group.bounds:
        _move_bounds(index, edit, grower, old_names)
    if noise:
        report.notes.append(f"net2net noise {noise:g} (relative std) added to the new channels' consumer columns: "
                            "the function is no longer exact; the verification below measures by how much")
    remove_unused_constants(model, old_names)
    # value_info entries of widened tensors are stale now; drop them and let shape inference redo them.
    stale = set(group.members)
    keep = [v for v in model.graph.value_info if v.name not in stale]
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(keep)
    return model, report
