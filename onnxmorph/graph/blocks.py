"""Residual units and blocks: a branch from a stream tensor joined back by an Add (or a two-input Sum).

A unit is s_out = P(s + f(s)) with P an optional post-op after the Add (ReLU in a ResNet, nothing in a
pre-norm transformer, LayerNorm in a post-norm one). A block is one or more consecutive units: a transformer
block is its attention unit plus the MLP unit after it, a ResNet block is one unit. A unit whose branch ends
in a layer that can be zeroed repeats exactly, provided P(s_out) = s_out for the stream it reads
(DESIGN.md, "Identity blocks").
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import onnx

from ..errors import CannotMorph, UsageError
from . import norms as norm_patterns
from .einsum import contraction
from .forms import form_refusals
from .index import GraphIndex
from .kv_cache import cache_outputs
from .proto import attr

SHAPE_OPS = ("Shape", "Size")
LINEAR_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose", "Einsum")
NORM_OPS = ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
            "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "LpNormalization",
            "MeanVarianceNormalization")
NORM_START_OPS = NORM_OPS + ("ReduceMean", "Pow")  # the first op of a decomposed LayerNorm / RMSNorm
PASS_OPS = ("Identity", "Dropout")  # the identity at inference
# Ops whose output is 0 wherever their data input is 0 (walked back from the branch output to the layer to zero).
ZERO_KEEPING_OPS = ("Identity", "Dropout", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Mul")
ELEMENTWISE_OPS = ("Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Celu",
                   "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Abs", "Neg")
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention")
ALL = (-math.inf, math.inf)


@dataclass
class Unit:
    """One residual unit: stream_in → branch → Add(stream_in, branch_out) → post → stream_out."""
    id: str
    add: onnx.NodeProto
    stream_in: str
    branch_out: str
    branch: list = field(default_factory=list)      # NodeProtos of the branch, in graph order
    post: list = field(default_factory=list)        # NodeProtos after the Add (ReLU, Clip, Identity)
    names: list[str] = field(default_factory=list)  # every name that finds this unit
    attention: bool = False
    problem: str = ""                               # why it cannot be repeated; "" when it can
    zero: list[tuple[str, int]] = field(default_factory=list)  # (node name-or-output, input index) to zero
    zero_kind: str = ""                             # "linear" or "batchnorm"
    fixed: tuple[float, float] = ALL                # P(x) = x for x in this interval
    range: tuple[float, float] = ALL                # P's output lies in this interval
    aliases: set[str] = field(default_factory=set)  # stream_out after float Casts to its own type (no-ops)

    @property
    def add_out(self) -> str:
        return self.add.output[0]

    @property
    def stream_out(self) -> str:
        return self.post[-1].output[0] if self.post else self.add.output[0]

    @property
    def nodes(self) -> list:
        return self.branch + [self.add] + self.post


@dataclass
class Block:
    """Consecutive units repeated together; id is the unit id or 'A:B'."""
    id: str
    units: list[Unit]
    problem: str = ""

    @property
    def kind(self) -> str:
        if len(self.units) == 2 and self.units[0].attention and not self.units[1].attention:
            return "transformer"
        return "attention" if any(u.attention for u in self.units) else "residual"


def _interval_of(index: GraphIndex, node) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(fixed set, output range) of an idempotent post-op, or None when the op is not idempotent."""
    if node.op_type in PASS_OPS:
        return ALL, ALL
    if node.op_type == "Relu":
        return (0.0, math.inf), (0.0, math.inf)
    if node.op_type == "Clip":
        if index.opset < 11:
            lo, hi = attr(node, "min", -math.inf), attr(node, "max", math.inf)
        else:
            bounds = []
            for i, default in ((1, -math.inf), (2, math.inf)):
                name = node.input[i] if len(node.input) > i else ""
                if not name:
                    bounds.append(default)
                elif index.is_constant(name):
                    bounds.append(float(index.constant(name)))
                else:
                    return None
            lo, hi = bounds
        return (lo, hi), (lo, hi)
    return None


