"""A Llama-style causal LM of any size, written straight as ONNX (no torch), for the scale benchmarks.

The graph mirrors what the TorchScript (legacy) exporter writes for transformers' LlamaForCausalLM at opset 17
(fixtures/hf_llama_legacy17.onnx, exported with static input shapes: no dynamic_axes), node for node:
- token embedding: Gather from the (vocab, hidden) table;
- the causal mask computed from constants once (LessOrEqual/And/Expand/Where to 0 or the dtype's minimum);
- RoPE tables: a constant (1, S, d_h) of position x inverse frequency, then Cos/Sin, times 1.0, Cast;
- per layer: RMSNorm decomposed as Cast -> Pow(2) -> ReduceMean(-1, keepdims) -> Add(eps) -> Sqrt -> Div(1, .) ->
  Mul -> Cast -> Mul(weight); q/k/v MatMuls with constant (in, out) weights; the head split Reshape(B, S, -1, d_h)
  + Transpose(0, 2, 1, 3); RoPE as x*cos + cat(-x2, x1)*sin with Slice/Neg/Concat (the cos/sin Unsqueezes made
  once in layer 0 and shared, as the exporter does); the GQA repeat Unsqueeze(2) -> Expand (shape through the
  exporter's Where(Equal(s, -1), 1, s)) -> Reshape(B, H, S, d_h); scores MatMul(q, Transpose(k)) * 1/sqrt(d_h)
  + mask -> Softmax(-1) -> Cast -> Cast; MatMul(., v) -> Transpose -> Reshape(B, S, -1) -> o_proj; residual Add;
  RMSNorm; SwiGLU (gate -> Sigmoid -> Mul, up, Mul, down); residual Add;
- final RMSNorm and the LM head MatMul writing `logits`.
Names are a direct export's (/model/layers.N/self_attn/q_proj/MatMul, /lm_head/MatMul, model.norm.weight,
onnx::MatMul_N). Inputs are static like that export: `input_ids` int64 (1, seq), `logits` (1, seq, vocab).

dtype "float16" is what the same exporter writes for a .half() model: weights, stream and attention in float16,
each RMSNorm computed in float32 between two Casts, the residual reading the float16 stream. "bfloat16" is not
offered: ONNX Runtime's CPU provider has no bfloat16 kernel for MatMul, Add, Mul, Softmax or Pow, so neither
verify nor the benchmarks could run such a model here.

Weights are deterministic random values, each tensor drawn from its own seed (the run's seed and the tensor's
name), scaled so activations stay O(1): projections N(0, 1/fan_in), the two projections writing the residual
stream (o_proj, down_proj) also divided by sqrt(2 * layers), embeddings N(0, 1), norm weights 1 + 0.2 N(0, 1)
(not all ones, so a morph that drops or misplaces a norm scale shows in verify). All initializers go into ONE
external data file (`<name>.data`, offsets aligned to 4096), written one tensor at a time and each tensor in
chunks of at most `chunk_bytes`: the peak memory is a chunk, not the model.

    python benchmarks/decoder_model.py OUT.onnx --gb 2.7          # layers/hidden picked to reach about 2.7 GB
    python benchmarks/decoder_model.py OUT.onnx --layers 2 --hidden 256 --heads 8 --kv-heads 2 --intermediate 688
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ALIGN = 4096                  # external data offsets, page aligned (memory mapping)
EXTERNAL_MIN_BYTES = 1024     # smaller tensors stay inline, as onnx.save's default size_threshold
CHUNK_BYTES = 64 << 20
DTYPES = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}

# Llama-like shapes by hidden size (heads of 128, or 64 below 2048), used by --gb and by --hidden alone.
PRESETS = {   # hidden: (heads, kv_heads, intermediate)
    512: (8, 2, 1408),
    1024: (16, 4, 2816),
    2048: (16, 4, 5632),      # the issue 23 decoder (TinyLlama's shape): 12 layers are 2.7 GB in float32
    3072: (24, 8, 8192),
    4096: (32, 8, 11008),
    5120: (40, 8, 13824),
    8192: (64, 8, 28672),
}
MIN_LAYERS_FOR_GB = 12        # --gb takes the widest preset that still gets this many layers


@dataclass(frozen=True)
class DecoderConfig:
    layers: int = 12
    hidden: int = 2048
    heads: int = 16
    kv_heads: int = 4
    intermediate: int = 5632
    vocab: int = 32000
    seq: int = 8
    dtype: str = "float32"
    eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: one of {', '.join(DTYPES)} (bfloat16: see the module doc)")
        if min(self.layers, self.hidden, self.heads, self.kv_heads, self.intermediate, self.vocab, self.seq) < 1:
            raise ValueError(f"every size must be positive: {self}")
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden {self.hidden} must split into {self.heads} heads of an even size, and the "
                             f"heads into {self.kv_heads} KV groups")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h = self.hidden
        return h * (2 * h + 2 * self.kv_dim) + 3 * h * self.intermediate + 2 * h

    def params(self) -> int:
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden + self.hidden

    def data_bytes(self) -> int:
        """The weights' size (the external data file, less its alignment padding)."""
        return self.params() * np.dtype(DTYPES[self.dtype][1]).itemsize


