"""Einsum as a linear layer: a plain contraction of an activation with a constant weight, as tf2onnx leaves Keras'
EinsumDense (the attention output projection `abcd,cde->abe`).

    x: free + contracted letters      w: contracted + out letters      y: free + out letters

each letter once per term, the contracted letters last in x and first in w, in the same order, no ellipsis, no
diagonal or sum over a letter of one term only. Such an Einsum is x flattened over its contracted axes times w
flattened to (contracted, out): a MatMul in disguise.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from .proto import str_attr


@dataclass(frozen=True)
class Contraction:
    x: str
    w: str
    y: str

    @property
    def free(self) -> str:
        return self.x[:len(self.x) - len(self.contracted)]

    @property
    def contracted(self) -> str:
        return "".join(c for c in self.x if c in self.w)

    @property
    def out(self) -> str:
        return self.w[len(self.contracted):]

    def weight_axis(self, letter: str) -> int:
        return self.w.index(letter)


def contraction(node: onnx.NodeProto) -> Contraction | None:
    """The contraction an Einsum node computes with its second input as the weight, or None when it is not one."""
    if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    equation = (str_attr(node, "equation", "") or "").replace(" ", "")
    if "->" not in equation or "." in equation:
        return None
    inputs, y = equation.split("->")
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    x, w = terms
    if not all(t.isalpha() and len(set(t)) == len(t) for t in (x, w, y)) or not x or not w:
        return None
    found = Contraction(x, w, y)
    contracted, out, free = found.contracted, found.out, found.free
    if not contracted or not out or not x.endswith(contracted) or not w.startswith(contracted) or \
            y != free + out or set(free) & set(w):
        return None
    return found
