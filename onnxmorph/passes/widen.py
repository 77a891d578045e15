"""Width morphing: more output channels for a layer, the function unchanged.

netmorph (paper, section 3.4.1): the new channels get random values on one side of the space and zeros on the
other (auto: the consumers when a ReLU-like op would leave zero channels without gradient, else the side with
fewer parameters, eq. 18), then one random permutation inside each segment of the widened
channel dimension is applied to every tensor that shares it.
net2net (Net2WiderNet): new channels replicate random existing ones; consumers' columns are divided by each
source's replication count; --noise adds zero-sum noise over each channel's copies (exact). One map for the whole coupled group.
The coupled group (graph/coupling/) says which producers, consumers and per-channel parameters grow.
A residual stream under LayerNorm/RMSNorm grows by duplication or LEMON (passes/widen_stream.py, --stream).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from ..graph.coupling import analyse, widen_index
from ..graph.edit import add_initializer, weight_dtype
from ..graph.index import GraphIndex
from ..graph.kv_cache import grow_declared
from ..graph.layers import find_layer
from ..graph.proto import attr, remove_unused_constants
from ..graph.shapes import infer_shapes
from ..graph.space import GroupReport
from ..solve.growth import equal_part_growth, nearest_feasible
from ..solve.stats import normal_like, typical_std
from .channels import arange_grown, consumer_axis, grow_shape_constants, producer_axes, replace_input
from .common import keeps_stored_types, parse_width
from .widen_stream import apply_lemon, plan_stream


@dataclass
class WidenReport:
    layer: str
    method: str
    channels_from: int
    channels_to: int
    zeros_on: str | None               # "consumers" or "producers" (netmorph); None when nothing got zeros
    noise: float
    group: dict = field(default_factory=dict)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    width_requested: str | None = None  # --width as given (a count or a multiplier)
    stream: str | None = None           # a residual stream under norms: "duplicate" or "lemon" (passes/widen_stream.py)
    units: list[int] = field(default_factory=list)   # the space's units (channels, heads, GQA groups): from, to
    parts: int = 1                      # fused parts the layer writes (Q, K, V; gate, up)

    def lines(self) -> list[str]:
        verb = "dry run: widening" if self.dry_run else "widened"
        asked = "" if self.width_requested in (None, str(self.channels_to)) else (
            f" ({self.width_requested})" if self.width_requested.startswith("--") else f" (--width {self.width_requested})")
        out = [f"{verb} {self.layer} from {self.channels_from} to {self.channels_to} channels{asked} with {self.method}"
               + (f" (zeros on the {self.zeros_on})" if self.zeros_on else "")]
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
        self.interleave = None   # the shuffle groups of interleaved entries, when segments are cut finer

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
        array = np.asarray(array)
        x = np.moveaxis(array, axis, 0)
        n = hi - lo
        head, body, tail = x[:offset], x[offset:offset + n * block], x[offset + n * block:]
        body = body.reshape((n, block) + body.shape[1:])
        sel = self.order[self.new_start[lo]:self.new_start[hi]]
        old = sel >= 0
        new_ids = -sel[~old] - 1
        shape = (len(new_ids),) + body.shape[1:]
        if fill != "divide":   # the new channels appended along the array's own axis, then one gather (no transposes)
            new = self._new_values(body, new_ids, lo, shape, fill)
            new = np.moveaxis(new.reshape((-1,) + new.shape[2:]), 0, axis)
            rank = np.cumsum(~old) - 1   # each new channel's place among the appended ones
            starts = np.where(old, offset + (sel - lo) * block, array.shape[axis] + rank * block)
            index = np.concatenate([np.arange(offset), (starts[:, None] + np.arange(block)).ravel(),
                                    np.arange(offset + n * block, array.shape[axis])])
            return np.take(np.concatenate([array, new], axis=axis), index, axis=axis)
        scale = self.count[lo:hi].reshape((n,) + (1,) * (body.ndim - 1)).astype(body.dtype)
        body = body / scale
        new = body[self.source[new_ids] - lo]
        full = np.empty((len(sel),) + body.shape[1:], dtype=body.dtype)
        full[old] = body[sel[old] - lo]
        full[~old] = new
        full = full.reshape((full.shape[0] * block,) + full.shape[2:])
        return np.moveaxis(np.concatenate([head, full, tail]), 0, axis)

    def _new_values(self, body: np.ndarray, new_ids: np.ndarray, lo: int, shape: tuple, fill: str) -> np.ndarray:
        """The new channels' values, (new, block, ...) like body: zeros | random | copy | ones | typical."""
        if fill == "zeros":
            return np.zeros(shape, dtype=body.dtype)
        if fill == "ones":
            return np.ones(shape, dtype=body.dtype)
        if fill == "random":
            return normal_like(self.rng, shape, typical_std(body), body.dtype)
        if fill in ("copy", "typical"):
            return body[self.source[new_ids] - lo]
        raise ValueError(fill)

    def grow_at(self, array: np.ndarray, axis: int, entry, fill: str) -> np.ndarray:
        """Grow along `axis`, where the space sits as `entry` says (its own axis ignored)."""
        if entry.interleaved:  # channel j of segment s at j·g + s: regroup segment-major, grow, interleave back
            g = self.interleave or self.segments
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


