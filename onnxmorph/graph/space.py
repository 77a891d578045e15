"""The types of the channel-coupling analysis: where the widened channel space sits in a tensor (Entry), what must
grow with it (ParamUse, BoundsEdit, Norm), and the whole coupled group (CouplingGroup).

Every coupling rule module (graph/coupling/) and every pass that grows a group reads these; they import nothing of
the analysis.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from .proto import attr, node_name


@dataclass(frozen=True)
class Entry:
    """Where the space sits along one axis of a tensor.

    axis: the axis; offset: index of the space's first channel; block: consecutive indices per channel (an
    NCHW tensor flattened gives H·W). chunks > 1: the axis is `chunks` equal chunks with the space at `offset`
    in every one (channels-last flattened, a fused QKV's Q, K and V). part: only space channels [start, stop) lie
    here (Split/Slice), None for all. seg_axis: the space's segments lie along this other axis, `axis` holding the
    position inside a segment (a channel-shuffle Reshape to (N, g, C/g, ...)). interleaved: segment s's channel j
    is at j·segments + s (after a shuffle)."""
    axis: int
    offset: int = 0
    block: int = 1
    chunks: int = 1
    part: tuple[int, int] | None = None
    seg_axis: int | None = None
    interleaved: bool = False

    @property
    def simple(self) -> bool:
        """The space sits on one axis in plain order (maybe a slice of it, maybe at an offset)."""
        return self.chunks == 1 and self.seg_axis is None and not self.interleaved

    def moved(self, move) -> "Entry":
        """The same place after an op that renumbers axes: `move(old axis) -> new axis` (seg_axis follows)."""
        return replace(self, axis=move(self.axis), seg_axis=None if self.seg_axis is None else move(self.seg_axis))


@dataclass
class ParamUse:
    """A constant input that has one value per channel of the space and must grow."""
    node: onnx.NodeProto
    input_index: int
    place: Entry  # its axis is the parameter's axis
    role: str     # bn_scale, bn_bias, bn_mean, bn_var, slope, add_const, mul_const, bias, inorm_scale, ...

    @property
    def axis(self) -> int:
        return self.place.axis


@dataclass
class BoundsEdit:
    """Split sizes or Slice starts/ends on the space's axis: positions that move when segments grow."""
    node: onnx.NodeProto
    entry: Entry                 # the space in the node's data input
    positions: list[int]         # old boundary positions along the axis (normalised, non-negative)
    kind: str                    # split_attr | split_input | split_equal | slice_attr | slice_input
    slot: int = 0                # Slice: which entry of starts/ends is the channel axis


@dataclass
class Norm:
    """One normalisation over the space, fused or decomposed (graph/norms.py finds the decomposed ones).

    kind: "layer" (mean and variance) or "rms" (root mean square). nodes: every node of it (one for the fused
    ops). input: the tensor it normalises; output: the normalised tensor after scale and bias. scale, bias: the
    input names of gamma and beta (None when absent). epsilon: where epsilon lives, (node, "epsilon") for an
    attribute, (node, input_index) for a constant input of an Add. extra (decomposed norms): channels, reduced,
    scale_at, bias_at, folded (graph/norms.py)."""
    kind: str
    nodes: list
    input: str
    output: str
    scale: str | None = None
    bias: str | None = None
    epsilon: tuple | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return node_name(self.nodes[0])

    @property
    def kind_name(self) -> str:
        return {"layer": "LayerNorm", "rms": "RMSNorm"}[self.kind]

    def epsilon_value(self, index) -> float:
        node, where = self.epsilon
        if isinstance(where, str):
            return float(attr(node, where, 1e-5))
        return float(np.asarray(index.constant(node.input[where])).reshape(-1)[0])


@dataclass
class CouplingGroup:
    channels: int
    members: dict = field(default_factory=dict)            # tensor -> tuple of Entry (a tensor may hold a part twice)
    producers: list = field(default_factory=list)          # linear layer nodes whose outputs grow
    producer_entries: list = field(default_factory=list)   # (node, Entry of its output)
    consumers: list = field(default_factory=list)          # (node, Entry of its input) whose input columns grow
    depthwise: list = field(default_factory=list)          # depthwise Conv nodes that grow with the space
    depthwise_entries: dict = field(default_factory=dict)  # id(node) -> Entry of its input
    params: list = field(default_factory=list)             # ParamUse
    reshapes: list = field(default_factory=list)           # ShapeEdit (graph/shape_source.py)
    bounds: list = field(default_factory=list)             # BoundsEdit
    cuts: set = field(default_factory=set)                 # channel indices where a segment starts
    equal_growth: list = field(default_factory=list)       # why every segment must grow by the same number
    equal_parts: list = field(default_factory=list)        # per reason: the parts (lists of channel ranges) that
                                                           # must each grow by the same number (grow_alike)
    zero_preserving: bool = True                           # every op on the space maps 0 to 0
    zero_new_channels_required: str | None = None          # why new channels must be exactly 0 (zeros on producers)
    keep_order: str | None = None                          # why new channels must follow the old ones, unpermuted
    net2net_refused: str | None = None                     # why replication is not exact here
    head_dim: int | None = None                            # the space counts attention heads (or GQA groups)
    interleave: int | None = None                          # the groups of the channel shuffle interleaved entries
                                                           # count (segments may be cut finer later)
    norms: list = field(default_factory=list)              # Norm records: norms over the space

    def segments(self) -> list[tuple[int, int]]:
        """The space's segments as (start, stop) channel ranges."""
        edges = sorted({0, self.channels} | {c for c in self.cuts if 0 < c < self.channels})
        return list(zip(edges[:-1], edges[1:]))

    def cut(self, start: int, stop: int, pieces: int = 1):
        for k in range(pieces + 1):
            self.cuts.add(start + (stop - start) * k // pieces)

    def grow_alike(self, why: str, parts: list, first: bool = False):
        """Parts of the space (each a list of (start, stop) channel ranges: a grouped op's groups) that must each
        get the same number of new channels. Their bounds cut the space; widen grows every segment alike, or,
        when the segments differ in size, solves for growths that keep every part alike (solve/growth.py)."""
        for part in parts:
            for a, b in part:
                self.cut(a, b)
        if first:
            self.equal_growth.insert(0, why)
        else:
            self.equal_growth.append(why)
        self.equal_parts.append(parts)

    def summary(self) -> dict:
        out = {"channels": self.channels,
               "producers": [node_name(n) for n in self.producers],
               "consumers": [node_name(n) for n, _ in self.consumers],
               "depthwise": [node_name(n) for n in self.depthwise],
               "parameters": sorted({f"{node_name(p.node)}:{p.role}" for p in self.params}),
               "tensors": sorted(self.members)}
        if len(self.segments()) > 1:
            out["segments"] = [b - a for a, b in self.segments()]
        if self.equal_growth:
            out["equal_growth"] = sorted(set(self.equal_growth))
        if self.zero_new_channels_required:
            out["zero_new_channels_required"] = self.zero_new_channels_required
        if self.norms:
            out["norms"] = [n.name for n in self.norms]
        if self.head_dim:
            out["head_dim"] = self.head_dim
        if self.reshapes:
            out["shape_constants"] = sorted({node_name(e.node) for e in self.reshapes})
        if self.bounds:
            out["bounds"] = sorted({node_name(e.node) for e in self.bounds})
        return out


@dataclass
class GroupReport:
    """What widening a layer grows, as inspect --layer, --dry-run and widen's report print it."""
    layer: str
    group: dict   # CouplingGroup.summary()

    def lines(self) -> list[str]:
        g = self.group
        units = f"{g['channels']} attention head units, head size {g['head_dim']}" if g.get("head_dim") else \
            f"{g['channels']} channels"
        lines = [f"widening {self.layer} ({units}) grows:",
                 f"  layers whose outputs grow: {', '.join(g['producers']) or '-'}",
                 f"  layers whose inputs grow: {', '.join(g['consumers']) or '-'}",
                 f"  depthwise convs: {', '.join(g['depthwise']) or '-'}",
                 f"  per-channel parameters: {', '.join(g['parameters']) or '-'}"]
        for key, label in (("shape_constants", "shape constants that follow"), ("bounds", "Split/Slice bounds that "
                           "follow"), ("norms", "norms over the space")):
            if g.get(key):
                lines.append(f"  {label}: {', '.join(g[key])}")
        return lines

    def to_dict(self) -> dict:
        return {"layer": self.layer, "group": self.group}
