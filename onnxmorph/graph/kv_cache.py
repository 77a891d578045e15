"""The KV-cache interface of an exported decoder: past_key_values.N.key/value inputs and present.N.key/value outputs
(Optimum's names), paired by their common rest (N.key).

Morphs change it on purpose, a deliberate exception to "graph outputs never change": when heads grow, the cache of
that layer grows with them (new heads after the old ones, so the parent's cache is the leading part of the child's);
a new decoder layer (deepen --block) brings its own pair, appended after the last layer's (names stay stable).
"""
from __future__ import annotations

import re

import onnx

_PAST = re.compile(r"^past(?:_key_values?)?[._]?(.*)$")
_PRESENT = re.compile(r"^present[._]?(.*)$")
_LAYER = re.compile(r"^(.*?)(\d+)([._].*)$")


def cache_pairs(input_names, output_names) -> dict[str, str]:
    """{cache input: the output that holds it one step later}: past_key_values.N.key -> present.N.key (Optimum),
    and generally an input named past* / past_key_values* and an output named present* with the same rest."""
    outputs = {}
    for name in output_names:
        m = _PRESENT.match(name)
        if m:
            outputs[m.group(1)] = name
    pairs = {}
    for name in input_names:
        m = _PAST.match(name)
        if m and m.group(1) in outputs:
            pairs[name] = outputs[m.group(1)]
    return pairs


def model_cache_pairs(model: onnx.ModelProto) -> dict[str, str]:
    inits = {t.name for t in model.graph.initializer}
    return cache_pairs([i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output])


def cache_output_names(input_names, output_names) -> set[str]:
    """The outputs of the cache interface: those paired with a past input, and present.* of a decoder that takes no
    past at all (the first-step decoder_model.onnx of Optimum's legacy layout)."""
    pairs = cache_pairs(input_names, output_names)
    if pairs:
        return set(pairs.values())
    return {name for name in output_names if _PRESENT.match(name) and _LAYER.match(name)}


def cache_outputs(model: onnx.ModelProto) -> set[str]:
    inits = {t.name for t in model.graph.initializer}
    return cache_output_names([i.name for i in model.graph.input if i.name not in inits],
                              [o.name for o in model.graph.output])


def grow_declared(model: onnx.ModelProto, name: str, axis: int, extra: int) -> None:
    """The declared size of graph input or output `name` on `axis` grows by `extra` (a fixed dim only)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                dims[axis].dim_value += extra


def layer_number(name: str) -> int | None:
    """N of past_key_values.N.key / present.N.value."""
    m = _LAYER.match(name)
    return int(m.group(2)) if m else None


def renumbered(name: str, number: int) -> str:
    """The same cache name for layer `number`."""
    m = _LAYER.match(name)
    return f"{m.group(1)}{number}{m.group(3)}"
