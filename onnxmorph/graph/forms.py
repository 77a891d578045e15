"""Model forms onnxmorph refuses as a whole, each in one line that says what to do instead:

- a merged decoder (Optimum's decoder_model_merged.onnx): one If on use_cache_branch whose two branches are the
  decoder without and with past; its layers live in the subgraphs. Morph the two decoders alike, then merge.
- ONNX Runtime's fused contrib ops (com.microsoft: SkipLayerNormalization, FastGelu, BiasGelu, Attention, ...),
  which onnxruntime.transformers' optimizer writes: morph the exported model, then optimise the child.
"""
from __future__ import annotations

import onnx

CONTRIB_DOMAIN = "com.microsoft"
_LINEAR = ("Conv", "Gemm", "MatMul")


def contrib_refusal(ops) -> str:
    """One line for a contrib op (or a list of them)."""
    ops = [ops] if isinstance(ops, str) else list(ops)
    what = f"{ops[0]} is one of" if len(ops) == 1 else f"{', '.join(ops)} are"
    return (f"{what} ONNX Runtime's fused contrib ops ({CONTRIB_DOMAIN}), which onnxmorph does not morph through: "
            "morph the model before optimising it (onnxruntime.transformers' optimizer), then optimise the child")


def contrib_ops(model: onnx.ModelProto) -> list[str]:
    """The com.microsoft op types in the main graph, in order of first use."""
    seen = []
    for node in model.graph.node:
        if node.domain == CONTRIB_DOMAIN and node.op_type not in seen:
            seen.append(node.op_type)
    return seen


def _holds_layers(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.op_type in _LINEAR:
            return True
        if any(_holds_layers(g) for g in _subgraphs(node)):
            return True
    return False


def _subgraphs(node):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def subgraph_refusal(model: onnx.ModelProto) -> str | None:
    """Why the model's layers cannot be reached (they sit inside If/Loop/Scan subgraphs), or None."""
    for node in model.graph.node:
        if any(_holds_layers(g) for g in _subgraphs(node)):
            inputs = {i.name for i in model.graph.input}
            if node.op_type == "If" and "use_cache_branch" in inputs:
                return (f"this is a merged decoder: its layers sit in the two branches of If {node.name!r} (on "
                        "use_cache_branch); morph decoder_model.onnx and decoder_with_past_model.onnx alike, then "
                        "merge them (optimum's merge_decoders)")
            return (f"the model's layers sit inside the subgraphs of {node.op_type} {node.name!r}, which onnxmorph "
                    "does not morph; morph the graphs it holds as models of their own")
    return None


def form_refusals(model: onnx.ModelProto) -> list[str]:
    """Everything refused about the model as a whole, for inspect."""
    out = [why for why in [subgraph_refusal(model)] if why]
    ops = contrib_ops(model)
    if ops:
        out.append(contrib_refusal(ops))
    return out
