"""Selectors: one --layer or --block value that names several layers or blocks.

Layers: a glob (`*/mlp/gate_proj/*`, `conv[23]`) or `re:` + a regular expression (searched with re.fullmatch),
matched against every name that finds a layer (its id, node name, weight name, output tensor). Blocks: `all`,
`every:N` (blocks N, 2N, 3N, ... in model order, counted from 1), or a range `A..B` of block positions (from 1,
both ends included) or block ids. A value that names one layer or block exactly is that one, whatever characters
it holds, so every name that worked before still does. Matches are resolved on the model as it is when asked.
"""
from __future__ import annotations

import fnmatch
import re

from ..errors import UsageError
from .index import GraphIndex
from .layers import LINEAR_OPS, Layer, find_layers

_GLOB_CHARS = "*?["


def is_layer_pattern(query) -> bool:
    """Whether `query` is written as a pattern (it may still be a layer's exact name)."""
    return isinstance(query, str) and (query.startswith("re:") or any(c in query for c in _GLOB_CHARS))


def is_block_selector(query) -> bool:
    """Whether `query` is written as a block selector (it may still be a block's exact id)."""
    return isinstance(query, str) and (query == "all" or query.startswith("every:") or ".." in query)


def _matcher(query: str, what: str):
    if query.startswith("re:"):
        try:
            expression = re.compile(query[3:])
        except re.error as exc:
            raise UsageError(f"bad {what} regular expression {query[3:]!r}: {exc}") from None
        return lambda name: expression.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, query)


def _lookup_names(index: GraphIndex, node) -> tuple[str, ...]:
    """Every name that could find this node as a layer (graph/layers.py: node, weight, output, bias Add's
    output), read without building the layer."""
    users = index.consumers.get(node.output[0], []) if node.output else []
    return tuple(n for n in (node.name, *node.input[1:2], *node.output[:1], *(u.output[0] for u in users
                                                                              if u.op_type == "Add" and u.output)) if n)


def select_layers(index: GraphIndex, query: str, what: str = "--layer") -> list[Layer] | None:
    """The layers a pattern selects, in graph order, or None when `query` is a name (the pass resolves it and
    words its errors). Names are matched first, so only the matching layers' weights are decoded. A pattern that
    matches nothing is a usage error that lists the layers."""
    if not is_layer_pattern(query):
        return None
    linear = [node for node in index.graph.node if node.op_type in LINEAR_OPS]
    named = {id(node) for node in linear if query in _lookup_names(index, node)}
    if named and any(query in layer.names for layer in find_layers(index, lambda node: id(node) in named)):
        return None
    matches = _matcher(query, what)
    candidates = {id(node) for node in linear if any(matches(name) for name in _lookup_names(index, node))}
    chosen = [layer for layer in find_layers(index, lambda node: id(node) in candidates)
              if any(matches(name) for name in layer.names)]
    if not chosen:
        layers = find_layers(index)
        listed = ", ".join(layer.id for layer in layers[:8]) or "none"
        raise UsageError(f"{what} {query!r} matches no layer; layers: {listed}"
                         + (f" (and {len(layers) - 8} more)" if len(layers) > 8 else ""))
    return chosen


def _position(query: str, ids: list[str], names: list[set], whole: str) -> int:
    """A range end: a block position (from 1) or a block id (any unit name of it); returns a 0-based index."""
    if query.isdigit():
        at = int(query)
        if not 1 <= at <= len(ids):
            raise UsageError(f"--block {whole!r}: block {at} is out of range; the model has {len(ids)} blocks")
        return at - 1
    hits = [i for i, known in enumerate(names) if query in known]
    if len(hits) != 1:
        raise UsageError(f"--block {whole!r}: {query!r} names no block (give a position from 1 or a block id: "
                         f"{', '.join(ids[:6]) or 'none'})")
    return hits[0]


def select_blocks(blocks, query: str) -> list[str] | None:
    """Ids of the blocks (graph/blocks.py Block, in model order) a selector picks, or None when `query` is not
    a selector but one block's name (deepen --block resolves that itself)."""
    names = [{b.id, *(n for u in b.units for n in (*u.names, u.id, u.stream_out))} for b in blocks]
    if not is_block_selector(query) or any(query in known for known in names):
        return None
    ids = [b.id for b in blocks]
    if query == "all":
        chosen = ids
    elif query.startswith("every:"):
        step = query[len("every:"):]
        if not step.isdigit() or int(step) < 1:
            raise UsageError(f"--block {query!r}: every:N takes a whole number N of at least 1")
        chosen = ids[int(step) - 1::int(step)]
    else:
        first, _, last = query.partition("..")
        a, b = _position(first, ids, names, query), _position(last, ids, names, query)
        if b < a:
            raise UsageError(f"--block {query!r} runs backwards; give A..B with A before B")
        chosen = ids[a:b + 1]
    if not chosen:
        raise UsageError(f"--block {query!r} selects no block; the model has {len(ids)} residual blocks")
    return chosen
