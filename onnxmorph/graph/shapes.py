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
    return light


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
