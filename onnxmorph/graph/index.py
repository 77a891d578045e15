"""GraphIndex: producers, consumers and constant values of the main graph, and fresh names."""
from __future__ import annotations

import numpy as np
import onnx

from .external import tensor_array
from .fold import float_casts_of_constants, fold_constant_paths
from .proto import constant_node_value, opset_version


class GraphIndex:
    """Producers, consumers and constant values of the main graph. Building it folds constant paths
    (fold_constant_paths) into initializers first, so every verb sees a computed weight as a weight."""

    def __init__(self, model: onnx.ModelProto):
        # Casts of constants from one float type to another fold too; what each folded value is stored as in the
        # model (the Cast's source type) is kept here, so copies of it can be stored the same way.
        self.stored_types = {cast.output[0]: source for cast, source, _ in float_casts_of_constants(model)}
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
            return tensor_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        return None if node is None else constant_node_value(node)

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
