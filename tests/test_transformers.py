"""Growing the transformer fixtures (fixtures/export_transformer_fixtures.py): what is exact, measured by verify,
and what is refused, with the reason."""
import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph

from conftest import FIXTURES

# GPT-2 at opset 14 has a dynamic batch and sequence: verify it on a real sequence, not the default 1 x 1.
SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}

# (fixture, FFN up projection) -> (producers that grow together, the down projection)
FFN = {
    ("hf_vit_legacy17.onnx", "/model/vit/layers.0/mlp/fc1/MatMul"): (1, "/model/vit/layers.0/mlp/fc2/MatMul"),
    ("hf_vit_dynamo18.onnx", "node_MatMul_62"): (1, "node_MatMul_71"),
    ("hf_bert_legacy17.onnx", "/model/bert/encoder/layer.1/intermediate/dense/MatMul"):
        (1, "/model/bert/encoder/layer.1/output/dense/MatMul"),
    ("hf_bert_dynamo18.onnx", "node_MatMul_91"): (1, "node_MatMul_100"),
    # GPT-2's Conv1D: Reshape(-1, D) -> Gemm -> Reshape(B, S, D'), the gelu_new Pow between
    ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/mlp/c_fc/Gemm"): (1, "/model/transformer/h.0/mlp/c_proj/Gemm"),
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.1/mlp/c_fc/Gemm"): (1, "/model/transformer/h.1/mlp/c_proj/Gemm"),
    ("hf_gpt2_dynamo18.onnx", "node_addmm_6"): (1, "node_addmm_7"),
    # SwiGLU: gate and up grow together through the Mul
    ("hf_llama_legacy17.onnx", "/model/model/layers.0/mlp/gate_proj/MatMul"):
        (2, "/model/model/layers.0/mlp/down_proj/MatMul"),
    ("hf_llama_legacy17.onnx", "/model/model/layers.1/mlp/up_proj/MatMul"):
        (2, "/model/model/layers.1/mlp/down_proj/MatMul"),
    ("hf_llama_dynamo18.onnx", "node_linear_4"): (2, "node_linear_6"),
}


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "100"])
@pytest.mark.parametrize("fixture,layer", list(FFN), ids=[f"{f[3:-5]}:{l}" for f, l in FFN])
def test_ffn_widens_exactly(fixture, layer, width, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=1,
                              input_shape=SHAPES.get(fixture))
    onnx.checker.check_model(child, full_check=True)
    producers, down = FFN[(fixture, layer)]
    group = result.details.group
    assert len(group["producers"]) == producers and group["consumers"] == [down]
    assert result.details.channels_to == (128 if width == "2x" else 100)
    assert result.verification.passed and result.verification.max_rel < 1e-6


def test_swiglu_gate_and_up_get_the_same_new_rows_structure():
    """gate and up both grow, down's new columns are the zero side under netmorph (SiLU(0)*0 = 0 either way, but
    the gate passes a Sigmoid, which does not map 0 to 0)."""
    child, result = api.widen(str(FIXTURES / "hf_llama_dynamo18.onnx"), "node_linear_11", width="96", seed=2)
    assert result.details.zeros_on == "consumers"
    assert set(result.details.group["producers"]) == {"node_linear_11", "node_linear_12"}
    assert result.verification.max_rel < 1e-6


REFUSALS = {
    ("hf_gpt2_legacy17.onnx", "/model/lm_head/MatMul"): "graph output",
}   # fused QKV (c_attn) grows by whole heads now: tests/test_transformer_heads_legacy.py


@pytest.mark.parametrize("fixture,layer", list(REFUSALS), ids=[f"{f[3:-5]}:{l}" for f, l in REFUSALS])
def test_refusals_name_the_reason(fixture, layer):
    with pytest.raises(CannotMorph, match=REFUSALS[(fixture, layer)]):
        api.widen(str(FIXTURES / fixture), layer, width="2x")


# (fixture, a Q, K or V projection) -> (every projection of the attention, the output projection)
HEADS = {
    ("hf_vit_dynamo18.onnx", "node_MatMul_37"): ({"node_MatMul_29", "node_MatMul_37", "node_MatMul_45"},
                                                 "node_MatMul_60"),
    ("hf_bert_dynamo18.onnx", "node_MatMul_102"): ({"node_MatMul_102", "node_MatMul_110", "node_MatMul_118"},
                                                   "node_MatMul_131"),
    # Llama: RoPE on Q and K, GQA with 4 query heads over 2 KV heads (r = 2)
    ("hf_llama_dynamo18.onnx", "node_linear"): ({"node_linear", "node_linear_1", "node_linear_2"}, "node_linear_3"),
    ("hf_llama_dynamo18.onnx", "node_linear_8"): ({"node_linear_7", "node_linear_8", "node_linear_9"},
                                                  "node_linear_10"),
}


def _weight_shape(model, node_name):
    from onnx import numpy_helper
    node = next(n for n in model.graph.node if n.name == node_name)
    init = {t.name: t for t in model.graph.initializer}[node.input[1]]
    return numpy_helper.to_array(init).shape


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer", list(HEADS), ids=[f"{f[3:-5]}:{l}" for f, l in HEADS])
def test_heads_grow_whole(fixture, layer, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width="2x", method=method, seed=4)
    onnx.checker.check_model(child, full_check=True)
    projections, out_proj = HEADS[(fixture, layer)]
    group = result.details.group
    assert set(group["producers"]) == projections and group["consumers"] == [out_proj]
    assert result.verification.passed and result.verification.max_rel < 1e-6
    if method == "netmorph":
        assert result.details.zeros_on == "consumers"   # new Q/K/V rows random, output columns zero
    # every projection doubles: under GQA the KV heads and their query groups grow together
    parent = onnx.load(str(FIXTURES / fixture))
    for name in projections:
        assert _weight_shape(child, name)[1] == 2 * _weight_shape(parent, name)[1]
    assert _weight_shape(child, out_proj)[0] == 2 * _weight_shape(parent, out_proj)[0]


