"""The residual stream at any width (LEMON, passes/widen_stream.py): pre-norm streams grow exactly to a
non-integer width, post-norm ones and ops the fill does not go through are refused with the reason."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError

from conftest import FIXTURES, ROOT, run_cli

# (fixture, a layer writing a pre-norm residual stream of 32 channels)
PRE_NORM = [
    ("hf_vit_dynamo18.onnx", "node_conv2d"),                             # patch Conv, class token, positions
    ("hf_vit_dynamo18.onnx", "node_MatMul_60"),
    ("hf_vit_legacy17.onnx", "/model/vit/embeddings/patch_embeddings/projection/Conv"),
    ("hf_gpt2_dynamo18.onnx", "node_addmm_3"),
    ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_proj/Gemm"),  # tied word embedding in the LM head
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.0/attn/c_proj/Gemm"),  # decomposed LayerNorm
    ("hf_llama_dynamo18.onnx", "node_linear_3"),                          # decomposed RMSNorm (Reciprocal)
    ("hf_llama_legacy17.onnx", "/model/model/layers.0/self_attn/o_proj/MatMul"),  # RMSNorm with Casts, Div(1, .)
]
SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}  # dynamic batch and sequence: verify on a real sequence
POST_NORM = [
    ("hf_bert_dynamo18.onnx", "node_MatMul_89"),
    ("hf_bert_legacy17.onnx", "/model/bert/encoder/layer.0/attention/output/dense/MatMul"),
]


def _ids(cases):
    return [f"{f[3:-5]}:{layer}" for f, layer in cases]


def _exact(result):
    assert result.verification.passed and result.verification.max_rel < 2e-6, result.verification.max_rel


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["40", "48"])
@pytest.mark.parametrize("fixture,layer", PRE_NORM, ids=_ids(PRE_NORM))
def test_pre_norm_stream_grows_to_any_width(fixture, layer, width, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=5,
                              input_shape=SHAPES.get(fixture))
    onnx.checker.check_model(child, full_check=True)
    details = result.details
    assert (details.stream, details.channels_from, details.channels_to) == ("lemon", 32, int(width))
    carry = "carry zero" if "llama" in fixture else "carry the mean of the old ones"
    assert any(n.startswith(f"LEMON any-width: eta^2 = D/D' = 32/{width}") and carry in n for n in details.notes)
    _exact(result)


@pytest.mark.parametrize("fixture,layer", PRE_NORM[1:3], ids=_ids(PRE_NORM[1:3]))
def test_lemon_at_an_integer_multiple_when_asked(fixture, layer):
    _, result = api.widen(str(FIXTURES / fixture), layer, width="2x", stream="lemon", seed=2)
    assert (result.details.stream, result.details.channels_to) == ("lemon", 64)
    _exact(result)
    _, result = api.widen(str(FIXTURES / fixture), layer, width="2x", seed=2)
    assert result.details.stream == "duplicate"   # auto keeps duplication at integer multiples
    _exact(result)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_norms_and_producers_carry_the_lemon_values():
    parent = onnx.load(str(FIXTURES / "hf_gpt2_dynamo18.onnx"))
    child, _ = api.widen(parent, "node_addmm_3", width="40", seed=1)
    eta2 = 32 / 40
    old, new = _inits(parent), _inits(child)
    nodes = {n.name: n for n in child.graph.node}
    for p_node in (n for n in parent.graph.node if n.op_type == "LayerNormalization"):
        c_node = nodes[p_node.name]
        eps = {a.name: a.f for a in p_node.attribute}.get("epsilon", 1e-5)
        assert {a.name: a.f for a in c_node.attribute}["epsilon"] == pytest.approx(eta2 * eps, rel=1e-6)
        gamma, beta = new[c_node.input[1]], new[c_node.input[2]]
        np.testing.assert_allclose(gamma[:32], old[p_node.input[1]] * np.sqrt(eta2), rtol=1e-6)
        assert gamma.shape == (40,) and not beta[32:].any()
    producer = nodes["node_addmm_3"]   # Gemm (transB 0): weight (K, 32) -> (K, 40), new columns the mean
    w = new[producer.input[1]]
    np.testing.assert_allclose(w[:, 32:], np.repeat(w[:, :32].mean(1, keepdims=True), 8, 1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("width", ["40", "48"])
@pytest.mark.parametrize("fixture,layer", POST_NORM, ids=_ids(POST_NORM))
def test_post_norm_is_refused_at_a_non_integer_width(fixture, layer, width):
    with pytest.raises(CannotMorph, match=f"only an integer multiple of 32 .the stream duplicated. keeps it exact, "
                                          f"not {width}; LEMON .any width. does not apply: .*post-norm"):
        api.widen(str(FIXTURES / fixture), layer, width=width)
    with pytest.raises(CannotMorph, match="joins the stream and a norm's output .post-norm"):
        api.widen(str(FIXTURES / fixture), layer, width="2x", stream="lemon")


def test_stream_option_is_checked():
    gpt2 = str(FIXTURES / "hf_gpt2_dynamo18.onnx")
    with pytest.raises(CannotMorph, match="only an integer multiple of 32 .the stream duplicated. keeps it exact, "
                                          "not 40$"):
        api.widen(gpt2, "node_addmm_3", width="40", stream="duplicate")
    with pytest.raises(UsageError, match="no norm is over these channels"):
        api.widen(gpt2, "node_addmm_6", width="200", stream="lemon")   # FFN up projection
    with pytest.raises(UsageError, match="unknown --stream"):
        api.widen(gpt2, "node_addmm_3", width="40", stream="copy")


def test_cli_stream_option_and_its_json_report(tmp_path):
    import json
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "gpt2_48.onnx"
    code, text, err = run_cli("widen", FIXTURES / "hf_gpt2_dynamo18.onnx", "--layer", "node_addmm_3", "--width",
                              "48", "--stream", "lemon", "--method", "net2net", "-o", out, "--json")
    assert code == 0, err
    report = json.loads(text)
    schema = json.loads((ROOT / "cli" / "schema.json").read_text())
    jsonschema.validate(report, {"$ref": "#/$defs/morph", "$defs": schema["$defs"]})
    assert report["details"]["stream"] == "lemon" and report["verification"]["max_rel"] < 2e-6
    code, text, _ = run_cli("inspect", out)
    assert code == 0 and "--stream lemon" in text   # the lineage regrows it the same way


# --- synthetic streams: RMSNormalization-23, and ops the fill does not go through -------------------------------------------

D, F, IN, OUT = 6, 10, 5, 4


def _stream_model(norm="layer", on_stream=None, post=False, final_norm=True):
    """x -> Linear (the stream, D) -> [op on the stream] -> pre-norm MLP unit (two of them) -> norm -> head.
    post: the unit is post-norm, h = norm(h + mlp(h)); final_norm=False: the head reads the raw stream."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def norm_node(x, out, k):
        g = const(f"g{k}", 1 + 0.3 * rng.standard_normal(D))
        if norm == "layer":
            b = const(f"b{k}", 0.3 * rng.standard_normal(D))
            nodes.append(helper.make_node("LayerNormalization", [x, g, b], [out], name=f"norm{k}", axis=-1,
                                          epsilon=1e-3))
        else:
            nodes.append(helper.make_node("RMSNormalization", [x, g], [out], name=f"norm{k}", axis=-1, epsilon=1e-3))
        return out

    nodes.append(helper.make_node("MatMul", ["x", const("w_in", rng.standard_normal((IN, D)))], ["s0"], name="embed"))
    h = "s0"
    if on_stream == "Relu":
        nodes.append(helper.make_node("Relu", [h], ["s0r"], name="relu_on_stream"))
        h = "s0r"
    elif on_stream in ("Mul", "MulShared"):   # a LayerScale on the producer's output; or on one read twice
        nodes.append(helper.make_node("Mul", [h, const("c", 1 + rng.random(D))], ["s0m"], name="scale_on_stream"))
        h = "s0m"
        if on_stream == "MulShared":
            nodes.append(helper.make_node("Add", ["s0m", "s0"], ["s0a"], name="shared"))
            h = "s0a"
    for k in range(2):
        n = norm_node(h, f"n{k}", k) if not post else h
        nodes.append(helper.make_node("MatMul", [n, const(f"w1_{k}", rng.standard_normal((D, F)))], [f"u{k}"],
                                      name=f"up{k}"))
        nodes.append(helper.make_node("Tanh", [f"u{k}"], [f"t{k}"]))
        nodes.append(helper.make_node("MatMul", [f"t{k}", const(f"w2_{k}", rng.standard_normal((F, D)))], [f"d{k}"],
                                      name=f"down{k}"))
        nodes.append(helper.make_node("Add", [h, f"d{k}"], [f"r{k}"], name=f"residual{k}"))
        h = norm_node(f"r{k}", f"p{k}", 10 + k) if post else f"r{k}"
    last = norm_node(h, "final", 9) if final_norm else h
    nodes.append(helper.make_node("MatMul", [last, const("w_out", rng.standard_normal((D, OUT)))], ["y"], name="head"))
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("on_stream", [None, "Relu", "Mul"])
@pytest.mark.parametrize("method", ["netmorph", "net2net"])
def test_rms_stream_grows_with_zero_channels(method, on_stream):
    # under RMSNorm the new stream channels are 0: ops that keep 0 at 0 (ReLU, a per-channel scale) are fine
    _, result = api.widen(_stream_model("rms", on_stream), "embed", width="9", method=method, seed=3)
    assert result.details.stream == "lemon" and result.details.channels_to == 9
    assert any("carry zero" in n and "[RMSNorm(x); 0]" in n for n in result.details.notes)
    _exact(result)