class _Graph:
    """Ancestor/descendant queries over an index (data edges and shape edges alike)."""

    def __init__(self, index: GraphIndex):
        self.index = index
        self.position = {id(n): i for i, n in enumerate(index.graph.node)}

    def tensor_position(self, tensor: str) -> int:
        node = self.index.producer.get(tensor)
        return -1 if node is None else self.position[id(node)]

    def ancestors(self, tensor: str, data_only: bool = False, after: int = -1) -> set[str]:
        """Tensors upstream of `tensor`; with data_only, not through Shape/Size (shape-only dependence); only
        through nodes placed after position `after` (nodes are in topological order, so this bounds a search
        for paths from a tensor produced there)."""
        seen, todo = set(), [tensor]
        while todo:
            t = todo.pop()
            node = self.index.producer.get(t)
            if node is None or (data_only and node.op_type in SHAPE_OPS) or self.position[id(node)] <= after:
                continue
            for i in node.input:
                if i and i not in seen:
                    seen.add(i)
                    todo.append(i)
        return seen

    def latest_common_ancestor(self, a: str, b: str) -> str | None:
        """The non-constant tensor upstream of both a and b whose producer comes last, or None."""
        heap, reached = [(-self.tensor_position(a), a, 1), (-self.tensor_position(b), b, 2)], {}
        while heap:
            _, t, side = heapq.heappop(heap)
            if reached.get(t, 0) & side:
                continue
            reached[t] = reached.get(t, 0) | side
            if reached[t] == 3 and t not in (a, b) and not constant_source(self.index, t):
                return t
            node = self.index.producer.get(t)
            for i in (node.input if node is not None else []):
                if i and not reached.get(i, 0) & side:
                    heapq.heappush(heap, (-self.tensor_position(i), i, side))
        return None

    def data_descendant_nodes(self, tensor: str, within: set[int] | None = None) -> list:
        """Nodes reached from `tensor` through data edges (not through Shape/Size), optionally within a set."""
        seen, out, todo = set(), [], [tensor]
        while todo:
            t = todo.pop()
            for node in self.index.consumers.get(t, []):
                if id(node) in seen or (within is not None and id(node) not in within):
                    continue
                seen.add(id(node))
                out.append(node)
                if node.op_type not in SHAPE_OPS:
                    todo.extend(node.output)
        return out

    def has_linear(self, nodes) -> bool:
        return any(n.op_type in LINEAR_OPS and len(n.input) > 1 and constant_source(self.index, n.input[1]) for n in nodes)


def _operands(index: GraphIndex, node) -> list[str] | None:
    if node.op_type not in ("Add", "Sum") or node.domain not in ("", "ai.onnx"):
        return None
    ins = [i for i in node.input if i]
    if len(ins) != 2 or any(constant_source(index, i) for i in ins):
        return None
    return ins


def _branch_nodes(g: _Graph, stream: str, out: str) -> list:
    """Nodes on paths from `stream` to `out` (shape computations from the stream included), in graph order."""
    upstream = g.ancestors(out, after=g.tensor_position(stream)) | {out}
    producers = {id(g.index.producer[t]) for t in upstream if t in g.index.producer}
    seen, nodes, todo = set(), [], [stream]
    while todo:
        t = todo.pop()
        for node in g.index.consumers.get(t, []):
            if id(node) in producers and id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
                todo.extend(node.output)
    return sorted(nodes, key=lambda n: g.position[id(n)])


