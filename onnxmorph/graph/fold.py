"""Constant folding: nodes computed from constants only become initializers, so a computed weight is a weight and a
computed shape is a constant (ONNX's reference implementation evaluates them)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .proto import attr, constant_node_value, remove_unused_constants

# Ops folded when every input is a constant: a weight written as Reshape/Transpose/Cast/Identity/Unsqueeze of an
# initializer (Caffe2, tied embeddings), shape arithmetic (Gather/Add/Div/... of shapes) feeding Slice bounds, and
# the Shape and ReduceProd of a constant (tf2onnx reshapes an attention output projection's (1, 1, E, H, d_h)
# kernel to the Gemm's B by a target computed from the kernel's own shape).
FOLDABLE = ("Identity", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Concat", "Gather",
            "Slice", "Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil", "Shape", "ReduceProd")


def evaluate(node: onnx.NodeProto, inputs: list, opsets) -> list[np.ndarray]:
    """Run one node on numpy inputs with ONNX's reference implementation, at the model's opsets."""
    from onnx.reference import ReferenceEvaluator
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.ClearField("input")
    copy.input.extend(names)
    graph = onnx.helper.make_graph(
        [copy], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                         for n, v in zip(names, inputs) if n],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output])
    model = onnx.helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = 8
    return ReferenceEvaluator(model).run(None, {n: v for n, v in zip(names, inputs) if n})


def fold_constant_paths(model: onnx.ModelProto, known: dict | None = None) -> int:
    """Replace every node that computes from constants only (FOLDABLE ops), and every node whose outputs are all
    in `known` (name -> value, e.g. static shapes), by initializers holding the result. The function is
    unchanged; a weight computed from constants becomes a weight. Returns how many nodes were folded."""
    graph = model.graph
    known = dict(known or {})
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    real_inputs = {i.name for i in graph.input} - set(inits) if model.ir_version >= 4 else set()
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}

    def value(name):
        if name in known:
            return known[name]
        if name in inits and name not in real_inputs:
            known[name] = numpy_helper.to_array(inits[name])
        elif name in constant_nodes:
            known[name] = constant_node_value(constant_nodes[name])
        return known.get(name)

    folded, read_by_folded = [], set()
    for node in graph.node:
        if not node.output or any(o in outputs for o in node.output) or node.domain not in ("", "ai.onnx"):
            continue
        if all(o in known for o in node.output):
            results = [known[o] for o in node.output]
        elif node.op_type in FOLDABLE and all(not i or value(i) is not None for i in node.input):
            try:
                results = evaluate(node, [value(i) if i else None for i in node.input], model.opset_import)
            except Exception:
                continue
        else:
            continue
        for name, result in zip(node.output, results):
            known[name] = np.asarray(result)
            graph.initializer.append(numpy_helper.from_array(np.asarray(result), name))
            inits[name] = graph.initializer[-1]
            if model.ir_version < 4:
                graph.input.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(result).dtype), list(np.shape(result))))
        folded.append(node)
        read_by_folded.update(i for i in node.input if i)
    if folded:
        gone = {id(n) for n in folded}
        nodes = [n for n in graph.node if id(n) not in gone]
        graph.ClearField("node")
        graph.node.extend(nodes)
        remove_unused_constants(model, read_by_folded)
    return len(folded)


def static_shape_values(model: onnx.ModelProto, shapes: dict) -> dict:
    """Outputs of Shape nodes (and of Gathers picking from them) whose dims are all known: name -> value."""
    values = {}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:   # the legacy exporter writes the Gather index as a Constant node
        if node.op_type == "Constant" and constant_node_value(node) is not None:
            inits[node.output[0]] = constant_node_value(node)
    for node in model.graph.node:
        if node.op_type != "Shape" or node.input[0] not in shapes:
            continue
        shape = shapes[node.input[0]]
        start, end = attr(node, "start", 0), attr(node, "end", None)
        dims = shape[start:end]
        if all(d is not None for d in dims):
            values[node.output[0]] = np.array(dims, dtype=np.int64)
            continue
        for user in consumers.get(node.output[0], []):
            index = user.input[1] if user.op_type == "Gather" and len(user.input) > 1 else None
            if index not in inits or attr(user, "axis", 0) != 0:
                continue
            picked = np.asarray(inits[index]).astype(np.int64)
            chosen = np.asarray(dims, dtype=object)[picked]
            if all(d is not None for d in np.ravel(chosen)):
                values[user.output[0]] = np.asarray(chosen, dtype=np.int64)
    return values
