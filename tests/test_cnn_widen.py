"""widen on CNN exports with grouped/depthwise convs, Split/Slice, channel shuffles, LRN, Sum and constant-path
weights (fixtures/export_cnn_fixtures.py, fixtures/build_fixtures.py:caffe2_zoo): every Conv and FC layer, both
methods, is either exact at float32 rounding or refused with the rule named."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers

from conftest import FIXTURES, run_cli

SHUFFLE = "channel shuffle rule: Reshape splits the channel axis into 2 groups"
OUTPUT = "graph output"
# fixture -> {layer: reason it is refused}; every other layer must widen exactly.
REFUSED = {
    "caffe2_zoo.onnx": {"fc2": OUTPUT},
    "cnn_c2f_dynamo18.onnx": {"node_linear": OUTPUT},
    "cnn_c2f_legacy17.onnx": {"/fc/Gemm": OUTPUT},
    # ConvNeXt's channels-last LayerNorm is part of the space: its stream grows by duplication (2x here)
    "cnn_convnext_dynamo18.onnx": {"node_linear_2": OUTPUT},
    "cnn_convnext_legacy17.onnx": {"/head/Gemm": OUTPUT},
    "cnn_mobilenetv2_dynamo18.onnx": {"node_linear": OUTPUT},
    "cnn_mobilenetv2_legacy17.onnx": {"/classifier/classifier.1/Gemm": OUTPUT},
    "cnn_resnext_dynamo18.onnx": {"node_linear": OUTPUT},
    "cnn_resnext_legacy17.onnx": {"/fc/Gemm": OUTPUT},
    "cnn_shufflenetv2_dynamo18.onnx": {"node_Conv_184": SHUFFLE, "node_Conv_190": SHUFFLE, "node_Conv_196": SHUFFLE,
                                       "node_linear": OUTPUT},
    **{f"cnn_shufflenetv2_legacy{opset}.onnx": {
        "/stage2/stage2.0/branch1/branch1.1/branch1.1.0/Conv": SHUFFLE,
        "/stage2/stage2.0/branch2/branch2.2/branch2.2.0/Conv": SHUFFLE,
        "/stage2/stage2.1/branch2/branch2.2/branch2.2.0/Conv": SHUFFLE, "/fc/Gemm": OUTPUT} for opset in (11, 17)},
}
# Refused for one method only: Net2Net's replicas change LRN's sums of squares.
REFUSED_NET2NET = {("caffe2_zoo.onnx", "conv1"): "LRN 'norm1': replicated channels change"}
# How many layers each fixture has (so a layer that stops being found fails here).
LAYER_COUNT = {"caffe2_zoo.onnx": 7, "cnn_c2f_dynamo18.onnx": 6, "cnn_c2f_legacy17.onnx": 6,
               "cnn_convnext_dynamo18.onnx": 5, "cnn_convnext_legacy17.onnx": 5, "cnn_mobilenetv2_dynamo18.onnx": 9,
               "cnn_mobilenetv2_legacy17.onnx": 9, "cnn_resnext_dynamo18.onnx": 9, "cnn_resnext_legacy17.onnx": 9,
               "cnn_shufflenetv2_dynamo18.onnx": 11, "cnn_shufflenetv2_legacy11.onnx": 11,
               "cnn_shufflenetv2_legacy17.onnx": 11}


def _layers(fixture):
    return [layer.id for layer in find_layers(GraphIndex(onnx.load(str(FIXTURES / fixture))))]


CASES = [(f, layer) for f in sorted(REFUSED) for layer in _layers(f)]


def test_every_cnn_fixture_is_listed():
    assert {f: len(_layers(f)) for f in REFUSED} == LAYER_COUNT
    assert sorted([p.name for p in FIXTURES.glob("cnn_*.onnx")] + ["caffe2_zoo.onnx"]) == sorted(REFUSED)


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer", CASES, ids=[f"{f[:-5]}:{layer}" for f, layer in CASES])
def test_widen_every_cnn_layer(fixture, layer, method):
    reason = REFUSED[fixture].get(layer) or (REFUSED_NET2NET.get((fixture, layer)) if method == "net2net" else None)
    if reason:
        with pytest.raises(CannotMorph) as refusal:
            api.widen(str(FIXTURES / fixture), layer, width="2x", method=method)
        assert reason in str(refusal.value) and "\n" not in str(refusal.value)
        return
    child, result = api.widen(str(FIXTURES / fixture), layer, width="2x", method=method, seed=5)
    onnx.checker.check_model(child, full_check=True)
    assert result.details.channels_to == 2 * result.details.channels_from
    assert result.verification.max_rel <= 1e-5, result.verification.max_rel


def _initializer(model, name):
    return nh.to_array(next(t for t in model.graph.initializer if t.name == name))


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _group_attr(node):
    return next(a.i for a in node.attribute if a.name == "group")


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
def test_grouped_conv_as_target_grows_every_group(method):
    layer = "/layer1/conv2/conv2.0/Conv"  # group 4, 16 channels
    child, result = api.widen(str(FIXTURES / "cnn_resnext_legacy17.onnx"), layer, width=24, method=method, seed=1)
    assert result.verification.max_rel <= 1e-5
    conv = _node(child, layer)
    assert _group_attr(conv) == 4 and _initializer(child, conv.input[1]).shape == (24, 4, 3, 3)
    assert result.details.group["segments"] == [4, 4, 4, 4]


def test_grouped_conv_reading_the_space_gets_wider_groups():
    child, result = api.widen(str(FIXTURES / "cnn_resnext_legacy17.onnx"), "/layer1/conv1/conv1.0/Conv", width=32)
    assert result.verification.max_rel <= 1e-5
    conv = _node(child, "/layer1/conv2/conv2.0/Conv")
    assert _group_attr(conv) == 4 and _initializer(child, conv.input[1]).shape == (16, 8, 3, 3)


@pytest.mark.parametrize("width,valid", [(18, "nearest valid widths: 20"), (22, "nearest valid widths: 20 or 24")])
def test_grouped_width_not_a_multiple_names_valid_widths(width, valid, tmp_path):
    code, _, err = run_cli("widen", FIXTURES / "cnn_resnext_legacy17.onnx", "--layer", "/layer1/conv1/conv1.0/Conv",
                           "--width", width, "-o", tmp_path / "w.onnx")
    assert code == 3 and valid in err and "grouped Conv '/layer1/conv2/conv2.0/Conv' (group 4" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w.onnx").exists()


def test_depthwise_target_widens_its_producer():
    layer = "/features/features.1/conv/conv.1/conv.1.0/Conv"
    child, result = api.widen(str(FIXTURES / "cnn_mobilenetv2_legacy17.onnx"), layer, width=24, method="net2net")
    assert result.verification.max_rel <= 1e-5
    assert result.details.group["producers"] == ["/features/features.1/conv/conv.0/conv.0.0/Conv"]
    dw = _node(child, layer)
    assert _group_attr(dw) == 24 and _initializer(child, dw.input[1]).shape == (24, 1, 3, 3)


@pytest.mark.parametrize("fixture,layer", [("cnn_c2f_dynamo18.onnx", "node_Conv_91"),
                                           ("cnn_c2f_legacy17.onnx", "/c2f/cv1/cv1.0/Conv")])
def test_c2f_split_parts_grow_and_bounds_follow(fixture, layer):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=22, seed=2)
    assert result.verification.max_rel <= 1e-5
    assert result.details.group["segments"] == [8, 8]
    assert not any("do not divide evenly" in n for n in result.details.notes)
    # both halves grew by 3: the bottleneck (reading the second half) and cv2 (reading both halves, the second
    # twice through the residual) see 11-channel parts.
    bottleneck = next(n for n in child.graph.node if n.op_type == "Conv" and
                      _initializer(child, n.input[1]).shape[1:] == (11, 3, 3))
    assert bottleneck is not None
    cv2 = [n for n in child.graph.node if n.op_type == "Conv"][-1]
    assert _initializer(child, cv2.input[1]).shape[1] == 33


def test_uneven_split_growth_is_said():
    _, result = api.widen(str(FIXTURES / "cnn_c2f_dynamo18.onnx"), "node_Conv_91", width=19)
    assert result.verification.max_rel <= 1e-5
    assert any("do not divide evenly, so they grow by [2, 1]" in n for n in result.details.notes)


def test_lrn_needs_zeros_on_the_producers():
    child, result = api.widen(str(FIXTURES / "caffe2_zoo.onnx"), "conv1", width=24, method="netmorph")
    assert result.verification.max_rel <= 1e-5
    d = result.details
    assert d.zeros_on == "producers" and "LRN 'norm1'" in d.group["zero_new_channels_required"]
    w = _initializer(child, _node(child, "conv1").input[1])
    assert np.count_nonzero(np.abs(w).reshape(24, -1).sum(1) == 0) == 8  # 8 new filters, all zero
    assert np.all(np.abs(w[:16]).reshape(16, -1).sum(1) > 0)           # kept in order, ahead of the new ones


def test_caffe2_patterns_grow_their_constants():
    _, result = api.widen(str(FIXTURES / "caffe2_zoo.onnx"), "conv2", width=24, method="net2net")
    assert result.verification.max_rel <= 1e-5
    group = result.details.group
    assert {"conv2_bn_mul:mul_const", "conv2_bn_add:add_const"} <= set(group["parameters"])
    assert {"res_a", "res_b2"} <= set(group["producers"]) and {"res_b1", "fc1"} <= set(group["consumers"])


@pytest.mark.parametrize("verb,options", [("widen", {"width": 48}), ("deepen", {}), ("subnet", {})])
def test_weights_computed_from_constants_are_layers(verb, options):
    # fc1's weight is Reshape(initializer), fc2's Transpose(Identity(initializer)) and its bias a Cast.
    ids = _layers("caffe2_zoo.onnx")
    assert {"fc1", "fc2"} <= set(ids)
    child, result = getattr(api, verb)(str(FIXTURES / "caffe2_zoo.onnx"), "fc1", **options)
    assert result.verification.max_rel <= 1e-5
    assert not {n.op_type for n in child.graph.node} & {"Reshape", "Transpose", "Cast"}  # folded


@pytest.mark.parametrize("layer,group", [("/layer1/conv2/conv2.0/Conv", 4), ("/layer2/conv2/conv2.0/Conv", 8)])
def test_deepen_factors_a_grouped_conv_per_group(layer, group):
    child, result = api.deepen(str(FIXTURES / "cnn_resnext_legacy17.onnx"), layer)
    assert result.verification.max_rel <= 1e-5
    made = [n for n in child.graph.node if n.op_type == "Conv" and n.name.startswith(f"{layer}/morph_l")]
    assert len(made) == 2 and all(_group_attr(n) == group for n in made)


def test_deepen_keeps_a_depthwise_conv_depthwise():
    layer = "/features/features.2/conv/conv.1/conv.1.0/Conv"
    child, result = api.deepen(str(FIXTURES / "cnn_mobilenetv2_legacy17.onnx"), layer)
    assert result.verification.max_rel <= 1e-5
    made = [n for n in child.graph.node if n.op_type == "Conv" and n.name.startswith(f"{layer}/morph_l")]
    assert len(made) == 2
    for node in made:
        w = _initializer(child, node.input[1])
        assert _group_attr(node) == 16 and w.shape[:2] == (16, 1)


@pytest.mark.parametrize("verb,options", [("kernel", {"size": 5}), ("subnet", {})])
def test_kernel_and_subnet_on_grouped_and_depthwise(verb, options):
    for fixture in ("cnn_resnext_dynamo18.onnx", "cnn_shufflenetv2_legacy11.onnx"):
        model = onnx.load(str(FIXTURES / fixture))
        grouped = [n.name for n in model.graph.node if n.op_type == "Conv" and _group_attr_or_1(n) > 1]
        for name in grouped:
            _, result = getattr(api, verb)(str(FIXTURES / fixture), name, **options)
            assert result.verification.max_rel <= 1e-5, (fixture, name)


def _group_attr_or_1(node):
    return next((a.i for a in node.attribute if a.name == "group"), 1)
