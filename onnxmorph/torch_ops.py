"""Converters onnx2torch 1.5.15 lacks, added to its registry: newer opsets of ops it knows (Split-18, Reduce*-18,
Gelu-20, Flatten/Identity-21, the comparisons at 16), attributes it refuses (Reshape allowzero=1, auto_pad SAME_*
on Conv and pools, Conv pads that differ at the two ends) and a default it gets wrong (CumSum's reverse). Each module
follows the ONNX spec and is checked against ONNX Runtime (tests/test_train_torch_ops.py); what is still missing
raises NotImplementedError, which
onnxmorph.torch turns into a one-line CannotConvert.

Importing this module registers them, once; onnxmorph.torch imports it before converting.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx import defs
from onnx2torch.node_converters import registry
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node


def _register(op: str, *versions: int):
    """Register convert(node, graph, original) for op at each version. `original` is onnx2torch's converter there
    (None where it has none): ours replaces it, and may hand a node back to it."""
    def deco(convert):
        for version in versions:
            description = registry.OperationDescription(defs.ONNX_DOMAIN, op, version)
            original = registry._CONVERTER_REGISTRY.pop(description, None)  # add_converter refuses a second one
            registry.add_converter(operation_type=op, version=version)(
                lambda node, graph, original=original: convert(node, graph, original))
        return convert
    return deco


def _result(module, node, inputs=None) -> OperationConverterResult:
    mapping = onnx_mapping_from_node(node) if inputs is None else OnnxMapping(tuple(inputs), node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


class Module(torch.nn.Module, OnnxToTorchModule):
    pass


# --- same semantics at a newer opset (only new types) ------------------------------------------------------------
for _op, _version, _of in (("LessOrEqual", 16, 12), ("GreaterOrEqual", 16, 12),
                           ("Identity", 19, 16), ("Identity", 21, 16)):
    if registry.OperationDescription(defs.ONNX_DOMAIN, _op, _version) not in registry._CONVERTER_REGISTRY:
        registry.add_converter(operation_type=_op, version=_version)(registry.get_converter(_op, _of))


# --- Flatten: (prod(shape[:axis]), prod(shape[axis:])) for every axis, 0, the rank and negative ones too ------------
class Flatten(Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_register("Flatten", 9, 11, 13, 21)
def _flatten(node, graph, original):
    return _result(Flatten(node.attributes.get("axis", 1)), node)


# --- CumSum: onnx2torch reads a missing `reverse` as 1 (the ONNX default is 0); OPT's positions are a cumsum --------
@_register("CumSum", 11, 14)
def _cumsum(node, graph, original):
    from onnx2torch.node_converters.cumsum import OnnxCumSum
    attrs = node.attributes
    return _result(OnnxCumSum(bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))), node)


# --- Reshape: a 0 in the shape copies the input's dimension, or (allowzero=1) is a zero-size dimension -------------
class Reshape(Module):
    def __init__(self, allowzero: int):
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x, shape):
        dims = [int(d) for d in shape]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


@_register("Reshape", 5, 13, 14, 19, 21)
def _reshape(node, graph, original):
    return _result(Reshape(node.attributes.get("allowzero", 0)), node)


# --- Slice: ONNX clamping per axis, negative steps too; a tuple of slices or an index_select (onnx2torch indexes with a
# list, which torch warns it will read as a tensor index) ----------------------------------------------------------
def slice_indices(start: int, end: int, step: int, size: int) -> tuple[int, int, int]:
    """ONNX Slice on one axis of length `size`: (first index, count, step) of the picked elements."""
    if step == 0:
        raise ValueError("Slice step 0")
    start, end = start + size if start < 0 else start, end + size if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
        return start, max(0, -(-(end - start) // step)), step
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return start, max(0, -(-(start - end) // -step)), step


class Slice(Module):
    def __init__(self, starts=None, ends=None, axes=None):   # Slice-1 attributes; later versions take inputs
        super().__init__()
        self.fixed = None if starts is None else (list(starts), list(ends), None if axes is None else list(axes))

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        if self.fixed is not None:
            starts, ends, axes = self.fixed
        starts, ends = [int(v) for v in starts], [int(v) for v in ends]
        axes = list(range(len(starts))) if axes is None else [int(a) + x.dim() if int(a) < 0 else int(a) for a in axes]
        steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
        for axis, start, end, step in zip(axes, starts, ends, steps):
            first, count, step = slice_indices(start, end, step, x.shape[axis])
            if step == 1:
                x = x.narrow(axis, first, count)
            else:
                picked = torch.arange(count, device=x.device) * step + first
                x = x.index_select(axis, picked)
        return x


@_register("Slice", 1, 9, 10, 11, 13)   # onnx2torch files Slice-1 under 9
def _slice(node, graph, original):
    attrs = node.attributes
    if "starts" in attrs:   # Slice-1
        return _result(Slice(attrs["starts"], attrs["ends"], attrs.get("axes")), node)
    return _result(Slice(), node)


# --- Split-18: sizes from the `split` input, or num_outputs parts of ceil(n / num_outputs) (the last smaller) --------
class Split(Module):
    def __init__(self, axis: int, outputs: int):
        super().__init__()
        self.axis, self.outputs = axis, outputs

    def forward(self, x, split=None):
        if split is not None:
            sizes = [int(s) for s in split]
        else:
            n = x.shape[self.axis]
            part = -(-n // self.outputs)
            sizes = [min(part, n - i * part) for i in range(self.outputs)]
        parts = torch.split(x, sizes, dim=self.axis)
        return parts if self.outputs > 1 else parts[0]


@_register("Split", 18)
def _split(node, graph, original):
    return _result(Split(node.attributes.get("axis", 0), len(node.output_values)), node)


# --- Reduce*-18: axes is an input; none (or empty) reduces everything, or with noop_with_empty_axes reduces over no
# axis: the element-wise parts still apply (ReduceL1 gives |x|, ReduceSumSquare x², as the ONNX reference does).
def _identity(x):
    return x


def _prod(x, dim, keepdim):   # torch.prod takes one axis at a time
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


REDUCTIONS = {  # op: (element-wise before, reduction over dims, element-wise after)
    "ReduceMean": (_identity, torch.mean, _identity),
    "ReduceSum": (_identity, torch.sum, _identity),
    "ReduceMax": (_identity, torch.amax, _identity),
    "ReduceMin": (_identity, torch.amin, _identity),
    "ReduceProd": (_identity, _prod, _identity),
    "ReduceL1": (torch.abs, torch.sum, _identity),
    "ReduceL2": (torch.square, torch.sum, torch.sqrt),
    "ReduceSumSquare": (torch.square, torch.sum, _identity),
    "ReduceLogSum": (_identity, torch.sum, torch.log),
    "ReduceLogSumExp": (_identity, torch.logsumexp, _identity),
}


class Reduce(Module):
    def __init__(self, op: str, keepdims: int, noop_with_empty_axes: int, axes=None):
        super().__init__()
        self.op, self.keep, self.noop, self.axes = op, bool(keepdims), bool(noop_with_empty_axes), axes

    def forward(self, x, axes=None):
        before, reduce, after = REDUCTIONS[self.op]
        axes = self.axes if axes is None else [int(a) for a in axes]
        if not axes:
            if self.noop:
                return after(before(x))      # torch reads dim=[] as "every axis": never pass it
            axes = range(x.dim())
        dims = sorted({a + x.dim() if a < 0 else a for a in axes})
        return after(reduce(before(x), dim=dims, keepdim=self.keep))


def _reduce(node, graph, original):
    attrs = node.attributes
    return _result(Reduce(node.operation_type, attrs.get("keepdims", 1), attrs.get("noop_with_empty_axes", 0),
                          attrs.get("axes")), node)


for _op in REDUCTIONS:
    _register(_op, 18)(_reduce)


# --- Gelu-20: approximate none (erf) or tanh ----------------------------------------------------------------------
class Gelu(Module):
    def __init__(self, approximate: str):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)


@_register("Gelu", 20)
def _gelu(node, graph, original):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not in the spec")
    return _result(Gelu(approximate), node)


# --- Conv with auto_pad SAME_UPPER / SAME_LOWER: pad each spatial axis to ceil(n / stride) outputs -----------------
def same_pads(sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    """F.pad's list (last axis first, (begin, end) each): the total padding split with the odd one at the end
    (SAME_UPPER) or at the beginning (SAME_LOWER)."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if upper else (big, small))
    return [p for pair in reversed(pads) for p in pair]


