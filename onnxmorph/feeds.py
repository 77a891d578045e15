"""The inputs verify (and onnxmorph.torch) feed a model: consistent with the graph, so that what a morph could break
is exercised.

- Symbolic dims of the same name get the same value, and a dim named as a sum ("past_sequence_length +
  sequence_length") gets the sum. Batch-like dims are 2, sequence-like ones 5 (attention over one key cannot show a
  change of the query or key weights), past-like ones 3 (or 0: verify feeds both); dims of other names are 1.
- Integer inputs stay inside the tables they index: an input traced (through Cast, Reshape, Unsqueeze, ...) to the
  indices of a Gather is drawn from [0, rows); positions count on from the past length; masks are ones; a bool
  named like a cache switch (Optimum's merged decoder's use_cache_branch) says whether there is a past.
- --input-shape pins whole inputs; the dims they name bind the other inputs' dims of the same name.

KV caches: `cache_pairs` pairs past_key_values.N.* inputs with present.N.* outputs; verify feeds a past > 0 from a
prefix run (verify.py), so a cache holds what the model itself computes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import UsageError
from .graph.kv_cache import cache_pairs  # noqa: F401  (verify reads it here)

BATCH, SEQUENCE, PAST = 2, 5, 3
_MAX_INPUT_ELEMENTS = 2**28  # one sample of one input: 1 GiB of float32
_MAX_PARSE_BYTES = 256 * 2**20  # a model file verify parses (without weights) to trace its index inputs

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}
_DEFAULT_INT_HIGH = 3   # an integer input of unknown use: small non-negative values (safe as indices)
# Ops that carry an integer input's values unchanged to their output (input 0, or any input of a Concat).
_VALUE_PATH = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose", "Slice",
               "Concat", "Tile")


# Fused ops that index tables with an input: (domain, op) -> {input index: index of the table it indexes}.
_FUSED_TABLES = {("com.microsoft", "EmbedLayerNormalization"): {0: 2, 1: 4}}


def _real_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _declared(vi) -> list:
    """The declared dims of an input: ints, dim names, or None (unnamed dynamic)."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def dim_kind(name: str) -> str:
    """batch, past, sequence, sum or other, from a symbolic dim's name."""
    low = name.lower()
    if "+" in low:
        return "sum"
    if "past" in low or "cache" in low:
        return "past"
    if "batch" in low:
        return "batch"
    if any(k in low for k in ("seq", "length", "token", "time", "len")):
        return "sequence"
    return "other"


def _sum_parts(name: str) -> list:
    return [p.strip() for p in name.split("+") if p.strip()]


def index_ranges(model: onnx.ModelProto | None) -> dict[str, int]:
    """{integer input: rows of the smallest table it indexes}: the input followed through ops that keep its values
    (Cast, Reshape, Unsqueeze, Slice, ...) to the indices of a Gather/GatherElements, in subgraphs too."""
    if model is None:
        return {}
    consumers, tables = {}, {}
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}

    def walk(graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, i))
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        sizes[node.output[0]] = list(a.t.dims)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    sizes.update({t.name: list(t.dims) for t in a.g.initializer})
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        sizes.update({t.name: list(t.dims) for t in g.initializer})
                        walk(g)
    walk(model.graph)
    for vi in list(model.graph.value_info) + list(model.graph.input):
        dims = _declared(vi)
        if vi.name not in sizes and dims and all(isinstance(d, int) for d in dims):
            sizes[vi.name] = dims
    for inp in _real_inputs(model):
        if inp.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        seen, todo, rows = set(), [inp.name], []
        while todo:
            name = todo.pop()
            for node, i in consumers.get(name, []):
                table = _FUSED_TABLES.get((node.domain, node.op_type), {}).get(i)
                if table is not None:   # ORT's EmbedLayerNormalization: ids and segment ids index its tables
                    data = sizes.get(node.input[table]) if table < len(node.input) else None
                    if data:
                        rows.append(int(data[0]))
                    continue
                if node.op_type in ("Gather", "GatherElements") and i == 1:
                    data = sizes.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if data and -len(data) <= axis < len(data):
                        rows.append(int(data[axis]))
                    continue
                if node.op_type in _VALUE_PATH + ("Gather",) and (i == 0 or node.op_type == "Concat"):
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            todo.append(out)
        if rows and min(rows) > 0:
            tables[inp.name] = min(rows)
    return tables


def graph_of(source) -> onnx.ModelProto | None:
    """The graph of a model (its weights left out when external) for tracing its inputs: a ModelProto, bytes, or
    a path small enough to parse cheaply (ORT holds a big one's weights; the defaults serve it then)."""
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes):
            return onnx.ModelProto.FromString(source)
        if os.path.getsize(source) <= _MAX_PARSE_BYTES:
            return onnx.load(str(source), load_external_data=False)
    except Exception:
        return None
    return None