def constant_source(index: GraphIndex, name: str) -> str | None:
    """The initializer or Constant behind `name`, looking through Identity nodes (exporters dedup equal
    initializers that way), or None."""
    for _ in range(16):
        if index.is_constant(name):
            return name
        node = index.producer.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def _zero_target(index: GraphIndex, branch_out: str, branch_ids: set[int]):
    """Walk back from the branch output through zero-keeping ops to the layer whose parameters to zero."""
    t, targets = branch_out, []
    for _ in range(64):
        node = index.producer.get(t)
        if node is None or id(node) not in branch_ids:
            return None, "", f"the branch output {branch_out} comes from outside the branch"
        op = node.op_type
        consts = [i for i, name in enumerate(node.input) if name and constant_source(index, name)]
        data = [name for i, name in enumerate(node.input) if name and i not in consts]
        if op == "BatchNormalization":
            return targets + [(node, 1), (node, 2)], "batchnorm", ""
        if op in ("Conv", "Gemm") and 1 in consts:
            return targets + [(node, i) for i in consts if i in (1, 2)], "linear", ""
        if op in ("MatMul", "Einsum") and consts == [1] and (op == "MatMul" or contraction(node) is not None):
            return targets + [(node, 1)], "linear", ""
        if op == "Add" and len(data) == 1 and len(consts) == 1:  # a bias after MatMul
            targets.append((node, consts[0]))
            t = data[0]
            continue
        if op == "Add" and len(data) == 2 and not consts:   # two parallel paths (Phi: attention + MLP): zero both
            both = [_zero_target(index, side, branch_ids) for side in data]
            bad = next((b for b in both if b[0] is None), None)
            if bad is not None:
                return bad
            if len({b[1] for b in both}) != 1:
                return None, "", "the branch's two parallel paths end in different kinds of layers"
            return targets + both[0][0] + both[1][0], both[0][1], ""
        if op in ZERO_KEEPING_OPS and data:
            t = data[0]
            continue
        return None, "", f"the branch ends in {op}, which has no parameters that make it output zero"
    return None, "", "the branch output could not be traced to a layer"


def _node_id(node, name_count: dict) -> str:
    return node.name if node.name and name_count.get(node.name, 0) == 1 else node.output[0]


def find_units(model_or_index) -> list[Unit]:
    """Every residual unit in graph order, each with the reason it cannot be repeated alone (or "")."""
    index = model_or_index if isinstance(model_or_index, GraphIndex) else GraphIndex(model_or_index)
    g = _Graph(index)
    name_count: dict[str, int] = {}
    for node in index.graph.node:
        name_count[node.name] = name_count.get(node.name, 0) + 1
    from .shapes import infer_shapes
    shapes = infer_shapes(index.model)
    units: list[Unit] = []
    for node in index.graph.node:
        ins = _operands(index, node)
        if ins is None:
            continue
        a, b = ins
        ranks = {len(shapes[t]) for t in (a, b, node.output[0]) if t in shapes}
        if len(ranks) > 1:
            continue  # a broadcast Add (scores + mask), not a residual join
        if a in g.ancestors(b, after=g.tensor_position(a)) or b in g.ancestors(a, after=g.tensor_position(b)):
            stream, out = (a, b) if g.tensor_position(a) < g.tensor_position(b) else (b, a)
            branch = _branch_nodes(g, stream, out)
            if not g.has_linear(branch):
                continue  # an elementwise pattern such as x + c·x³, not a residual unit
            unit = Unit(_node_id(node, name_count), node, stream, out, branch)
        else:
            stream = g.latest_common_ancestor(a, b)
            if stream is None:
                continue
            path_a, path_b = _branch_nodes(g, stream, a), _branch_nodes(g, stream, b)
            if not (g.has_linear(path_a) and g.has_linear(path_b)):
                continue  # e.g. scores + mask, or RoPE's q·cos + rotate(q)·sin
            unit = Unit(_node_id(node, name_count), node, stream, b, path_a + path_b)
            unit.problem = (f"the shortcut from {stream} is not the identity (projection shortcut); "
                            "the copy would not fit")
        unit.names = [n for n in (node.name if name_count[node.name] == 1 else "", node.output[0]) if n]
        unit.attention = any(n.op_type in ATTENTION_OPS for n in unit.branch) or any(
            n.op_type == "MatMul" and not any(constant_source(index, i) for i in n.input) for n in unit.branch)
        units.append(unit)
    units = _drop_spanning(index, units)
    # A join of two parallel paths from the same normed tensor (Phi's attention + MLP) is part of the unit around it,
    # not a unit with a projection shortcut.
    inside = {id(n) for u in units for n in u.branch}
    units = [u for u in units if not (u.problem.startswith("the shortcut from") and id(u.add) in inside)]
    found_norms = norm_patterns.find(index, shapes)[0] if units else {}
    for unit in units:
        if unit.problem:
            continue
        unit.problem = _check(index, g, unit, units, shapes, found_norms)
    return units


