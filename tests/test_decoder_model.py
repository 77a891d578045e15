"""benchmarks/decoder_model.py, the scale benchmarks' Llama builder, on a tiny decoder: ONNX Runtime runs it, it
computes what a numpy Llama computes from the same weights, its weights are one chunked external data file, and
onnxmorph's verbs grow it exactly (the graph follows the legacy exporter's patterns, or a verb would refuse)."""
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxmorph import api

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from decoder_model import build_decoder, config_for_gb  # noqa: E402

TINY = dict(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_decoder(tmp_path_factory.mktemp("decoder") / "tiny.onnx", **TINY, seed=3)


def _weights(path):
    model = onnx.load(str(path))          # external data read from beside the file
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}, model


def _linear(model, node_name):
    return next(n.input[1] for n in model.graph.node if n.name == node_name)


def numpy_llama(path, ids, layers, heads, kv_heads, eps=1e-5, theta=10000.0):
    """transformers' LlamaForCausalLM (eager attention, default RoPE) in float64, weights read from the file."""
    w, model = _weights(path)
    x = w["model.embed_tokens.weight"][ids]                       # (S, D)
    seq, hidden = x.shape
    d = hidden // heads
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = np.concatenate([np.outer(np.arange(seq), inv_freq)] * 2, axis=-1)   # (S, d)
    cos, sin = np.cos(angles), np.sin(angles)

    def rms(v, gamma):
        return gamma * v / np.sqrt((v * v).mean(-1, keepdims=True) + eps)

    def rope(t):                                                 # (heads, S, d)
        return t * cos + np.concatenate([-t[..., d // 2:], t[..., :d // 2]], -1) * sin

    def proj(v, i, what):
        return v @ w[_linear(model, f"/model/layers.{i}/{what}/MatMul")]

    causal = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(layers):
        h = rms(x, w[f"model.layers.{i}.input_layernorm.weight"])
        q = rope(proj(h, i, "self_attn/q_proj").reshape(seq, heads, d).transpose(1, 0, 2))
        k = rope(proj(h, i, "self_attn/k_proj").reshape(seq, kv_heads, d).transpose(1, 0, 2))
        v = proj(h, i, "self_attn/v_proj").reshape(seq, kv_heads, d).transpose(1, 0, 2)
        k, v = np.repeat(k, heads // kv_heads, 0), np.repeat(v, heads // kv_heads, 0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + proj((probs @ v).transpose(1, 0, 2).reshape(seq, hidden), i, "self_attn/o_proj")
        h = rms(x, w[f"model.layers.{i}.post_attention_layernorm.weight"])
        gate = proj(h, i, "mlp/gate_proj")
        x = x + proj(gate / (1 + np.exp(-gate)) * proj(h, i, "mlp/up_proj"), i, "mlp/down_proj")
    return rms(x, w["model.norm.weight"]) @ w[_linear(model, "/lm_head/MatMul")]


def test_runs_and_computes_the_numpy_llama(tiny):
    session = ort.InferenceSession(tiny.path, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, TINY["vocab"], size=(1, 8))
    got = session.run(None, {"input_ids": ids})[0]
    assert got.shape == (1, 8, TINY["vocab"]) and got.dtype == np.float32
    want = numpy_llama(tiny.path, ids[0], TINY["layers"], TINY["heads"], TINY["kv_heads"])
    rel = float(np.abs(got[0] - want).max() / np.abs(want).max())
    print(f"max rel error vs the numpy Llama: {rel:.2e}")
    assert rel < 1e-5
    assert 0.3 < float(want.std()) < 3       # activations O(1): the weights are scaled for it


def test_weights_are_one_chunked_external_file(tiny, tmp_path):
    model = onnx.load(tiny.path, load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"tiny.onnx.data"}
    assert all(t.raw_data and len(t.raw_data) < 1024 for t in inline)   # the norm weights of 32 values
    assert all(int(e.value) % 4096 == 0 for t in external for e in t.external_data if e.key == "offset")
    norms = [numpy_helper.to_array(t) for t in inline]
    assert all(abs(n.mean() - 1) < 0.2 and n.std() > 0.05 for n in norms)  # around 1, not all ones
    # a chunk of 256 bytes (a few rows per write) draws the same values as whole tensors, seeded per tensor
    again = build_decoder(tmp_path / "tiny.onnx", **TINY, seed=3, chunk_bytes=256)
    assert open(again.data_path, "rb").read() == open(tiny.data_path, "rb").read()
    other = build_decoder(tmp_path / "other.onnx", **TINY, seed=4)
    assert open(other.data_path, "rb").read() != open(tiny.data_path, "rb").read()
    assert tiny.params == 22688 and tiny.params == sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_gb_picks_the_issue_23_decoder():
    config = config_for_gb(2.7)
    assert (config.layers, config.hidden, config.heads, config.kv_heads, config.intermediate) == (12, 2048, 16, 4, 5632)
    assert abs(config.data_bytes() / 1e9 - 2.7) < 0.1
    big = config_for_gb(12)
    assert big.hidden == 4096 and big.layers >= 12 and abs(big.data_bytes() / 1e9 - 12) < 0.4
    assert config_for_gb(1.35, dtype="float16") == config.__class__(**{**config.__dict__, "dtype": "float16"})


VERBS = {
    "widen gate_proj 2x": lambda p: api.widen(p, "/model/layers.0/mlp/gate_proj/MatMul", width="2x", seed=1),
    "widen q_proj by one GQA group": lambda p: api.widen(p, "/model/layers.1/self_attn/q_proj/MatMul", heads=6, seed=1),
    "widen the stream 32 -> 40 (LEMON)": lambda p: api.widen(p, "/model/layers.0/self_attn/o_proj/MatMul",
                                                             width="40", stream="lemon", seed=1),
    "deepen o_proj": lambda p: api.deepen(p, "/model/layers.1/self_attn/o_proj/MatMul", seed=1),
    "deepen --block layer 0": lambda p: api.deepen(p, block="/model/layers.0/Add:/model/layers.0/Add_1", seed=1),
}


def _shape(model, name):
    return tuple(next(t.dims for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize("verb", list(VERBS))
def test_onnxmorph_verbs_grow_it_exactly(tiny, verb):
    parent = onnx.load(tiny.path)
    child, result = VERBS[verb](tiny.path)
    assert result.verification.passed and result.verification.max_rel < 1e-5, result.verification.max_rel
    print(f"{verb}: max rel {result.verification.max_rel:.2e}")
    if verb.startswith("widen gate"):     # gate and up 64 -> 128 together, down takes the new rows
        assert set(result.details.group["producers"]) == {"/model/layers.0/mlp/gate_proj/MatMul",
                                                          "/model/layers.0/mlp/up_proj/MatMul"}
        assert _shape(child, _linear(child, "/model/layers.0/mlp/down_proj/MatMul")) == (128, 32)
    elif verb.startswith("widen q_proj"):  # 4 query heads over 2 KV heads of 8 -> 6 over 3
        assert _shape(child, _linear(child, "/model/layers.1/self_attn/q_proj/MatMul")) == (32, 48)
        assert _shape(child, _linear(child, "/model/layers.1/self_attn/k_proj/MatMul")) == (32, 24)
        assert result.details.group["head_dim"] == 8
    elif verb.startswith("widen the stream"):   # every norm on the stream, embeddings and head grow to 40
        assert _shape(child, "model.embed_tokens.weight") == (64, 40)
        assert len(result.details.group["norms"]) == 2 * TINY["layers"] + 1
    elif verb == "deepen o_proj":          # two MatMuls where there was one
        assert [list(layer.weight_shape) for layer in result.details.new_layers] == [[32, 32], [32, 32]]
        assert "/model/layers.1/self_attn/o_proj/MatMul" not in {n.name for n in child.graph.node}
    else:                                  # one more decoder layer: its attention and MLP units, 7 projections
        def matmuls(m):
            return sum(n.op_type == "MatMul" and n.input[1] in {t.name for t in m.graph.initializer}
                       for n in m.graph.node)
        assert result.details.units == ["/model/layers.0/Add", "/model/layers.0/Add_1"]
        assert (result.details.blocks_before, result.details.blocks_after) == (2, 3)
        assert matmuls(child) == matmuls(parent) + 7


def test_transformers_computes_the_same(tiny):
    """Where transformers is installed (not in CI): LlamaForCausalLM with the file's weights gives the same
    logits."""
    transformers = pytest.importorskip("transformers")   # first: skipping costs nothing where it is missing
    torch = pytest.importorskip("torch")
    w, model = _weights(tiny.path)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      max_position_embeddings=64, tie_word_embeddings=False, use_cache=False,
                                      attn_implementation="eager")
    llama = transformers.LlamaForCausalLM(config).eval()
    state = {"model.embed_tokens.weight": w["model.embed_tokens.weight"], "model.norm.weight": w["model.norm.weight"],
             "lm_head.weight": w[_linear(model, "/lm_head/MatMul")].T}
    for i in range(2):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{i}.{norm}.weight"] = w[f"model.layers.{i}.{norm}.weight"]
        for what in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            node = f"/model/layers.{i}/{what.replace('.', '/')}/MatMul"
            state[f"model.layers.{i}.{what}.weight"] = w[_linear(model, node)].T
    llama.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    ids = np.random.default_rng(1).integers(0, 64, size=(1, 8))
    with torch.no_grad():
        want = llama(input_ids=torch.tensor(ids)).logits.numpy()
    got = ort.InferenceSession(tiny.path, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"max rel error vs transformers: {rel:.2e}")
    assert rel < 1e-5