@dataclass
class FeedPlan:
    """The shapes of one run's inputs, and how each input's values are drawn."""
    dims: dict[str, int]                      # symbolic dim -> value
    shapes: dict[str, list[int]]
    fill: dict[str, str] = field(default_factory=dict)   # input -> normal | ones | positions | int:<high> | bool
    past: int | None = None                   # the past length (None: the model has no past dim)

    def describe(self) -> str:
        dims = ", ".join(f"{k} {v}" for k, v in self.dims.items() if dim_kind(k) != "sum")
        return dims or "static shapes"


class Feeder:
    """Builds consistent inputs for a model's interface (`model`: its inputs are read) whose integer inputs are
    traced in `graph` (None: not traced, small defaults)."""

    def __init__(self, model: onnx.ModelProto, graph: onnx.ModelProto | None = None, input_shapes: dict | None = None):
        self.inputs = []
        for inp in _real_inputs(model):
            dtype = _NP_TYPES.get(inp.type.tensor_type.elem_type)
            if dtype is None:
                raise UsageError(f"input {inp.name!r} has an element type onnxmorph cannot feed "
                                 f"({inp.type.tensor_type.elem_type})")
            self.inputs.append((inp.name, dtype, _declared(inp)))
        self.given = dict(input_shapes or {})
        self.ranges = index_ranges(graph if graph is not None else None)
        self.bound: dict[str, int] = {}
        for name, dtype, declared in self.inputs:   # the dims a given shape names bind the other inputs' dims
            if name in self.given and len(self.given[name]) == len(declared):
                for d, value in zip(declared, self.given[name]):
                    if isinstance(d, str) and dim_kind(d) != "sum":
                        self.bound.setdefault(d, int(value))
        for name, dtype, declared in self.inputs:   # and a given sum fixes its one unknown part
            if name in self.given and len(self.given[name]) == len(declared):
                for d, value in zip(declared, self.given[name]):
                    if isinstance(d, str) and dim_kind(d) == "sum":
                        self._solve_sum(d, int(value))

    def _solve_sum(self, name, value):
        parts = _sum_parts(name)
        known = sum(int(p) if p.isdigit() else self.bound[p] for p in parts if p.isdigit() or p in self.bound)
        unknown = [p for p in parts if not p.isdigit() and p not in self.bound]
        if len(unknown) == 1 and value - known >= 0:
            self.bound[unknown[0]] = value - known

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.inputs]

    def has_past(self) -> bool:
        return any(isinstance(d, str) and any(dim_kind(p) == "past" for p in _sum_parts(d))
                   for _, _, declared in self.inputs for d in declared)

    def past_given(self) -> bool:
        return any(dim_kind(d) == "past" for d in self.bound)

    def plan(self, past: int | None = PAST, sequence: int = SEQUENCE, batch: int = BATCH,
             mask_total: bool = False, other: int = 1, prefix: bool = False) -> FeedPlan:
        """The shapes of one run. mask_total: an input named like a mask spans past + sequence on its last axis
        whatever its declared name (Optimum's merged decoder declares it as the sequence alone). prefix: the run
        that computes the caches: `past` and `sequence` win over the dims --input-shape binds."""
        defaults = {"batch": batch, "sequence": sequence, "past": past or 0, "other": other}
        dims: dict[str, int] = {}

        def value(d):
            if isinstance(d, int):
                return d
            if d is None:
                return other
            kind = dim_kind(d)
            if d in self.bound and not (prefix and kind in ("past", "sequence", "sum")):
                return self.bound[d]
            if kind == "sum":
                return sum(int(p) if p.isdigit() else value(p) for p in _sum_parts(d))
            return defaults[kind]

        plan = FeedPlan(dims, {}, past=None)
        for name, dtype, declared in self.inputs:
            moving = any(isinstance(d, str) and dim_kind(d) in ("past", "sequence", "sum") for d in declared)
            if name in self.given and not (prefix and moving):
                shape = [int(v) for v in self.given[name]]
            else:
                shape = [value(d) for d in declared]
                last = declared[-1] if declared else None
                if mask_total and "mask" in name.lower() and isinstance(last, str) and self.has_past() and \
                        not any(dim_kind(p) == "past" for p in _sum_parts(last)):
                    shape[-1] += (past or 0) if prefix else \
                        next((v for d, v in self.bound.items() if dim_kind(d) == "past"), past or 0)
            for d in declared:
                if isinstance(d, str):
                    dims.setdefault(d, value(d))
            if any(v < 0 for v in shape) or int(np.prod(shape, dtype=np.float64)) > _MAX_INPUT_ELEMENTS:
                raise UsageError(f"input {name!r} has shape {list(shape)}: too big to feed (over "
                                 f"{_MAX_INPUT_ELEMENTS:,} values); give a smaller one with --input-shape")
            plan.shapes[name] = shape
            plan.fill[name] = self._fill(name, dtype)
        pasts = [v for d, v in dims.items() if dim_kind(d) == "past"]
        plan.past = pasts[0] if pasts else None
        return plan

    def _fill(self, name, dtype) -> str:
        low = name.lower()
        if dtype == np.bool_:
            return "has_past" if "cache" in low else "bool"
        if "mask" in low:
            return "ones"
        if np.issubdtype(dtype, np.floating):
            return "normal"
        if "position" in low:
            return "positions"
        return f"int:{self.ranges.get(name, _DEFAULT_INT_HIGH)}"

    def feed(self, plan: FeedPlan, rng: np.random.Generator) -> dict:
        """One set of inputs following `plan`."""
        return {name: self._value(name, dtype, plan, rng) for name, dtype, _ in self.inputs}

    def feeds(self, plan: FeedPlan, rng: np.random.Generator, samples: int) -> list[dict]:
        """`samples` sets of inputs, drawn input by input (each input's samples in a row)."""
        out = [{} for _ in range(samples)]
        for name, dtype, _ in self.inputs:
            for feed in out:
                feed[name] = self._value(name, dtype, plan, rng)
        return out

    def _value(self, name, dtype, plan: FeedPlan, rng: np.random.Generator):
        shape, fill = plan.shapes[name], plan.fill[name]
        if fill == "normal":
            return rng.standard_normal(shape).astype(dtype)
        if fill == "bool":
            return rng.random(shape) < 0.5
        if fill == "has_past":
            return np.full(shape, bool(plan.past), dtype=np.bool_)
        if fill == "ones":
            return np.ones(shape, dtype=dtype)
        if fill == "positions":   # 0.. on the last axis, counting on from the past
            start = plan.past or 0
            steps = np.arange(start, start + (shape[-1] if shape else 1))
            if self.ranges.get(name):
                steps = steps % self.ranges[name]
            row = steps.reshape((1,) * max(len(shape) - 1, 0) + (-1,)) if shape else steps[0]
            return np.broadcast_to(row, shape).astype(dtype).copy()
        return rng.integers(0, int(fill.split(":")[1]), size=shape).astype(dtype)

    def fills(self, plan: FeedPlan) -> str:
        """The value ranges of the integer and bool inputs, for the report."""
        words = {"ones": "ones", "positions": "positions from the past length on", "has_past": "past > 0",
                 "bool": "random bools"}
        parts = []
        for name, _, _ in self.inputs:
            fill = plan.fill[name]
            if fill == "normal":
                continue
            parts.append(f"{name} in [0, {fill.split(':')[1]})" if fill.startswith("int:") else f"{name} {words[fill]}")
        return "; ".join(parts)


