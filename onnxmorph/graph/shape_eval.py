"""Evaluate the small integer subgraphs that compute shapes at run time (Shape -> Gather -> ReduceProd/Max ->
Concat -> Reshape, as tf2onnx writes Keras' Tensordot and attention reshapes), given the dims of the tensors whose
Shape is read.

Two uses: generic shape inference (graph/shape_source.py) fills in the outputs of Reshapes whose targets ONNX's
data propagation cannot follow (ReduceProd, Max), and the coupling analysis (graph/coupling/runtime.py) checks that
a target computed at run time follows a growth, by evaluating it with the grown dims.

Pure pattern code over a GraphIndex: nothing is written to the model.
"""
from __future__ import annotations

import numpy as np

from .index import GraphIndex
from .proto import attr

_SMALL = 64   # a shape vector, not data

# Ops that map integer shape vectors to integer shape vectors.
SHAPE_ARITHMETIC = ("Shape", "Gather", "Concat", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Max", "Min",
                    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Cast", "Unsqueeze", "Squeeze", "Slice",
                    "Identity", "Reshape", "Equal", "Where", "Not", "And", "Or", "Greater", "Less", "Size")


def _axes(index, node, rank):
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = index.constant(node.input[1]) if index.is_constant(node.input[1]) else None
    return None if axes is None else tuple(int(a) + rank if int(a) < 0 else int(a) for a in np.reshape(axes, -1))


class ShapeEvaluator:
    """Values of integer shape tensors: `dims(tensor)` gives the shape a Shape node reads (a list of ints, or None
    when unknown); `override(node, input_index)` a replacement for a constant input (a shape constant as it will be
    grown), or None."""

    def __init__(self, index: GraphIndex, dims, override=None):
        self.index, self.dims, self.override = index, dims, override or (lambda node, i: None)
        self.memo: dict[str, np.ndarray | None] = {}

    def input(self, node, i):
        """The value node reads at input i (a constant, as overridden, or a computed shape), or None."""
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            return None
        replaced = self.override(node, i)
        if replaced is not None:
            return np.asarray(replaced)
        return self.value(name)

    def value(self, name: str):
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = None   # a cycle cannot occur in a valid graph; this also stops runaway recursion
        result = self._compute(name)
        if result is not None and (result.dtype.kind not in "iub" or result.size > _SMALL):
            result = None
        self.memo[name] = result
        return result

    def _compute(self, name):
        index = self.index
        if index.is_constant(name):
            value = np.asarray(index.constant(name))
            return value if value.dtype.kind in "iub" and value.size <= _SMALL else None
        node = index.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in SHAPE_ARITHMETIC:
            return None
        op = node.op_type
        if op in ("Shape", "Size"):
            shape = self.dims(node.input[0])
            if shape is None or None in shape:
                return None
            if op == "Size":
                return np.asarray(int(np.prod(shape)), dtype=np.int64)
            start, end = attr(node, "start", 0), attr(node, "end", None)
            return np.asarray(list(shape)[start:end], dtype=np.int64)
        ins = [self.input(node, i) if name_ else None for i, name_ in enumerate(node.input)]
        first = ins[0] if ins else None
        try:
            return self._apply(node, op, ins, first)
        except (ValueError, IndexError, TypeError, ZeroDivisionError):
            return None

    def _apply(self, node, op, ins, x):
        if op in ("Max", "Min", "Add", "Sub", "Mul", "Div", "Mod", "Equal", "And", "Or", "Greater", "Less"):
            if any(v is None for v in ins):
                return None
            fn = {"Max": np.maximum, "Min": np.minimum, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                  "Mod": np.mod, "Equal": np.equal, "And": np.logical_and, "Or": np.logical_or,
                  "Greater": np.greater, "Less": np.less}.get(op)
            out = ins[0]
            for other in ins[1:]:
                out = (np.trunc(out / other).astype(np.result_type(out, other)) if op == "Div" else fn(out, other))
            return np.asarray(out)
        if x is None:
            return None
        if op in ("Identity", "Cast"):
            return x.astype(np.int64) if x.dtype.kind in "iu" else x
        if op in ("Neg", "Abs", "Not"):
            return {"Neg": np.negative, "Abs": np.abs, "Not": np.logical_not}[op](x)
        if op == "Gather":
            indices = ins[1]
            return None if indices is None else np.take(x, indices.astype(np.int64), axis=attr(node, "axis", 0))
        if op == "Concat":
            return None if any(v is None for v in ins) else np.concatenate([np.reshape(v, (-1,)) if v.ndim == 0
                                                                            else v for v in ins],
                                                                           axis=attr(node, "axis", 0))
        if op.startswith("Reduce"):
            axes = _axes(self.index, node, x.ndim)
            keep = bool(attr(node, "keepdims", 1))
            fn = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}[op]
            return np.asarray(fn(x, axis=axes, keepdims=keep)).astype(x.dtype)
        if op == "Unsqueeze":
            count = len(np.reshape(ins[1], -1)) if len(ins) > 1 and ins[1] is not None else \
                len(attr(node, "axes", []) or [])
            axes = _axes(self.index, node, x.ndim + count)
            return None if axes is None else np.expand_dims(x, axes)
        if op == "Squeeze":
            axes = _axes(self.index, node, x.ndim)
            return np.squeeze(x, axis=axes) if axes is not None else np.squeeze(x)
        if op == "Slice":
            if self.index.opset < 10:
                starts, ends, axes = attr(node, "starts"), attr(node, "ends"), attr(node, "axes", None)
                steps = None
            else:
                starts, ends, axes, steps = (ins + [None] * 5)[1:5]
                if starts is None or ends is None:
                    return None
            axes = list(range(len(starts))) if axes is None else [int(a) for a in np.reshape(axes, -1)]
            steps = [1] * len(starts) if steps is None else [int(s) for s in np.reshape(steps, -1)]
            picks = [slice(None)] * x.ndim
            for a, s, e, st in zip(axes, np.reshape(starts, -1), np.reshape(ends, -1), steps):
                picks[a] = slice(int(s), int(e), st)
            return x[tuple(picks)]
        if op == "Reshape":
            shape = None if ins[1] is None else resolve_reshape(list(x.shape), ins[1], attr(node, "allowzero", 0))
            return None if shape is None else x.reshape(shape)
        if op == "Where":
            return None if any(v is None for v in ins[:3]) else np.where(ins[0], ins[1], ins[2])
        return None


def resolve_reshape(input_shape, target, allowzero=0):
    """The output shape of Reshape(input_shape -> target): 0 copies the input's dim (unless allowzero), one -1 takes
    what is left. None when it does not fit."""
    target = [int(t) for t in np.reshape(target, -1)]
    out = [input_shape[i] if t == 0 and not allowzero and i < len(input_shape) else t for i, t in enumerate(target)]
    if None in out or None in input_shape:
        return None
    total = int(np.prod(input_shape)) if input_shape else 1
    if out.count(-1) > 1:
        return None
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1])) if len(out) > 1 else 1
        if rest <= 0 or total % rest:
            return None
        out[out.index(-1)] = total // rest
    return out if int(np.prod(out)) == total else None
