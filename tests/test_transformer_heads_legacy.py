"""Attention heads on the legacy (TorchScript) exports and inside GPT-2's fused QKV projection, and the ViT legacy
residual stream: widen is exact (verify), grows whole heads (weight shapes, Split sizes), or refuses a width that is
not whole heads with the reason."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.verify import verify

from conftest import FIXTURES

SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}   # dynamic batch and sequence


def _init(model, node_name, i=1):
    node = next(n for n in model.graph.node if n.name == node_name)
    return numpy_helper.to_array({t.name: t for t in model.graph.initializer}[node.input[i]])


def _widen(fixture, layer, width, method, seed=3):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=seed,
                              input_shape=SHAPES.get(fixture))
    onnx.checker.check_model(child, full_check=True)
    assert result.verification.passed and result.verification.max_rel < 2e-6
    return child, result


BERT = "/model/bert/encoder/layer.{}/attention/{}/MatMul"
LLAMA = "/model/model/layers.{}/self_attn/{}/MatMul"
# (fixture, a Q, K or V projection) -> ({projection: features per head of the space}, output projection)
HEADS = {
    ("hf_bert_legacy17.onnx", BERT.format(0, "self/query")):
        ({BERT.format(0, f"self/{p}"): 8 for p in ("query", "key", "value")}, BERT.format(0, "output/dense")),
    ("hf_bert_legacy17.onnx", BERT.format(1, "self/value")):
        ({BERT.format(1, f"self/{p}"): 8 for p in ("query", "key", "value")}, BERT.format(1, "output/dense")),
    ("hf_vit_legacy17.onnx", "/model/vit/layers.1/attention/k_proj/MatMul"):
        ({f"/model/vit/layers.1/attention/{p}_proj/MatMul": 8 for p in "qkv"},
         "/model/vit/layers.1/attention/o_proj/MatMul"),
    # GQA, 4 query heads over 2 KV heads: a group is a KV head (8 features) and its 2 query heads (16)
    ("hf_llama_legacy17.onnx", LLAMA.format(0, "q_proj")):
        ({LLAMA.format(0, "q_proj"): 16, LLAMA.format(0, "k_proj"): 8, LLAMA.format(0, "v_proj"): 8},
         LLAMA.format(0, "o_proj")),
    ("hf_llama_legacy17.onnx", LLAMA.format(1, "k_proj")):
        ({LLAMA.format(1, "q_proj"): 16, LLAMA.format(1, "k_proj"): 8, LLAMA.format(1, "v_proj"): 8},
         LLAMA.format(1, "o_proj")),
    ("hf_llama_legacy17.onnx", LLAMA.format(1, "v_proj")):
        ({LLAMA.format(1, "q_proj"): 16, LLAMA.format(1, "k_proj"): 8, LLAMA.format(1, "v_proj"): 8},
         LLAMA.format(1, "o_proj")),
}


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("units", [1, 2])   # one more head (GQA group), and twice as many
@pytest.mark.parametrize("fixture,layer", list(HEADS), ids=[f"{f[3:-5]}:{l}" for f, l in HEADS])
def test_legacy_heads_grow_whole(fixture, layer, units, method):
    projections, out_proj = HEADS[(fixture, layer)]
    parent = onnx.load(str(FIXTURES / fixture))
    per_head = projections[layer]
    heads = _init(parent, layer).shape[1] // per_head
    width = _init(parent, layer).shape[1] + per_head * (1 if units == 1 else heads)
    child, result = _widen(fixture, layer, str(width), method)
    added = 1 if units == 1 else heads
    assert set(result.details.group["producers"]) == set(projections)
    assert result.details.group["consumers"] == [out_proj]
    for name, features in projections.items():
        assert _init(child, name).shape[1] == _init(parent, name).shape[1] + added * features
    grown = _init(child, out_proj)   # it reads the query heads' features
    assert grown.shape[0] == _init(parent, out_proj).shape[0] + added * max(projections.values())
    if method == "netmorph":   # new heads: random Q/K/V columns, zero output-projection rows
        assert result.details.zeros_on == "consumers"
        assert int((np.abs(grown).sum(axis=1) == 0).sum()) == grown.shape[0] - _init(parent, out_proj).shape[0]


def test_legacy_heads_refuse_part_of_a_head():
    with pytest.raises(CannotMorph, match="head size 8"):
        api.widen(str(FIXTURES / "hf_bert_legacy17.onnx"), BERT.format(0, "self/key"), width="36")
    with pytest.raises(CannotMorph, match="a multiple of 16 more than 32"):
        api.widen(str(FIXTURES / "hf_llama_legacy17.onnx"), LLAMA.format(0, "q_proj"), width="40")
    with pytest.raises(CannotMorph, match="a multiple of 8 more than 16"):
        api.widen(str(FIXTURES / "hf_llama_legacy17.onnx"), LLAMA.format(1, "v_proj"), width="20")


# GPT-2: c_attn writes Q, K and V side by side (3 x 4 heads of 8), a Split cuts them apart; c_proj reads the heads.
GPT2 = {
    ("hf_gpt2_dynamo18.onnx", "node_addmm"): "node_addmm_1",
    ("hf_gpt2_dynamo18.onnx", "node_addmm_4"): "node_addmm_5",
    ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_attn/Gemm"): "/model/transformer/h.0/attn/c_proj/Gemm",
    ("hf_gpt2_legacy17.onnx", "/model/transformer/h.1/attn/c_attn/Gemm"): "/model/transformer/h.1/attn/c_proj/Gemm",
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.0/attn/c_attn/Gemm"): "/model/transformer/h.0/attn/c_proj/Gemm",
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.1/attn/c_attn/Gemm"): "/model/transformer/h.1/attn/c_proj/Gemm",
}


def _split_sizes(model, c_attn):
    """The sizes of the Split that reads c_attn's output (through its Reshape), from its input or equal parts."""
    from onnxmorph.graph.shapes import infer_shapes
    from onnxmorph.graph.index import GraphIndex
    index = GraphIndex(model)
    node = next(n for n in model.graph.node if n.name == c_attn)
    tensor = node.output[0]
    while True:
        user = index.consumers[tensor][0] if len(index.consumers[tensor]) == 1 else \
            next(u for u in index.consumers[tensor] if u.op_type == "Reshape")
        if user.op_type == "Split":
            break
        tensor = user.output[0]
    if len(user.input) > 1 and user.input[1]:
        return [int(v) for v in index.constant(user.input[1])]
    total = _init(model, c_attn).shape[1]
    assert infer_shapes(model)[user.output[0]][-1] == total // len(user.output)
    return [total // len(user.output)] * len(user.output)


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["120", "2x"])   # one more head in each of Q, K, V (96 -> 120); 4 more each
@pytest.mark.parametrize("fixture,layer", list(GPT2), ids=[f"{f[3:-5]}:{l}" for f, l in GPT2])
def test_fused_qkv_grows_whole_heads_in_each_part(fixture, layer, width, method):
    child, result = _widen(fixture, layer, width, method)
    parent = onnx.load(str(FIXTURES / fixture))
    fused = 120 if width == "120" else 192
    heads = fused // 3 // 8
    c_proj = GPT2[(fixture, layer)]
    assert result.details.channels_to == fused
    assert result.details.group["producers"] == [layer] and result.details.group["consumers"] == [c_proj]
    w, b = _init(child, layer), _init(child, layer, 2)
    assert w.shape == (32, fused) and b.shape == (fused,)
    assert _split_sizes(child, layer) == [fused // 3] * 3
    assert _init(child, c_proj).shape == (heads * 8, 32)
    old_w = _init(parent, layer)
    if method == "net2net":
        # Q, K and V of a new head copy the same old head: the heads stay paired across the Split
        for new in range(4, heads):
            blocks = [w[:, part * fused // 3 + new * 8:part * fused // 3 + (new + 1) * 8] for part in range(3)]
            sources = [{h for h in range(4) if np.array_equal(blocks[part], old_w[:, 32 * part + 8 * h:
                                                                                  32 * part + 8 * (h + 1)])}
                       for part in range(3)]
            assert sources[0] & sources[1] & sources[2]
    else:
        grown = _init(child, c_proj)
        assert int((np.abs(grown).sum(axis=1) == 0).sum()) == (heads - 4) * 8


def test_fused_qkv_at_opset_14_stays_dynamic():
    """The child of the dynamic-shape export runs at other batch and sequence sizes too."""
    path = str(FIXTURES / "hf_gpt2_legacy14.onnx")
    child, _ = _widen("hf_gpt2_legacy14.onnx", "/model/transformer/h.0/attn/c_attn/Gemm", "144", "netmorph")
    for shape in (["x:1x3"], ["x:3x13"]):
        report = verify(path, child, provider="cpu", input_shape=shape)
        assert report.passed and report.max_rel < 2e-6


@pytest.mark.parametrize("fixture,layer", list(GPT2)[::2], ids=[f"{f[3:-5]}:{l}" for f, l in list(GPT2)[::2]])
def test_fused_qkv_refuses_a_width_that_is_not_whole_heads_in_each_part(fixture, layer):
    for width in ("100", "104"):   # 104: one head of 8 more, but only in one of Q, K, V
        with pytest.raises(CannotMorph, match="whole heads to each part, a multiple of 24 more than 96"):
            api.widen(str(FIXTURES / fixture), layer, width=width, input_shape=SHAPES.get(fixture))


VIT = "/model/vit/{}"
# ViT legacy: the class token is Expand(cls_token, Where(Equal(s, -1), 1, s)); the stream grows by duplication
STREAM = [VIT.format("embeddings/patch_embeddings/projection/Conv")] + [
    VIT.format(f"layers.{k}/{p}/MatMul") for k in (0, 1) for p in ("attention/o_proj", "mlp/fc2")]


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "3x"])
@pytest.mark.parametrize("layer", STREAM)
def test_vit_legacy_stream_grows_by_duplication(layer, width, method):
    child, result = _widen("hf_vit_legacy17.onnx", layer, width, method, seed=7)
    assert len(result.details.group["norms"]) == 5
    assert result.details.channels_to == int(width[0]) * 32
    token = numpy_helper.to_array({t.name: t for t in child.graph.initializer}["model.vit.embeddings.cls_token"])
    assert token.shape == (1, 1, int(width[0]) * 32)


def test_vit_legacy_stream_refuses_a_non_multiple():
    with pytest.raises(CannotMorph, match="only an integer multiple of 32"):
        api.widen(str(FIXTURES / "hf_vit_legacy17.onnx"), STREAM[1], width="48", stream="duplicate")


def test_inspect_says_how_legacy_projections_grow():
    from onnxmorph.inspect import inspect
    gpt2 = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_gpt2_legacy17.onnx")).layers}
    assert gpt2["/model/transformer/h.0/attn/c_attn/Gemm"].widen_unit == (
        "by whole heads in each of its 3 fused parts (Q, K, V): 4 heads of 8 features each; --width a multiple of "
        "24 more")
    llama = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_llama_legacy17.onnx")).layers}
    unit = llama[LLAMA.format(0, "k_proj")].widen_unit
    assert "GQA groups (a KV head and its 2 query heads): 2 of 8 features" in unit
    vit = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_vit_legacy17.onnx")).layers}
    assert vit[STREAM[0]].morphs["widen"] == "ok" and "duplication" in vit[STREAM[0]].widen_unit


def _class_token_model(last):
    """x (batch, 4, 8) -> proj -> concat after a class token Expand(cls, Where(Equal(s, -1), 1, s)) with
    s = (batch, -1, last), as the legacy exporter writes `cls.expand(batch, -1, -1)` -> head."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("W", rng.standard_normal((8, 8)).astype(np.float32)), ("W2", rng.standard_normal((8, 3)).astype(np.float32)),
        ("cls", rng.standard_normal((1, 1, 8)).astype(np.float32)), ("zero", np.array([0], np.int64)),
        ("minus1", np.array([-1], np.int64)), ("last", np.array([last], np.int64)), ("three", np.array([3], np.int64)),
        ("m1", np.array(-1, np.int64)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
             helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Concat", ["b", "minus1", "last"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["three"], ["ones"],
                              value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
             helper.make_node("Mul", ["ones", "m1"], ["neg"]), helper.make_node("Equal", ["shape", "neg"], ["eq"]),
             helper.make_node("Where", ["eq", "ones", "shape"], ["target"]),
             helper.make_node("Expand", ["cls", "target"], ["token"], name="expand"),
             helper.make_node("Concat", ["token", "h"], ["seq"], axis=1),
             helper.make_node("MatMul", ["seq", "W2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "class_token", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   ["batch", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("last", [-1, 8])   # the class token keeps the input's width (-1 -> 1), or names it (grows)
def test_class_token_expand_with_a_dynamic_batch(last, method):
    child, result = api.widen(_class_token_model(last), "proj", width="12", method=method, input_shape=["x:3x4x8"])
    assert result.verification.passed and result.verification.max_rel < 2e-6
    assert result.details.group["parameters"] == ["expand:concat_const"]
    token = numpy_helper.to_array({t.name: t for t in child.graph.initializer}["cls"])
    assert token.shape == (1, 1, 12)
    for shape in (["x:1x4x8"], ["x:5x4x8"]):
        assert verify(_class_token_model(last), child, provider="cpu", input_shape=shape).max_rel < 2e-6


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
def test_computed_head_shapes_naming_h_grow(tmp_path, method):
    """GPT-2 at opset 14 with its computed Reshape targets Concat(batch, seq, H, d_h) and Concat(batch, seq, H·d_h)
    holding H = 4 and H·d_h = 32 as constants (the export writes -1 there): those constants grow with the heads."""
    model = onnx.load(str(FIXTURES / "hf_gpt2_legacy14.onnx"))
    held = {f"/model/transformer/h.0/attn/Constant_{k}_output_0": v for k, v in ((3, 4), (5, 4), (9, 4), (14, 32))}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in held:
            assert int(numpy_helper.to_array(node.attribute[0].t)[0]) == -1
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([held[node.output[0]]], np.int64)))
    path = tmp_path / "gpt2_named_heads.onnx"
    onnx.save(model, str(path))
    child, result = api.widen(str(path), "/model/transformer/h.0/attn/c_attn/Gemm", width="144", method=method,
                              input_shape=["x:2x8"])
    assert result.verification.passed and result.verification.max_rel < 2e-6
    values = {tuple(numpy_helper.to_array(n.attribute[0].t).tolist()) for n in child.graph.node
              if n.op_type == "Constant" and n.output[0] in held}
    values |= {tuple(numpy_helper.to_array(t).tolist()) for t in child.graph.initializer if t.name in held}
    assert values == {(6,), (48,)}   # 4 -> 6 heads, 32 -> 48 features
    assert verify(str(path), child, provider="cpu", input_shape=["x:3x5"]).max_rel < 2e-6
