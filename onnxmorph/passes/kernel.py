"""Kernel-size morphing (paper, section 3.4.2): zero-pad a Conv kernel and grow its padding by as much.

The kernel grows by (K' − K) per dim, split (K' − K) // 2 before and the rest after, and the padding grows by
the same amounts times the dilation, so every output sees exactly the inputs it saw before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import CannotMorph, UsageError
from ..graph.edit import explicit_pads, set_constant, weight_dtype
from ..graph.proto import remove_unused_constants
from ..graph.index import GraphIndex
from ..graph.layers import find_layer
from ..solve import embed
from .common import keeps_stored_types, parse_kernel


@dataclass
class KernelReport:
    layer: str
    kernel_from: list[int]
    kernel_to: list[int]
    pads_from: list[int]
    pads_to: list[int]

    def lines(self) -> list[str]:
        return [f"kernel of {self.layer}: {tuple(self.kernel_from)} -> {tuple(self.kernel_to)}, "
                f"pads {self.pads_from} -> {self.pads_to}"]


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    node.ClearField("attribute")
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


@keeps_stored_types
def kernel_model(model: onnx.ModelProto, layer: str, size=None):
    """Grow the kernel of Conv `layer` to `size` (K, HxW or DxHxW). Returns (child, KernelReport)."""
    index = GraphIndex(model)
    target = find_layer(index, layer)
    if target.op != "Conv":
        raise CannotMorph(f"kernel morphing applies to Conv layers; {target.id} is a {target.op}")
    dtype = weight_dtype(target)
    rank = len(target.kernel)
    new_kernel = parse_kernel(size, rank, "--size")
    if new_kernel is None:
        raise UsageError("--size is required")
    old_kernel = tuple(target.kernel)
    if any(n < o for n, o in zip(new_kernel, old_kernel)):
        raise UsageError(f"--size {new_kernel} would shrink the kernel {old_kernel}; kernels only grow")
    if new_kernel == old_kernel:
        raise UsageError(f"{target.id} already has kernel {old_kernel}")
    pads = explicit_pads(index, target)
    before = [(n - o) // 2 for n, o in zip(new_kernel, old_kernel)]
    after = [n - o - b for n, o, b in zip(new_kernel, old_kernel, before)]
    d = list(target.dilations) or [1] * rank
    new_pads = [pads[i] + before[i] * d[i] for i in range(rank)] + \
               [pads[rank + i] + after[i] * d[i] for i in range(rank)]
    weight = embed(np.asarray(target.weight), new_kernel, tuple(before)).astype(dtype)
    node = target.node
    set_constant(index, node, 1, weight, f"{target.id}/morph_kernel.weight")  # keeps the name unless shared
    _set_attr(node, "kernel_shape", list(new_kernel))
    _set_attr(node, "pads", new_pads)
    _set_attr(node, "auto_pad", None)
    remove_unused_constants(model, [target.weight_name])
    return model, KernelReport(target.id, list(old_kernel), list(new_kernel), list(pads), new_pads)
