"""Channel coupling: what must grow with a layer's output channels (coupling/analysis.py walks the graph with the
rules of coupling/table.py).

The rule families register their rules on import, in this order; within an op, earlier families' rules are tried
first (attention's head reshapes after the plain reshape rules):
  elementwise    activations, pooling, Pad, LRN, per-channel parameters, residual Adds, reductions
  conv           Conv (grouped, depthwise), Gemm and MatMul layers: producers and consumers
  runtime        shapes computed at run time from widened tensors: Shape reads, checked when the walk is done
  reshape        Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Slice, Gather, Expand, Shape reads
  concat         Concat and Split
  normalization  LayerNorm/RMSNorm over the stream, fused or decomposed (graph/norms.py)
  stream         embedding tables and token selection
  attention      heads: head reshapes, batched MatMuls, Softmax over keys
  shuffle        channel shuffles walked backwards
A new op rule goes into the family module it belongs to (or a new one imported here).
"""
from . import elementwise, conv, runtime, reshape, concat, normalization, stream, attention, shuffle  # noqa: F401
from .analysis import analyse, widen_index

__all__ = ["analyse", "widen_index"]
