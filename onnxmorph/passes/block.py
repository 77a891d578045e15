"""Deepen by whole residual blocks: copies of block B inserted right after it, each starting as the identity.

Each copy reads B's output stream and the last one writes the stream B's successors read. The copy's branch
contribution is exactly zero: its last linear layer (weight and bias) is zeroed, or, when the branch ends in a
BatchNorm, that BatchNorm's γ and β are (zero-init residual γ: the output stays 0 under batch statistics too,
where a zeroed conv before a BatchNorm would output β in training mode). Float constants of the branch are
copied so the copy trains on its own; scalar and integer constants (exponents, eps, shapes, axes) and side
inputs (masks, positions) are shared, so the copy runs with the same dynamic axes. A KV cache is not shared: each
copy of a decoder layer reads and writes its own past_key_values.L.* / present.L.* (graph/kv_cache.py), appended
after the last layer's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from ..graph.blocks import LINEAR_OPS, Unit, constant_source, find_blocks, find_span, span_problem
from ..graph.edit import add_initializer
from ..graph.index import GraphIndex
from ..graph.kv_cache import cache_outputs, layer_number, model_cache_pairs, renumbered
from ..graph.precision import NP_FLOATS

FLOAT_DTYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16)


@dataclass
class BlockReport:
    block: str
    init: str
    count: int
    units: list[str]
    zeroed: list[str] = field(default_factory=list)     # the parameters set to zero, per copy
    zero_kind: list[str] = field(default_factory=list)  # per unit: "linear" or "batchnorm"
    new_parameters: int = 0
    blocks_before: int = 0
    blocks_after: int = 0
    notes: list[str] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)      # the copies' own KV-cache inputs and outputs
    layers_added: int = 0                               # attention units added (decoder layers, for config.json)

    def lines(self) -> list[str]:
        how = {"linear": "its last linear layer zeroed", "batchnorm": "its last BatchNorm's γ and β zeroed"}
        out = [f"deepened block {self.block} ({len(self.units)} unit{'s' * (len(self.units) > 1)}) by "
               f"{self.count} cop{'ies' if self.count > 1 else 'y'} ({self.init} weights), "
               f"{self.new_parameters:,} new parameters"]
        for unit, kind in zip(self.units, self.zero_kind):
            out.append(f"  unit {unit}: branch starts at zero, {how[kind]}")
        out.append(f"  residual blocks: {self.blocks_before} -> {self.blocks_after}")
        if self.cache:
            out.append(f"  KV cache of the copies (appended after the last layer's; the others keep their numbers): "
                       f"{', '.join(self.cache)}")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def _float_constant(index: GraphIndex, name: str) -> np.ndarray | None:
    """The value of a float constant (through Identity nodes), else None."""
    source = constant_source(index, name)
    if source is None or index.constant_dtype(source) not in FLOAT_DTYPES:
        return None
    return index.constant(source)


def _random_like(value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw at the tensor's own scale: same mean and std, normal."""
    v = value.astype(np.float64)
    return (v.mean() + v.std() * rng.standard_normal(v.shape)).astype(value.dtype)


def _learned_weights(index: GraphIndex, units: list[Unit]) -> set[str]:
    """Weights and biases of the span's linear layers (what --random draws anew)."""
    names = set()
    for unit in units:
        for node in unit.branch:
            if node.op_type in LINEAR_OPS and len(node.input) > 1 and constant_source(index, node.input[1]):
                names.update(i for i in node.input[1:3] if i and _float_constant(index, i) is not None)
                for user in index.consumers.get(node.output[0], []):  # MatMul's bias Add
                    if node.op_type == "MatMul" and user.op_type == "Add":
                        names.update(i for i in user.input if i and _float_constant(index, i) is not None)
    return names


def _copy_span(index: GraphIndex, units: list[Unit], base: str, stream_in: str, init: str,
               rng: np.random.Generator, learned: set[str], cache: dict | None = None):
    """New nodes computing the span on `stream_in`; returns (nodes, output stream, zeroed names, new params).
    cache: {the span's KV-cache input or output: the copy's own} (it is renamed, not shared)."""
    order = {id(n): i for i, n in enumerate(index.graph.node)}
    nodes = sorted({id(n): n for u in units for n in u.nodes}.values(), key=lambda n: order[id(n)])
    zero = {(out, i) for u in units for out, i in u.zero}
    mapping = {units[0].stream_in: stream_in, **(cache or {})}
    zeroed, params, new_nodes = [], 0, []
    # a unit that reads a no-op Cast of the previous unit's output reads the copy's output itself
    aliases = {u.stream_in: p.stream_out for p, u in zip(units, units[1:]) if u.stream_in != p.stream_out}
    for node in nodes:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = index.unique_name(f"{base}/{node.name or node.op_type}")
        for i, name in enumerate(node.input):
            if not name:
                continue
            if aliases.get(name, name) in mapping:
                new.input[i] = mapping[aliases.get(name, name)]
            elif (value := _float_constant(index, name)) is not None and (value.size > 1 or (node.output[0], i) in zero):
                if init == "random" and name in learned:
                    value = _random_like(value, rng)
                if (node.output[0], i) in zero:
                    value = np.zeros_like(value)
                stored = index.stored_types.get(name)
                if stored is None:
                    copy = add_initializer(index, f"{base}/{name}", value)
                else:   # stored in another float type behind a Cast (a converter's float32 island): so is the copy
                    held = add_initializer(index, f"{base}/{name}", value.astype(NP_FLOATS[stored]))
                    copy = index.unique_name(f"{held}/cast")
                    new_nodes.append(onnx.helper.make_node("Cast", [held], [copy], name=copy,
                                                           to=index.constant_dtype(name)))
                params += value.size
                new.input[i] = copy
                if (node.output[0], i) in zero:
                    zeroed.append(copy)
            # scalars (exponents, eps, scales), integer constants and side inputs (masks, positions, shapes)
            # are shared
        for i, name in enumerate(node.output):
            if name in (cache or {}):
                new.output[i] = cache[name]
            elif name:
                mapping[name] = new.output[i] = index.unique_name(f"{base}/{name}")
        new_nodes.append(new)
    return new_nodes, mapping[units[-1].stream_out], zeroed, params