class PadFirstConvMixin:
    """An nn.ConvNd (weight and bias its parameters, its own padding 0) that pads its input first: to SAME
    (`same` is "upper" or "lower"), or by fixed F.pad pads (ONNX pads that differ at the two ends)."""
    same: str | None = None
    fixed_pads: list[int] = []

    def forward(self, x):
        pads = (same_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.same == "upper")
                if self.same else self.fixed_pads)
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


class PadFirstConv1d(PadFirstConvMixin, torch.nn.Conv1d):
    pass


class PadFirstConv2d(PadFirstConvMixin, torch.nn.Conv2d):
    pass


class PadFirstConv3d(PadFirstConvMixin, torch.nn.Conv3d):   # module-level classes: torch.save pickles them by name
    pass


PAD_FIRST_CONV = {1: PadFirstConv1d, 2: PadFirstConv2d, 3: PadFirstConv3d}


@_register("Conv", 1, 11)
def _conv(node, graph, original):
    """onnx2torch's Conv, except for SAME_* (it refuses) and pads that differ at the two ends (it wraps the conv in
    a Sequential, where its weight is no longer the module's `weight`)."""
    attrs = node.attributes
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pads = list(attrs.get("pads", []))
    asymmetric = auto_pad == "NOTSET" and pads[:len(pads) // 2] != pads[len(pads) // 2:]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER") and not asymmetric:
        return original(node, graph)
    if node.input_values[1] not in graph.initializers:
        raise NotImplementedError("a Conv weight that is not an initializer is not implemented")
    weight = graph.initializers[node.input_values[1]].to_torch()
    bias = graph.initializers[node.input_values[2]].to_torch() if len(node.input_values) > 2 else None
    rank, groups = weight.dim() - 2, attrs.get("group", 1)
    conv = PAD_FIRST_CONV[rank](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                                stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
                                groups=groups, bias=bias is not None, dtype=weight.dtype)
    if asymmetric:  # ONNX: all begins then all ends; F.pad: (begin, end) per axis, last axis first
        conv.fixed_pads = [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])]
    else:
        conv.same = "upper" if auto_pad == "SAME_UPPER" else "lower"
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return _result(conv, node, inputs=node.input_values[:1])


