"""widen through real topologies: exact children for both methods, the coupled group listed, refusals named."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError

from conftest import FIXTURES, fixture_layers, run_cli

LAYERS = fixture_layers()
# Refusals that are right for these graphs: the function cannot be kept by growing channels there.
ALLOWED_REFUSALS = ("graph output", "Softmax", "LayerNormalization", "grouped conv", "Reshape that mixes",
                    "shape is read at run time", "channel shuffle rule",
                    "replicated channels change its neighbouring sums",  # net2net through LRN
                    "through Split",  # GPT-2's fused QKV: its heads are split three ways
                    "is a graph input",  # a residual stream that starts at the model's input
                    "fused QKV of uneven parts")  # Phi-3's qkv_proj under GQA (test_transformer_coverage.py)


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer", LAYERS, ids=[f"{f[:-5]}:{l}" for f, l in LAYERS])
def test_widen_every_layer(fixture, layer, method):
    try:
        child, result = api.widen(str(FIXTURES / fixture), layer, width="2x", method=method)
    except CannotMorph as exc:
        assert any(reason in str(exc) for reason in ALLOWED_REFUSALS), str(exc)
        return
    onnx.checker.check_model(child, full_check=True)
    d = result.details
    assert d.channels_to == 2 * d.channels_from
    assert result.verification.max_rel < 1e-5
    assert d.group["producers"] and d.group["consumers"]


# (fixture, layer) -> names that must appear in the coupled group
TOPOLOGIES = {
    ("resnet_blocks.onnx", "stem"): {"producers": {"stem", "b1_conv2"},
                                     "consumers": {"b1_conv1", "b2_conv1", "b2_proj"}},
    ("resnet_blocks.onnx", "b2_conv1"): {"consumers": {"b2_conv2"}},
    ("inception.onnx", "inc_3x3"): {"consumers": {"dense0_conv", "dense1_conv", "transition"}},
    ("inception.onnx", "dense0_conv"): {"consumers": {"dense1_conv", "transition"}},
    ("mobilenetv2.onnx", "expand"): {"depthwise": {"depthwise"}, "consumers": {"project"}},
    ("mobilenetv2.onnx", "project"): {"producers": {"project", "stem"}, "consumers": {"expand", "head"}},
    ("se_block.onnx", "conv1"): {"producers": {"conv1", "se_expand"}, "consumers": {"se_reduce", "conv2"}},
    ("cifar10_quick.onnx", "conv3"): {"consumers": {"ip1"}},
    ("conv_bn_relu.onnx", "conv2"): {"consumers": {"fc"}},
    ("transformer_mlp.onnx", "fc1/MatMul"): {"consumers": {"fc2/MatMul"}},
    ("tanh_mlp.onnx", "fc1"): {"consumers": {"fc2"}},
}


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer", list(TOPOLOGIES), ids=[f"{f[:-5]}:{l}" for f, l in TOPOLOGIES])
def test_topologies_widen_exactly(fixture, layer, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width="2x", method=method, seed=3)
    assert result.verification.max_rel < 1e-5
    for key, names in TOPOLOGIES[(fixture, layer)].items():
        assert names <= set(result.details.group[key]), (key, result.details.group[key])


def test_bn_parameters_grow_with_the_space():
    _, result = api.widen(str(FIXTURES / "conv_bn_relu.onnx"), "conv1", width=24)
    params = result.details.group["parameters"]
    assert {"bn1:bn_scale", "bn1:bn_bias", "bn1:bn_mean", "bn1:bn_var"} <= set(params)


def test_flatten_inserts_blocks_of_columns():
    child, result = api.widen(str(FIXTURES / "cifar10_quick.onnx"), "conv3", width=80, method="net2net")
    ip1 = next(n for n in child.graph.node if n.name == "ip1")
    w = nh.to_array(next(t for t in child.graph.initializer if t.name == ip1.input[1]))
    assert w.shape == (64, 80 * 16)
    blocks = w.reshape(64, 80, 16).transpose(1, 0, 2).reshape(80, -1)
    # Each channel owns a whole 4x4 block of columns: replicas repeat whole blocks, 64 distinct ones remain.
    assert len({b.tobytes() for b in blocks}) == 64
    assert result.verification.max_rel < 1e-5


def test_netmorph_permutes_channels_and_net2net_divides():
    child, _ = api.widen(str(FIXTURES / "tanh_mlp.onnx"), "fc1", width=48, method="netmorph", seed=1)
    fc2 = next(n for n in child.graph.node if n.name == "fc2")
    w = nh.to_array(next(t for t in child.graph.initializer if t.name == fc2.input[1]))
    zero = np.where(np.all(w == 0, axis=0))[0]
    assert len(zero) == 16 and not np.array_equal(zero, np.arange(32, 48))  # not clustered at the end
    child, _ = api.widen(str(FIXTURES / "tanh_mlp.onnx"), "fc1", width=48, method="net2net", seed=1)
    fc2 = next(n for n in child.graph.node if n.name == "fc2")
    w2 = nh.to_array(next(t for t in child.graph.initializer if t.name == fc2.input[1]))
    parent = onnx.load(str(FIXTURES / "tanh_mlp.onnx"))
    w0 = nh.to_array(next(t for t in parent.graph.initializer if t.name == "fc2.weight"))
    np.testing.assert_allclose(w2[:, :32].sum(axis=1) + w2[:, 32:].sum(axis=1), w0.sum(axis=1), rtol=1e-5)


def test_net2net_noise_is_exact_and_reported(tmp_path):
    out = tmp_path / "noisy.onnx"
    code, stdout, err = run_cli("widen", FIXTURES / "tanh_mlp.onnx", "--layer", "fc1", "--width", "2x", "--method",
                                "net2net", "--noise", "0.1", "-o", out)
    assert code == 0 and out.exists() and "summing to 0" in stdout and "FAILED" not in stdout
    with pytest.raises(UsageError):
        api.widen(str(FIXTURES / "tanh_mlp.onnx"), "fc1", width="2x", noise=0.1)  # netmorph has no noise


def test_inspect_layer_lists_the_group():
    code, out, _ = run_cli("inspect", FIXTURES / "se_block.onnx", "--layer", "conv1")
    assert code == 0 and "se_expand" in out and "se_reduce" in out and "bn1:bn_scale" in out
    code, _, err = run_cli("inspect", FIXTURES / "mnist_softmax.onnx", "--layer", "fc")
    assert code == 3 and "Softmax" in err


def test_dry_run_lists_the_group(tmp_path):
    code, out, _ = run_cli("widen", FIXTURES / "resnet_blocks.onnx", "--layer", "stem", "--width", "32", "--dry-run")
    assert code == 0 and "b1_conv2" in out and "b2_proj" in out and "stem_bn" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fixture,layer,message", [
    ("tanh_mlp.onnx", "fc3", "graph output"),
    ("mnist_softmax.onnx", "fc", "Softmax"),
    ("transformer_mlp.onnx", "fc2/MatMul", "graph input"),   # its LayerNorm is part of the stream; the input is not
])
def test_refusals_name_the_op(fixture, layer, message, tmp_path):
    code, _, err = run_cli("widen", FIXTURES / fixture, "--layer", layer, "--width", "2x", "-o", tmp_path / "w.onnx")
    assert code == 3 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.onnx").exists()


def _shuffle_model(path):
    """conv -> channel shuffle (Reshape/Transpose/Reshape) -> conv: the reshape mixes C with other dims."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             nh.from_array(np.array([1, 2, 4, 6, 6], np.int64), "s1"),
             nh.from_array(np.array([1, 8, 6, 6], np.int64), "s2")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Reshape", ["c1", "s1"], ["r1"], name="shuffle_reshape"),
             h.make_node("Transpose", ["r1"], ["t1"], name="shuffle_transpose", perm=[0, 2, 1, 3, 4]),
             h.make_node("Reshape", ["t1", "s2"], ["r2"], name="shuffle_back"),
             h.make_node("Conv", ["r2", "w2"], ["y"], name="conv2")]
    g = h.make_graph(nodes, "shuffle", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 6, 6])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
