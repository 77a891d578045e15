"""kernel: zero-padded kernels on every Conv of every fixture, errors asserted as numbers."""
import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layer

from conftest import FIXTURES, fixture_layers, run_cli

CONVS = [(f, l) for f, l in fixture_layers()
         if find_layer(GraphIndex(onnx.load(str(FIXTURES / f))), l).op == "Conv"]


@pytest.mark.parametrize("grow", [1, 2, 4])
@pytest.mark.parametrize("fixture,layer", CONVS, ids=[f"{f[:-5]}:{l}" for f, l in CONVS])
def test_kernel_preserves_function(fixture, layer, grow):
    lay = find_layer(GraphIndex(onnx.load(str(FIXTURES / fixture))), layer)
    size = "x".join(str(k + grow) for k in lay.kernel)
    child, result = api.kernel(str(FIXTURES / fixture), layer, size=size)
    onnx.checker.check_model(child, full_check=True)
    assert result.verification.max_rel < 1e-6
    node = next(n for n in child.graph.node if n.name == lay.node.name and n.output[0] == lay.output)
    kernel = [list(a.ints) for a in node.attribute if a.name == "kernel_shape"][0]
    assert kernel == [k + grow for k in lay.kernel]
    assert not [a for a in node.attribute if a.name == "auto_pad"]


def test_odd_growth_pads_asymmetrically():
    _, result = api.kernel(str(FIXTURES / "cifar_base.onnx"), "conv1b", size="2x4")
    assert result.details.pads_to == [0, 1, 1, 2]
    assert result.verification.max_rel < 1e-6


def test_shrinking_is_a_usage_error(tmp_path):
    code, _, err = run_cli("kernel", FIXTURES / "cifar10_quick.onnx", "--layer", "conv2", "--size", "3",
                           "-o", tmp_path / "k.onnx")
    assert code == 2 and "shrink" in err


def test_fc_layer_refused():
    with pytest.raises(CannotMorph, match="Conv layers"):
        api.kernel(str(FIXTURES / "tanh_mlp.onnx"), "fc1", size=3)
    with pytest.raises(UsageError):
        api.kernel(str(FIXTURES / "cifar10_quick.onnx"), "conv2", size="5")


def test_same_padding_with_dynamic_spatial_dims(tmp_path):
    """tf2onnx style: auto_pad SAME_UPPER and unknown H, W. At stride 1 the padding is known anyway."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((6, 3, 4, 4)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "w2")]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="same_even", auto_pad="SAME_UPPER"),
             h.make_node("Conv", ["c", "w2"], ["y"], name="same_s2", auto_pad="SAME_LOWER", strides=[2, 2])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, "H", "W"])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, None, None])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    for size in (5, 7):
        _, result = api.kernel(str(path), "same_even", size=size, input_shape=["x:1x3x9x11"])
        assert result.verification.max_rel < 1e-6
    _, result = api.deepen(str(path), "same_even", k1=3, k2=3, input_shape=["x:1x3x10x7"])
    assert result.verification.max_rel < 1e-5
    with pytest.raises(CannotMorph, match="spatial size is unknown"):
        api.kernel(str(path), "same_s2", size=5)