def test_gqa_grows_by_whole_groups_only():
    """4 query heads over 2 KV heads of 8: a group is 16 query features; half a group is refused."""
    path = str(FIXTURES / "hf_llama_dynamo18.onnx")
    with pytest.raises(CannotMorph, match="a multiple of 16 more than 32"):
        api.widen(path, "node_linear", width="40")
    with pytest.raises(CannotMorph, match="a multiple of 8 more than 16"):
        api.widen(path, "node_linear_1", width="20")
    child, result = api.widen(path, "node_linear_1", width="24", seed=5)   # one more KV head: 2 query heads
    assert _weight_shape(child, "node_linear")[1] == 48 and result.verification.max_rel < 1e-6


def test_heads_of_a_non_head_multiple_are_refused():
    with pytest.raises(CannotMorph, match="head size 8"):
        api.widen(str(FIXTURES / "hf_vit_dynamo18.onnx"), "node_MatMul_29", width="36")


# The ViT legacy FFN here; heads, SwiGLU, GPT-2's FFN and d_model children in tests/test_train_transformers.py.
TRAINS = [("hf_vit_legacy17.onnx", "/model/vit/layers.0/mlp/fc1/MatMul", "2x"),
          ("hf_vit_legacy17.onnx", "/model/vit/layers.1/mlp/fc1/MatMul", "100")]


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer,width", TRAINS, ids=[f"{f[3:-5]}:{l}" for f, l, _ in TRAINS])
def test_new_parameters_train(fixture, layer, width, method):
    pytest.importorskip("onnx2torch")
    from onnxmorph.torch import trainability
    path = str(FIXTURES / fixture)
    child, result = api.widen(path, layer, width=width, method=method, seed=6)
    report = trainability(onnx.load(path), child, steps=3)
    assert report.max_rel <= 1e-5 and report.params
    assert all(p.trains for p in report.params), "\n".join(report.lines())


def test_inspect_says_how_attention_projections_grow():
    from onnxmorph.inspect import inspect
    layers = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_llama_dynamo18.onnx")).layers}
    assert "GQA groups (a KV head and its 2 query heads): 2 of 16 features" in layers["node_linear"].widen_unit
    assert "2 of 8 features here, head size 8" in layers["node_linear_1"].widen_unit
    assert layers["node_linear_4"].widen_unit == "" and layers["node_linear_4"].morphs["widen"] == "ok"
    vit = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_vit_dynamo18.onnx")).layers}
    assert vit["node_MatMul_29"].widen_unit.startswith("by whole heads: 4 of 8 features")


# (fixture, a layer writing the residual stream) -> the number of norms over the stream
STREAM = {
    ("hf_bert_dynamo18.onnx", "node_MatMul_89"): 5,                                            # post-LN
    ("hf_bert_legacy17.onnx", "/model/bert/encoder/layer.0/attention/output/dense/MatMul"): 5,
    ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_proj/Gemm"): 5,                   # pre-LN, tied wte
    ("hf_gpt2_dynamo18.onnx", "node_addmm_3"): 5,
    ("hf_vit_dynamo18.onnx", "node_conv2d"): 5,                              # patch Conv, class token, positions
    ("hf_vit_dynamo18.onnx", "node_MatMul_60"): 5,
}


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "3x"])
@pytest.mark.parametrize("fixture,layer", list(STREAM), ids=[f"{f[3:-5]}:{l}" for f, l in STREAM])
def test_d_model_grows_by_duplication(fixture, layer, width, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=7)
    onnx.checker.check_model(child, full_check=True)
    group = result.details.group
    assert len(group["norms"]) == STREAM[(fixture, layer)]
    assert result.details.channels_to == int(width[0]) * result.details.channels_from
    assert result.verification.passed and result.verification.max_rel < 2e-6


@pytest.mark.parametrize("fixture,layer", list(STREAM)[:2], ids=[f"{f[3:-5]}:{l}" for f, l in list(STREAM)[:2]])
def test_d_model_non_integer_is_refused(fixture, layer):  # post-LN BERT; pre-LN: tests/test_transformer_lemon.py
    with pytest.raises(CannotMorph, match="only an integer multiple of 32 .the stream duplicated. keeps it exact"):
        api.widen(str(FIXTURES / fixture), layer, width="48")


def test_d_model_refusals_name_what_is_missing():
    # decomposed norms are followed (tests/test_transformer_norms.py); a ReduceMean over the stream that is no norm
    # (Llama's RMSNorm with its square made a cube) is refused at it, with the reason
    model = onnx.load(str(FIXTURES / "hf_llama_dynamo18.onnx"))
    square = next(n for n in model.graph.node if n.name == "node_pow_1")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(3.0, np.float32), "cube"))
    square.input[1] = "cube"
    with pytest.raises(CannotMorph, match="ReduceMean 'node_mean' .* reduces over the channel axis and is no norm "
                                          r"\(Pow 'node_pow_1' raises to \[3.0\], not 2\)"):
        api.widen(model, "node_linear_3", width="2x")