def test_rms_post_norm_is_refused():
    with pytest.raises(CannotMorph, match="post-norm"):
        api.widen(_stream_model("rms", post=True), "embed", width="9")


@pytest.mark.parametrize("final_norm", [True, False])
def test_layer_norm_stream_synthetic_is_exact(final_norm):
    # without the final norm the head reads the raw stream, whose new channels carry the mean: zero columns
    model = _stream_model("layer", final_norm=final_norm)
    child, result = api.widen(model, "embed", width="11", seed=4)
    _exact(result)
    head = numpy_helper.to_array(next(t for t in child.graph.initializer if t.name == "w_out"))
    assert head.shape == (11, OUT) and head[D:].any() == final_norm


def test_net2net_noise_on_the_free_columns_is_exact():
    _, result = api.widen(str(FIXTURES / "hf_gpt2_dynamo18.onnx"), "node_addmm_3", width="40", method="net2net",
                          noise=0.5, seed=6)
    assert result.details.stream == "lemon"
    _exact(result)


@pytest.mark.parametrize("op,name,on_stream", [("Relu", "relu_on_stream", "Relu"),
                                               ("Mul", "scale_on_stream", "MulShared")])
def test_ops_the_mean_does_not_go_through_are_named(op, name, on_stream):
    # a per-channel scale of a tensor that something else reads too: its new channels cannot carry both means
    with pytest.raises(CannotMorph, match=f"{op} '{name}' acts on the stream and is not linear or not the same on "
                                          "every channel"):
        api.widen(_stream_model("layer", on_stream), "embed", width="9", stream="lemon")


