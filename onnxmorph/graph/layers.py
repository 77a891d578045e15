"""Graph index and layer lookup: which nodes are morphable linear layers, and their weights."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CannotMorph, UsageError

LINEAR_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


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


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


# Ops folded when every input is a constant: a weight written as Reshape/Transpose/Cast/Identity/Unsqueeze of an
# initializer (Caffe2, tied embeddings), and shape arithmetic (Gather/Add/Div/... of shapes) feeding Slice bounds.
FOLDABLE = ("Identity", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Concat", "Gather",
            "Slice", "Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil")


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _evaluate(node: onnx.NodeProto, inputs: list, opsets) -> list[np.ndarray]:
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
            known[name] = _constant_node_value(constant_nodes[name])
        return known.get(name)

    folded, read_by_folded = [], set()
    for node in graph.node:
        if not node.output or any(o in outputs for o in node.output) or node.domain not in ("", "ai.onnx"):
            continue
        if all(o in known for o in node.output):
            results = [known[o] for o in node.output]
        elif node.op_type in FOLDABLE and all(not i or value(i) is not None for i in node.input):
            try:
                results = _evaluate(node, [value(i) if i else None for i in node.input], model.opset_import)
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
        from .edit import remove_unused_constants
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
        if node.op_type == "Constant" and _constant_node_value(node) is not None:
            inits[node.output[0]] = _constant_node_value(node)
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


class GraphIndex:
    """Producers, consumers and constant values of the main graph. Building it folds constant paths
    (fold_constant_paths) into initializers first, so every verb sees a computed weight as a weight."""

    def __init__(self, model: onnx.ModelProto):
        fold_constant_paths(model)
        self.model = model
        self.graph = model.graph
        self.opset = opset_version(model)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = node
        self.graph_outputs = {o.name for o in self.graph.output}
        self.graph_inputs = {i.name for i in self.graph.input}
        self._names = set()
        for node in self.graph.node:
            self._names.add(node.name)
            self._names.update(node.input)
            self._names.update(node.output)
        self._names.update(self.initializers)
        self._names.update(self.graph_inputs)
        self._names.update(v.name for v in self.graph.value_info)

    # --- constants ---
    def is_constant(self, name: str) -> bool:
        # An initializer that is also a graph input can be overridden at run time (IR < 4 lists them as inputs
        # anyway); treat it as constant like ONNX Runtime does for IR >= 4 only when not a real input.
        if name in self.initializers:
            return True
        return name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        return None if node is None else _constant_node_value(node)

    def constant_dtype(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        node = self.constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return a.t.data_type
            return onnx.TensorProto.FLOAT
        return None

    # --- names ---
    def unique_name(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and tensor not in self.graph_outputs:
            return users[0]
        return None


@dataclass
class Layer:
    """A Conv, Gemm or MatMul(+Add) whose weight is a constant."""
    node: onnx.NodeProto
    id: str
    op: str
    weight_name: str
    weight: np.ndarray              # as stored
    weight_dtype: int
    bias_name: str | None = None    # Conv bias / Gemm C / the Add's constant for MatMul+Add
    bias_add: onnx.NodeProto | None = None
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group: int = 1
    auto_pad: str = "NOTSET"
    trans_a: int = 0
    trans_b: int = 0
    alpha: float = 1.0
    beta: float = 1.0
    names: list[str] = field(default_factory=list)  # every name that finds this layer

    @property
    def output(self) -> str:
        return self.node.output[0]

    @property
    def final_output(self) -> str:
        """The layer's output after its bias (the Add of MatMul+Add)."""
        return self.bias_add.output[0] if self.bias_add is not None else self.node.output[0]

    @property
    def out_channels(self) -> int:
        return self.effective_weight().shape[0]

    @property
    def in_channels(self) -> int:
        return self.effective_weight().shape[1] * self.group

    def effective_weight(self) -> np.ndarray:
        """(C_out, C_in/g, *K) for Conv and (out, in) for Gemm/MatMul, with Gemm's alpha folded in."""
        w = self.weight
        if self.op == "Conv":
            return w
        if self.op == "Gemm":
            w = w if self.trans_b else w.T
            return w * self.alpha if self.alpha != 1.0 else w
        return w.T  # MatMul: x @ W with W (in, out)