ZERO_SIDES = ("auto", "producers", "consumers")
# Ops with zero derivative at 0 (in PyTorch too): a new channel that is exactly 0 there never gets a gradient.
_DEAD_AT_ZERO = ("Relu", "ThresholdedRelu")


def _dead_at_zero(index: GraphIndex, group) -> str | None:
    """The first op on the space whose derivative at 0 is 0 (ReLU, Clip/ReLU6 from 0, ...), or None."""
    for tensor in group.members:
        for node in index.consumers.get(tensor, []):
            if node.op_type in _DEAD_AT_ZERO:
                return f"{node.op_type} {node.name or node.output[0]!r}"
            if node.op_type == "Clip":
                low = attr(node, "min", None) if index.opset < 11 else (
                    index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None)
                if low is not None and float(np.asarray(low).reshape(-1)[0]) == 0.0:
                    return f"Clip {node.name or node.output[0]!r} (from 0)"
    return None


def _zeros_side(index: GraphIndex, group, channels: int, zeros: str, report) -> str:
    """Which side of the new channels gets the zeros (netmorph); the report says why."""
    required = getattr(group, "zero_new_channels_required", None)  # LRN and the like: new channels must be 0
    dead = _dead_at_zero(index, group)
    if required:
        if zeros == "consumers":
            raise CannotMorph(f"--zeros consumers: {required}, so new channels must be exactly zero at its input")
        if not group.zero_preserving:
            raise CannotMorph(f"{required}: new channels must be exactly zero there, but an activation on the "
                              "space maps 0 to a non-zero value")
        report.notes.append(f"zeros on the producers: {required}, so new channels must be exactly zero at its input"
                            + (f"; {dead} then passes them no gradient, so they stay dead in training" if dead else ""))
        return "producers"
    if zeros == "producers":
        if not group.zero_preserving:
            raise CannotMorph("--zeros producers: an activation on the space maps 0 to a non-zero value, so zero "
                              "producer rows would change the function; use --zeros consumers")
        if dead:
            report.notes.append(f"zeros on the producers as asked: {dead} has zero derivative at 0, so the new "
                                "channels get no gradient and stay dead in training")
        return "producers"
    if zeros == "consumers":
        report.notes.append("zeros on the consumers as asked")
        return "consumers"
    if dead:
        report.notes.append(f"zeros on the consumers: {dead} has zero derivative at 0, so new channels that are 0 "
                            "would never train; random producer rows keep them alive")
        return "consumers"
    if not group.zero_preserving:
        report.notes.append("zeros on the consumers: an activation on the space maps 0 to a non-zero value")
        return "consumers"
    producer_params = sum(int(np.prod(index.constant(n.input[1]).shape)) // channels for n in group.producers)
    consumer_params = sum(int(np.prod(index.constant(n.input[1]).shape)) // channels for n, _ in group.consumers)
    side = "producers" if producer_params <= consumer_params else "consumers"
    report.notes.append(f"zeros on the {side}: no ReLU-like op on the space, so the side with fewer parameters per "
                        "channel (paper, eq. 18)")
    return side


def _exact_noise(grow, w: np.ndarray, grown: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Net2Net symmetry breaking that keeps the function: each replica's consumer column gets noise N_j and the
    original column −ΣN_j. The copies carry equal values, so the sum over them is unchanged.

    `grow(array, fill)` grows like the consumer's weight; growing element indices with "copy" tells which
    original element every grown element replicates, whatever the layout (offset, block, chunks)."""
    source = grow(np.arange(w.size, dtype=np.float64).reshape(w.shape), "copy").astype(np.int64)
    is_new = grow(np.zeros(w.shape), "ones") > 0
    scale = (float(np.std(w)) or 1.0) * noise
    added = np.where(is_new, rng.standard_normal(grown.shape) * scale, 0.0)
    removed = np.bincount(source[is_new], weights=added[is_new], minlength=w.size)
    total = added - np.where(is_new, 0.0, removed[source])
    return (grown.astype(np.float64) + total).astype(grown.dtype)



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
        return grower.grow_at(w, consumer_axis(node, entry), entry, fill)
    if entry.interleaved:
        return _grow_shuffled_groups(grower, w, g, fill)
    lo, hi = entry.part or (0, grower.c)
    per = (hi - lo) // g
    return np.concatenate([grower.grow(w_k, 1, 0, 1, fill, part=(lo + k * per, lo + (k + 1) * per))
                           for k, w_k in enumerate(np.split(w, g, axis=0))], axis=0)


def _grow_shuffled_groups(grower: _Grower, w: np.ndarray, g: int, fill: str) -> np.ndarray:
    """A grouped conv reading a shuffled space (channel j of shuffle group s at position j·S + s): its group k
    reads part k of every shuffle group. Each group's columns are regrouped by shuffle group, each part grown as
    its segment (graph/coupling/conv.py cut it), and interleaved back."""
    shuffle = grower.interleave or grower.segments
    per = grower.c // shuffle
    part = per // g
    out = []
    for k, w_k in enumerate(np.split(w, g, axis=0)):
        x = w_k.reshape((w_k.shape[0], part, shuffle) + w_k.shape[2:])
        pieces = [grower.grow(x[:, :, s], 1, 0, 1, fill, part=(s * per + k * part, s * per + (k + 1) * part))
                  for s in range(shuffle)]
        grown = np.stack(pieces, axis=2)
        out.append(grown.reshape((grown.shape[0], -1) + grown.shape[3:]))
    return np.concatenate(out, axis=0)


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
            return _parts_growth(group, segments, channels, new, why, report)
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


def _parts_growth(group, segments, channels: int, new: int, why: str, report) -> list[int]:
    """Segments of different sizes under grouped ops (a Concat's inputs read by a grouped conv): the growth per
    segment that keeps every group of every such op growing alike (solve/growth.py), or the nearest widths that
    have one."""
    sizes = [b - a for a, b in segments]
    if len(group.equal_parts) != len(group.equal_growth):
        raise CannotMorph(f"{why}, but the space is cut into parts of unequal sizes {sizes}")
    constraints = [[[s for s, (a, b) in enumerate(segments) if any(lo <= a and b <= hi for lo, hi in part)]
                    for part in parts] for parts in group.equal_parts]
    extra = new - channels
    growth = equal_part_growth(sizes, constraints, extra)
    if growth is None:
        below, above = nearest_feasible(sizes, constraints, extra)
        valid = " or ".join(str(channels + e) for e in (below, above) if e) or "none"
        raise CannotMorph(f"{why}, and the space's parts of {sizes} channels cannot all keep their groups alike at "
                          f"width {new}; nearest valid widths: {valid}")
    report.notes.append(f"the space is cut into parts of {sizes} channels by grouped ops; they grow by {growth} so "
                        "that every group of each grows alike")
    return growth


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
            replace_input(index, node, 1, sizes, "split", old_names)
        else:
            node.input.append(add_initializer(index, f"{name}/morph_widen.split", sizes))
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
        replace_input(index, node, i, bounds, "starts" if i == 1 else "ends", old_names)


def _width_for_heads(target, group, place, heads) -> int:
    """--heads N: the width that gives `target` N heads of its head size (N per part of a fused QKV)."""
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise UsageError(f"--heads must be a positive whole number, not {heads!r}")
    if not group.head_dim or place is None:
        raise UsageError(f"{target.id}'s outputs are not split into attention heads: use --width")
    per_head = group.head_dim * place.chunks
    now = target.out_channels // per_head
    if heads < now:
        raise UsageError(f"--heads {heads} is fewer than the {now} heads {target.id} has; widen only grows")
    heads_per_unit = place.block // group.head_dim
    if (heads - now) % heads_per_unit:
        raise CannotMorph(f"{target.id} grows by whole GQA groups of {heads_per_unit} heads: --heads must be {now} "
                          f"plus a multiple of {heads_per_unit}, not {heads}")
    return heads * per_head


@keeps_stored_types
def widen_model(model: onnx.ModelProto, layer: str, width=None, method: str = "netmorph", noise: float = 0.0,
                seed: int = 0, dry_run: bool = False, zeros: str = "auto", stream: str = "auto", heads=None):
    """Widen `layer` to `width` output channels. Returns (child, WidenReport).

    stream: how a residual stream under norms grows: auto (duplicate at integer multiples, else LEMON), duplicate
    or lemon (passes/widen_stream.py)."""
    if method not in ("netmorph", "net2net"):
        raise UsageError(f"unknown method {method!r}: use netmorph or net2net")
    if noise and method != "net2net":
        raise UsageError("--noise applies to net2net only")
    if noise < 0:
        raise UsageError("--noise must be non-negative")
    if zeros not in ZERO_SIDES:
        raise UsageError(f"unknown --zeros {zeros!r}: use {', '.join(ZERO_SIDES)}")
    if zeros != "auto" and method != "netmorph":
        raise UsageError("--zeros applies to netmorph only")
    index = widen_index(model)
    target = find_layer(index, layer)
    weight_dtype(target)
    channels = target.out_channels
    if width is not None and heads is not None:
        raise UsageError("give --width or --heads, not both")
    new = parse_width(width, channels) if width is not None else None
    if new is None and heads is None:
        raise UsageError("--width (or --heads for an attention projection) is required")
    if new is not None and new < channels:
        raise UsageError(f"--width {new} is fewer than the {channels} channels {target.id} has; widen only grows")
    group = analyse(index, target, infer_shapes(model))
    # The space counts units: channels, or attention heads (GQA groups) of `unit` features each.
    # A fused QKV projection holds the space in chunks (Q, K, V): a unit is a head in each of them.
    # A fused gate_up (chunks, no heads): a unit is a channel in each part.
    place = next((e for n, e in group.producer_entries if n is target.node), None)
    place = place if group.head_dim or (place and place.chunks > 1) else None
    unit = place.block * place.chunks if place else 1
    if heads is not None:
        new = _width_for_heads(target, group, place, heads)
        width = f"--heads {heads}"
    if (new - channels) % unit and not group.head_dim:
        raise CannotMorph(f"{target.id} writes {place.chunks} fused parts (gate, up) of {group.channels} channels: "
                          f"--width must add to each part alike, a multiple of {unit} more than {channels}")
    if (new - channels) % unit and place.chunks > 1:
        raise CannotMorph(f"{target.id} writes {place.chunks} fused parts (Q, K, V) of {group.channels} heads of "
                          f"{place.block} features: --width must add whole heads to each part, a multiple of "
                          f"{unit} more than {channels}")
    if (new - channels) % unit:
        raise CannotMorph(f"{target.id} feeds {group.channels} attention head groups of {unit} features (head size "
                          f"{group.head_dim}): --width must add whole ones, a multiple of {unit} more than {channels}")
    stream_plan = plan_stream(index, group, channels, new, stream)
    report = WidenReport(target.id, method, channels, new, None, noise, group.summary(), dry_run=dry_run,
                         width_requested=str(width), stream=stream_plan and stream_plan.strategy,
                         units=[group.channels, group.channels + (new - channels) // unit],
                         parts=place.chunks if place else 1)
    if dry_run or new == channels:
        if new == channels:
            report.notes.append("width unchanged: nothing to do")
        return model, report
    if method == "net2net" and group.net2net_refused:
        raise CannotMorph(group.net2net_refused)
    units = group.channels
    extra = (new - channels) // unit
    segments = group.segments()
    growth = _segment_growth(group, segments, units, units + extra, report)
    rng = np.random.default_rng(seed)
    if stream_plan and stream_plan.strategy == "lemon":
        apply_lemon(model, index, group, stream_plan, channels, new, method, noise, rng, report)
        return _drop_stale_shapes(model, group), report
    grower = _Grower(segments, growth, method, rng, keep_order=bool(group.keep_order))
    grower.interleave = group.interleave
    zeros_on = "-"
    fill_method = method
    if group.norms:  # a norm over the space: duplicate the stream, x' = [x; x; ...] (DESIGN.md, Transformer math)
        copies = new // channels
        grower = _Grower(segments, growth, "net2net", rng)
        grower.source, grower.count = np.tile(np.arange(units), copies - 1), np.full(units, copies)
        fill_method = "net2net"
        if method == "netmorph":
            noise = noise or 0.5   # readers' columns that sum to the original but differ: exact symmetry breaking
        report.notes.append(f"the stream is duplicated ({copies} copies): {len(group.norms)} norms over it keep their "
                            "mean and variance, gamma and beta are copied, readers' columns are split")
    elif method == "netmorph":
        if group.head_dim and zeros == "auto":
            zeros_on = report.zeros_on = "consumers"
            report.notes.append("zeros on the consumers: new heads get random Q/K/V rows and zero output-projection "
                                "columns (zero Q and K rows would leave their scores without gradient)")
        else:
            zeros_on = report.zeros_on = _zeros_side(index, group, units, zeros, report)
    fill_producer = {"netmorph": "zeros" if zeros_on == "producers" else "random", "net2net": "copy"}[fill_method]
    fill_consumer = {"netmorph": "random" if zeros_on == "producers" else "zeros", "net2net": "divide"}[fill_method]
    old_names: list[str] = []
    for node, entry in group.producer_entries:
        w_axis, b_idx = producer_axes(node)
        w = index.constant(node.input[1])
        rows = w.shape[w_axis]
        replace_input(index, node, 1, grower.grow_at(w, w_axis, entry, fill_producer), "weight", old_names)
        if b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
            b = index.constant(node.input[b_idx])
            if b is None:
                raise CannotMorph(f"the bias of {node.name or node.output[0]} is not a constant")
            if b.ndim >= 1 and b.shape[-1] == rows:
                fill = "zeros" if fill_producer == "zeros" else ("copy" if fill_method == "net2net" else "random")
                replace_input(index, node, b_idx, grower.grow_at(b, b.ndim - 1, entry, fill), "bias", old_names)
            elif b.size != 1:
                raise CannotMorph(f"the bias of {node.name or node.output[0]} has shape {b.shape}, not per channel")
    for node, entries in _by_node(group.consumers):
        w = index.constant(node.input[1])

        def grow_consumer(array, fill, node=node, entries=entries):
            for entry in entries:  # the last place first, so earlier places keep their offsets
                array = _grow_consumer(grower, node, array, entry, fill)
            return array
        grown = grow_consumer(w, fill_consumer)
        if noise:
            grown = _exact_noise(grow_consumer, w, grown, noise, rng)
        replace_input(index, node, 1, grown, "weight", old_names)
    for node in group.depthwise:
        place = replace(group.depthwise_entries[id(node)], offset=0)
        w = index.constant(node.input[1])
        fill = "copy" if fill_method == "net2net" else "random"
        replace_input(index, node, 1, grower.grow_at(w, 0, place, fill), "weight", old_names)
        if len(node.input) > 2 and node.input[2]:
            b = index.constant(node.input[2])
            replace_input(index, node, 2, grower.grow_at(b, 0, place, "copy" if fill_method == "net2net" else "zeros"),
                           "bias", old_names)
        for a in node.attribute:
            if a.name == "group":
                a.i = int(index.constant(node.input[1]).shape[0])
    netmorph_fill = {"bn_scale": "ones", "bn_var": "ones", "bn_bias": "zeros", "bn_mean": "zeros", "slope": "typical",
                     "add_const": "zeros", "mul_const": "ones", "div_const": "ones", "inorm_scale": "ones",
                     "inorm_bias": "zeros", "concat_const": "zeros",
                     # a table gathered into the space writes it, like a producer's rows; T5's relative position
                     # bias (buckets, heads) only reaches the new heads' scores, so any values are exact: a new head
                     # starts with an existing head's bias column
                     "embedding": "zeros" if fill_producer == "zeros" else ("typical" if group.head_dim else "random")}
    params = {}
    for p in group.params:
        params.setdefault((id(p.node), p.input_index), {})[p.place] = p
    for found in params.values():
        uses = list(found.values())
        p = uses[0]
        value = index.constant(p.node.input[p.input_index])
        if p.role == "arange_index":   # indices 0..C-1 of a Gather that moves the channel axis: 0..C'-1
            replace_input(index, p.node, p.input_index, arange_grown(value, p.axis, new - channels), p.role, old_names)
            continue
        fill = "copy" if fill_method == "net2net" else netmorph_fill[p.role]
        for use in sorted(uses, key=lambda u: -u.place.offset):
            value = grower.grow_at(value, use.axis, use.place, fill)
        replace_input(index, p.node, p.input_index, value, p.role, old_names)
    grow_shape_constants(index, group, extra, old_names)
    for edit in group.bounds:
        _move_bounds(index, edit, grower, old_names)
    _grow_cache_interface(model, index, group, extra, report)
    if noise:
        report.notes.append(f"net2net noise {noise:g} (relative std) on the replicas' consumer columns, summing to 0 "
                            "over each channel's copies: exact, and the copies diverge in training")
    elif method == "net2net":
        report.notes.append("replicated channels stay identical in training unless --noise breaks the symmetry")
    remove_unused_constants(model, old_names)
    return _drop_stale_shapes(model, group), report


def _grow_cache_interface(model, index, group, extra: int, report) -> None:
    """The KV-cache inputs and outputs the heads reach grow with them (graph/kv_cache.py): their declared head
    axis, new heads after the old ones (the group keeps the order there)."""
    grown = []
    for name, entries in group.members.items():
        if name in index.graph_inputs or name in index.graph_outputs:
            for e in entries:
                grow_declared(model, name, e.axis, extra * e.block * e.chunks)
            grown.append(name)
    if grown:
        report.notes.append(f"the KV cache grows with the heads: {', '.join(sorted(grown))} (new heads after the "
                            "old ones; a child's cache holds its parent's as the leading part)")


def _drop_stale_shapes(model: onnx.ModelProto, group) -> onnx.ModelProto:
    """value_info entries of widened tensors are stale now; drop them and let shape inference redo them."""
    stale = set(group.members)
    keep = [v for v in model.graph.value_info if v.name not in stale]
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(keep)
    return model
