"""The coupling analysis: every tensor that shares a layer's output channel dimension, and what must grow with it.

Widening a layer widens a *channel space*, not a tensor. Starting from the layer's output, the rules of the table
(coupling/table.py, one module per op family) map the space between inputs and outputs, forwards (consumers) and
backwards (producers, through residual Adds and SE gates), until nothing changes: a worklist of (tensor, Entry)
places. Unknown ops and ops that mix channels are refused with the op and tensor named.

The space is cut into segments (conv groups, Split parts, shuffle groups, heads); new channels are appended
to segments, so a segment stays contiguous and a part of the space keeps its place in every tensor.
"""
from __future__ import annotations

from dataclasses import replace

import onnx

from ...errors import CannotMorph
from .. import norms
from ..fold import fold_constant_paths
from ..forms import CONTRIB_DOMAIN, contrib_ops, contrib_refusal
from ..index import GraphIndex
from ..kv_cache import cache_outputs, model_cache_pairs
from ..layers import find_layers
from ..proto import node_name
from ..shape_source import ShapeEdit, generic_shapes, shape_values
from ..shapes import infer_shapes
from ..space import CouplingGroup, Entry
from .attention import head_split
from .concat import split_bounds
from .normalization import decomposed_backward, decomposed_forward
from .reshape import slice_range
from .runtime import check_runtime_shapes
from .table import NO_RULES, RULES, reason


class Analysis:
    """The worklist state the rules act on."""

    def __init__(self, index: GraphIndex, shapes: dict, group: CouplingGroup):
        self.index, self.shapes, self.group = index, shapes, group
        self.work: list[tuple[str, Entry]] = []
        self.written: set = set()   # (id(node), tensor, entry): the node is known to write the space there
        self.current = None         # the node a forward rule is placing outputs for
        self.shape_edits: set = set()
        self._norms = self._norm_misses = None
        self.whole_last: list = []  # (tensor, node): the space must fill tensor's last axis (same_last_dim)
        self.expected_reads: dict = {}   # (id(node), entry) -> (shape node, tensor): a shape entry set by a read dim
        self.followed_reads: set = set()  # (id(node), entry) a Reshape/Expand rule found to follow the growth
        self.read_checks: list = []      # (DimRead, per_unit, node): the read dim must grow by per_unit per unit
        self.cache_in = set(model_cache_pairs(index.model))   # the KV-cache interface may grow (graph/kv_cache.py)
        self.cache_out = cache_outputs(index.model)
        self.runtime_uses: dict = {}  # (id(node), input index) -> (node, i): shapes computed at run time (runtime.py)

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
        raise CannotMorph(f"cannot widen through {node.op_type} {node_name(node)!r} on tensor {tensor!r}: {why}")

    def data_only(self, node, tensor, pos):
        """The space must enter as the node's data input (input 0), never as a parameter."""
        if pos is not None and pos != [0]:
            self.refuse(node, tensor, "the widened tensor is a parameter of this op")

    def const(self, node, i):
        """Constant input i of node (None when absent or not constant)."""
        if i < len(node.input) and node.input[i] and self.index.is_constant(node.input[i]):
            return self.index.constant(node.input[i])
        return None

    def has_const(self, node, i) -> bool:
        """Whether input i of node is a constant, an initializer's known without decoding it (a layer's weight)."""
        if i < len(node.input) and node.input[i] in self.index.initializers:
            return True
        return self.const(node, i) is not None

    def add(self, tensor, entry):
        group = self.group
        if entry.part == (0, group.channels):
            entry = replace(entry, part=None)
        places = group.members.get(tensor, ())
        if entry in places or any(_covers(other, entry) for other in places):
            return
        for other in places:
            if self._overlap(tensor, entry, other):
                raise CannotMorph(f"tensor {tensor!r} meets the widened channels twice, at overlapping places")
        if tensor in self.index.graph_outputs and tensor not in self.cache_out:
            raise CannotMorph(f"widening changes graph output {tensor!r}; its shape would change")
        if tensor in self.cache_in or tensor in self.cache_out:
            group.keep_order = group.keep_order or (f"the KV cache {tensor} grows: the old heads keep their places "
                                                    "(the parent's cache is the leading part of the child's)")
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

    def expect_read(self, shape_node, tensor, uses):
        """A Shape read of the space's axis sets these Reshape/Expand shape entries: each must follow the growth."""
        for node, position, _ in uses:
            self.expected_reads.setdefault((id(node), position), (shape_node, tensor, node))

    def follows_read(self, node, position, source, per_unit) -> bool:
        """Shape entry `position` of `node` is a dim read at run time (`source`, a DimRead): it follows the growth
        when the read dim grows by per_unit per new unit, checked when the walk is done."""
        self.followed_reads.add((id(node), position))
        self.read_checks.append((source, per_unit, node))
        return True

    def check_reads(self):
        for (key, (shape_node, tensor, target)) in self.expected_reads.items():
            if key not in self.followed_reads:
                self.refuse(shape_node, tensor, f"the tensor's shape is read at run time into {target.op_type} "
                                                f"{node_name(target)!r}, which does not follow the growth")
        for source, per_unit, node in self.read_checks:
            grows = sum(e.block * e.chunks for e in self.group.members.get(source.tensor, ())
                        if e.axis == source.axis) * source.factor
            if grows != per_unit:
                self.refuse(node, source.tensor, f"its shape reads dim {source.axis} of {source.tensor!r}, which "
                                                 f"grows by {grows} per unit where {per_unit} is needed")

    def space_size(self, entry) -> int:
        lo, hi = entry.part or (0, self.group.channels)
        return hi - lo

    def whole_axis(self, tensor, entry) -> bool:
        return entry.simple and entry.offset == 0 and entry.block == 1 and \
            self.space_size(entry) == self.dim(tensor, entry.axis)