def _near_outputs(index: GraphIndex, tensor: str) -> set[str]:
    """`tensor` and what a short single-consumer chain of elementwise ops, norms, Casts and Reshapes makes of it
    (OPT's legacy export flattens the stream to (B·S, D) between the attention and the MLP unit)."""
    out = {tensor}
    for _ in range(3):
        users = index.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in ELEMENTWISE_OPS + PASS_OPS + NORM_OPS + ("Cast", "Reshape"):
            break
        tensor = users[0].output[0]
        out.add(tensor)
    return out


def _drop_spanning(index: GraphIndex, units: list[Unit]) -> list[Unit]:
    """Drop candidates whose branch holds the Add of a unit that is chained to another unit: an Add of a mask
    and scores that were computed after earlier blocks ("mask → later scores" looks like a branch), or a long
    skip around whole blocks. Neither is a unit to repeat."""
    near = {id(u): _near_outputs(index, u.add_out) for u in units}
    chained = {id(u) for u in units for v in units
               if v is not u and (v.stream_in in near[id(u)] or u.stream_in in near[id(v)])}
    adds = {id(u.add): u for u in units if id(u) in chained}
    return [u for u in units if not any(id(n) in adds and adds[id(n)] is not u for n in u.branch)]


def _check(index: GraphIndex, g: _Graph, unit: Unit, units: list[Unit], shapes: dict, found_norms=None) -> str:
    """Why this unit cannot be repeated alone, or ""; fills in post-ops, zero targets and intervals."""
    branch_ids = {id(n) for n in unit.branch}
    s_shape, t_shape = shapes.get(unit.stream_in), shapes.get(unit.add_out)
    if s_shape is not None and t_shape is not None and s_shape != t_shape:
        return f"its Add changes the stream's shape from {s_shape} to {t_shape}; the copy would not fit"
    # The branch's data flow must stay inside the unit; shape-only values may be shared with others. A KV-cache
    # output (present.N.*) is the unit's own: the copy writes its own (passes/block.py).
    cache = cache_outputs(index.model)
    for node in g.data_descendant_nodes(unit.stream_in, branch_ids):
        if node.op_type in SHAPE_OPS:
            continue
        for out in node.output:
            users = [u for u in index.consumers.get(out, []) if id(u) not in branch_ids and u is not unit.add
                     and u.op_type not in SHAPE_OPS]   # a shape read outside sees the original, unchanged
            if users or (out in index.graph_outputs and out not in cache):
                return f"the branch tensor {out} is also read outside the unit"
    streams = {u.stream_in for u in units}
    first = min(g.tensor_position(t) for t in streams) - 1
    produced = {o for n in unit.branch for o in n.output}
    for node in unit.branch:
        for name in node.input:
            if not name or name in produced or name == unit.stream_in or constant_source(index, name):
                continue
            if name in streams or g.ancestors(name, data_only=True, after=first) & streams:
                return f"its branch reads {name}, which comes from the network's stream, besides its input stream"
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return f"its branch holds control flow ({node.op_type})"
    # Post-op: a norm after the Add (post-norm) is not an identity; ReLU/Clip are on their own outputs.
    why = _post_norm(index, unit, units, branch_ids, found_norms or {})
    if why:
        return why
    t, fixed, rng = unit.add_out, ALL, ALL
    while len(index.consumers.get(t, [])) == 1 and t not in index.graph_outputs:
        nxt = index.consumers[t][0]
        if nxt.op_type in ("Add", "Sum") and _operands(index, nxt) is not None:
            break
        if nxt.op_type not in ELEMENTWISE_OPS + PASS_OPS:
            break
        iv = _interval_of(index, nxt)
        if iv is None:
            return f"{nxt.op_type} follows the Add and {nxt.op_type}(s + 0) = s cannot be proven for the stream"
        fixed = (max(fixed[0], iv[0][0]), min(fixed[1], iv[0][1]))
        if nxt.op_type not in PASS_OPS:
            rng = iv[1]
        unit.post.append(nxt)
        t = nxt.output[0]
    unit.fixed, unit.range = fixed, rng
    targets, kind, why = _zero_target(index, unit.branch_out, branch_ids)
    if targets is None:
        return why
    unit.zero = [(n.output[0], i) for n, i in targets]
    unit.zero_kind = kind
    dtype = index.constant_dtype(constant_source(index, targets[0][0].input[targets[0][1]]))
    unit.aliases = {c.output[0] for c in index.consumers.get(unit.stream_out, [])
                    if c.op_type == "Cast" and attr(c, "to") == dtype}
    for n, i in targets:
        if index.constant_dtype(constant_source(index, n.input[i])) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                   onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            return f"the parameter {n.input[i]} to zero is not a float tensor"
    return ""


