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


class GraphIndex:
    """Producers, consumers and constant values of the main graph."""

    def __init__(self, model: onnx.ModelProto):
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
        if node is None:
            return None
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
