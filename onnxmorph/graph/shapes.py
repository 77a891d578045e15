"""Shape inference on a light copy of the model (big tensors as typed inputs): fast on big models, and fine past
protobuf's 2 GB cap."""
from __future__ import annotations

import onnx

_STRIP_BYTES = 64 * 1024


def _nbytes(t: onnx.TensorProto) -> int:
    """A tensor's size from its dims and type: reading raw_data to measure it would copy the bytes."""
    count = 1
    for d in t.dims:
        count *= d
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):   # a type numpy has no dtype for: measure the bytes
        return len(t.raw_data)


def light_model(model: onnx.ModelProto) -> onnx.ModelProto:
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
        if t.data_location == onnx.TensorProto.EXTERNAL or _nbytes(t) > _STRIP_BYTES:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            graph.initializer.append(t)
    light.functions.extend(model.functions)
    _infer_opset13_as_14(light)
    return light


def _infer_opset13_as_14(light: onnx.ModelProto) -> None:
    """Reshape-13's inference leaves the output's rank unknown when the target shape is computed, even when the
    shape vector's length is known (tf2onnx writes Keras' Dense on 3-D inputs and its attention reshapes that way;
    everything after the first one would have no rank). Reshape-14's inference takes the rank from that length,
    so an opset-13 copy is inferred as opset 14. Every other op that changed at 14 (Add/Sub/Mul/Div/Relu/Identity
    types, CumSum, RNN layouts) infers the same shapes for a valid opset-13 model, except BatchNormalization with
    its training outputs, which 14 refuses outside training mode: such a model stays at 13."""
    default = [o for o in light.opset_import if o.domain in ("", "ai.onnx")]
    if len(default) != 1 or default[0].version != 13:
        return
    if any(n.op_type == "BatchNormalization" and sum(1 for o in n.output if o) > 1 for n in light.graph.node):
        return
    default[0].version = 14


def infer_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """name -> shape (ints or None per dim) from ONNX shape inference; {} when it cannot run."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light_model(model), strict_mode=False)
    except Exception:
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes
