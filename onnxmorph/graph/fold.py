"""Constant folding: nodes computed from constants only become initializers, so a computed weight is a weight and a
computed shape is a constant (ONNX's reference implementation evaluates them)."""
from __future__ import annotations

import contextlib

import numpy as np
import onnx
from onnx import numpy_helper

from .external import new_tensor, tensor_array
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

    def is_constant(name):
        return name in known or (name in inits and name not in real_inputs) or name in constant_nodes

    def value(name):   # read only once every input of the node is known to be constant
        if name not in known:
            known[name] = tensor_array(inits[name]) if name in inits else constant_node_value(constant_nodes[name])
        return known[name]

    folded, read_by_folded = [], set()
    # A Cast of a constant from one float type to another folds (its value is the weight a layer or norm
    # reads), but nothing computed from it does: restore_float_casts can then put the Cast back over the
    # source's own type, so a pass never changes what type a kept tensor is stored in.
    casts = float_casts_of_constants(model)
    type_casts = {cast.output[0] for cast, _, _ in casts}
    if id(model) in _RECORDS:
        _RECORDS[id(model)].extend(casts)
    for node in graph.node:
        if not node.output or any(o in outputs for o in node.output) or node.domain not in ("", "ai.onnx"):
            continue
        if all(o in known for o in node.output):
            results = [known[o] for o in node.output]
        elif node.op_type in FOLDABLE and all(not i or is_constant(i) for i in node.input) and \
                not type_casts.intersection(node.input) and all(not i or value(i) is not None for i in node.input):
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
    inits = {t.name: t for t in model.graph.initializer}   # read only when a Gather of a Shape picks by one
    for node in model.graph.node:   # the legacy exporter writes the Gather index as a Constant node
        if node.op_type == "Constant":
            inits[node.output[0]] = node
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
            found = inits[index]
            picked = constant_node_value(found) if isinstance(found, onnx.NodeProto) else tensor_array(found)
            if picked is None:
                continue
            picked = np.asarray(picked).astype(np.int64)
            chosen = np.asarray(dims, dtype=object)[picked]
            if all(d is not None for d in np.ravel(chosen)):
                values[user.output[0]] = np.asarray(chosen, dtype=np.int64)
    return values


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_RECORDS: dict[int, list] = {}   # id(model) -> the float Casts folded in it while recording_float_casts is open


@contextlib.contextmanager
def recording_float_casts(model: onnx.ModelProto):
    """Collect the Casts of constants from one float type to another that fold_constant_paths folds in `model`
    (the model's own, and those a pass adds, folded by a later GraphIndex), for restore_float_casts."""
    _RECORDS[id(model)] = found = []
    try:
        yield found
    finally:
        _RECORDS.pop(id(model), None)


def float_casts_of_constants(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int, bool]]:
    """The Casts that fold_constant_paths folds from one float type to another (an fp16 norm weight Cast to
    float32 in front of a converter's float32 island): (a copy of the Cast, the source's type, whether the source
    is a Constant node)."""
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    if model.ir_version < 4:
        return []   # initializers are inputs there: fold leaves them alone
    types.update({n.output[0]: a.t.data_type for n in graph.node if n.op_type == "Constant"
                  and n.domain in ("", "ai.onnx") for a in n.attribute if a.name == "value"})
    constants = {n.output[0] for n in graph.node if n.op_type == "Constant"}
    real_inputs = {i.name for i in graph.input}
    out = []
    for node in graph.node:
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.input[0] in real_inputs:
            continue
        source = types.get(node.input[0])
        if source in _FLOAT_TYPES and attr(node, "to") in _FLOAT_TYPES and attr(node, "to") != source:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            out.append((copy, source, node.input[0] in constants))
    return out


def restore_float_casts(model: onnx.ModelProto, casts) -> None:
    """Undo the folding of float_casts_of_constants' Casts whose folded value is still in the graph (changed by a
    pass or not): the value goes back to the source's type and name (a new name where the name now holds
    another value), and the Cast reads it again, so no kept tensor changes type."""
    from .precision import NP_FLOATS
    graph = model.graph
    if not casts:
        return
    inits = {t.name: t for t in graph.initializer}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    restored = []   # (Cast, the node writing its input: a Constant or None)
    for cast, source_type, was_constant in casts:
        folded = inits.get(cast.output[0])
        if folded is None:
            continue   # what read it is gone (a replaced layer), or it was never folded
        value = tensor_array(folded).astype(NP_FLOATS[source_type])
        name = cast.input[0]
        if name in taken and not _holds(inits.get(name), constants.get(name), value):
            base, k = f"{name}/morph_value", 0
            name = base
            while name in taken:
                k += 1
                name = f"{base}_{k}"
        writer = None
        if name not in taken:
            if was_constant:
                writer = onnx.helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
                constants[name] = writer
            else:
                graph.initializer.append(new_tensor(name, value))
                inits[name] = graph.initializer[-1]
            for vi in graph.value_info:   # exporters that type the weights: the type now says the new shape
                if vi.name == name:
                    vi.CopyFrom(onnx.helper.make_tensor_value_info(name, source_type, list(value.shape)))
            taken.add(name)
        cast.input[0] = name
        restored.append((cast, writer))
    gone = {cast.output[0] for cast, _ in restored}
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in gone]):
        del graph.initializer[i]
    first_reader = {}
    for pos, node in enumerate(graph.node):
        for name in node.input:
            first_reader.setdefault(name, pos)
    before: dict[int, list] = {}
    for cast, writer in restored:
        pos = first_reader.get(cast.output[0], len(graph.node))
        before.setdefault(pos, []).extend(([writer] if writer is not None else []) + [cast])
    nodes = []
    for pos, node in enumerate(list(graph.node) + [None]):
        nodes.extend(before.get(pos, []))
        if node is not None:
            nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)


def _holds(tensor, constant_node, value) -> bool:
    """Whether the initializer or Constant node already holds exactly `value`."""
    held = tensor_array(tensor) if tensor is not None else (
        constant_node_value(constant_node) if constant_node is not None else None)
    return held is not None and held.dtype == value.dtype and held.shape == value.shape and \
        held.tobytes() == value.tobytes()
