"""A cheap fixture-wide sweep: every layer and block of a fixture through every verb, each morph exact or refused.

The passes of one verb are applied one after the other, in place, to one copy of the parent, which is then
checked once against the parent on ONNX Runtime (dynamic dims fed as 2, so batch and heads cannot mix unseen); only
when that check fails are they retried one by one to name the culprit. Widen is applied once per coupled group (the
layers of one group grow the same space; the others must report the same group). The api's load, staging and
verification around the passes are tested elsewhere. Used by tests/test_tf2onnx_fixtures.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxmorph.errors import CannotMorph
from onnxmorph.graph.blocks import find_blocks
from onnxmorph.graph.coupling import analyse, widen_index
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers
from onnxmorph.graph.shapes import infer_shapes
from onnxmorph.passes.deepen import deepen_model
from onnxmorph.passes.kernel import kernel_model
from onnxmorph.passes.subnet import subnet_model
from onnxmorph.passes.widen import widen_model

EXACT = 1e-5   # max error relative to each output's scale (verify's default rtol)


@dataclass
class Outcome:
    exact: list = field(default_factory=list)      # targets the verb morphed
    refused: dict = field(default_factory=dict)    # target -> the one-line reason
    max_rel: float = 0.0


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else \
            rng.integers(0, 8, size=shape).astype(dtype)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


class Sweep:
    """One fixture: its layers, blocks and the parent's outputs on seeded inputs."""

    def __init__(self, path):
        self.path = str(path)
        self.parent = onnx.load(self.path)
        index = GraphIndex(onnx.load(self.path))
        self.layers = find_layers(index)
        self.blocks = [b.id for b in find_blocks(index)]
        self.feeds = _feeds(self.parent)
        self.expected = _run(self.parent, self.feeds)

    def error(self, child) -> float:
        """Max over outputs of max |child - parent| / max |parent|."""
        got = _run(child, self.feeds)
        return max(float(np.max(np.abs(c - e))) / max(float(np.max(np.abs(e))), 1e-30)
                   for c, e in zip(got, self.expected))

    def apply(self, targets, morph) -> Outcome:
        """morph(model, target) edits model in place, for each target in turn on one copy of the parent;
        refusals recorded; the child checked once (then morph by morph when it is not exact)."""
        out, child = Outcome(), copy.deepcopy(self.parent)
        for target in targets:
            try:
                morph(child, target)
            except CannotMorph as exc:
                out.refused[target] = str(exc)
                continue
            out.exact.append(target)
        if out.exact:
            out.max_rel = self.error(child)
            if not out.max_rel <= EXACT:
                for target in out.exact:
                    alone = copy.deepcopy(self.parent)
                    morph(alone, target)
                    rel = self.error(alone)
                    assert rel <= EXACT, f"{self.path}: {target} is not exact: max rel {rel:.2e}"
                raise AssertionError(f"{self.path}: each morph is exact alone, together max rel {out.max_rel:.2e}")
        return out

    def widen(self, grow) -> Outcome:
        """Widen every layer to grow(layer) channels (None: skip), once per coupled group (the others must
        report the same group)."""
        model = copy.deepcopy(self.parent)
        index, shapes = widen_index(model), infer_shapes(model)
        seen, targets, same = {}, [], {}
        for layer in find_layers(index):
            width = grow(layer)
            if width is None:
                continue
            try:
                group = tuple(sorted(analyse(index, layer, shapes).summary()["producers"]))
            except CannotMorph:
                group = None
            if group is not None and group in seen:
                same[layer.id] = seen[group]
                continue
            if group is not None:
                seen[group] = layer.id
            targets.append((layer.id, width))
        widths = dict(targets)
        out = self.apply([t for t, _ in targets], lambda m, layer: widen_model(m, layer, width=str(widths[layer]),
                                                                           seed=3))
        for layer, first in same.items():   # grown with the first layer of its group
            if first in out.exact:
                out.exact.append(layer)
            elif first in out.refused:
                out.refused[layer] = out.refused[first]
        return out

    def verb(self, name: str) -> Outcome:
        ids = [layer.id for layer in self.layers]
        if name == "deepen":
            return self.apply(ids, lambda m, layer: deepen_model(m, layer))
        if name == "subnet":
            return self.apply(ids, lambda m, layer: subnet_model(m, layer))
        if name == "kernel":
            sizes = {layer.id: max(layer.kernel) + 2 for layer in self.layers if layer.op == "Conv"}
            return self.apply(list(sizes), lambda m, layer: kernel_model(m, layer, size=sizes[layer]))
        if name == "block":
            return self.apply(self.blocks, lambda m, block: deepen_model(m, block=block))
        raise ValueError(name)


def one_line_refusals(outcome: Outcome) -> bool:
    return all(reason and "\n" not in reason for reason in outcome.refused.values())


__all__ = ["Sweep", "Outcome", "EXACT", "one_line_refusals"]