# --- MaxPool / AveragePool with auto_pad SAME_UPPER / SAME_LOWER ------------------------------------------------
class SamePool(Module):
    """Pad to SAME, then pool with no padding: -inf pads for max; for the average, the pads count in the divisor
    only with count_include_pad (otherwise the window's mean over its real elements)."""
    def __init__(self, kind: str, kernel, strides, dilations, upper: bool, count_include_pad: int):
        super().__init__()
        self.kind, self.kernel, self.strides, self.dilations = kind, list(kernel), list(strides), list(dilations)
        self.upper, self.count_include_pad = upper, bool(count_include_pad)

    def forward(self, x):
        rank = x.dim() - 2
        pads = same_pads(x.shape[2:], self.kernel, self.strides, self.dilations, self.upper)
        if self.kind == "max":
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
            return pool(F.pad(x, pads, value=float("-inf")), self.kernel, self.strides, 0, self.dilations)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        mean = pool(F.pad(x, pads), self.kernel, self.strides)
        if self.count_include_pad:
            return mean
        return mean / pool(F.pad(torch.ones_like(x[:1, :1]), pads), self.kernel, self.strides)


def _same_pool(kind):
    def convert(node, graph, original):
        attrs = node.attributes
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return original(node, graph)
        kernel = attrs["kernel_shape"]
        dilations = attrs.get("dilations", [1] * len(kernel))
        if attrs.get("ceil_mode", 0):
            raise NotImplementedError(f"{node.operation_type} with auto_pad {auto_pad} and ceil_mode=1")
        if attrs.get("storage_order", 0):
            raise NotImplementedError("MaxPool with storage_order=1")
        if any(d != 1 for d in dilations):  # ONNX Runtime's MaxPool then pads as if undilated, against the spec
            raise NotImplementedError(f"{node.operation_type} with dilations and auto_pad {auto_pad}: ONNX Runtime "
                                      "and the ONNX spec disagree on its size")
        if len(node.output_values) > 1:
            raise NotImplementedError("MaxPool's Indices output")
        return _result(SamePool(kind, kernel, attrs.get("strides", [1] * len(kernel)), dilations,
                                auto_pad == "SAME_UPPER", attrs.get("count_include_pad", 0)), node)
    return convert


_register("MaxPool", 8, 10, 11, 12)(_same_pool("max"))
_register("AveragePool", 7, 10, 11)(_same_pool("avg"))