def _span_cache_layers(index: GraphIndex, span: list[Unit]) -> list[list[str]]:
    """The KV-cache inputs and outputs the span's nodes read and write, grouped by layer number, in order."""
    pairs = model_cache_pairs(index.model)
    cache = set(pairs) | cache_outputs(index.model)
    names = []
    for unit in span:
        for node in unit.nodes:
            names += [n for n in list(node.input) + list(node.output) if n in cache and n not in names]
    by_layer: dict = {}
    for name in names:
        by_layer.setdefault(layer_number(name), []).append(name)
    return list(by_layer.values())


def _new_cache_layers(index: GraphIndex, layers: list[list[str]], report) -> dict:
    """{a cache input/output of the span: the copy's own}: each layer of the span gets the next free layer number
    (appended: past_key_values.L.* after the last layer's, the existing layers keep their numbers and their
    place), declared like the original, inputs after the last cache input and outputs after the last present."""
    if not layers:
        return {}
    graph = index.graph
    cache = set(model_cache_pairs(index.model)) | cache_outputs(index.model)
    start = max(layer_number(n) for n in cache) + 1
    mapping = {name: renumbered(name, start + k) for k, names in enumerate(layers) for name in names}
    for side in ("input", "output"):
        infos = list(getattr(graph, side))
        added = []
        for vi in infos:
            if vi.name in mapping:
                copy = onnx.ValueInfoProto()
                copy.CopyFrom(vi)
                copy.name = mapping[vi.name]
                added.append(copy)
        if not added:
            continue
        last = max(i for i, vi in enumerate(infos) if vi.name in cache) + 1
        infos[last:last] = added
        getattr(graph, side).clear()
        getattr(graph, side).extend(infos)
        (index.graph_inputs if side == "input" else index.graph_outputs).update(v.name for v in added)
    for name in mapping.values():
        index.unique_name(name)   # reserve it
    report.cache.extend(sorted(mapping.values()))
    return mapping


def deepen_block(model: onnx.ModelProto, block: str, init: str = "copy", count: int = 1, seed: int = 0):
    """Insert `count` identity-start copies of residual block `block` right after it. Returns (child, report)."""
    if init not in ("copy", "random"):
        raise UsageError(f"unknown init {init!r}: use copy or random")
    if count is None or int(count) < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    count = int(count)
    index = GraphIndex(model)
    span, _ = find_span(index, block)
    why = span_problem(span)
    if why:
        raise CannotMorph(f"block {block} cannot be repeated: {why}")
    blocks_before = len(find_blocks(index))
    block_id = span[0].id if len(span) == 1 else f"{span[0].id}:{span[-1].id}"
    base_id = span[-1].id
    learned = _learned_weights(index, span)
    rng = np.random.default_rng(seed)
    stream_out = span[-1].stream_out
    order = {id(n): i for i, n in enumerate(index.graph.node)}
    last = max((n for u in span for n in u.nodes), key=lambda n: order[id(n)])
    users = [n for n in index.consumers.get(stream_out, [])]
    report = BlockReport(block_id, init, count, [u.id for u in span], zero_kind=[u.zero_kind for u in span],
                         layers_added=count * sum(u.attention for u in span))
    all_new, head = [], stream_out
    layers = _span_cache_layers(index, span)
    for k in range(1, count + 1):
        cache = _new_cache_layers(index, layers, report)
        nodes, head, zeroed, params = _copy_span(index, span, f"{base_id}/morph_block{k}", head, init, rng, learned,
                                                 cache)
        all_new.extend(nodes)
        report.zeroed.extend(zeroed)
        report.new_parameters += params
    # The last copy feeds B's successors: rewire them, or, for a graph output, rename B's side instead.
    if stream_out in index.graph_outputs:
        inner = index.unique_name(f"{base_id}/morph_block0/{stream_out}")
        for i, name in enumerate(last.output):
            if name == stream_out:
                last.output[i] = inner
        for node in all_new:
            for i, name in enumerate(node.input):
                if name == stream_out:
                    node.input[i] = inner
            for i, name in enumerate(node.output):
                if name == head:
                    node.output[i] = stream_out
    else:
        for user in users:
            for i, name in enumerate(user.input):
                if name == stream_out:
                    user.input[i] = head
    nodes = list(index.graph.node)
    pos = next(i for i, n in enumerate(nodes) if n is last) + 1
    nodes[pos:pos] = all_new
    index.graph.ClearField("node")
    index.graph.node.extend(nodes)
    report.blocks_after = len(find_blocks(GraphIndex(model)))
    report.blocks_before = blocks_before
    if init == "random":
        report.notes.append("linear weights and biases drawn at the copied block's per-tensor mean and std; "
                            "norm parameters and BatchNorm statistics copied")
    return model, report