def _covers(whole, part) -> bool:
    """`part` is a part of the space that `whole` already places there, at the same offset (a Concat's input
    part, met again forwards after the output was placed)."""
    if not (whole.simple and part.simple and whole.axis == part.axis and whole.block == part.block and
            part.part is not None):
        return False
    lo, hi = whole.part or (0, None)
    return lo <= part.part[0] and (hi is None or part.part[1] <= hi) and \
        part.offset == whole.offset + (part.part[0] - lo) * whole.block


def _rules(node):
    return RULES.get(node.op_type, NO_RULES) if node.domain in ("", "ai.onnx") else NO_RULES


def _norm_rule(an, node, rule) -> list:
    """A node of a decomposed norm (graph/norms.py) follows the norm's rule first, whatever its op."""
    return [rule] if node.domain in ("", "ai.onnx") and an.norm_at(node) is not None else []


def _forward(an, node, tensor, entry, pos):
    """The space is read at `tensor` by `node`: the op's rules in order, until one places it."""
    if node.domain == CONTRIB_DOMAIN:
        an.refuse(node, tensor, contrib_refusal(node.op_type))
    rules = _rules(node)
    for fn in _norm_rule(an, node, decomposed_forward) + rules.forward:
        if fn(an, node, tensor, entry, pos):
            return
    an.refuse(node, tensor, reason(rules.refuse_forward, an, node))


def _backward(an, node, tensor, entry):
    """The space is written at output `tensor` of `node`: whatever writes it must write the space too."""
    if node.domain == CONTRIB_DOMAIN:
        an.refuse(node, tensor, contrib_refusal(node.op_type))
    rules = _rules(node)
    for fn in _norm_rule(an, node, decomposed_backward) + rules.backward:
        if fn(an, node, tensor, entry):
            return
    an.refuse(node, tensor, reason(rules.refuse_backward, an, node))


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
            ops = contrib_ops(index.model)   # shape inference stops at ORT's contrib ops
            raise CannotMorph(f"the rank of {start!r} is unknown" + (f": {contrib_refusal(ops)}" if ops else ""))
        axis = rank - 1
    found = head_split(index, shapes, start) if layer.op != "Conv" else None
    if layer.op == "Conv" and layer.group > 1 and layer.group == layer.out_channels and layer.weight.shape[1] == 1:
        return _depthwise_group(index, layer, shapes)
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


