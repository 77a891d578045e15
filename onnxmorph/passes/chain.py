"""A chain of linear layers F_0 → act → F_1 → ... → F_P written into the graph. Shared by deepen and subnet.

Weights come in solver layout: (C_out, C_in/g, *k) for Conv, (out, in) for Gemm/MatMul. Border layout: the
first layer takes all the padding, the others none; the last one carries the stride (DESIGN.md, "Borders").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from .. import activations
from ..graph.edit import add_initializer, conv_attributes
from ..graph.index import GraphIndex
from ..solve import layer_rank, nonzero_share


@dataclass
class NewLayer:
    name: str
    op: str
    weight_shape: list[int]
    kernel: list[int]
    width: int
    std: float
    nonzero_share: float
    rank: int | None = None     # numerical rank as an (out, in·∏k) matrix; None when too big to measure


@dataclass
class LinearGeometry:
    """How the replaced layer G is applied: op, and for Conv its pads/stride/dilation/group."""
    op: str                         # Conv | Gemm | MatMul
    pads: list[int] | None = None   # G's explicit pads [begin..., end...]
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group: int = 1
    trans_a: int = 0
    beta: float = 1.0


def conv_layouts(geo: LinearGeometry, kernels: list[tuple[int, ...]], offset: tuple[int, ...]) -> list[dict]:
    """Conv attributes for each layer of a chain whose composite kernel holds G at `offset`."""
    rank = len(kernels[0])
    kt = [sum(k[i] for k in kernels) - (len(kernels) - 1) for i in range(rank)]
    d = list(geo.dilations) or [1] * rank
    begin = [geo.pads[i] + offset[i] * d[i] for i in range(rank)]
    end = [geo.pads[rank + i] + (kt[i] - geo.kernel[i] - offset[i]) * d[i] for i in range(rank)]
    out = []
    for j, k in enumerate(kernels):
        pads = begin + end if j == 0 else [0] * (2 * rank)
        strides = list(geo.strides or [1] * rank) if j == len(kernels) - 1 else [1] * rank
        out.append(conv_attributes(k, strides, pads, d, geo.group))
    return out


def emit_chain(index: GraphIndex, base: str, x: str, y: str, weights: list[np.ndarray], geo: LinearGeometry,
               act: activations.Activation, dtype, bias: str | None = None, offset: tuple[int, ...] = (),
               batchnorm: bool = False, names: list[str] | None = None):
    """Nodes for weights[0] → [BN] → P-act → weights[1] → ... reading x and writing y."""
    nodes, infos = [], []
    names = names or [f"{base}/morph_l"] + [f"{base}/morph_l{j}" for j in range(1, len(weights))]
    layouts = conv_layouts(geo, [w.shape[2:] for w in weights], offset) if geo.op == "Conv" else None
    channel_shape = (1,) * (weights[0].ndim - 2) if geo.op == "Conv" else ()
    h = x
    for j, w in enumerate(weights):
        w = w.astype(dtype)
        last = j == len(weights) - 1
        name = index.unique_name(names[j])
        out = y if last else index.unique_name(f"{name}_out")
        ins = [h]
        # Inner layers get a zero bias, the parameters a normal layer of that shape has; the last keeps G's.
        zero_bias = None if last else add_initializer(index, f"{name}.bias", np.zeros(w.shape[0], dtype=dtype))
        if geo.op == "Conv":
            ins.append(add_initializer(index, f"{name}.weight", w))
            if last and bias:
                ins.append(bias)
            elif zero_bias:
                ins.append(zero_bias)
            nodes.append(helper.make_node("Conv", ins, [out], name=name, **layouts[j]))
        elif geo.op == "Gemm":
            ins.append(add_initializer(index, f"{name}.weight", w))
            layer_bias = bias if last else zero_bias
            if not layer_bias and index.opset < 11:  # C is optional only from Gemm-11 on
                layer_bias = add_initializer(index, f"{name}.bias", np.zeros(w.shape[0], dtype=dtype))
            if layer_bias:
                ins.append(layer_bias)
            attrs = {"transB": 1, "transA": geo.trans_a if j == 0 else 0}
            if last and bias:
                attrs["beta"] = geo.beta
            nodes.append(helper.make_node("Gemm", ins, [out], name=name, **attrs))
        else:  # MatMul: x @ Wᵀ (+ b)
            ins.append(add_initializer(index, f"{name}.weight", np.ascontiguousarray(w.T)))
            if zero_bias:
                product = index.unique_name(f"{name}_matmul_out")
                nodes.append(helper.make_node("MatMul", ins, [product], name=name))
                nodes.append(helper.make_node("Add", [product, zero_bias], [out],
                                              name=index.unique_name(f"{name}/bias_add")))
            else:
                nodes.append(helper.make_node("MatMul", ins, [out], name=name))
        infos.append(NewLayer(name, geo.op, list(w.shape), list(w.shape[2:]), int(w.shape[0]), float(np.std(w)),
                              nonzero_share(w), layer_rank(w)))
        h = out
        if last:
            break
        width = w.shape[0]
        if batchnorm:
            eps = 1e-5
            bn_out = index.unique_name(f"{name}/bn_out")
            params = [add_initializer(index, f"{name}/bn.{p}", np.asarray(v, dtype=dtype)) for p, v in (
                ("scale", np.ones(width)), ("bias", np.zeros(width)), ("mean", np.zeros(width)),
                ("var", np.full(width, 1.0 - eps)))]
            nodes.append(helper.make_node("BatchNormalization", [h] + params, [bn_out],
                                          name=index.unique_name(f"{name}/bn"), epsilon=eps))
            h = bn_out
        act_base = f"{base}/morph_act" + (str(j) if j else "")
        act_nodes, h = activations.emit(index, act, h, width, channel_shape, act_base, dtype)
        nodes.extend(act_nodes)
    return nodes, infos