def test_channel_shuffle_grows_every_group(tmp_path, method):
    _shuffle_model(tmp_path / "shuffle.onnx")
    child, result = api.widen(str(tmp_path / "shuffle.onnx"), "conv1", width=16, method=method, seed=2)
    assert result.verification.max_rel < 1e-5
    shapes = {t.name: list(nh.to_array(t)) for t in child.graph.initializer if t.dims == [5] or t.dims == [4]}
    assert [1, 2, 8, 6, 6] in shapes.values() and [1, 16, 6, 6] in shapes.values()
    code, _, err = run_cli("widen", tmp_path / "shuffle.onnx", "--layer", "conv1", "--width", "13",
                           "-o", tmp_path / "w.onnx")
    assert code == 3 and "shuffle_reshape" in err and "nearest valid widths: 12 or 14" in err


def test_depthwise_target_widens_its_channel_space():
    child, result = api.widen(str(FIXTURES / "mobilenetv2.onnx"), "depthwise", width="2x", seed=1)
    assert result.verification.max_rel < 1e-5
    assert "expand" in result.details.group["producers"] and "depthwise" in result.details.group["depthwise"]
    dw = next(n for n in child.graph.node if n.name == "depthwise")
    w = nh.to_array(next(t for t in child.graph.initializer if t.name == dw.input[1]))
    assert next(a.i for a in dw.attribute if a.name == "group") == w.shape[0] == 2 * result.details.channels_from


def test_unknown_op_refused(tmp_path):
    model = onnx.load(str(FIXTURES / "unnamed_nodes.onnx"))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Hardmax"  # mixes channels and is not in the rule table
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(CannotMorph, match="Hardmax"):
        api.widen(str(tmp_path / "m.onnx"), "c1", width=16)


def test_width_must_grow():
    with pytest.raises(UsageError, match="fewer"):
        api.widen(str(FIXTURES / "tanh_mlp.onnx"), "fc1", width=16)


def test_auto_zeros_respect_lrn_and_say_so():
    # caffe2_zoo: conv1 → Relu → LRN. LRN needs new channels exactly 0 at its input, so auto puts the zeros on
    # the producers even though the ReLU then leaves them without gradient; the report says both.
    child, res = api.widen(str(FIXTURES / "caffe2_zoo.onnx"), "conv1", width="2x")
    assert res.passed and res.details.zeros_on == "producers"
    assert any("LRN" in n and "Relu" in n and "no gradient" in n for n in res.details.notes)
    with pytest.raises(CannotMorph):
        api.widen(str(FIXTURES / "caffe2_zoo.onnx"), "conv1", width="2x", zeros="consumers")


def test_auto_zeros_go_to_the_consumers_before_a_relu():
    _, res = api.widen(str(FIXTURES / "cifar10_quick.onnx"), "conv1", width="2x")
    assert res.passed and res.details.zeros_on == "consumers"
    _, res = api.widen(str(FIXTURES / "tanh_mlp.onnx"), "fc1", width="2x")  # no ReLU: paper's eq. 18 rule
    assert res.passed and any("eq. 18" in n for n in res.details.notes)