def _depthwise_group(index, layer, shapes) -> CouplingGroup:
    """A depthwise conv grows with the space it reads. When that space cannot be walked from the conv itself (a
    channel shuffle before it orders the channels otherwise than the layer that writes them), walk it from that
    layer: the nearest linear layer upstream through per-channel ops and reshapes, if its group holds the conv."""
    try:
        return _walk(index, layer, shapes, layer.out_channels, Entry(1))
    except CannotMorph as exc:
        first = exc
    tensor = layer.node.input[0]
    for _ in range(16):
        node = index.producer.get(tensor)
        if node is None:
            break
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            upstream = next((lay for lay in find_layers(index) if lay.node is node), None)
            if upstream is None or upstream.op != "Conv":
                break
            try:
                group = _walk(index, upstream, shapes, upstream.out_channels, Entry(1))
            except CannotMorph:
                break
            if any(n is layer.node for n in group.depthwise):
                return group
            break
        if node.op_type not in _THROUGH:
            break
        tensor = node.input[0]
    raise first


# Ops a depthwise conv's space is traced back through to the layer that writes it.
_THROUGH = ("BatchNormalization", "Relu", "Clip", "Reshape", "Transpose", "Identity", "Cast", "Sigmoid",
            "HardSwish", "Mul", "Add", "PRelu", "LeakyRelu")


def _fused_parts(index, shapes, tensor, axis) -> int | None:
    """k when `tensor` is read (besides Shape) only by one Split of `axis` into k >= 2 equal parts or by k Slices
    of it that are its k equal parts in order; None otherwise."""
    length = (shapes.get(tensor) or [None] * (axis + 1))[axis]
    readers = [n for n in index.consumers.get(tensor, []) if n.op_type != "Shape"]
    if not length or not readers:
        return None
    an = Analysis(index, shapes, CouplingGroup(length))
    try:
        if len(readers) == 1 and readers[0].op_type == "Split":
            bounds = [(a, b) for ax, a, b in split_bounds(an, readers[0], tensor) if ax == axis]
        elif all(n.op_type == "Slice" and n.input[0] == tensor for n in readers):
            bounds = sorted(slice_range(an, n, tensor, axis)[:2] for n in readers)
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
    an = Analysis(index, shapes, CouplingGroup(layer.out_channels))
    try:
        sizes = [stop - start for start, stop, _ in (slice_range(an, n, layer.output, axis) for n in readers)]
    except (CannotMorph, TypeError):
        return
    if len(set(sizes)) > 1 and all(head_split(index, shapes, n.output[0]) for n in readers):
        raise CannotMorph(f"{layer.id} is a fused QKV of uneven parts {sizes} (GQA): widening it by whole GQA "
                          "groups is not supported yet; widen the residual stream or the MLP instead") from None


def _walk(index, layer, shapes, channels: int, start_entry: Entry) -> CouplingGroup:
    """Run the rules from the layer's output to a fixed point."""
    start = layer.output
    group = CouplingGroup(channels)
    an = Analysis(index, shapes, group)
    an.add(start, start_entry)
    while an.work:
        tensor, entry = an.work.pop()
        # Backwards: whatever writes this tensor must write the space too.
        producer = index.producer.get(tensor)
        if producer is None and tensor not in an.cache_in:
            raise CannotMorph(f"tensor {tensor!r} is a graph input (or initializer) and cannot grow")
        if producer is not None and (id(producer), tensor, entry) not in an.written:
            an.written.add((id(producer), tensor, entry))
            _backward(an, producer, tensor, entry)
        # Forwards: everything reading this tensor (once per node, when it reads the tensor twice).
        for node in {id(n): n for n in index.consumers.get(tensor, [])}.values():
            an.current = node
            _forward(an, node, tensor, entry, [i for i, name in enumerate(node.input) if name == tensor])
            an.current = None
    an.check_whole_last()
    an.check_reads()
    check_runtime_shapes(an)
    return group
