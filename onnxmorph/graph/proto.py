"""ModelProto helpers that know nothing of the index: names, attributes, Constant values, readers, clean-up."""
from __future__ import annotations

import numpy as np
import onnx

from .external import tensor_array


def node_name(node) -> str:
    """How messages name a node: its name, or its first output where it has none."""
    return node.name or node.output[0]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def str_attr(node: onnx.NodeProto, name: str, default: str | None = None) -> str | None:
    value = attr(node, name, None)
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value


def norm_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as an index into a tensor of that rank."""
    return axis + rank if axis < 0 else axis


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return tensor_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def reads(graph: onnx.GraphProto, name: str) -> int:
    """How many node inputs (subgraphs included) and graph outputs read `name`."""
    count = sum(1 for o in graph.output if o.name == name)
    for node in graph.node:
        count += sum(1 for x in node.input if x == name)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                count += reads(g, name)
    return count


def remove_unused_constants(model: onnx.ModelProto, candidates) -> None:
    """Drop initializers / Constant nodes among `candidates` that nothing reads any more."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for sub_graph_node in graph.node:  # names read inside subgraphs count as used
        for a in sub_graph_node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= {i for n in g.node for i in n.input}
    dead = {c for c in candidates if c and c not in used}
    if not dead:
        return
    # Delete in place, by index: rebuilding a repeated field copies every tensor (seconds on big models).
    for field, is_dead in ((graph.initializer, lambda t: t.name in dead),
                           (graph.node, lambda n: n.op_type == "Constant" and n.output[0] in dead),
                           (graph.input, lambda i: i.name in dead)):
        for i in reversed([i for i, item in enumerate(field) if is_dead(item)]):
            del field[i]
