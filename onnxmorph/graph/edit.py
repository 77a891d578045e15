"""Graph editing helpers shared by the passes."""
from __future__ import annotations

from math import ceil

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CannotMorph
from .layers import GraphIndex, Layer

NP_OF = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def weight_dtype(layer: Layer):
    dtype = NP_OF.get(layer.weight_dtype)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(layer.weight_dtype)
        raise CannotMorph(f"layer {layer.id} has {name} weights; onnxmorph morphs float32 and float64 layers only")
    return dtype


def add_initializer(index: GraphIndex, base: str, array: np.ndarray) -> str:
    """A new initializer with a unique name (also listed as a graph input in IR < 4 models)."""
    name = index.unique_name(base)
    tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
    index.graph.initializer.append(tensor)
    index.initializers[name] = index.graph.initializer[-1]  # append copies; keep the graph's own message
    if index.model.ir_version < 4:
        index.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(array.shape)))
    return name


def _reads(graph: onnx.GraphProto, name: str) -> int:
    """How many node inputs (subgraphs included) and graph outputs read `name`."""
    count = sum(1 for o in graph.output if o.name == name)
    for node in graph.node:
        count += sum(1 for x in node.input if x == name)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                count += _reads(g, name)
    return count


def set_constant(index: GraphIndex, node: onnx.NodeProto, i: int, array: np.ndarray, new_name: str) -> str:
    """Give input `i` of `node` the value `array`, keeping the tensor's name when this is its only reader (its
    size or values change; it is still the same tensor, and layer ids that found it keep working). A tensor
    that other nodes also read, which the morph leaves as they are, stays for them: this node then reads a
    new initializer named `new_name` (made unique). Returns the name the node reads."""
    name = node.input[i]
    only_reader = _reads(index.graph, name) == 1 and name not in index.graph_inputs - set(index.initializers)
    array = np.asarray(array)
    tensor = numpy_helper.from_array(np.ascontiguousarray(array).reshape(array.shape), name)  # a scalar stays 0-d
    if only_reader and name in index.initializers:
        index.initializers[name].CopyFrom(tensor)
        for vi in list(index.graph.input) + list(index.graph.value_info):  # IR < 4 lists it as an input too
            if vi.name == name:
                vi.CopyFrom(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(array.shape)))
        return name
    if only_reader and name in index.constant_nodes:
        const = index.constant_nodes[name]
        const.ClearField("attribute")
        const.attribute.append(onnx.helper.make_attribute("value", tensor))
        return name
    node.input[i] = add_initializer(index, new_name, array)
    if array.ndim == 0:  # add_initializer stores a scalar as (1,)
        index.initializers[node.input[i]].ClearField("dims")
    return node.input[i]


def replace_node(index: GraphIndex, old: onnx.NodeProto | None, new_nodes: list[onnx.NodeProto],
                 at: onnx.NodeProto | None = None) -> None:
    """Remove `old` (if any) and insert `new_nodes` where it stood (or right after `at`)."""
    nodes = list(index.graph.node)
    if old is not None:
        pos = next(i for i, n in enumerate(nodes) if n is old)
        nodes[pos:pos + 1] = new_nodes
    else:
        pos = next(i for i, n in enumerate(nodes) if n is at) + 1
        nodes[pos:pos] = new_nodes
    index.graph.ClearField("node")
    index.graph.node.extend(nodes)


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


_STRIP_BYTES = 64 * 1024


def _without_big_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """A light copy for shape inference: big initializers become typed inputs (only their shapes matter),
    so models past protobuf's 2 GB cap can be inferred and big ones infer fast."""
    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    src = model.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    inits = {t.name for t in src.initializer}
    graph.input.extend(i for i in src.input if i.name not in inits)
    for t in src.initializer:
        if len(t.raw_data) > _STRIP_BYTES or t.data_location == onnx.TensorProto.EXTERNAL:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            graph.initializer.append(t)
    light.functions.extend(model.functions)
    return light


def infer_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """name -> shape (ints or None per dim) from ONNX shape inference; {} when it cannot run."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_big_tensors(model), strict_mode=False)
    except Exception:
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def explicit_pads(index: GraphIndex, layer: Layer, shapes: dict | None = None) -> list[int]:
    """The layer's pads as [begin..., end...], resolving auto_pad from the input's spatial size."""
    rank = len(layer.kernel)
    mode = layer.auto_pad or "NOTSET"
    if mode == "NOTSET":
        return list(layer.pads) if layer.pads else [0] * (2 * rank)
    if mode == "VALID":
        return [0] * (2 * rank)
    strides = list(layer.strides) or [1] * rank
    dilations = list(layer.dilations) or [1] * rank
    if all(s == 1 for s in strides):
        # At stride 1 SAME padding is d·(K−1) in total whatever the input size (dynamic dims included).
        total = [d * (k - 1) for k, d in zip(layer.kernel, dilations)]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        return (small + big) if mode == "SAME_UPPER" else (big + small)
    shapes = shapes if shapes is not None else infer_shapes(index.model)
    shape = shapes.get(layer.node.input[0])
    if not shape or len(shape) != rank + 2 or any(d is None for d in shape[2:]):
        raise CannotMorph(f"layer {layer.id} uses auto_pad={mode} with stride {tuple(strides)} and its input's "
                          "spatial size is unknown")
    begin, end = [], []
    for size, k, s, d in zip(shape[2:], layer.kernel, strides, dilations):
        total = max(0, (ceil(size / s) - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


def conv_attributes(kernel, strides, pads, dilations, group) -> dict:
    return dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), dilations=list(dilations),
                group=int(group))
