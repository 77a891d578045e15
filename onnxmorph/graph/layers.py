"""Layer lookup: which nodes are morphable linear layers (Conv, Gemm, MatMul with a constant weight, an Einsum that
is a plain contraction with a constant weight: graph/einsum.py), and their weights."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from .einsum import contraction
from .forms import subgraph_refusal
from .index import GraphIndex
from .proto import attr, str_attr

LINEAR_OPS = ("Conv", "Gemm", "MatMul", "Einsum")


@dataclass
class Layer:
    """A Conv, Gemm, MatMul(+Add) or Einsum(+Add) whose weight is a constant."""
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
        if self.op == "Einsum":   # x flattened over its contracted axes times W flattened to (contracted, out)
            return w.reshape(-1, w.shape[-1]).T
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
    if op == "Einsum":
        found = contraction(node)
        if found is None or len(found.out) != 1:
            return None, "Einsum is not a contraction of an activation with a weight into one output axis"
        if not index.is_constant(node.input[1]):
            return None, "Einsum weight is not a constant"
    if op in ("MatMul", "Einsum"):
        if len(node.input) != 2 or not index.is_constant(node.input[1]):
            return None, "MatMul has no constant right-hand weight"
        w = index.constant(node.input[1])
        if w.ndim != 2 and op == "MatMul":
            return None, f"MatMul weight has rank {w.ndim}, not 2"
        layer = Layer(node, "", op, node.input[1], w, index.constant_dtype(node.input[1]))
        add = index.single_consumer(node.output[0])
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            value = index.constant(other) if index.is_constant(other) else None
            if value is not None and value.size == w.shape[-1] and value.shape[-1] == w.shape[-1]:
                layer.bias_add, layer.bias_name = add, other
        return layer, ""
    return None, f"{op} is not a Conv, Gemm, MatMul or Einsum"


def _name_count(index: GraphIndex) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in index.graph.node:
        count[node.name] = count.get(node.name, 0) + 1
    return count


def _with_names(index: GraphIndex, node, name_count: dict) -> Layer | None:
    """The layer this node is, with its id (the node name when unique, else its output) and lookup names."""
    layer, _ = _layer_from_node(index, node)
    if layer is None:
        return None
    layer.id = node.name if node.name and name_count[node.name] == 1 else node.output[0]
    layer.names = [n for n in (node.name, layer.weight_name, node.output[0],
                               layer.bias_add.output[0] if layer.bias_add is not None else None) if n]
    return layer


def find_layers(index: GraphIndex, only=None) -> list[Layer]:
    """Every Conv/Gemm/MatMul with a constant weight, in graph order, with its lookup names; with `only` (a test
    on the node), just the nodes it passes (only their weights are decoded)."""
    name_count = _name_count(index)
    layers = (_with_names(index, node, name_count) for node in index.graph.node
              if node.op_type in LINEAR_OPS and (only is None or only(node)))
    return [layer for layer in layers if layer is not None]


def _named(index: GraphIndex, query: str) -> list[Layer]:
    """The layers `query` names, building (and decoding the weight of) only the nodes it could name: a pass looks
    up one layer of a model of thousands of nodes (and grow runs one pass per selected layer)."""
    name_count, found = _name_count(index), []
    for node in index.graph.node:
        if node.op_type not in LINEAR_OPS:
            continue
        bias_adds = [u.output[0] for u in index.consumers.get(node.output[0], []) if u.output] if node.output else []
        if query not in (node.name, *node.output[:1], *node.input[1:2], *bias_adds):
            continue
        layer = _with_names(index, node, name_count)
        if layer is not None and query in layer.names:
            found.append(layer)
    return found


def find_layer(index: GraphIndex, query: str) -> Layer:
    """The layer named by a node name, its weight's name or its output tensor name."""
    matches = _named(index, query)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(m.id for m in matches[:8])
        raise UsageError(f"layer name {query!r} is ambiguous: it matches {ids}; pass an output tensor name")
    layers = find_layers(index)
    by_scope = _by_scope_name(index, layers, query)
    if by_scope is not None:
        return by_scope
    # A node by that name that is not a morphable layer: say why.
    for node in index.graph.node:
        if query in (node.name, *node.output):
            _, why = _layer_from_node(index, node)
            raise CannotMorph(f"{query!r} cannot be morphed: {why}")
    nested = subgraph_refusal(index.model)
    if nested:
        raise CannotMorph(f"no layer {query!r} in the main graph: {nested}")
    known = sorted({n for layer in layers for n in layer.names})
    close = difflib.get_close_matches(query, known, n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else (f"; layers: {', '.join(layer.id for layer in layers[:10])}"
                                                            if layers else "; the model has no Conv/Gemm/MatMul layer")
    raise UsageError(f"unknown layer {query!r}{hint}")


# --- the framework's layer names inside exported node names (tf2onnx: "<model>/<layer>/<op>") -------------------

_GENERATED = re.compile(r"^[A-Za-z]+__\d+$")          # tf2onnx's own nodes: Conv__171, Gemm__466
_DERIVED = re.compile(r"^(?P<base>.+)__\d+$")         # a node tf2onnx made for a TF op: <op name>__6
_CARRIERS_BACK = ("Transpose", "Pad", "Reshape", "Unsqueeze", "Cast")
_CARRIERS_ON = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def scope_names(name: str) -> set[str]:
    """The layer names a TF node or tensor name carries: every run of its scopes but the op itself (and the
    model's scope first): 'resnet50/conv2_block1_1_conv/BiasAdd' -> {'conv2_block1_1_conv',
    'resnet50/conv2_block1_1_conv'}; 'm/layer0_mha/key/add' -> {'layer0_mha', 'key', 'layer0_mha/key', ...}."""
    parts = [p for p in name.split(":")[0].split("/") if p]
    if len(parts) < 2:
        return set()
    scopes = parts[:-1]
    inner = scopes[1:] if len(scopes) > 1 else scopes
    out = {"/".join(inner[i:j]) for i in range(len(inner)) for j in range(i + 1, len(inner) + 1)}
    out.add("/".join(scopes))
    return out


def _carriers(index: GraphIndex, layer: Layer) -> list[str]:
    """Names that carry the layer's framework name: its node's, its weight's, and for a node tf2onnx named itself
    (Conv__171, Gemm__466), the TF op that a node just before it was made for (a stem's Transpose,
    'resnet50/conv1_conv/Conv2D__6') and the first named node after it (the bias Add that keeps the Keras name,
    'm/layer0_mha/key/add', after the Reshape and Squeeze that split the heads)."""
    names = [layer.node.name, layer.weight_name]
    if not _GENERATED.match(layer.node.name or ""):
        return names
    tensor = layer.node.input[0]
    for _ in range(4):
        node = index.producer.get(tensor)
        if node is None or node.op_type not in _CARRIERS_BACK:
            break
        derived = _DERIVED.match(node.name or "")
        if derived and not _GENERATED.match(node.name):
            names.append(derived.group("base"))
            break
        tensor = node.input[0]
    tensor = layer.output
    for _ in range(4):
        users = index.consumers.get(tensor, [])
        if len(users) != 1:
            break
        user = users[0]
        if not _GENERATED.match(user.name or ""):
            if user.op_type == "Add" and any(index.is_constant(i) for i in user.input):
                names.append(user.name)
            break
        if user.op_type not in _CARRIERS_ON:
            break
        tensor = user.output[0]
    return names


def _by_scope_name(index: GraphIndex, layers: list[Layer], query: str) -> Layer | None:
    """The layer whose framework name (scope_names of its carriers) is `query`; None when no layer has it, a
    UsageError listing them when several do."""
    if "/" not in query and not re.match(r"^[\w.\-]+$", query):
        return None
    hits = [layer for layer in layers if any(query in scope_names(n) for n in _carriers(index, layer) if n)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        ids = ", ".join(h.id for h in hits[:8]) + (f" and {len(hits) - 8} more" if len(hits) > 8 else "")
        raise UsageError(f"layer name {query!r} is ambiguous: it is the scope of {len(hits)} layers ({ids}); "
                         "pass one of them")
    return None
