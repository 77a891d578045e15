"""P-activations (network morphism, section 3.3): activation families that are the identity at a = 1.

ReLU becomes PRelu with slope 1. Any other φ becomes φ(x) + a·(x − φ(x)) = (1 − a)·φ(x) + a·x from standard
ops, with `a` an initializer equal to 1, so the child computes x (to float32 rounding) and training can move `a`.
Each learnable value is one initializer read by one node (`<layer>/morph_act.a`, `.slope`): a converter that
copies initializers per reader (onnx2torch) then still gives one parameter. Fixed helper values (GELU's √2,
Clip's bounds) are Constant nodes, never initializers, so nothing mistakes them for parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UsageError
from .graph.edit import add_initializer
from .graph.index import GraphIndex
from .graph.proto import attr

NAMES = ("relu", "prelu", "tanh", "sigmoid", "leakyrelu", "elu", "selu", "softplus", "hardsigmoid", "hardswish",
         "gelu", "silu", "clip", "relu6")
_SIMPLE = {"Relu": "relu", "PRelu": "prelu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leakyrelu",
           "Elu": "elu", "Selu": "selu", "Softplus": "softplus", "HardSigmoid": "hardsigmoid",
           "HardSwish": "hardswish", "Gelu": "gelu"}


@dataclass
class Activation:
    kind: str                      # one of NAMES, or "none"
    attrs: dict = field(default_factory=dict)
    output: str | None = None      # tensor after the activation in the parent (for --after)

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind in ("relu", "prelu"):
            return "PRelu(slope=1)"
        extra = ", ".join(f"{k}={v:g}" for k, v in self.attrs.items() if isinstance(v, float))
        return f"P-{self.kind}(a=1{', ' + extra if extra else ''})"


def _scalar(index: GraphIndex, name: str):
    if not name or not index.is_constant(name):
        return None
    value = index.constant(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


# Channel-wise ops an activation may sit behind (Conv → MaxPool → Relu, Gemm → Dropout → Relu, ...): the P-activation
# between the new layers takes that activation's family. The reshaping ones change the layout (not for --after).
LOOK_THROUGH = ("BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                "Dropout", "Identity")
LOOK_THROUGH_RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _bias_add(index: GraphIndex, node, tensor: str) -> bool:
    """An Add of a constant to `tensor`: a bias, as tf2onnx writes Keras' Dense on a 3-D input after the Reshape
    back from (N·S, units) (MatMul -> Reshape -> Add -> activation)."""
    return node.op_type == "Add" and len(node.input) == 2 and tensor in node.input and \
        index.is_constant(node.input[1 - list(node.input).index(tensor)])


def activation_after(index: GraphIndex, tensor: str, through_reshapes: bool = True) -> Activation:
    """The activation that follows `tensor`, looking through pooling, BatchNorm, dropout, bias Adds and (unless told
    not to) reshapes. "none" if there is none."""
    node = index.single_consumer(tensor)
    while node is not None and (node.op_type in LOOK_THROUGH or _bias_add(index, node, tensor)
                                or (through_reshapes and node.op_type in LOOK_THROUGH_RESHAPING)):
        tensor, node = node.output[0], index.single_consumer(node.output[0])
    users = index.consumers.get(tensor, [])
    # SiLU / Swish: x * Sigmoid(x)
    sig = [u for u in users if u.op_type == "Sigmoid"]
    if len(users) == 2 and sig:
        mul = [u for u in users if u.op_type == "Mul" and set(u.input) == {tensor, sig[0].output[0]}]
        if mul:
            return Activation("silu", output=mul[0].output[0])
    # erf-GELU as the legacy exporter writes it: x * 0.5 * (1 + erf(x / sqrt(2))) in some order.
    for u in users:
        if u.op_type in ("Div", "Mul") and any(e.op_type == "Erf" for e in index.consumers.get(u.output[0], [])):
            c = _scalar(index, u.input[1])
            if c is not None and (abs(c - 2 ** 0.5) < 1e-3 if u.op_type == "Div" else abs(c - 2 ** -0.5) < 1e-3):
                return Activation("gelu", {"approximate": "none"}, output=None)
    if node is None:
        return Activation("none", output=tensor)
    op = node.op_type
    if op in _SIMPLE:
        kind = _SIMPLE[op]
        attrs = {}
        for key, default in {"leakyrelu": [("alpha", 0.01)], "elu": [("alpha", 1.0)],
                             "selu": [("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)],
                             "hardsigmoid": [("alpha", 0.2), ("beta", 0.5)], "gelu": [("approximate", "none")]}.get(kind, []):
            value = attr(node, key, default)
            attrs[key] = value.decode() if isinstance(value, bytes) else value
        return Activation(kind, attrs, output=node.output[0])
    if op == "Clip":
        lo = attr(node, "min", None) if index.opset < 11 else _scalar(index, node.input[1] if len(node.input) > 1 else "")
        hi = attr(node, "max", None) if index.opset < 11 else _scalar(index, node.input[2] if len(node.input) > 2 else "")
        return Activation("clip", {"min": lo, "max": hi}, output=node.output[0])
    return Activation("none", output=tensor)


def resolve(requested: str, detected: Activation) -> Activation:
    requested = (requested or "auto").lower()
    if requested == "auto":
        return detected
    if requested == "none":
        return Activation("none")
    if requested not in NAMES:
        raise UsageError(f"unknown activation {requested!r}: use auto, none or one of {', '.join(NAMES)}")
    if requested == "relu6":
        return Activation("clip", {"min": 0.0, "max": 6.0})
    if requested == detected.kind:
        return Activation(requested, detected.attrs)
    if requested == "clip":  # Clip without bounds is the identity, and its `a` would never learn: hardtanh
        return Activation("clip", {"min": -1.0, "max": 1.0})
    return Activation(requested, {"alpha": 0.01} if requested == "leakyrelu" else {})


class _Emitter:
    def __init__(self, index: GraphIndex, base: str, dtype):
        self.index, self.base, self.dtype, self.nodes = index, base, dtype, []

    def param(self, suffix, value):
        """A learnable value: one initializer, to be read by one node."""
        return add_initializer(self.index, f"{self.base}.{suffix}", np.asarray(value, dtype=self.dtype))

    def const(self, suffix, value):
        """A fixed helper value: a Constant node."""
        out = self.index.unique_name(f"{self.base}/{suffix}")
        tensor = numpy_helper.from_array(np.asarray(value, dtype=self.dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def node(self, op, inputs, **attrs):
        out = self.index.unique_name(f"{self.base}/{op}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _phi(em: _Emitter, act: Activation, x: str) -> str:
    """φ(x) for one of the activations, with the ops this opset has."""
    k, a, opset = act.kind, act.attrs, em.index.opset
    if k in ("tanh", "sigmoid", "softplus"):
        return em.node({"tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus"}[k], [x])
    if k == "leakyrelu":
        return em.node("LeakyRelu", [x], alpha=float(a.get("alpha", 0.01)))
    if k == "elu":
        return em.node("Elu", [x], alpha=float(a.get("alpha", 1.0)))
    if k == "selu":
        return em.node("Selu", [x], **{n: float(a[n]) for n in ("alpha", "gamma") if n in a})
    if k == "hardsigmoid":
        return em.node("HardSigmoid", [x], alpha=float(a.get("alpha", 0.2)), beta=float(a.get("beta", 0.5)))
    if k == "hardswish":
        if opset >= 14:
            return em.node("HardSwish", [x])
        return em.node("Mul", [x, em.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)])
    if k == "silu":
        return em.node("Mul", [x, em.node("Sigmoid", [x])])
    if k == "gelu":
        approx = a.get("approximate", "none")
        if opset >= 20:
            return em.node("Gelu", [x], approximate=approx)
        if approx == "tanh":
            raise UsageError("tanh-approximated GELU needs opset 20; use --activation gelu on opset >= 20 or another")
        erf = em.node("Erf", [em.node("Div", [x, em.const("sqrt2", np.sqrt(2.0))])])
        return em.node("Mul", [em.node("Mul", [x, em.node("Add", [erf, em.const("one_gelu", 1.0)])]),
                               em.const("half", 0.5)])
    if k == "clip":
        lo, hi = a.get("min"), a.get("max")
        if opset < 11:
            kw = {}
            if lo is not None:
                kw["min"] = float(lo)
            if hi is not None:
                kw["max"] = float(hi)
            return em.node("Clip", [x], **kw)
        bounds = [em.const("min", lo) if lo is not None else "", em.const("max", hi) if hi is not None else ""]
        while bounds and not bounds[-1]:
            bounds.pop()
        return em.node("Clip", [x] + bounds)
    raise UsageError(f"no P-activation for {k!r}")


def emit(index: GraphIndex, act: Activation, x: str, channels: int, channel_shape: tuple[int, ...], base: str,
         dtype, identity_start: bool = True) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing the P-activation of `x` (identity at start) or, with identity_start=False, φ itself."""
    em = _Emitter(index, base, dtype)
    if act.kind == "none":
        return [], x
    if act.kind in ("relu", "prelu"):
        if not identity_start:
            return [helper.make_node("Relu", [x], [out := index.unique_name(f"{base}/Relu")], name=out)], out
        slope = em.param("slope", np.ones((channels,) + channel_shape))
        return [helper.make_node("PRelu", [x, slope], [out := index.unique_name(f"{base}/PRelu")], name=out)], out
    phi = _phi(em, act, x)
    if not identity_start:
        return em.nodes, phi
    a = em.param("a", np.ones((1,)))
    out = em.node("Add", [phi, em.node("Mul", [a, em.node("Sub", [x, phi])])])
    return em.nodes, out
