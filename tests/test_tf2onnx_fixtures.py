"""issue 20: Keras models converted by tf2onnx 1.17 at opsets 13 and 17 (fixtures/tf2onnx), the T5 encoder
(fixtures/t5) and a Caffe2-era ShuffleNet v1 (fixtures/caffe2): every layer through widen (2x and one channel
more), deepen, subnet and kernel, and every block through deepen --block, is exact or refused in one line with
the reason listed here. One shared sweep per fixture (tests/sweep.py): each verb's morphs go into one child,
checked once on ONNX Runtime with dynamic dims fed as 2."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layer

from conftest import FIXTURES, run_cli
from sweep import Sweep, one_line_refusals

OUTPUT = "widening changes graph output"
HEADS = "--width must add whole ones, a multiple of 8 more than 32"        # one channel more than Q/K/V
MODEL_INPUT = "tensor 'x' is a graph input"                                 # prenorm's d_model starts at its input
POST_NORM_STREAM = "LEMON (any width) does not apply: Add"                  # post-norm stream: 2x only
DEPTHWISE_STREAM = "LEMON (any width) does not apply: depthwise Conv"       # ConvNeXt's stream: multiples only
POST_NORM_UNIT = "post-norm: the LayerNorm"
PROJECTION = "is not the identity (projection shortcut)"
NO_CHANNELS_IN_GROUP = "none of them, so its groups cannot all grow by the same number"
SHUFFLE_STEP = "the width must grow by a multiple of 16; nearest valid widths: 32"
STREAM_STEP = "cannot all keep their groups alike at width 65; nearest valid widths: 72"

_CONVNEXT_STREAM = r".*(stem_conv|depthwise_conv|pointwise_conv_2|downsampling_conv).*"
_ENCODER_STREAM_13 = r".*(ffn2|attention_output).*"
# fixture -> {verb: [(regex over the target id, reason)]}: the refused targets are exactly those a rule matches.
REFUSED = {
    "convnext_tiny_op{}": {"widen2x": [(r".*head_dense.*", OUTPUT)],
                           "widen+1": [(r".*head_dense.*", OUTPUT), (_CONVNEXT_STREAM, DEPTHWISE_STREAM)]},
    "densenet121_op{}": {"widen2x": [(r".*predictions.*", OUTPUT)], "widen+1": [(r".*predictions.*", OUTPUT)]},
    "efficientnetb0_op{}": {"widen2x": [(r".*predictions.*", OUTPUT)], "widen+1": [(r".*predictions.*", OUTPUT)]},
    "mobilenetv2_op{}": {"widen2x": [(r".*predictions.*", OUTPUT)], "widen+1": [(r".*predictions.*", OUTPUT)]},
    "resnet50_op{}": {"widen2x": [(r".*predictions.*", OUTPUT)], "widen+1": [(r".*predictions.*", OUTPUT)],
                      "block": [(r".*block1_add.*", PROJECTION)]},
    "resnet50v2_op{}": {"widen2x": [(r".*predictions.*", OUTPUT)], "widen+1": [(r".*predictions.*", OUTPUT)],
                        "block": [(r".*block1_out.*", PROJECTION)]},
    "small_cnn_op{}": {"widen2x": [(r".*logits.*", OUTPUT)], "widen+1": [(r".*logits.*", OUTPUT)]},
    "prenorm_encoder_op13": {"widen2x": [(r".*head.*", OUTPUT), (_ENCODER_STREAM_13, MODEL_INPUT)],
                             "widen+1": [(r".*head.*", OUTPUT), (_ENCODER_STREAM_13, MODEL_INPUT),
                                         (r"Gemm__\d+", HEADS)]},
    "prenorm_encoder_op17": {"widen2x": [(r".*head.*", OUTPUT), (r".*ffn2.*|Gemm__(617|737)", MODEL_INPUT)],
                             "widen+1": [(r".*head.*", OUTPUT), (r".*ffn2.*|Gemm__(617|737)", MODEL_INPUT),
                                         (r"Gemm__\d+", HEADS)]},
    "postnorm_encoder_op13": {"widen2x": [(r".*head.*", OUTPUT)],
                              "widen+1": [(r".*head.*", OUTPUT), (_ENCODER_STREAM_13, POST_NORM_STREAM),
                                          (r"Gemm__\d+", HEADS)],
                              "block": [(r".*", POST_NORM_UNIT)]},
    "postnorm_encoder_op17": {"widen2x": [(r".*head.*", OUTPUT)],
                              "widen+1": [(r".*head.*", OUTPUT), (r".*ffn2.*|Gemm__(169|789)", POST_NORM_STREAM),
                                          (r"Gemm__\d+", HEADS)],
                              "block": [(r".*", POST_NORM_UNIT)]},
    # T5's last_hidden_state is the graph output, so the layers writing d_model cannot grow
    "t5_encoder_legacy17": {"widen2x": [(r".*/(o|wo)/MatMul", OUTPUT)],
                            "widen+1": [(r".*/(o|wo)/MatMul", OUTPUT), (r".*/(q|k|v)/MatMul", HEADS)]},
    "t5_encoder_dynamo18": {"widen2x": [(r"node_linear_(3|5|9|11)", OUTPUT)],
                            "widen+1": [(r"node_linear_(3|5|9|11)", OUTPUT), (r"node_linear(_[0-26-8])?", HEADS)]},
    # the stage's stream (the stem's pooled channels concatenated with the first unit's branch) is read by
    # group-4 convs: growing one of its parts alone leaves groups without new channels; the whole stream grows
    # (stage2_2_gconv2 writes it), its parts by different numbers that keep every group alike
    "shufflenet_v1": {"widen2x": [(r"conv1|stage2_1_gconv2", NO_CHANNELS_IN_GROUP), (r"fc", OUTPUT)],
                      "widen+1": [(r"conv1|stage2_1_gconv2", NO_CHANNELS_IN_GROUP), (r"fc", OUTPUT),
                                  (r"stage2_2_gconv2", STREAM_STEP), (r"stage2_._(gconv1|dwconv)", SHUFFLE_STEP)]},
}
LAYERS = {"convnext_tiny": 17, "densenet121": 17, "efficientnetb0": 52, "mobilenetv2": 53, "resnet50": 21,
          "resnet50v2": 30, "small_cnn": 4, "prenorm_encoder": 13, "postnorm_encoder": 13, "t5_encoder": 12,
          "shufflenet_v1": 8}
BLOCKS = {"convnext_tiny": 4, "densenet121": 0, "efficientnetb0": 4, "mobilenetv2": 10, "resnet50": 5,
          "resnet50v2": 5, "small_cnn": 0, "prenorm_encoder": 2, "postnorm_encoder": 4, "t5_encoder": 2,
          "shufflenet_v1": 1}
PATHS = sorted((FIXTURES / "tf2onnx").glob("*.onnx")) + sorted((FIXTURES / "t5").glob("*.onnx")) + \
    [FIXTURES / "caffe2" / "shufflenet_v1.onnx"]


def _rules(name):
    for key, rules in REFUSED.items():
        if re.fullmatch(key.replace("{}", r"1[37]"), name):
            return rules
    raise AssertionError(f"{name} has no entry in REFUSED")


def _family(name):
    return max((k for k in LAYERS if name.startswith(k)), key=len)


def test_every_fixture_is_listed():
    assert len(PATHS) == 21 and all(_family(p.stem) for p in PATHS)
    assert {key for key in REFUSED} >= {re.sub(r"_op1[37]$", "_op{}", p.stem) for p in PATHS
                                        if not p.stem.startswith(("prenorm", "postnorm", "t5", "shuffle"))}


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_every_layer_and_block(path):
    sweep = Sweep(path)
    assert len(sweep.layers) == LAYERS[_family(path.stem)]
    assert len(sweep.blocks) == BLOCKS[_family(path.stem)]
    rules = _rules(path.stem)
    outcomes = {"widen2x": sweep.widen(lambda layer: 2 * layer.out_channels),
                "widen+1": sweep.widen(lambda layer: layer.out_channels + 1)}
    for verb in ("deepen", "subnet", "kernel", "block"):
        outcomes[verb] = sweep.verb(verb)
    for verb, outcome in outcomes.items():
        assert one_line_refusals(outcome), verb
        for target, why in outcome.refused.items():
            reasons = [reason for pattern, reason in rules.get(verb, []) if re.fullmatch(pattern, target)]
            assert reasons and reasons[0] in why, f"{verb} {target}: {why}"
        unexpected = [t for t in outcome.exact if any(re.fullmatch(p, t) for p, _ in rules.get(verb, []))]
        assert not unexpected, f"{verb}: expected refused, but exact: {unexpected}"
    counted = {verb: len(o.exact) + len(o.refused) for verb, o in outcomes.items()}
    assert counted["deepen"] == counted["subnet"] == counted["widen2x"] == len(sweep.layers)
    assert counted["block"] == len(sweep.blocks)


# --- the items, one by one ----------------------------------------------------------------------------

TF = FIXTURES / "tf2onnx"


def test_t5_grows_by_heads_and_its_relative_bias_table_with_them():
    path = str(FIXTURES / "t5" / "t5_encoder_legacy17.onnx")
    table = "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    parent = nh.to_array(next(t for t in onnx.load(path).graph.initializer if t.name == table))
    for method in ("netmorph", "net2net"):
        child, result = api.widen(path, "/encoder/encoder/block.0/layer.0/SelfAttention/q/MatMul", heads=5,
                                  method=method, seed=1)
        assert result.verification.passed and result.verification.max_rel < 1e-6
        grown = nh.to_array(next(t for t in child.graph.initializer if t.name == table))
        # (buckets, heads): the old heads' columns kept (netmorph permutes the heads), the new head's a copy of an
        # old head's column
        columns, old = sorted(map(tuple, grown.T)), sorted(map(tuple, parent.T))
        assert grown.shape == (32, 5) and any(columns == sorted(old + [c]) for c in old)
        # the bias is computed in layer 0 and added in both layers: both grow their heads together
        assert "/encoder/encoder/block.1/layer.0/SelfAttention/o/MatMul" in result.details.group["consumers"]


def test_keras_dense_on_3d_input_widens_at_opset_13_and_deepens_with_its_activation():
    for fixture, kind in (("prenorm_encoder_op13.onnx", "gelu"), ("postnorm_encoder_op13.onnx", "relu")):
        path = str(TF / fixture)
        layer = fixture.split("_op")[0] + "/layer0_ffn1/Tensordot/MatMul"
        _, widened = api.widen(path, layer, width="65")
        assert widened.verification.max_rel < 1e-6
        _, deepened = api.deepen(path, layer)
        assert deepened.verification.max_rel < 1e-6
        assert deepened.details.activation == ("P-gelu(a=1)" if kind == "gelu" else "PRelu(slope=1)")
        assert not any("no activation follows" in n for n in deepened.details.notes)


def test_keras_attention_output_projection_is_a_layer():
    path = str(TF / "prenorm_encoder_op13.onnx")
    layer = find_layer(GraphIndex(onnx.load(path)), "prenorm_encoder/layer0_mha/attention_output/einsum/Einsum")
    assert layer.op == "Einsum" and layer.out_channels == 32 and layer.in_channels == 32
    child, result = api.deepen(path, layer.id)
    assert result.verification.max_rel < 1e-6
    assert "Einsum" not in {n.op_type for n in child.graph.node if n.name.startswith(layer.id)}


@pytest.mark.parametrize("query,found", [("conv2_block1_1_conv", "resnet50/conv2_block1_1_conv/BiasAdd"),
                                         ("conv1_conv", "Conv__171"), ("resnet50/conv1_conv", "Conv__171")])
def test_keras_layer_names_find_layers(query, found):
    assert find_layer(GraphIndex(onnx.load(str(TF / "resnet50_op13.onnx"))), query).id == found


def test_keras_names_of_generated_attention_nodes_and_ambiguous_ones():
    for opset, key in ((13, "Gemm__466"), (17, "Gemm__549")):
        index = GraphIndex(onnx.load(str(TF / f"prenorm_encoder_op{opset}.onnx")))
        assert find_layer(index, "layer0_mha/key").id == key
    with pytest.raises(UsageError, match=r"'layer0_mha' is ambiguous: it is the scope of 4 layers \(Gemm__466"):
        find_layer(GraphIndex(onnx.load(str(TF / "prenorm_encoder_op13.onnx"))), "layer0_mha")
    code, _, err = run_cli("inspect", TF / "prenorm_encoder_op13.onnx", "--layer", "key")
    assert code == 2 and "Gemm__466, Gemm__267" in err and len(err.strip().splitlines()) == 1


def test_deepen_k1_k2_that_do_not_cover_the_kernel_is_exit_3(tmp_path):
    layer = "convnext_tiny/convnext_tiny_stage_0_block_0_depthwise_conv/BiasAdd"   # 7x7
    code, _, err = run_cli("deepen", TF / "convnext_tiny_op17.onnx", "--layer", layer, "--k1", "3", "--k2", "3",
                           "-o", tmp_path / "d.onnx")
    assert code == 3 and "--k1 3 --k2 5" in err and "--k1 4 --k2 4" in err and len(err.strip().splitlines()) == 1


def test_shufflenet_group_conv_after_the_shuffle_names_the_valid_widths(tmp_path):
    path = FIXTURES / "caffe2" / "shufflenet_v1.onnx"
    code, _, err = run_cli("widen", path, "--layer", "stage2_1_gconv1", "--width", "20", "-o", tmp_path / "w.onnx")
    assert code == 3 and "nearest valid widths: 32" in err and "stage2_1_gconv2' (group 4)" in err
    child, result = api.widen(str(path), "stage2_1_dwconv", width="48", method="net2net")
    assert result.verification.max_rel < 1e-6
    assert result.details.group["segments"] == [1] * 16


def test_shufflenet_stream_parts_grow_by_different_numbers_that_keep_every_group_alike():
    # the stream of stage 2: Concat(pool(stem) 24, first unit's branch 40), read and written by group-4 convs,
    # with the first unit's own group-4 convs over each part: at 80 channels the parts cut by all those groups
    # grow unevenly, every group of every conv by the same number
    path = str(FIXTURES / "caffe2" / "shufflenet_v1.onnx")
    for method in ("netmorph", "net2net"):
        child, result = api.widen(path, "stage2_2_gconv2", width="80", method=method)
        assert result.verification.max_rel < 1e-6
        assert any("so that every group of each grows alike" in n for n in result.details.notes)
    convs = {n.name: nh.to_array(next(t for t in child.graph.initializer if t.name == n.input[1])).shape
             for n in child.graph.node if n.op_type == "Conv"}
    assert convs["conv1"][0] == 32 and convs["stage2_1_gconv2"][0] == 48 and convs["stage2_2_gconv1"][1] == 20


def test_efficientnet_squeeze_excite_grows_its_reshape_constant():
    path = str(TF / "efficientnetb0_op17.onnx")
    child, result = api.widen(path, "efficientnetb0/block2a_expand_conv/Conv2D", width="2x")
    assert result.verification.max_rel < 1e-6 and result.details.group.get("shape_constants")


# --- shapes computed at run time ------------------------------------------------------------------------------

def _computed_target_model(reshape_other: bool):
    """x (N, 8) -> fc1 (8, 16) -> Reshape to Concat(Shape(y)[0], Shape(y)[1]) -> fc2 (16, 4), plus fc3 of another
    layer's (N, 16) output, which does not grow with fc1, reshaped by the same target when `reshape_other`."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 16)), ("w2", (16, 4)), ("w_other", (8, 16)), ("w3", (16, 4)))]
    inits += [nh.from_array(np.array([0], np.int64), "i0"), nh.from_array(np.array([1], np.int64), "i1")]
    nodes = [h.make_node("MatMul", ["x", "w1"], ["y"], name="fc1"),
             h.make_node("MatMul", ["x", "w_other"], ["other"], name="other"),
             h.make_node("Shape", ["y"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "i0"], ["d0"], name="g0", axis=0),
             h.make_node("Gather", ["s", "i1"], ["d1"], name="g1", axis=0),
             h.make_node("Mul", ["d0", "d1"], ["d01"], name="size"),
             h.make_node("Div", ["d01", "d1"], ["d0_again"], name="rows"),
             h.make_node("Concat", ["d0_again", "d1"], ["target"], name="target", axis=0),
             h.make_node("Reshape", ["y", "target"], ["r"], name="reshape"),
             h.make_node("MatMul", ["r", "w2"], ["z2"], name="fc2"),
             h.make_node("Reshape", ["other", "target"] if reshape_other else ["other", "s_other"], ["o"],
                         name="reshape_other"),
             h.make_node("MatMul", ["o", "w3"], ["z3"], name="fc3"),
             h.make_node("Add", ["z2", "z3"], ["z"], name="out")]
    if not reshape_other:
        nodes.insert(1, h.make_node("Shape", ["x"], ["sx"], name="shape_x"))
        nodes.insert(2, h.make_node("Gather", ["sx", "i0"], ["n"], name="gx", axis=0))
        inits.append(nh.from_array(np.array([16], np.int64), "c16"))
        nodes.insert(3, h.make_node("Concat", ["n", "c16"], ["s_other"], name="target_other", axis=0))
    graph = h.make_graph(nodes, "computed", [h.make_tensor_value_info("x", T.FLOAT, ["N", 8])],
                         [h.make_tensor_value_info("z", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_a_target_computed_at_run_time_follows_or_is_refused():
    # Reshape(y) to sizes computed from y's own dims (a product divided back: nothing a constant traces): follows
    _, result = api.widen(_computed_target_model(reshape_other=False), "fc1", width="20")
    assert result.verification.max_rel < 1e-6
    # the same sizes also reshape a tensor that does not grow: its target would change with the growth
    with pytest.raises(CannotMorph, match="computed at run time from a widened tensor's shape would change") as no:
        api.widen(_computed_target_model(reshape_other=True), "fc1", width="20")
    assert "\n" not in str(no.value) and "reshape_other" in str(no.value)


def _channels_first_layernorm_model():
    """conv1 writes an NCHW stream; a LayerNorm over its channels as tf2onnx writes ConvNeXt's (ReduceMean over
    axis 1, gamma and beta (1, C, 1, 1), folded as x·g + (beta − mean·g)) feeds conv2, added back (pre-norm)."""
    rng = np.random.default_rng(0)
    c = 8

    def const(name, value):
        return nh.from_array(np.asarray(value, np.float32), name)
    inits = [const("w1", rng.standard_normal((c, 3, 3, 3)) * 0.3), const("b1", rng.standard_normal(c) * 0.1),
             const("w2", rng.standard_normal((c, c, 1, 1)) * 0.3), const("w3", rng.standard_normal((4, c, 1, 1))),
             const("gamma", 1 + 0.2 * rng.standard_normal((1, c, 1, 1))),
             const("beta", 0.1 * rng.standard_normal((1, c, 1, 1))), const("eps", np.full((1, 1, 1, 1), 1e-6))]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["s"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("ReduceMean", ["s"], ["m"], name="mean", axes=[1], keepdims=1),
             h.make_node("Sub", ["s", "m"], ["d"], name="sub"), h.make_node("Mul", ["d", "d"], ["d2"], name="sq"),
             h.make_node("ReduceMean", ["d2"], ["v"], name="var", axes=[1], keepdims=1),
             h.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"), h.make_node("Sqrt", ["ve"], ["r"], name="sqrt"),
             h.make_node("Reciprocal", ["r"], ["ir"], name="reciprocal"),
             h.make_node("Mul", ["ir", "gamma"], ["g"], name="mul_gamma"),
             h.make_node("Mul", ["m", "g"], ["mg"], name="mul_mean"),
             h.make_node("Sub", ["beta", "mg"], ["shift"], name="sub_beta"),
             h.make_node("Mul", ["s", "g"], ["sg"], name="mul_x"), h.make_node("Add", ["sg", "shift"], ["n"], name="ln"),
             h.make_node("Conv", ["n", "w2"], ["f"], name="conv2"), h.make_node("Add", ["s", "f"], ["y"], name="res"),
             h.make_node("Conv", ["y", "w3"], ["z"], name="conv3")]
    graph = h.make_graph(nodes, "channels_first_ln", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("z", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("width,stream", [("16", "duplicate"), ("11", "lemon")])
def test_channels_first_layernorm_stream_grows_by_duplication_and_lemon(width, stream):
    child, result = api.widen(_channels_first_layernorm_model(), "conv1", width=width)
    assert result.details.stream == stream and result.verification.max_rel < 1e-6
    gamma = nh.to_array(next(t for t in child.graph.initializer if t.name == "gamma"))
    assert gamma.shape == (1, int(width), 1, 1)
