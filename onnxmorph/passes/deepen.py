"""Depth morphing: replace G by F_l → P-activation → F_{l+1} with F_{l+1} ⊛ F_l = G~ (paper, eq. 6).

Border exactness: F_l takes all of the padding (G's pads plus the composite's extra taps) and F_{l+1} none,
so the intermediate map is larger than the input and holds real values where a "same"-padded layer would see
zeros (DESIGN.md, "Borders"). G's stride goes on F_{l+1}; F_l runs at stride 1; both keep G's dilation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .. import activations
from ..errors import CannotMorph, UsageError
from ..graph.edit import (add_initializer, conv_attributes, explicit_pads, remove_unused_constants, replace_node,
                          weight_dtype)
from ..graph.layers import GraphIndex, Layer, find_layer
from ..solve import SolveError, factorize, identity_factorization, minimum_width, nonzero_share


@dataclass
class NewLayer:
    name: str
    op: str
    weight_shape: list[int]
    kernel: list[int]
    width: int
    std: float
    nonzero_share: float


@dataclass
class DeepenReport:
    layer: str
    method: str
    algorithm: str
    k1: list[int]
    k2: list[int]
    width: int
    minimum_width: int
    residual: float
    amplification: float
    activation: str
    batchnorm: bool
    new_layers: list[NewLayer] = field(default_factory=list)
    solve_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"deepened {self.layer} with {self.method} ({self.algorithm}): width {self.width} "
               f"(minimum {self.minimum_width}), residual {self.residual:.2e}, amplification {self.amplification:.1f}, "
               f"activation {self.activation}"
               + (", new BatchNorm" if self.batchnorm else "")]
        for n in self.new_layers:
            out.append(f"  {n.name}: {n.op} weight {tuple(n.weight_shape)} kernel {tuple(n.kernel)} "
                       f"std {n.std:.4g} non-zero {n.nonzero_share:.1%}")
        out.extend(f"  note: {n}" for n in self.notes)
        out.append(f"  solve time {self.solve_seconds:.3f} s")
        return out


def parse_width(width, c_out: int) -> int | None:
    """None, an int, '64' or a multiplier '4x' of the layer's output channels."""
    if width is None or width == "":
        return None
    text = str(width).strip().lower()
    try:
        if text.endswith("x"):
            value = int(round(float(text[:-1]) * c_out))
        else:
            value = int(text)
    except ValueError:
        raise UsageError(f"bad --width {width!r}: give a count (64) or a multiplier (4x)") from None
    if value < 1:
        raise UsageError(f"--width must be positive, got {width!r}")
    return value


def parse_kernel(k, rank: int, what: str):
    """None, an int, 'K', 'HxW' or a tuple, as a tuple of `rank` ints."""
    if k is None or k == "":
        return None
    if rank == 0:
        if str(k) not in ("1",) and k != (1,) and k != 1:
            raise UsageError(f"{what} applies to Conv layers; a fully-connected layer has no kernel")
        return ()
    try:
        if isinstance(k, (tuple, list)):
            parts = [int(v) for v in k]
        else:
            parts = [int(v) for v in str(k).lower().split("x")]
    except ValueError:
        raise UsageError(f"bad {what} {k!r}: give K or HxW") from None
    if len(parts) == 1:
        parts = parts * rank
    if len(parts) != rank or any(p < 1 for p in parts):
        raise UsageError(f"bad {what} {k!r} for a layer with {rank} spatial dims")
    return tuple(parts)