def make_inputs(model: onnx.ModelProto, samples: int, seed: int, input_shapes: dict | None = None,
                past: int | None = PAST):
    """`samples` seeded random feeds of the same shapes (caches random, at past length `past`)."""
    feeder = Feeder(model, model, input_shapes)
    plan = feeder.plan(past=past)
    return feeder.feeds(plan, np.random.default_rng(seed), samples)


# --- the runs verify makes ----------------------------------------------------------------------------------

@dataclass
class Sample:
    """One comparison run: the step's inputs, and for a past > 0 the prefix run that computed its caches."""
    plan: FeedPlan
    feed: dict                          # the step's inputs as the parent got them (its caches included)
    prefix: dict | None = None          # the prefix run's inputs (past 0), when the caches come from one
    prefix_plan: FeedPlan | None = None
    outputs: list | None = None         # the parent's outputs of the step


def _attempts(feeder: Feeder, samples: int):
    """Plans per sample, most telling first: the declared shapes with sample 1 at past 0 and the others at past
    3; a mask spanning past + sequence (Optimum's merged decoders declare it as the sequence); past 0 only;
    batch and sequence 1 (what the model's fixed reshapes may need). (label, [plan per sample])."""
    past = feeder.has_past() and not feeder.past_given()
    pasts = [0 if k == 0 else PAST for k in range(samples)] if past else [None] * samples
    yield "", [feeder.plan(past=p) for p in pasts]
    if past:
        yield "the mask spans past + sequence", [feeder.plan(past=p, mask_total=True) for p in pasts]
        yield "past length 0 only", [feeder.plan(past=0) for _ in pasts]
    yield "batch 1, sequence 1", [feeder.plan(past=0, sequence=1, batch=1) for _ in pasts]