def _norm_reading(index, found_norms, tensor, within=None) -> list:
    """(first node, output) of every norm whose input is `tensor`: a fused norm op, or a decomposed one
    (graph/norms.py), optionally only those whose first node is in `within` (ids)."""
    out = []
    for node in index.consumers.get(tensor, []):
        if within is not None and id(node) not in within:
            continue
        norm = found_norms.get(id(node))
        if norm is not None and norm.input == tensor and all(o[0] is not node for o in out):
            if not any(o[1] == norm.output for o in out):
                out.append((node, norm.output))
        elif node.op_type in NORM_OPS:
            out.append((node, node.output[0]))
    return out


def _post_norm(index: GraphIndex, unit: Unit, units: list[Unit], branch_ids: set, found_norms: dict) -> str:
    """Why a norm after the unit's Add makes it post-norm (the norm is part of the unit, and LN(x + 0) is not x),
    or "". A unit whose branch starts with a norm of its input is pre-norm. Otherwise a norm that reads the Add is
    the unit's when its output is the stream a residual unit reads (or, in a model where some unit is post-norm
    that way, every such norm is: the last layer's own norm feeds the head); one that feeds something else
    (ConvNeXt's downsampling LayerNorm before the next stage's strided conv, a head's norm) belongs to what
    follows, and a copy of the unit before it is a copy of the unit. A norm-like op (ReduceMean, Pow) that no
    pattern recognises counts as the unit's, as a post-norm's would. Casts around the norm (a converter's float32
    island) are looked through on both sides."""
    reads = _norm_reading(index, found_norms, unit.stream_in, branch_ids)
    cast_reads = [c for n in index.consumers.get(unit.stream_in, []) if id(n) in branch_ids and n.op_type == "Cast"
                  for c in _norm_reading(index, found_norms, n.output[0], branch_ids)]
    if reads or cast_reads:
        return ""
    users = index.consumers.get(unit.add_out, [])
    behind = [c for n in users for c in (index.consumers.get(n.output[0], []) if n.op_type == "Cast" else [n])]
    after = _norm_reading(index, found_norms, unit.add_out) + [
        c for n in users if n.op_type == "Cast" for c in _norm_reading(index, found_norms, n.output[0])]
    unknown = [n for n in behind if n.op_type in NORM_START_OPS and id(n) not in found_norms]
    if not after and not unknown:
        return ""
    if after and not unknown and not _post_norm_model(index, units, found_norms, unit):
        return ""
    first = after[0][0] if after else unknown[0]
    op = first.op_type
    if len(users) == 1 and len(behind) == 1 and op in NORM_OPS:
        # so the next unit reads this one's stream_out (blocks still pair up): the norm and its island's Casts
        unit.post.extend([users[0]] if users[0] is not behind[0] else [])
        unit.post.append(behind[0])
        later = index.consumers.get(behind[0].output[0], [])
        if users[0] is not behind[0] and len(later) == 1 and later[0].op_type == "Cast":
            unit.post.append(later[0])
    norm = found_norms.get(id(first))
    what = f"the {norm.kind_name} {norm.name!r}" if norm is not None else op
    return (f"post-norm: {what} follows the Add and its branch reads the stream un-normalised; "
            f"{norm.kind_name if norm is not None else op}(x + 0) is not x")


