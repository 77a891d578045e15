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
from ..graph.edit import replace_node, weight_dtype
from ..graph.proto import remove_unused_constants
from ..graph.index import GraphIndex
from ..graph.layers import find_layer
from .chain import LinearGeometry, NewLayer, emit_chain
from .common import chain_input, geometry_of, keeps_stored_types, parse_kernel, parse_width, solve_factors


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
    algorithm_requested: str | None = None   # --algorithm as given; `algorithm` is the step that ran
    width_requested: str | None = None       # --width as given (a count or a multiplier)

    def lines(self) -> list[str]:
        ran = {"general": "Algorithm 1 (general)", "practical": "Algorithm 2 (practical)"}.get(self.algorithm,
                                                                                                self.algorithm)
        how = f"{self.method}, --algorithm {self.algorithm_requested}: {ran} ran" if self.method == "netmorph" \
            and self.algorithm_requested else f"{self.method} ({self.algorithm})"
        asked = f"--width {self.width_requested}, " if self.width_requested else ""
        out = [f"deepened {self.layer} with {how}: width {self.width} "
               f"({asked}minimum {self.minimum_width}), residual {self.residual:.2e}, amplification {self.amplification:.1f}, "
               f"activation {self.activation}"
               + (", new BatchNorm" if self.batchnorm else "")]
        for n in self.new_layers:
            out.append(f"  {n.name}: {n.op} weight {tuple(n.weight_shape)} kernel {tuple(n.kernel)} "
                       f"std {n.std:.4g} non-zero {n.nonzero_share:.1%} "
                       + (f"rank {n.rank} of {min(n.weight_shape[0], int(np.prod(n.weight_shape[1:])))}"
                          if n.rank is not None else "rank not measured (large)"))
        out.extend(f"  note: {n}" for n in self.notes)
        out.append(f"  solve time {self.solve_seconds:.3f} s")
        return out


@keeps_stored_types
def deepen_model(model: onnx.ModelProto, layer: str | None = None, k1=None, k2=None, width=None,
                 activation: str = "auto", method: str = "netmorph", algorithm: str = "practical",
                 batchnorm: bool = False, after: str | None = None, seed: int = 0, block: str | None = None,
                 init: str = "copy", count: int = 1, full_rank: bool = True, progress=None, solve: bool = True):
    """Deepen `layer` (or insert identity-start layers after `after`, or copies of residual `block`).

    full_rank: the solved factor gets a random null-space component (full rank, same residual); False keeps
    the minimum-norm solution. progress: optional progress(advance, total=None) callback for the solve.
    solve=False: the new layers get zero weights of the solved shapes (grow --dry-run counts parameters)."""
    if block is not None:
        if layer is not None or after is not None:
            raise UsageError("give one of --layer, --after or --block")
        from .block import deepen_block
        return deepen_block(model, block, init=init, count=count, seed=seed)
    if (layer is None) == (after is None):
        raise UsageError("give exactly one of --layer or --after")
    index = GraphIndex(model)
    target = find_layer(index, layer or after)
    dtype = weight_dtype(target)
    rank = len(target.weight.shape) - 2 if target.op == "Conv" else 0
    k1t, k2t = parse_kernel(k1, rank, "--k1"), parse_kernel(k2, rank, "--k2")
    detected = activations.activation_after(index, target.final_output, through_reshapes=after is None)
    act = activations.resolve(activation, detected)
    notes = []
    if act.kind == "none" and (activation or "auto").lower() == "auto":
        notes.append(f"no activation follows {target.id} (looked through pooling, BatchNorm, dropout, bias Adds and reshapes): "
                     "the new pair stays linear; use --activation relu|tanh to insert one")
    if batchnorm and (target.op in ("MatMul", "Einsum") or (after is not None and rank == 0)):
        raise CannotMorph("--batchnorm: BatchNormalization normalises axis 1, but MatMul layers keep features on "
                          "the last axis")
    start = time.perf_counter()
    if after is None:
        weight = target.effective_weight().astype(np.float64)
        c_out = weight.shape[0]
        fac, minimum = solve_factors(weight, parse_width(width, c_out), k1t, k2t, target.group, method, algorithm, seed,
                                     c_out, width_requested=width, full_rank=full_rank, progress=progress, solve=solve)
        x, y, base = target.node.input[0], target.output, target.id
        after_act, bias = None, target.bias_name if target.op not in ("MatMul", "Einsum") else None
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
        fac, minimum = solve_factors(weight, parse_width(width, c), k1t, k2t, 1, method, algorithm, seed, c,
                                     width_requested=width, full_rank=full_rank, progress=progress, solve=solve)
        x = index.unique_name(f"{y}/morph_in")
        for node in index.graph.node:  # the activation now writes x; the new pair writes y
            for i, out in enumerate(node.output):
                if out == y:
                    node.output[i] = x
        base, bias = f"{target.id}/morph_after", None
        op = "Conv" if rank else "MatMul"
        after_act = act
        notes.append(f"identity-start layers inserted after {y} (activation {detected.kind})")
    solve_seconds = time.perf_counter() - start
    weights = [fac.first, fac.second]
    if after is None:
        geo = geometry_of(index, target)
        x, flatten = chain_input(index, target)
        nodes, infos = emit_chain(index, base, x, y, weights, geo, act, dtype, bias=bias, offset=fac.offset,
                                  batchnorm=batchnorm)
        replace_node(index, target.node, flatten + nodes)
        remove_unused_constants(model, [target.weight_name])
    else:
        geo = LinearGeometry(op, [0] * (2 * rank), (1,) * rank, (1,) * rank, (1,) * rank, 1)
        pair_out = y if after_act.kind == "none" else index.unique_name(f"{base}/morph_pair_out")
        nodes, infos = emit_chain(index, base, x, pair_out, weights, geo, act, dtype, offset=fac.offset,
                                  batchnorm=batchnorm)
        if pair_out != y:  # the activation after the new pair; a real ReLU is exact on ReLU outputs
            channel_shape = (1,) * rank
            tail, out = activations.emit(index, after_act, pair_out, fac.second.shape[0], channel_shape,
                                         f"{base}/morph_act1", dtype, identity_start=after_act.kind != "relu")
            nodes.extend(tail)
            nodes.append(helper.make_node("Identity", [out], [y], name=index.unique_name(f"{base}/morph_out")))
        producer = next(n for n in index.graph.node if x in n.output)
        replace_node(index, None, nodes, at=producer)
    report = DeepenReport(layer=target.id if after is None else f"after {target.id}", method=method,
                          algorithm=fac.algorithm, k1=list(fac.first.shape[2:]), k2=list(fac.second.shape[2:]),
                          width=fac.first.shape[0], minimum_width=minimum, residual=fac.residual,
                          amplification=fac.amplification,
                          activation=act.describe(), batchnorm=batchnorm, new_layers=infos,
                          solve_seconds=solve_seconds, notes=notes, algorithm_requested=algorithm,
                          width_requested=None if width is None else str(width))
    if fac.algorithm == "practical":
        report.notes.append(f"Algorithm 2 solved with k1={fac.solved_k1}, k2={fac.solved_k2} and zero-padded back")
    return model, report