def config_for_gb(gb: float, *, hidden=None, heads=None, kv_heads=None, intermediate=None, layers=None,
                  vocab=32000, seq=8, dtype="float32") -> DecoderConfig:
    """The config whose weights come nearest `gb` (10^9 bytes): the widest preset that keeps at least 12 layers
    (or the `hidden` given), and the layer count that rounds nearest the size. Explicit values win."""
    def shaped(h):
        preset = PRESETS.get(h) or (max(1, h // 128), max(1, h // 512), 256 * round(8 * h / 3 / 256))
        return dict(hidden=h, heads=heads or preset[0], kv_heads=kv_heads or preset[1],
                    intermediate=intermediate or preset[2])

    def sized(shape):
        one = DecoderConfig(layers=1, vocab=vocab, seq=seq, dtype=dtype, **shape)
        per_layer = one.layer_params() * np.dtype(DTYPES[dtype][1]).itemsize
        fixed = one.data_bytes() - per_layer
        return layers or max(1, round((gb * 1e9 - fixed) / per_layer))

    candidates = [hidden] if hidden else sorted(PRESETS, reverse=True)
    for h in candidates:
        n = sized(shaped(h))
        if hidden or layers or n >= MIN_LAYERS_FOR_GB or h == min(PRESETS):
            return DecoderConfig(layers=n, vocab=vocab, seq=seq, dtype=dtype, **shaped(h))
    raise AssertionError("unreachable")


@dataclass
class BuiltDecoder:
    path: str
    data_path: str
    config: DecoderConfig
    params: int
    data_bytes: int          # the external data file, alignment included
    seconds: float

    def layer(self, index: int, what: str) -> str:
        """A layer id onnxmorph takes: layer(3, "mlp/gate_proj") -> '/model/layers.3/mlp/gate_proj/MatMul'."""
        return f"/model/layers.{index}/{what}/MatMul"

    def block(self, index: int) -> str:
        """Decoder layer `index` as a `deepen --block` id: the span of its two residual units (attention, MLP)."""
        return f"/model/layers.{index}/Add:/model/layers.{index}/Add_1"


class _Writer:
    """The external data file: tensors appended one at a time, each generated chunk by chunk."""

    def __init__(self, path: Path, location: str, np_dtype, seed: int, chunk_bytes: int, progress, total: int):
        self.file = open(path, "wb")
        self.location, self.np_dtype, self.seed = location, np.dtype(np_dtype), seed
        self.chunk_elems = max(1, chunk_bytes // 4)       # the float32 draw is the largest buffer
        self.progress, self.total, self.done = progress, total, 0

    def close(self):
        self.file.close()

    def _advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress is not None:
            self.progress(nbytes, self.total)

    def tensor(self, name: str, shape: tuple, draw) -> TensorProto:
        """Write `draw(rng, n)` (n float32 values at a time, drawn in order from the tensor's own generator) as one
        tensor of `shape`; returns its initializer, pointing into the file (or inline when small)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        count = math.prod(shape)
        nbytes = count * self.np_dtype.itemsize
        proto = TensorProto(name=name, dims=list(shape), data_type=helper.np_dtype_to_tensor_dtype(self.np_dtype))
        if nbytes < EXTERNAL_MIN_BYTES:
            proto.raw_data = draw(rng, count).astype(self.np_dtype).tobytes()
            self._advance(nbytes)
            return proto
        offset = -self.file.tell() % ALIGN
        self.file.write(b"\0" * offset)
        start = self.file.tell()
        row = shape[-1] if len(shape) > 1 else count
        step = max(1, self.chunk_elems // row) * row           # whole rows per chunk
        for first in range(0, count, step):
            n = min(step, count - first)
            self.file.write(memoryview(draw(rng, n).astype(self.np_dtype, copy=False)))   # no bytes copy
            self._advance(n * self.np_dtype.itemsize)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", start), ("length", nbytes)):
            proto.external_data.add(key=key, value=str(value))
        return proto


def _normal(std):
    def draw(rng, n):
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        return x
    return draw


def _around_one(rng, n):
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.float32(0.2)
    x += np.float32(1.0)
    return x


class _Graph:
    """Nodes named the exporter's way: '<scope>/<Op>', '<scope>/<Op>_1', ..., outputs '<name>_output_0'."""

    def __init__(self, float_type: int, np_float):
        self.nodes, self.counts = [], {}
        self.float_type, self.np_float = float_type, np_float

    def op(self, scope: str, op_type: str, inputs: list, output: str | None = None, **attrs) -> str:
        key = (scope, op_type)
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        name = f"{scope}/{op_type}" + (f"_{n}" if n else "")
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def const(self, scope: str, value) -> str:
        return self.op(scope, "Constant", [], value=numpy_helper.from_array(np.asarray(value)))

    def i64(self, scope: str, values) -> str:
        return self.const(scope, np.asarray(values, dtype=np.int64))

    def f32(self, scope: str, value: float) -> str:
        return self.const(scope, np.asarray(value, dtype=np.float32))


def _causal_mask(g: _Graph, c: DecoderConfig) -> str:
    """transformers' 4-D mask from an all-ones attention mask, as the exporter traces it: (1, 1, S, S), 0 where
    key <= query, else the float type's minimum."""
    s, S = "/model", c.seq
    ones = g.const(s, np.ones((1, S), dtype=bool))
    true = g.op(s, "ConstantOfShape", [g.i64(s, np.zeros(0))], value=numpy_helper.from_array(np.array([True])))
    kv = g.i64(s, np.arange(S).reshape(1, 1, 1, S))
    q = g.i64(s, np.arange(S).reshape(1, 1, S, 1))
    causal = g.op(s, "Cast", [g.op(s, "LessOrEqual", [kv, q])], to=TensorProto.BOOL)
    causal = g.op(s, "And", [true, causal])
    flat = g.op(s, "Flatten", [ones], axis=2)
    padding = g.op(s, "Gather", [flat, g.i64(s, np.arange(S).reshape(1, 1, 1, S))], axis=0)
    padding = g.op(s, "Reshape", [padding, g.i64(s, [-1])], allowzero=0)
    padding = g.op(s, "Reshape", [padding, g.i64(s, [1, 1, 1, S])], allowzero=0)
    mask = g.op(s, "And", [causal, g.op(s, "Cast", [padding], to=TensorProto.BOOL)])
    mask = g.op(s, "Expand", [mask, _expand_shape(g, s, [1, -1, S, S])])
    low = np.finfo(g.np_float).min
    return g.op(s, "Where", [mask, g.const(s, np.asarray(0.0, g.np_float)), g.const(s, np.asarray(low, g.np_float))])


def _expand_shape(g: _Graph, s: str, shape: list) -> str:
    """The exporter's Expand shape: Where(Equal(shape, -1 * ones), ones, shape)."""
    rank = len(shape)
    shape = g.i64(s, shape)
    ones = g.op(s, "ConstantOfShape", [g.i64(s, [rank])], value=numpy_helper.from_array(np.array([1], np.int64)))
    minus = g.op(s, "Mul", [ones, g.i64(s, -1)])
    return g.op(s, "Where", [g.op(s, "Equal", [shape, minus]), ones, shape])


def _rope_tables(g: _Graph, c: DecoderConfig) -> tuple[str, str]:
    """cos and sin of position * inv_freq, (1, S, d_h), the two halves alike (transformers' rotary embedding)."""
    s, d = "/model/rotary_emb", c.head_dim
    inv_freq = (1.0 / (np.float32(c.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))))
    freqs = np.arange(c.seq, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = g.const(s, np.concatenate([freqs, freqs], axis=-1)[None].astype(np.float32))
    cos = g.op(s, "Mul", [g.op(s, "Cos", [emb]), g.f32(s, 1.0)])   # attention_scaling, 1.0 for default RoPE
    sin = g.op(s, "Mul", [g.op(s, "Sin", [emb]), g.f32(s, 1.0)])
    return g.op(s, "Cast", [cos], to=g.float_type), g.op(s, "Cast", [sin], to=g.float_type)


def _rms_norm(g: _Graph, s: str, x: str, weight: str, eps: float) -> tuple[str, str]:
    """(normed output, the tensor the residual Add reads): in float32 the exporter's Cast stands in for x."""
    up = g.op(s, "Cast", [x], to=TensorProto.FLOAT)
    mean = g.op(s, "ReduceMean", [g.op(s, "Pow", [up, g.f32(s, 2.0)])], axes=[-1], keepdims=1)
    root = g.op(s, "Sqrt", [g.op(s, "Add", [mean, g.f32(s, eps)])])
    normed = g.op(s, "Mul", [up, g.op(s, "Div", [g.f32(s, 1.0), root])])
    out = g.op(s, "Mul", [weight, g.op(s, "Cast", [normed], to=g.float_type)])
    return out, (up if g.float_type == TensorProto.FLOAT else x)


def _rotate(g: _Graph, s: str, x: str, cos: str, sin: str, half: int) -> str:
    """x * cos + cat(-x[..., half:], x[..., :half]) * sin."""
    first = g.op(s, "Mul", [x, cos])
    axes, starts, ends, steps = g.i64(s, [3]), g.i64(s, [0]), g.i64(s, [half]), g.i64(s, [1])
    x1 = g.op(s, "Slice", [x, starts, ends, axes, steps])
    axes, starts, ends, steps = g.i64(s, [3]), g.i64(s, [half]), g.i64(s, [np.iinfo(np.int64).max]), g.i64(s, [1])
    x2 = g.op(s, "Slice", [x, starts, ends, axes, steps])
    rotated = g.op(s, "Concat", [g.op(s, "Neg", [x2]), x1], axis=-1)
    return g.op(s, "Add", [first, g.op(s, "Mul", [rotated, sin])])


def _repeat_kv(g: _Graph, s: str, x: str, c: DecoderConfig) -> str:
    """(1, KV, S, d_h) -> (1, H, S, d_h): Unsqueeze(2) -> Expand(1, KV, r, S, d_h) -> Reshape."""
    r = c.heads // c.kv_heads
    if r == 1:
        return x
    x = g.op(s, "Unsqueeze", [x, g.i64(s, [2])])
    x = g.op(s, "Expand", [x, _expand_shape(g, s, [1, c.kv_heads, r, c.seq, c.head_dim])])
    return g.op(s, "Reshape", [x, g.i64(s, [1, c.heads, c.seq, c.head_dim])], allowzero=0)


def _attention(g, s, x, w, c, tables, rope, mask):
    S, d = c.seq, c.head_dim
    split = [g.i64(s, [1, S, -1, d]) for _ in range(3)]
    heads = []
    for proj, shape in zip(("q_proj", "k_proj", "v_proj"), split):
        y = g.op(f"{s}/{proj}", "MatMul", [x, w[proj]])
        y = g.op(s, "Reshape", [y, shape], allowzero=0)
        heads.append(g.op(s, "Transpose", [y], perm=[0, 2, 1, 3]))
    q, k, v = heads
    if not rope:      # the first layer makes the cos/sin Unsqueezes; the exporter has later layers reuse them
        rope.extend(g.op(s, "Unsqueeze", [t, g.i64(s, [1])]) for t in tables)
    cos, sin = rope
    q = _rotate(g, s, q, cos, sin, d // 2)
    k = _rotate(g, s, k, cos, sin, d // 2)
    k, v = _repeat_kv(g, s, k, c), _repeat_kv(g, s, v, c)
    scores = g.op(s, "MatMul", [q, g.op(s, "Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.op(s, "Mul", [scores, g.const(s, np.asarray(1 / math.sqrt(d), g.np_float))])
    probs = g.op(s, "Softmax", [g.op(s, "Add", [scores, mask])], axis=-1)
    probs = g.op(s, "Cast", [g.op(s, "Cast", [probs], to=TensorProto.FLOAT)], to=g.float_type)
    out = g.op(s, "Transpose", [g.op(s, "MatMul", [probs, v])], perm=[0, 2, 1, 3])
    out = g.op(s, "Reshape", [out, g.i64(s, [1, S, -1])], allowzero=0)
    return g.op(f"{s}/o_proj", "MatMul", [out, w["o_proj"]])


def _mlp(g, s, x, w):
    gate = g.op(f"{s}/gate_proj", "MatMul", [x, w["gate_proj"]])
    act = g.op(f"{s}/act_fn", "Mul", [gate, g.op(f"{s}/act_fn", "Sigmoid", [gate])])
    up = g.op(f"{s}/up_proj", "MatMul", [x, w["up_proj"]])
    return g.op(f"{s}/down_proj", "MatMul", [g.op(s, "Mul", [act, up]), w["down_proj"]])


def build_decoder(path, *, layers=12, hidden=2048, heads=16, kv_heads=4, intermediate=5632, vocab=32000, seq=None,
                  dtype="float32", seed=0, progress=None, chunk_bytes=CHUNK_BYTES) -> BuiltDecoder:
    """Write the decoder to `path` and its weights to `<path>.data`. seq: the static sequence length (default 8,
    the fixtures'); the batch is 1. progress: called as progress(bytes_written_now, total_bytes) per chunk (an
    onnxmorph.progress bar fits). Returns where it went, its config, parameter count and data size."""
    start = time.perf_counter()
    c = DecoderConfig(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                      vocab=vocab, seq=8 if seq is None else seq, dtype=dtype)
    path = Path(path)
    location = f"{path.name}.data"
    data_path = path.parent / location
    float_type, np_float = DTYPES[c.dtype]
    g = _Graph(float_type, np_float)
    tmp_data, tmp_model = data_path.with_name(f".{location}.tmp"), path.with_name(f".{path.name}.tmp")
    writer = _Writer(tmp_data, location, np_float, seed, chunk_bytes, progress, c.data_bytes())
    inits, matmuls = [], iter(range(100, 10 ** 9))

    def weight(name, shape, draw, exported_name=None):
        inits.append(writer.tensor(name, shape, draw))
        if exported_name:      # the legacy exporter names a transposed Linear weight onnx::MatMul_<n>
            inits[-1].name = exported_name
        return inits[-1].name

    def linear(name, fan_in, fan_out, std):
        return weight(name, (fan_in, fan_out), _normal(std), f"onnx::MatMul_{next(matmuls)}")

    try:
        table = weight("model.embed_tokens.weight", (c.vocab, c.hidden), _normal(1.0))
        x = g.op("/model/embed_tokens", "Gather", [table, "input_ids"])
        mask = _causal_mask(g, c)
        tables, rope = _rope_tables(g, c), []
        residual_std = 1 / math.sqrt(2 * c.layers)
        for i in range(c.layers):
            s = f"/model/layers.{i}"
            w = {"input_layernorm": weight(f"model.layers.{i}.input_layernorm.weight", (c.hidden,), _around_one)}
            for proj, out in (("q_proj", c.hidden), ("k_proj", c.kv_dim), ("v_proj", c.kv_dim)):
                w[proj] = linear(f"model.layers.{i}.self_attn.{proj}.weight", c.hidden, out, 1 / math.sqrt(c.hidden))
            w["o_proj"] = linear(f"model.layers.{i}.self_attn.o_proj.weight", c.hidden, c.hidden,
                                 residual_std / math.sqrt(c.hidden))
            w["post_attention_layernorm"] = weight(f"model.layers.{i}.post_attention_layernorm.weight", (c.hidden,),
                                                   _around_one)
            for proj in ("gate_proj", "up_proj"):
                w[proj] = linear(f"model.layers.{i}.mlp.{proj}.weight", c.hidden, c.intermediate,
                                 1 / math.sqrt(c.hidden))
            w["down_proj"] = linear(f"model.layers.{i}.mlp.down_proj.weight", c.intermediate, c.hidden,
                                    residual_std / math.sqrt(c.intermediate))
            normed, residual = _rms_norm(g, f"{s}/input_layernorm", x, w["input_layernorm"], c.eps)
            x = g.op(s, "Add", [residual, _attention(g, f"{s}/self_attn", normed, w, c, tables, rope, mask)])
            normed, residual = _rms_norm(g, f"{s}/post_attention_layernorm", x, w["post_attention_layernorm"], c.eps)
            x = g.op(s, "Add", [residual, _mlp(g, f"{s}/mlp", normed, w)])
        norm = weight("model.norm.weight", (c.hidden,), _around_one)
        normed, _ = _rms_norm(g, "/model/norm", x, norm, c.eps)
        head = linear("lm_head.weight", c.hidden, c.vocab, 1 / math.sqrt(c.hidden))
        g.op("/lm_head", "MatMul", [normed, head], output="logits")
    finally:
        writer.close()
    graph = helper.make_graph(
        g.nodes, "main_graph", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, c.seq])],
        [helper.make_tensor_value_info("logits", float_type, [1, c.seq, c.vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxmorph-benchmarks", producer_version="decoder_model",
                              doc_string="Llama-style decoder with random weights, laid out as the TorchScript "
                                         "exporter writes LlamaForCausalLM at opset 17 (benchmarks/decoder_model.py)")
    model.ir_version = 8
    tmp_model.write_bytes(model.SerializeToString())
    data_bytes = tmp_data.stat().st_size
    os.replace(tmp_data, data_path)
    os.replace(tmp_model, path)
    return BuiltDecoder(str(path), str(data_path), c, c.params(), data_bytes, time.perf_counter() - start)


class _StderrProgress:
    """A progress line on stderr at most once a second (overwritten on a terminal, one line each in a log)."""

    def __init__(self, label: str):
        self.label, self.done, self.last, self.start = label, 0, 0.0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, advance: int, total: int) -> None:
        self.done += advance
        now = time.perf_counter()
        if now - self.last < 1.0 and self.done < total:
            return
        self.last = now
        line = (f"{self.label}: {self.done / 1e9:.2f} / {total / 1e9:.2f} GB ({100 * self.done / max(total, 1):.0f}%)"
                f", {now - self.start:.1f} s")
        print(("\r" + line) if self.tty else line, end="" if self.tty and self.done < total else "\n",
              file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the .onnx file to write (its weights go to OUTPUT.data)")
    parser.add_argument("--gb", type=float, help="pick the shape and layer count for about this many 10^9 bytes")
    for flag in ("layers", "hidden", "heads", "kv-heads", "intermediate"):
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=8, help="the static sequence length (batch is 1)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT and OUTPUT.data")
    args = parser.parse_args(argv)
    shape = dict(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                 intermediate=args.intermediate)
    try:
        if args.gb is not None:
            config = config_for_gb(args.gb, vocab=args.vocab, seq=args.seq, dtype=args.dtype, **shape)
        else:
            defaults = asdict(DecoderConfig())
            config = DecoderConfig(**{**defaults, **{k: v for k, v in shape.items() if v is not None},
                                      "vocab": args.vocab, "seq": args.seq, "dtype": args.dtype})
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.output)
    for target in (out, out.parent / f"{out.name}.data"):
        if target.exists() and not args.force:
            parser.error(f"{target} exists (--force overwrites it)")
    sizes = {k: v for k, v in asdict(config).items() if k not in ("eps", "rope_theta")}
    print(f"building {out}: {config.params() / 1e6:.0f} M parameters, {config.data_bytes() / 1e9:.2f} GB "
          f"({', '.join(f'{k} {v}' for k, v in sizes.items())})", file=sys.stderr)
    built = build_decoder(out, seed=args.seed, progress=_StderrProgress(f"writing {out.name}.data"), **sizes)
    print(f"wrote {built.path} and {built.data_path}: {built.params} parameters, {built.data_bytes} bytes, "
          f"{built.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
