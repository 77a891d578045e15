"""deepen on every layer of every fixture: the child computes the parent's function, measured."""
import json

import onnx
from onnx import numpy_helper as nh
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layer
from onnxmorph.solve import EXACT_RESIDUAL

from conftest import FIXTURES, fixture_layers, run_cli

LAYERS = fixture_layers()
VARIANTS = {
    "defaults": {},
    "k3k3": {"k1": "3", "k2": "3"},
    "idmorph": {"method": "idmorph"},
    "tanh": {"activation": "tanh"},
    "sigmoid": {"activation": "sigmoid"},
    "none": {"activation": "none"},
}
RTOL = 1e-5  # verify's default: float32 rounding of an exact morph


def _is_fc(fixture, layer_id):
    model = onnx.load(str(FIXTURES / fixture))
    return find_layer(GraphIndex(model), layer_id).op != "Conv"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fixture,layer", LAYERS, ids=[f"{f[:-5]}:{l}" for f, l in LAYERS])
def test_deepen_preserves_function(fixture, layer, variant):
    options = dict(VARIANTS[variant])
    if variant == "k3k3" and _is_fc(fixture, layer):
        with pytest.raises(UsageError, match="no kernel"):
            api.deepen(str(FIXTURES / fixture), layer, **options)
        return
    if variant == "k3k3" and max(find_layer(GraphIndex(onnx.load(str(FIXTURES / fixture))), layer).kernel) > 5:
        # ConvNeXt's 7x7: 3 + 3 - 1 < 7 cannot be morphed that way (exit 3), and the smallest pairs are named
        with pytest.raises(CannotMorph, match="must cover it; the smallest that do: --k1 3 --k2 5"):
            api.deepen(str(FIXTURES / fixture), layer, **options)
        return
    child, result = api.deepen(str(FIXTURES / fixture), layer, **options)
    onnx.checker.check_model(child, full_check=True)
    details = result.details
    assert details.residual < EXACT_RESIDUAL
    assert result.verification.passed and result.verification.max_rel < RTOL
    assert len(details.new_layers) == 2
    names = {n.name for n in child.graph.node}
    assert {f"{details.layer}/morph_l", f"{details.layer}/morph_l1"} <= names
    assert details.layer not in names  # G itself is gone


def test_used_by_command_verbatim(tmp_path):
    import shutil
    shutil.copy(FIXTURES / "cifar10_quick.onnx", tmp_path / "model.onnx")
    code, out, err = run_cli("deepen", tmp_path / "model.onnx", "--layer", "conv2", "--k1", "3", "--k2", "3")
    assert code == 0, err
    assert "PASSED" in out and (tmp_path / "model.deepen.onnx").exists()
    child = onnx.load(str(tmp_path / "model.deepen.onnx"))
    convs = {n.name: n for n in child.graph.node if n.op_type == "Conv"}
    first, second = convs["conv2/morph_l"], convs["conv2/morph_l1"]
    # Border layout: the first layer takes all the padding, the second none.
    pads = {a.name: list(a.ints) for n in (first, second) for a in n.attribute if a.name == "pads" and n is first}
    assert pads["pads"] == [2, 2, 2, 2]
    assert [list(a.ints) for a in second.attribute if a.name == "pads"] == [[0, 0, 0, 0]]


def test_json_report_has_the_numbers(tmp_path):
    code, out, err = run_cli("deepen", FIXTURES / "cifar10_quick.onnx", "--layer", "conv2", "--k1", "3", "--k2", "3",
                             "-o", tmp_path / "c.onnx", "--json")
    data = json.loads(out)
    assert code == 0, err
    d = data["details"]
    assert d["residual"] < 1e-9 and d["width"] >= d["minimum_width"] == 89
    assert [layer["kernel"] for layer in d["new_layers"]] == [[3, 3], [3, 3]]
    assert all(layer["nonzero_share"] == 1.0 for layer in d["new_layers"])
    assert d["new_layers"][0]["std"] == pytest.approx(d["new_layers"][1]["std"], rel=1e-3)
    assert data["verification"]["passed"] and data["verification"]["max_rel"] < RTOL


def test_width_too_small_refused_with_minimum(tmp_path):
    code, _, err = run_cli("deepen", FIXTURES / "cifar10_quick.onnx", "--layer", "conv2", "--k1", "3", "--k2", "3",
                           "--width", "40", "-o", tmp_path / "c.onnx")
    assert code == 3 and "minimum width is 89" in err
    assert not (tmp_path / "c.onnx").exists()


def test_width_multiplier_and_paper_practice():
    _, result = api.deepen(str(FIXTURES / "cifar10_quick.onnx"), "conv3", k2=1, width="4x")
    assert result.details.width == 256 and result.details.k2 == [1, 1]
    assert result.verification.max_rel < RTOL


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mnist_softmax_to_two_layers(activation):
    """The papers' MNIST experiment: 784→10 softmax regression deepened into 784→50→10."""
    child, result = api.deepen(str(FIXTURES / "mnist_softmax.onnx"), "fc", width=50, activation=activation)
    shapes = [tuple(l.weight_shape) for l in result.details.new_layers]
    assert shapes == [(50, 784), (10, 50)]
    assert result.verification.max_rel < RTOL
    ops = [n.op_type for n in child.graph.node]
    assert ("PRelu" in ops) if activation == "relu" else ("Tanh" in ops)