def _layer_from_node(index: GraphIndex, node: onnx.NodeProto) -> tuple[Layer | None, str]:
    """The layer this node is, or None and why not."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None, f"custom-domain op {node.domain}.{op}"
    if op == "Conv":
        if len(node.input) < 2 or not index.is_constant(node.input[1]):
            return None, "Conv weight is not a constant"
        w = index.constant(node.input[1])
        rank = w.ndim - 2
        if rank < 1 or int(attr(node, "group", 1)) < 1 or len(attr(node, "kernel_shape", w.shape[2:])) != rank:
            return None, f"Conv weight of shape {tuple(w.shape)} does not fit its kernel_shape and group"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not index.is_constant(bias):
            return None, "Conv bias is not a constant"
        kernel = tuple(attr(node, "kernel_shape", w.shape[2:]))
        layer = Layer(node, "", op, node.input[1], w, index.constant_dtype(node.input[1]), bias_name=bias,
                      kernel=tuple(int(k) for k in kernel),
                      strides=tuple(attr(node, "strides", [1] * rank)),
                      pads=tuple(attr(node, "pads", [0] * (2 * rank))),
                      dilations=tuple(attr(node, "dilations", [1] * rank)),
                      group=int(attr(node, "group", 1)),
                      auto_pad=str_attr(node, "auto_pad", "NOTSET") or "NOTSET")
        return layer, ""
    if op == "Gemm":
        if not index.is_constant(node.input[1]):
            return None, "Gemm weight (B) is not a constant"
        w = index.constant(node.input[1])
        if w.ndim != 2:
            return None, f"Gemm weight has rank {w.ndim}, not 2"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        layer = Layer(node, "", op, node.input[1], w, index.constant_dtype(node.input[1]), bias_name=bias,
                      trans_a=int(attr(node, "transA", 0)), trans_b=int(attr(node, "transB", 0)),
                      alpha=float(attr(node, "alpha", 1.0)), beta=float(attr(node, "beta", 1.0)))
        return layer, ""
    if op == "MatMul":
        if len(node.input) != 2 or not index.is_constant(node.input[1]):
            return None, "MatMul has no constant right-hand weight"
        w = index.constant(node.input[1])
        if w.ndim != 2:
            return None, f"MatMul weight has rank {w.ndim}, not 2"
        layer = Layer(node, "", op, node.input[1], w, index.constant_dtype(node.input[1]))
        add = index.single_consumer(node.output[0])
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            value = index.constant(other) if index.is_constant(other) else None
            if value is not None and value.size == w.shape[1] and value.shape[-1] == w.shape[1]:
                layer.bias_add, layer.bias_name = add, other
        return layer, ""
    return None, f"{op} is not a Conv, Gemm or MatMul"


def find_layers(index: GraphIndex) -> list[Layer]:
    """Every Conv/Gemm/MatMul with a constant weight, in graph order, with its lookup names."""
    name_count: dict[str, int] = {}
    for node in index.graph.node:
        name_count[node.name] = name_count.get(node.name, 0) + 1
    layers = []
    for node in index.graph.node:
        if node.op_type not in LINEAR_OPS:
            continue
        layer, _ = _layer_from_node(index, node)
        if layer is None:
            continue
        unique_node_name = node.name and name_count[node.name] == 1
        layer.id = node.name if unique_node_name else node.output[0]
        layer.names = [n for n in (node.name, layer.weight_name, node.output[0],
                                   layer.bias_add.output[0] if layer.bias_add is not None else None) if n]
        layers.append(layer)
    return layers


def find_layer(index: GraphIndex, query: str) -> Layer:
    """The layer named by a node name, its weight's name or its output tensor name."""
    layers = find_layers(index)
    matches = [layer for layer in layers if query in layer.names]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(m.id for m in matches[:8])
        raise UsageError(f"layer name {query!r} is ambiguous: it matches {ids}; pass an output tensor name")
    # A node by that name that is not a morphable layer: say why.
    for node in index.graph.node:
        if query in (node.name, *node.output):
            _, why = _layer_from_node(index, node)
            raise CannotMorph(f"{query!r} cannot be morphed: {why}")
    known = sorted({n for layer in layers for n in layer.names})
    close = difflib.get_close_matches(query, known, n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else (f"; layers: {', '.join(layer.id for layer in layers[:10])}"
                                                            if layers else "; the model has no Conv/Gemm/MatMul layer")
    raise UsageError(f"unknown layer {query!r}{hint}")