def test_layer_scale_after_a_producer_is_exact():
    # timm's LayerScale: the producer's new rows carry the gamma-weighted mean, gamma's new entries are 1
    child, result = api.widen(_stream_model("layer", "Mul"), "embed", width="9", stream="lemon", seed=2)
    _exact(result)
    gamma = numpy_helper.to_array(next(t for t in child.graph.initializer if t.name == "c"))
    assert gamma.shape == (9,) and (gamma[D:] == 1).all()


def test_inspect_says_how_the_stream_grows():
    from onnxmorph.inspect import inspect
    gpt2 = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_gpt2_dynamo18.onnx")).layers}
    assert gpt2["node_addmm_3"].widen_unit.endswith("5 norms: any width (LEMON, pre-norm; duplication at integer "
                                                    "multiples)")
    bert = {lay.id: lay for lay in inspect(str(FIXTURES / "hf_bert_dynamo18.onnx")).layers}
    assert "integer multiples only (duplication; Add 'node_add_5' joins the stream and a norm's output (post-norm" \
        in bert["node_MatMul_89"].widen_unit


# every decomposed-norm variant of tests/test_transformer_norms.py (D = 8; 'mid' reads the norm and writes the stream)
from test_transformer_norms import VARIANTS, _norm_model  # noqa: E402


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decomposed_norm_variants(variant, method):
    options = VARIANTS[variant]
    if options.get("gamma", True) is False:   # nothing to carry eta: duplication only
        with pytest.raises(CannotMorph, match="only an integer multiple of 8 .* has no scale to carry the factor eta"):
            api.widen(_norm_model(**options), "wide", width="11", method=method)
        return
    _, result = api.widen(_norm_model(**options), "wide", width="11", method=method, seed=2)
    assert result.details.stream == "lemon"
    _exact(result)
    with pytest.raises(CannotMorph, match="post-norm"):
        api.widen(_norm_model(**options, post=True), "wide", width="11", method=method)