def test_activation_auto_mirrors_what_follows():
    expectations = {("cifar10_quick.onnx", "conv2"): "PRelu", ("tanh_mlp.onnx", "fc1"): "P-tanh",
                    ("se_block.onnx", "conv1"): "P-silu", ("se_block.onnx", "conv2"): "P-hardswish",
                    ("transformer_mlp.onnx", "fc1/MatMul"): "P-gelu", ("opset9.onnx", "conv2"): "P-clip",
                    ("opset21.onnx", "conv1"): "P-gelu", ("opset13.onnx", "conv3"): "P-elu",
                    ("mobilenetv2.onnx", "depthwise"): "P-clip", ("conv_shapes.onnx", "conv1d_same"): "P-softplus"}
    for (fixture, layer), prefix in expectations.items():
        _, result = api.deepen(str(FIXTURES / fixture), layer)
        assert result.details.activation.startswith(prefix), (fixture, layer, result.details.activation)
        assert result.verification.max_rel < RTOL


def test_batchnorm_starts_as_identity():
    child, result = api.deepen(str(FIXTURES / "conv_bn_relu.onnx"), "conv1", batchnorm=True)
    assert sum(n.op_type == "BatchNormalization" for n in child.graph.node) == 3
    assert result.verification.max_rel < RTOL
    with pytest.raises(CannotMorph, match="last axis"):
        api.deepen(str(FIXTURES / "transformer_mlp.onnx"), "fc1/MatMul", batchnorm=True)


def test_after_grows_cifar_222_into_2222():
    """NetMorph's dense identity: new (5:64x4)(1:64) layers after the last subnet's 1x1 layer."""
    child, result = api.deepen(str(FIXTURES / "cifar_base.onnx"), after="conv3b", k1=5, k2=1, width="4x")
    assert [tuple(l.weight_shape) for l in result.details.new_layers] == [(256, 64, 5, 5), (64, 256, 1, 1)]
    assert result.verification.max_rel < RTOL
    # A real ReLU follows the new pair: exact because its input is already a ReLU output.
    assert any(n.op_type == "Relu" and "after" in n.name for n in child.graph.node)


def test_after_fc_layer():
    _, result = api.deepen(str(FIXTURES / "tanh_mlp.onnx"), after="fc1")
    assert result.verification.max_rel < RTOL


def test_general_algorithm_on_5x5_as_two_3x3():
    _, result = api.deepen(str(FIXTURES / "cifar10_quick.onnx"), "conv3", k1=3, k2=3, algorithm="general")
    assert result.details.algorithm == "general" and result.details.residual < EXACT_RESIDUAL
    assert result.verification.max_rel < RTOL


def test_shared_weight_stays_for_the_other_conv():
    child, result = api.deepen(str(FIXTURES / "shared_weight.onnx"), "conv_a")
    assert "shared.weight" in {t.name for t in child.graph.initializer}
    assert result.verification.max_rel < RTOL


def test_idmorph_rejects_other_widths():
    with pytest.raises(UsageError):
        api.deepen(str(FIXTURES / "cifar10_quick.onnx"), "conv2", method="idmorph", width=64)


def test_no_verify_skips_the_check():
    _, result = api.deepen(str(FIXTURES / "tanh_mlp.onnx"), "fc2", verify=False)
    assert result.verification is None


def test_names_readable_and_unique():
    child, _ = api.deepen(str(FIXTURES / "cifar10_quick.onnx"), "conv2")
    names = [n.name for n in child.graph.node]
    assert "conv2/morph_l" in names and "conv2/morph_l1" in names
    assert len(names) == len(set(names))
    child2, _ = api.deepen(child, "conv2/morph_l1")
    names2 = [n.name for n in child2.graph.node]
    assert len(names2) == len(set(names2)) and "conv2/morph_l1/morph_l" in names2


def test_auto_activation_looks_through_pooling_and_advises_when_none():
    # cifar10_quick: conv1 → MaxPool → Relu; mnist_softmax: fc → Softmax (nothing activation-like).
    _, res = api.deepen(str(FIXTURES / "cifar10_quick.onnx"), layer="conv1")
    assert res.details.activation == "PRelu(slope=1)"
    _, res = api.deepen(str(FIXTURES / "mnist_softmax.onnx"), layer="fc")
    assert res.details.activation == "none"
    assert any("--activation relu|tanh" in n for n in res.details.notes)


def test_inner_layer_gets_a_zero_bias():
    child, res = api.deepen(str(FIXTURES / "tanh_mlp.onnx"), layer="fc1")
    first = next(n for n in child.graph.node if n.name == "fc1/morph_l")
    bias = nh.to_array(next(t for t in child.graph.initializer if t.name == first.input[2]))
    assert first.input[2] == "fc1/morph_l.bias" and bias.shape == (res.details.width,) and not bias.any()
