"""`onnxmorph inspect`: a model summary and every morphable layer with what applies to it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from . import activations
from .errors import OnnxmorphError
from .graph.blocks import find_blocks
from .graph.coupling import analyse, widen_index
from .graph.edit import explicit_pads, weight_dtype
from .graph.forms import form_refusals
from .graph.index import GraphIndex
from .graph.layers import Layer, find_layer, find_layers
from .graph.model_io import load_model
from .graph.shapes import infer_shapes
from .graph.space import GroupReport
from .passes.widen_stream import lemon_refusal
from .provenance import lineage_lines, read_history



@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list


@dataclass
class LayerInfo:
    id: str
    op: str
    node: str
    weight: str
    weight_shape: list[int]
    kernel: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    pads: list[int] = field(default_factory=list)
    dilations: list[int] = field(default_factory=list)
    group: int = 1
    batchnorm: str | None = None
    activation: str = "none"
    morphs: dict = field(default_factory=dict)   # verb -> "ok" or the reason it does not apply
    widen_unit: str = ""                         # how widen grows it when not channel by channel (heads, d_model)


@dataclass
class BlockInfo:
    id: str            # what `deepen --block` takes
    kind: str          # transformer (attention + MLP unit), attention or residual
    units: list[str]
    stream_in: str
    stream_out: str
    repeat: str        # "ok" or why the block cannot be repeated


@dataclass
class InspectReport:
    path: str
    ir_version: int
    opset: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameters: int
    layers: list[LayerInfo]
    history: list[dict] = field(default_factory=list)   # onnxmorph.history: the morphs that made this model
    blocks: list[BlockInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what is refused about the model as a whole (graph/forms)

    def lines(self) -> list[str]:
        out = [f"{self.path}: IR {self.ir_version}, opset {self.opset}, producer {self.producer or '?'}, "
               f"{self.parameters:,} parameters"]
        for kind, items in (("input", self.inputs), ("output", self.outputs)):
            out.extend(f"  {kind} {t.name}: {t.dtype} {t.shape}" for t in items)
        out.append(f"{len(self.layers)} layer{'s' if len(self.layers) != 1 else ''}:")
        for lay in self.layers:
            geom = ""
            if lay.op == "Conv":
                geom = (f" k={lay.kernel} s={lay.strides} p={lay.pads} d={lay.dilations}"
                        + (f" g={lay.group}" if lay.group != 1 else ""))
            follow = " -> ".join(x for x in (lay.batchnorm and "BatchNormalization", lay.activation) if x and x != "none")
            morphs = ", ".join((f"{v} ({lay.widen_unit})" if v == "widen" and lay.widen_unit else v) if r == "ok"
                               else f"{v}: no ({r})" for v, r in lay.morphs.items())
            out.append(f"  {lay.id}: {lay.op} {tuple(lay.weight_shape)}{geom}"
                       f"{' -> ' + follow if follow else ''}  [{morphs}]")
        out.extend(_block_lines(self.blocks))
        out.extend(f"note: {n}" for n in self.notes)
        out.extend(lineage_lines(self.history))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _block_lines(blocks: list[BlockInfo]) -> list[str]:
    out = [f"{len(blocks)} residual blocks:"] if blocks else []
    for b in blocks:
        repeat = "deepen --block: ok" if b.repeat == "ok" else f"deepen --block: no ({b.repeat})"
        out.append(f"  {b.id}: {b.kind}, {b.stream_in} -> {b.stream_out}  [{repeat}]")
    return out


def _blocks(index: GraphIndex) -> list[BlockInfo]:
    return [BlockInfo(b.id, b.kind, [u.id for u in b.units], b.units[0].stream_in, b.units[-1].stream_out,
                      b.problem or "ok") for b in find_blocks(index)]


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return str(elem_type)


def _tensor_info(vi) -> TensorInfo:
    t = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return TensorInfo(vi.name, _type_name(t.elem_type), shape)


def _deepen_check(index: GraphIndex, layer: Layer, shapes) -> str:
    try:
        weight_dtype(layer)
        if layer.op == "Conv":
            explicit_pads(index, layer, shapes)
    except OnnxmorphError as exc:
        return str(exc)
    return "ok"


def _widen_check(index: GraphIndex, layer: Layer, shapes, info: LayerInfo | None = None) -> str:
    try:
        weight_dtype(layer)
        group = analyse(index, layer, shapes)
    except OnnxmorphError as exc:
        return str(exc)
    if info is not None:
        info.widen_unit = _widen_unit(group, layer, index)
    return "ok"


def _widen_unit(group, layer: Layer, index=None) -> str:
    """How a transformer layer grows: by whole heads or GQA groups, or the residual stream (duplication, LEMON)."""
    if getattr(group, "norms", None):
        why = lemon_refusal(index, group) if index is not None else "not checked"
        if why is None:
            return (f"the residual stream through {len(group.norms)} norms: any width (LEMON, pre-norm; "
                    "duplication at integer multiples)")
        return f"the residual stream through {len(group.norms)} norms: integer multiples only (duplication; {why})"
    if not getattr(group, "head_dim", None):
        return ""
    blocks = [e.block for _, e in group.producer_entries]
    place = next((e for n, e in group.producer_entries if n is layer.node), None)
    unit = place.block * place.chunks if place else 1
    r = max(blocks) // group.head_dim
    kind = f"GQA groups (a KV head and its {r} query heads)" if r > 1 else "heads"
    if place and place.chunks > 1:   # a fused QKV projection: a head in each part
        return (f"by whole heads in each of its {place.chunks} fused parts (Q, K, V): {group.channels} heads of "
                f"{place.block} features each; --width a multiple of {unit} more")
    return (f"by whole {kind}: {group.channels} of {unit} features here, head size {group.head_dim}; "
            f"--width a multiple of {unit} more")


def coupled_group(model, layer: str) -> GroupReport:
    """What widening `layer` would grow (the same analysis widen runs); raises CannotMorph with the reason."""
    model = load_model(model)
    index = widen_index(model)
    target = find_layer(index, layer)
    return GroupReport(target.id, analyse(index, target, infer_shapes(model)).summary())


def inspect(model, layer: str | None = None):
    """Summary of a model and its Conv/Gemm/MatMul layers; with `layer`, the coupled group of that layer."""
    if layer is not None:
        return coupled_group(model, layer)
    path = str(model) if not isinstance(model, onnx.ModelProto) else "<model>"
    model = load_model(model)
    # The blocks as deepen --block finds them: the same function on the same index of the loaded model (before the
    # folding of static shape reads that widen's analysis does).
    blocks = _blocks(GraphIndex(model))
    index = widen_index(model)  # what widen sees: static shape reads folded
    shapes = infer_shapes(model)
    inits = {t.name for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    params += sum(int(np.prod(a.t.dims)) for n in model.graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    layers = []
    for lay in find_layers(index):
        bn_node = index.single_consumer(lay.final_output)
        act = activations.activation_after(index, lay.final_output)
        info = LayerInfo(lay.id, lay.op, lay.node.name, lay.weight_name, list(lay.weight.shape),
                         batchnorm="BatchNormalization" if bn_node is not None and bn_node.op_type == "BatchNormalization" else None,
                         activation=act.kind)
        if lay.op == "Conv":
            rank = len(lay.kernel)
            info.kernel, info.strides = list(lay.kernel), list(lay.strides)
            info.dilations, info.group = list(lay.dilations), lay.group
            try:
                info.pads = explicit_pads(index, lay, shapes)
            except OnnxmorphError:
                info.pads = [f"auto_pad={lay.auto_pad}"] * (2 * rank)
        linear = _deepen_check(index, lay, shapes)  # deepen and subnet need the same things of a layer
        info.morphs = {"deepen": linear,
                       "kernel": linear if lay.op == "Conv" else f"{lay.op} has no kernel",
                       "subnet": linear,
                       "widen": _widen_check(index, lay, shapes, info)}
        layers.append(info)
    return InspectReport(path, model.ir_version, index.opset, model.producer_name,
                         [_tensor_info(i) for i in model.graph.input if i.name not in inits],
                         [_tensor_info(o) for o in model.graph.output], params, layers, read_history(model),
                         blocks, form_refusals(model))