def parent_samples(run, feeder: Feeder, caches: dict, out_names: list, samples: int, seed: int):
    """Run the parent on every sample (run(feed) -> outputs in out_names' order, raising on failure), trying the
    attempts in turn. A past > 0 is fed from a prefix run of the parent at past 0 (its present outputs), so the
    caches hold what the model computes. Returns (samples, fallback label, the first attempt's error)."""
    first_error = None
    for label, plans in _attempts(feeder, samples):
        rng = np.random.default_rng(seed)
        done = []
        try:
            for plan in plans:
                feed = feeder.feed(plan, rng)
                sample = Sample(plan, feed)
                if plan.past and caches:
                    prefix_plan = feeder.plan(past=0, sequence=plan.past, batch=_batch(plan), prefix=True)
                    sample.prefix, sample.prefix_plan = feeder.feed(prefix_plan, rng), prefix_plan
                    before = dict(zip(out_names, run(sample.prefix)))
                    for cache, present in caches.items():
                        feed[cache] = before[present]
                sample.outputs = run(feed)
                done.append(sample)
        except Exception as exc:
            first_error = first_error or exc
            continue
        return done, label, first_error
    raise first_error


def _batch(plan: FeedPlan) -> int:
    return next((v for d, v in plan.dims.items() if dim_kind(d) == "batch"), BATCH)


def child_outputs(run, child: Feeder, child_caches: dict, child_out_names: list, sample: Sample) -> dict:
    """The child's outputs (by name) on the parent's sample. Its caches: at past 0 empty; else, from the child's
    own prefix run on the parent's prefix inputs, with the parent's cache values written over the part the parent
    has (its heads, its layers): a grown head or a new layer gets what the grown model computes for it."""
    child.bound = dict(sample.plan.dims)
    plan = child.plan(past=sample.plan.past)

    def same(feed, name, shape):   # the parent's value serves where the child's input is the same
        if name not in child_caches:
            return feed[name]
        return feed[name] if name in feed and np.shape(feed[name]) == tuple(shape) else None
    feed = {n: same(sample.feed, n, plan.shapes[n]) for n in child.names}
    own = [c for c in child_caches if feed.get(c) is None]   # caches the parent's values do not fill
    if sample.prefix is not None and own:
        child.bound = dict(sample.prefix_plan.dims)
        prefix_plan = child.plan(past=0)
        prefix = {n: same(sample.prefix, n, prefix_plan.shapes[n]) for n in child.names}
        prefix = {n: np.zeros(prefix_plan.shapes[n], _dtype(child, n)) if v is None else v for n, v in prefix.items()}
        before = dict(zip(child_out_names, run(prefix)))
        for cache, present in child_caches.items():
            value = np.array(before[present])
            if cache in sample.feed:
                value[tuple(slice(0, k) for k in np.shape(sample.feed[cache]))] = sample.feed[cache]
            feed[cache] = value
    for n, value in feed.items():
        if value is None:
            if sample.plan.past:   # no prefix run (no present outputs): the cache cannot be computed
                raise UsageError(f"the child's input {n} differs from the parent's and the child has no output "
                                 "that computes it")
            feed[n] = np.zeros(plan.shapes[n], _dtype(child, n))
    return dict(zip(child_out_names, run(feed)))


def _dtype(feeder: Feeder, name: str):
    return next(d for n, d, _ in feeder.inputs if n == name)


def parent_part(parent_value, child_value, is_cache: bool):
    """A cache output of a grown child (more heads) compared on the parent's part: its leading entries on every
    axis (new heads are appended). Other outputs are compared whole."""
    p, c = np.shape(parent_value), np.shape(child_value)
    if not is_cache or p == c or len(p) != len(c) or any(a > b for a, b in zip(p, c)):
        return child_value
    return np.asarray(child_value)[tuple(slice(0, k) for k in p)]


def describe_runs(feeder: Feeder, samples: list, label: str, error) -> list[str]:
    """What verify fed, for its report: the dims per sample, the value ranges, any fallback."""
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(samples):
        text = s.plan.describe()
        if s.prefix is not None:
            text += f" (the caches from a {s.plan.past}-token prefix run)"
        groups.setdefault(text, []).append(k + 1)
    parts = []
    for text, ks in groups.items():
        which = f"sample {ks[0]}" if len(ks) == 1 else f"samples {ks[0]}-{ks[-1]}"
        parts.append(f"{text} [{which}]" if len(groups) > 1 else text)
    lines = ["inputs: " + "; ".join(parts)]
    values = feeder.fills(samples[0].plan) if samples else ""
    if values:
        lines.append(f"input values: {values}")
    if label:
        lines.append(f"inputs: {label}, since the parent does not run on the declared shapes "
                     f"({_one_line(error)})")
    return lines


def _one_line(exc) -> str:
    return " ".join(part.strip() for part in str(exc).strip().splitlines() if part.strip())[:300]