def _solve(weight, width, k1, k2, groups, method, algorithm, seed, c_out):
    rank = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    k1 = k1 if k1 is not None else kernel
    k2 = k2 if k2 is not None else (1,) * rank
    if method == "idmorph":
        if width is not None and width != c_out:
            raise UsageError(f"idmorph keeps the width of the layer ({c_out}); drop --width or use netmorph")
        try:
            return identity_factorization(weight, k1, k2, groups), c_out
        except SolveError as exc:
            raise UsageError(str(exc)) from None
    if method != "netmorph":
        raise UsageError(f"unknown method {method!r}: use netmorph or idmorph")
    if algorithm not in ("practical", "general"):
        raise UsageError(f"unknown algorithm {algorithm!r}: use practical or general")
    if any(a + b - 1 < k for a, b, k in zip(k1, k2, kernel)):
        raise UsageError(f"k1 + k2 - 1 must cover the kernel {kernel}: got k1={k1}, k2={k2}")
    minimum = minimum_width(weight.shape, k1, k2, groups, algorithm)
    auto = width is None
    if auto:
        width = -(-max(c_out, minimum) // groups) * groups
    elif width % groups:
        raise UsageError(f"width {width} must be a multiple of the layer's group count {groups}")
    try:
        fac = factorize(weight, width, k1, k2, groups, algorithm=algorithm, seed=seed)
        # Auto width: the smallest width whose factors do not amplify float32 rounding much. At the exact
        # minimum the block systems are square and often ill-conditioned; a few percent more width fixes it.
        tries = 0
        while auto and fac.amplification > AMPLIFICATION_LIMIT and tries < 12:
            width = -(-max(width + groups, int(width * 1.04)) // groups) * groups
            candidate = factorize(weight, width, k1, k2, groups, algorithm=algorithm, seed=seed)
            if candidate.amplification < fac.amplification:
                fac = candidate
            tries += 1
        return fac, minimum
    except SolveError as exc:
        raise CannotMorph(f"{exc}") from None


AMPLIFICATION_LIMIT = 100.0


def _new_layer_info(name, op, w, width) -> NewLayer:
    return NewLayer(name, op, list(w.shape), list(w.shape[2:]), width, float(np.std(w)), nonzero_share(w))


def _emit_pair(index: GraphIndex, base: str, x: str, y: str, fac, dtype, op: str, conv: dict | None,
               act: activations.Activation, batchnorm: bool, bias: str | None, gemm: dict | None,
               after_act: activations.Activation | None = None):
    """Nodes for F_l → [BN] → P-act → F_{l+1} (→ φ) reading x and writing y. Returns nodes and NewLayer infos."""
    first, second = fac.first.astype(dtype), fac.second.astype(dtype)
    width = first.shape[0]
    nodes, infos = [], []
    l_name, l1_name = index.unique_name(f"{base}/morph_l"), index.unique_name(f"{base}/morph_l1")
    h = index.unique_name(f"{base}/morph_l_out")
    if op == "Conv":
        w1 = add_initializer(index, f"{base}/morph_l.weight", first)
        nodes.append(helper.make_node("Conv", [x, w1], [h], name=l_name, **conv["first"]))
        channel_shape = (1,) * (first.ndim - 2)
    elif op == "Gemm":
        w1 = add_initializer(index, f"{base}/morph_l.weight", first)
        ins = [x, w1]
        if index.opset < 11:  # C is optional only from Gemm-11 on
            ins.append(add_initializer(index, f"{base}/morph_l.bias", np.zeros(width, dtype=dtype)))
        nodes.append(helper.make_node("Gemm", ins, [h], name=l_name, transA=gemm["transA"], transB=1))
        channel_shape = ()
    else:  # MatMul: x @ Wᵀ layout
        w1 = add_initializer(index, f"{base}/morph_l.weight", np.ascontiguousarray(first.T))
        nodes.append(helper.make_node("MatMul", [x, w1], [h], name=l_name))
        channel_shape = ()
    infos.append(_new_layer_info(l_name, op, first, width))
    if batchnorm:
        eps = 1e-5
        bn_out = index.unique_name(f"{base}/morph_bn_out")
        params = [add_initializer(index, f"{base}/morph_bn.{p}", np.asarray(v, dtype=dtype)) for p, v in (
            ("scale", np.ones(width)), ("bias", np.zeros(width)), ("mean", np.zeros(width)),
            ("var", np.full(width, 1.0 - eps)))]
        nodes.append(helper.make_node("BatchNormalization", [h] + params, [bn_out],
                                      name=index.unique_name(f"{base}/morph_bn"), epsilon=eps))
        h = bn_out
    act_nodes, h = activations.emit(index, act, h, width, channel_shape, f"{base}/morph_act", dtype)
    nodes.extend(act_nodes)
    final = y if after_act is None or after_act.kind == "none" else index.unique_name(f"{base}/morph_l1_out")
    if op == "Conv":
        w2 = add_initializer(index, f"{base}/morph_l1.weight", second)
        ins = [h, w2] + ([bias] if bias else [])
        nodes.append(helper.make_node("Conv", ins, [final], name=l1_name, **conv["second"]))
    elif op == "Gemm":
        w2 = add_initializer(index, f"{base}/morph_l1.weight", second)
        if not bias and index.opset < 11:
            bias = add_initializer(index, f"{base}/morph_l1.bias", np.zeros(second.shape[0], dtype=dtype))
        ins = [h, w2] + ([bias] if bias else [])
        nodes.append(helper.make_node("Gemm", ins, [final], name=l1_name, transB=1, beta=gemm["beta"]))
    else:
        w2 = add_initializer(index, f"{base}/morph_l1.weight", np.ascontiguousarray(second.T))
        nodes.append(helper.make_node("MatMul", [h, w2], [final], name=l1_name))
    infos.append(_new_layer_info(l1_name, op, second, second.shape[0]))
    if final != y:  # --after: the activation after the new pair (real ReLU is exact on ReLU outputs)
        tail, out = activations.emit(index, after_act, final, second.shape[0], channel_shape,
                                     f"{base}/morph_act1", dtype, identity_start=after_act.kind != "relu")
        nodes.extend(tail)
        nodes.append(helper.make_node("Identity", [out], [y], name=index.unique_name(f"{base}/morph_out")))
    return nodes, infos


def _conv_layout(layer: Layer, index: GraphIndex, fac) -> dict:
    rank = len(layer.kernel)
    pads = explicit_pads(index, layer)
    k1, k2 = fac.first.shape[2:], fac.second.shape[2:]
    kt = [a + b - 1 for a, b in zip(k1, k2)]
    d = list(layer.dilations) or [1] * rank
    begin = [pads[i] + fac.offset[i] * d[i] for i in range(rank)]
    end = [pads[rank + i] + (kt[i] - layer.kernel[i] - fac.offset[i]) * d[i] for i in range(rank)]
    return {"first": conv_attributes(k1, [1] * rank, begin + end, d, layer.group),
            "second": conv_attributes(k2, layer.strides or [1] * rank, [0] * (2 * rank), d, layer.group)}


def deepen_model(model: onnx.ModelProto, layer: str | None = None, k1=None, k2=None, width=None,
                 activation: str = "auto", method: str = "netmorph", algorithm: str = "practical",
                 batchnorm: bool = False, after: str | None = None, seed: int = 0):
    """Deepen `layer` (or insert identity-start layers after `after`). Returns (child, DeepenReport)."""
    if (layer is None) == (after is None):
        raise UsageError("give exactly one of --layer or --after")
    index = GraphIndex(model)
    target = find_layer(index, layer or after)
    dtype = weight_dtype(target)
    rank = len(target.weight.shape) - 2 if target.op == "Conv" else 0
    k1t, k2t = parse_kernel(k1, rank, "--k1"), parse_kernel(k2, rank, "--k2")
    detected = activations.activation_after(index, target.final_output)
    act = activations.resolve(activation, detected)
    notes = []
    if batchnorm and (target.op == "MatMul" or (after is not None and rank == 0)):
        raise CannotMorph("--batchnorm: BatchNormalization normalises axis 1, but MatMul layers keep features on "
                          "the last axis")
    start = time.perf_counter()
    if after is None:
        weight = target.effective_weight().astype(np.float64)
        c_out = weight.shape[0]
        fac, minimum = _solve(weight, parse_width(width, c_out), k1t, k2t, target.group, method, algorithm, seed, c_out)
        x, y, base = target.node.input[0], target.output, target.id
        after_act, bias = None, target.bias_name if target.op != "MatMul" else None
        gemm = {"transA": target.trans_a, "beta": target.beta} if target.op == "Gemm" else None
        op = target.op
        if op == "Gemm" and target.bias_name and target.beta != 1.0:
            notes.append(f"Gemm beta {target.beta:g} kept on the second layer")
    else:
        # Identity-start layers after the target's activation: G is the identity on its channels.
        c = target.out_channels
        if detected.output is None:
            raise CannotMorph(f"cannot locate the output of the activation after {target.id}")
        y = detected.output
        weight = np.eye(c).reshape((c, c) + (1,) * rank)
        k1t = k1t if k1t is not None else (tuple(target.kernel) if rank else ())
        fac, minimum = _solve(weight, parse_width(width, c), k1t, k2t, 1, method, algorithm, seed, c)
        x = index.unique_name(f"{y}/pre_morph")
        for node in index.graph.node:  # the activation now writes x; the new pair writes y
            for i, out in enumerate(node.output):
                if out == y:
                    node.output[i] = x
        base, bias, gemm = f"{target.id}/after", None, None
        op = "Conv" if rank else "MatMul"
        after_act = act if act.kind != "none" else activations.Activation("none")
        notes.append(f"identity-start layers inserted after {y} (activation {detected.kind})")
    solve_seconds = time.perf_counter() - start
    if op == "Conv":
        if after is None:
            conv = _conv_layout(target, index, fac)
        else:
            kt = [a + b - 1 for a, b in zip(fac.first.shape[2:], fac.second.shape[2:])]
            begin, end = list(fac.offset), [t - 1 - o for t, o in zip(kt, fac.offset)]
            conv = {"first": conv_attributes(fac.first.shape[2:], [1] * rank, begin + end, [1] * rank, 1),
                    "second": conv_attributes(fac.second.shape[2:], [1] * rank, [0] * (2 * rank), [1] * rank, 1)}
    else:
        conv = None
    nodes, infos = _emit_pair(index, base, x, y, fac, dtype, op, conv, act, batchnorm, bias, gemm, after_act)
    if after is None:
        replace_node(index, target.node, nodes)
        remove_unused_constants(model, [target.weight_name])
    else:
        producer = next(n for n in index.graph.node if x in n.output)
        replace_node(index, None, nodes, at=producer)
    report = DeepenReport(layer=target.id if after is None else f"after {target.id}", method=method,
                          algorithm=fac.algorithm, k1=list(fac.first.shape[2:]), k2=list(fac.second.shape[2:]),
                          width=fac.first.shape[0], minimum_width=minimum, residual=fac.residual,
                          amplification=fac.amplification,
                          activation=act.describe(), batchnorm=batchnorm, new_layers=infos,
                          solve_seconds=solve_seconds, notes=notes)
    if fac.algorithm == "practical":
        report.notes.append(f"Algorithm 2 solved with k1={fac.solved_k1}, k2={fac.solved_k2} and zero-padded back")
    return model, report
