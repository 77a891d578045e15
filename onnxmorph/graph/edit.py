"""Graph editing helpers shared by the passes."""
from __future__ import annotations

from math import ceil

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CannotMorph
from .external import new_tensor
from .index import GraphIndex
from .layers import Layer
from .precision import NP_FLOATS
from .proto import reads
from .shapes import infer_shapes



def weight_dtype(layer: Layer):
    """The numpy type new and changed weights of the layer are written in: its own (float16, bfloat16 via
    ml_dtypes, float32 or float64; the passes solve in float64)."""
    dtype = NP_FLOATS.get(layer.weight_dtype)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(layer.weight_dtype)
        raise CannotMorph(f"layer {layer.id} has {name} weights; onnxmorph morphs float16, bfloat16, float32 and "
                          "float64 layers only")
    return dtype.type


def add_initializer(index: GraphIndex, base: str, array: np.ndarray) -> str:
    """A new initializer with a unique name (also listed as a graph input in IR < 4 models)."""
    name = index.unique_name(base)
    tensor = new_tensor(name, array)
    index.graph.initializer.append(tensor)
    index.initializers[name] = index.graph.initializer[-1]  # append copies; keep the graph's own message
    if index.model.ir_version < 4:
        index.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(array.shape)))
    return name


def set_constant(index: GraphIndex, node: onnx.NodeProto, i: int, array: np.ndarray, new_name: str) -> str:
    """Give input `i` of `node` the value `array`, keeping the tensor's name when this is its only reader (its
    size or values change; it is still the same tensor, and layer ids that found it keep working). A tensor
    that other nodes also read, which the morph leaves as they are, stays for them: this node then reads a
    new initializer named `new_name` (made unique). Returns the name the node reads."""
    name = node.input[i]
    only_reader = reads(index.graph, name) == 1 and name not in index.graph_inputs - set(index.initializers)
    array = np.asarray(array)   # a scalar stays 0-d
    if only_reader and name in index.initializers:
        tensor = new_tensor(name, array)
        index.initializers[name].CopyFrom(tensor)
        for vi in list(index.graph.input) + list(index.graph.value_info):  # IR < 4 lists it as an input too
            if vi.name == name:
                vi.CopyFrom(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(array.shape)))
        return name
    if only_reader and name in index.constant_nodes:
        const = index.constant_nodes[name]
        const.ClearField("attribute")
        const.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(array, name)))
        return name
    node.input[i] = add_initializer(index, new_name, array)
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
