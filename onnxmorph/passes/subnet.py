"""Subnet morphing (paper, section 3.5): split G into N parallel paths whose weights sum to G (eq. 20), each
path optionally P+1 sequential layers solved with the deepen solver (eq. 19). The paths meet in one Sum;
G's bias is counted once (on the first path).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .. import activations
from ..errors import UsageError
from ..graph.edit import replace_node, weight_dtype
from ..graph.proto import remove_unused_constants
from ..graph.index import GraphIndex
from ..graph.layers import find_layer
from ..solve import compose_grouped, embed
from .chain import NewLayer, emit_chain
from .common import chain_input, geometry_of, keeps_stored_types, parse_kernel, parse_width, solve_factors


@dataclass
class SubnetReport:
    layer: str
    paths: int
    depth: int
    split: str
    kernels: list[list[int]]
    activation: str
    residual: float                       # max over paths of eq. 19's relative residual
    split_residual: float                 # ‖Σ G_i − G‖ / ‖G‖ (eq. 20)
    path_layers: list[list[NewLayer]] = field(default_factory=list)

    def lines(self) -> list[str]:
        paths = f"{self.paths} path{'s' if self.paths != 1 else ''}"
        layers = f"{self.depth + 1} layer{'s' if self.depth else ''}"
        out = [f"split {self.layer} into {paths} ({self.split}), {'each ' if self.paths != 1 else ''}{layers}; "
               f"eq. 20 residual {self.split_residual:.2e}, eq. 19 residual {self.residual:.2e}, "
               f"activation {self.activation}"]
        for i, layers in enumerate(self.path_layers):
            out.append(f"  path {i}: " + " -> ".join(f"{tuple(n.weight_shape)}" for n in layers))
        return out


def _split(weight: np.ndarray, paths: int, split: str, rng) -> list[np.ndarray]:
    if split == "equal":
        return [weight / paths for _ in range(paths)]
    if split != "random":
        raise UsageError(f"unknown --split {split!r}: use equal or random")
    scale = float(np.std(weight)) or 1.0
    parts = [rng.standard_normal(weight.shape) * scale / np.sqrt(paths) for _ in range(paths - 1)]
    parts.append(weight - sum(parts))
    return parts


def _chain_factors(weight, kernels, groups, algorithm, seed, widths, solve=True):
    """Factor one path's weight into len(kernels) layers: F_0 with kernels[0], then the rest recursively."""
    c_out = weight.shape[0]
    if len(kernels) == 1:
        return [weight], tuple(0 for _ in weight.shape[2:]), 0.0
    rank = weight.ndim - 2
    rest = tuple(sum(k[i] for k in kernels[1:]) - (len(kernels) - 2) for i in range(rank))
    fac, _ = solve_factors(weight, widths[0], kernels[0], rest, groups, "netmorph", algorithm, seed, c_out,
                           solve=solve)
    tail, tail_offset, tail_res = _chain_factors(fac.second, kernels[1:], groups, algorithm, seed + 1, widths[1:],
                                                 solve)
    return [fac.first] + tail, fac.offset, max(fac.residual, tail_res)


@keeps_stored_types
def subnet_model(model: onnx.ModelProto, layer: str, paths: int = 2, depth: int = 0, kernels=None,
                 split: str = "random", activation: str = "auto", width=None, algorithm: str = "practical",
                 seed: int = 0, solve: bool = True):
    """Split `layer` into `paths` parallel paths of depth+1 layers. Returns (child, SubnetReport).
    solve=False: each path's layers get zero weights of the solved shapes (grow --dry-run)."""
    if paths < 1 or depth < 0:
        raise UsageError("--paths must be at least 1 and --depth at least 0")
    index = GraphIndex(model)
    target = find_layer(index, layer)
    dtype = weight_dtype(target)
    weight = target.effective_weight().astype(np.float64)
    rank = weight.ndim - 2
    if kernels:
        parts = [p for p in (kernels.split(",") if isinstance(kernels, str) else kernels) if str(p).strip()]
        layer_kernels = [parse_kernel(k, rank, "--kernels") for k in parts]
        if len(layer_kernels) != depth + 1:
            raise UsageError(f"--kernels gives {len(layer_kernels)} kernels for {depth + 1} layers per path")
    else:
        layer_kernels = [tuple(weight.shape[2:])] + [(1,) * rank] * depth
    widths = [None] * depth
    if width is not None:
        widths = [parse_width(width, weight.shape[0])] * depth
    rng = np.random.default_rng(seed)
    pieces = _split(weight, paths, split, rng)
    split_residual = float(np.linalg.norm(sum(pieces) - weight) / max(np.linalg.norm(weight), 1e-300))
    detected = activations.activation_after(index, target.final_output)
    act = activations.resolve(activation, detected)
    geo = geometry_of(index, target)
    x, nodes = chain_input(index, target)
    y = target.output
    bias = target.bias_name if target.op not in ("MatMul", "Einsum") else None
    path_infos, residual = [], 0.0
    outs = []
    for i, piece in enumerate(pieces):
        factors, offset, _ = _chain_factors(piece, layer_kernels, target.group, algorithm, seed + 100 * i, widths,
                                            solve)
        # Equation 19 checked on the whole path: the chain composes back to G_i.
        composite = factors[0]
        for f in factors[1:]:
            composite = compose_grouped(composite, f, target.group)
        target_i = embed(piece, composite.shape[2:], offset)
        residual = max(residual, float(np.linalg.norm(composite - target_i) / max(np.linalg.norm(piece), 1e-300)))
        out = index.unique_name(f"{target.id}/morph_path{i}_out") if paths > 1 else y
        names = [f"{target.id}/morph_path{i}_l{j}" for j in range(len(factors))]
        chain_nodes, infos = emit_chain(index, f"{target.id}/morph_path{i}", x, out, factors, geo, act, dtype,
                                        bias=bias if i == 0 else None, offset=offset, names=names)
        nodes.extend(chain_nodes)
        path_infos.append(infos)
        outs.append(out)
    if paths > 1:
        nodes.append(helper.make_node("Sum", outs, [y], name=index.unique_name(f"{target.id}/morph_paths_sum")))
    replace_node(index, target.node, nodes)
    remove_unused_constants(model, [target.weight_name])
    report = SubnetReport(target.id, paths, depth, split, [list(k) for k in layer_kernels],
                          act.describe() if depth else "none", residual, split_residual, path_infos)
    return model, report
