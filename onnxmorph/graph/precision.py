"""Float precisions of a model: numpy types for every ONNX float type (bfloat16 through ml_dtypes), the model's
lowest precision, and float32 copies of half-precision models (an upcast, and one that rounds every tensor the
model stores in half precision, as the model itself would)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from .external import tensor_array
from .shapes import light_model

T = onnx.TensorProto
NP_FLOATS = {T.FLOAT: np.dtype(np.float32), T.DOUBLE: np.dtype(np.float64), T.FLOAT16: np.dtype(np.float16),
             T.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}
HALF = (T.FLOAT16, T.BFLOAT16)
# Lowest precision first: the order in which a model's float types decide its precision.
_BY_PRECISION = (T.BFLOAT16, T.FLOAT16, T.FLOAT, T.DOUBLE)
# Attributes that name an element type, by op.
_TYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
               "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype", "Bernoulli": "dtype"}


def type_name(elem_type: int) -> str:
    """float16, bfloat16, float32, float64 (numpy's names), else ONNX's."""
    if elem_type in NP_FLOATS:
        return "bfloat16" if elem_type == T.BFLOAT16 else NP_FLOATS[elem_type].name
    return T.DataType.Name(elem_type)


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        yield from a.graphs


def _graph_types(graph: onnx.GraphProto):
    """Every element type the graph stores or names (tensors, value types, Cast targets), subgraphs included."""
    for t in graph.initializer:
        yield t.data_type
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        yield vi.type.tensor_type.elem_type
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t.data_type
            elif a.type == onnx.AttributeProto.INT and _TYPE_ATTRS.get(node.op_type) == a.name:
                yield a.i
        for g in _subgraphs(node):
            yield from _graph_types(g)


def model_precision(model: onnx.ModelProto) -> int:
    """The lowest float precision the model stores or computes in (FLOAT when it names no float type)."""
    found = set(_graph_types(model.graph))
    return next((t for t in _BY_PRECISION if t in found), T.FLOAT)


def is_half(model: onnx.ModelProto) -> bool:
    return model_precision(model) in HALF


def _cast_tensor(t: onnx.TensorProto, types, to: int) -> None:
    if t.data_type not in types:
        return
    value = tensor_array(t).astype(NP_FLOATS[to])
    t.CopyFrom(numpy_helper.from_array(value, t.name))


def _cast_nodes(nodes, types, to: int) -> None:
    for node in nodes:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                _cast_tensor(a.t, types, to)
            elif a.type == onnx.AttributeProto.INT and _TYPE_ATTRS.get(node.op_type) == a.name and a.i in types:
                a.i = to
        for g in _subgraphs(node):
            _cast_graph(g, types, to)


def _cast_graph(graph: onnx.GraphProto, types, to: int) -> None:
    for t in graph.initializer:
        _cast_tensor(t, types, to)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type in types:
            vi.type.tensor_type.elem_type = to
    _cast_nodes(graph.node, types, to)


def cast_floats(model: onnx.ModelProto, types, to: int) -> onnx.ModelProto:
    """A copy in which every tensor, value type and Cast target of an element type in `types` is `to` instead
    (values converted with numpy: rounded to nearest when `to` is narrower)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _cast_graph(out.graph, tuple(types), to)
    for f in out.functions:
        _cast_nodes(f.node, tuple(types), to)
    return out


def upcast(model: onnx.ModelProto, to: int = T.FLOAT) -> onnx.ModelProto:
    """A copy computing in `to` wherever the model computes in float16 or bfloat16: its half-precision weights,
    constants, inputs, outputs and Cast targets become `to` (exactly: every half value is a float32 value)."""
    return cast_floats(model, HALF, to)


def half_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """{name: FLOAT16 | BFLOAT16} for the main graph's node outputs that the model stores in half precision
    (from its value_info and ONNX type inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light_model(model), strict_mode=False)
    except Exception:
        inferred = model
    typed = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
             + list(model.graph.value_info) + list(model.graph.output)}
    produced = {o for n in model.graph.node for o in n.output if o}
    return {name: t for name, t in typed.items() if t in HALF and name in produced}


def rounded_upcast(model: onnx.ModelProto, to: int = T.FLOAT) -> onnx.ModelProto:
    """The upcast that rounds each tensor the model stores in half precision to that precision after the node
    that writes it (a Cast to it and back): the model's own arithmetic, half-precision storage and `to`
    compute, on a runtime without half-precision kernels (ONNX Runtime's CPU runs float16 ops this way)."""
    halves = half_tensors(model)
    out = upcast(model, to)
    taken = {o for n in out.graph.node for o in list(n.output) + list(n.input)}
    nodes = []
    for node in out.graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name not in halves or node.op_type == "Constant":   # constants are half values already
                continue
            wide, narrow = f"{name}/unrounded", f"{name}/rounded"
            k = 0
            while wide in taken or narrow in taken:
                k += 1
                wide, narrow = f"{name}/unrounded_{k}", f"{name}/rounded_{k}"
            taken.update((wide, narrow))
            node.output[i] = wide
            nodes.append(onnx.helper.make_node("Cast", [wide], [narrow], to=halves[name]))
            nodes.append(onnx.helper.make_node("Cast", [narrow], [name], to=to))
    out.graph.ClearField("node")
    out.graph.node.extend(nodes)
    return out
