"""kernel: zero-padded kernels on every Conv of every fixture, errors asserted as numbers."""
import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError
from onnxmorph.graph.layers import GraphIndex, find_layer

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