def _post_norm_model(index: GraphIndex, units: list[Unit], found_norms: dict, unit: Unit) -> bool:
    """Some unit's Add is read by a norm whose output is the stream another unit reads."""
    streams = {u.stream_in for u in units}
    for u in units:
        for _, out in _norm_reading(index, found_norms, u.add_out):
            if _near_outputs(index, out) & streams:
                return True
    return False


def _consecutive(a: Unit, b: Unit) -> bool:
    return b.stream_in == a.stream_out or b.stream_in in a.aliases


def span_problem(span: list[Unit]) -> str:
    """Why a span of consecutive units cannot be repeated, or ""."""
    for u in span:
        if u.problem:
            return u.problem if len(span) == 1 else f"unit {u.id}: {u.problem}"
    for u, v in zip(span, span[1:]):
        if not _consecutive(u, v):
            return f"units {u.id} and {v.id} are not consecutive ({v.id} does not read {u.stream_out})"
    lo, hi = span[-1].range  # what the copy reads: the span's output stream
    for u in span:
        if lo < u.fixed[0] or hi > u.fixed[1]:
            ops = "+".join(p.op_type for p in u.post)
            return (f"{ops} after {u.id} maps its input onto [{u.fixed[0]:g}, {u.fixed[1]:g}] but the stream the copy "
                    f"reads lies in [{lo:g}, {hi:g}]")
    return ""


def find_blocks(model_or_index) -> list[Block]:
    """Blocks in model order: an attention unit with the non-attention unit right after it, else single units."""
    units = find_units(model_or_index)
    blocks, i = [], 0
    while i < len(units):
        u = units[i]
        if (u.attention and i + 1 < len(units) and not units[i + 1].attention
                and _consecutive(u, units[i + 1])):
            span = [u, units[i + 1]]
            blocks.append(Block(f"{u.id}:{units[i + 1].id}", span, span_problem(span)))
            i += 2
        else:
            blocks.append(Block(u.id, [u], span_problem([u])))
            i += 1
    return blocks


def find_span(model_or_index, query: str) -> tuple[list[Unit], list[Unit]]:
    """(the units named by `query`, all units): a unit id, an Add's node name or output tensor, or 'A:B'."""
    index = model_or_index if isinstance(model_or_index, GraphIndex) else GraphIndex(model_or_index)
    units = find_units(index)

    def one(q: str) -> int:
        hits = [i for i, u in enumerate(units) if q in u.names or q == u.id or q == u.stream_out]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UsageError(f"block name {q!r} is ambiguous; pass the Add's output tensor")
        for why in form_refusals(index.model):   # a merged decoder, fused contrib ops: say so, not "unknown"
            raise CannotMorph(f"no residual block {q!r}: {why}")
        ids = ", ".join(u.id for u in units[:12]) or "none"
        raise UsageError(f"unknown block {q!r}: name a residual Add (node or output tensor); units: {ids}")

    known = {n for u in units for n in (*u.names, u.id, u.stream_out)}
    if query not in known:  # A:B, at a single ':' (exported names hold '::')
        for i, ch in enumerate(query):
            if ch == ":" and query[i - 1:i] != ":" and query[i + 1:i + 2] != ":" and \
                    query[:i] in known and query[i + 1:] in known:
                first, last = one(query[:i]), one(query[i + 1:])
                if last < first:
                    raise UsageError(f"block span {query!r} runs backwards; give A:B with A before B")
                return units[first:last + 1], units
    return [units[one(query)]], units