def test_convnext_depthwise_conv_on_the_stream_is_named():
    # ConvNeXt: the depthwise conv reads the stream before its LayerNorm; the mean of the old channels does not go
    # through a per-channel filter, so only duplication is exact
    with pytest.raises(CannotMorph, match="only an integer multiple of 16 .* LEMON .any width. does not apply: "
                                          "depthwise Conv '/block/dwconv/Conv' acts on the stream channel by channel"):
        api.widen(str(FIXTURES / "cnn_convnext_legacy17.onnx"), "/block/pwconv2/MatMul", width="24")


TRAIN = [("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_proj/Gemm", "netmorph", 0.0),
         ("hf_vit_dynamo18.onnx", "node_conv2d", "netmorph", 0.0),
         ("hf_llama_dynamo18.onnx", "node_linear_3", "net2net", 0.1)]


@pytest.mark.parametrize("fixture,layer,method,noise", TRAIN, ids=[f"{f[3:-5]}:{m}" for f, _, m, _ in TRAIN])
def test_lemon_children_train(fixture, layer, method, noise):
    """Every new or changed value gets a gradient and moves in two SGD steps (tests/test_train_transformers.py);
    the epsilons are helper constants, fixed by design; embedding rows train for the fed tokens (0, 1, 2) only."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from onnxmorph.torch import trainability
    from test_train_transformers import _fed_tokens
    path = str(FIXTURES / fixture)
    child, result = api.widen(path, layer, width="40", method=method, noise=noise, seed=6)
    _exact(result)
    report = trainability(onnx.load(path), child, steps=2)
    lines = "\n".join(report.lines())
    assert report.max_rel <= 1e-6 and report.params, lines
    for p in report.params:
        if p.fixed_by_design:
            assert p.role.startswith("helper constant"), lines
            continue
        assert p.trains and p.grad > p.noise > 0 and p.moved > 0, lines
        if p.role == "Gather input 0":
            rows = next(t.dims[0] for t in child.graph.initializer if t.name == p.onnx_name)
            assert round((1 - p.dead) * rows) == _fed_tokens(child), lines   # the rows of the ids fed
        else:
            assert p.dead == 0, lines
