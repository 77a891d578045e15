"""subnet: paths that sum to the layer (eq. 20), with and without depth (eq. 19), on every fixture layer."""
import subprocess

import numpy as np
import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import UsageError

from conftest import FIXTURES, ROOT, fixture_layers

LAYERS = fixture_layers()
VARIANTS = {"split2": dict(paths=2), "equal3": dict(paths=3, split="equal"), "depth1": dict(paths=2, depth=1),
            "depth2": dict(paths=2, depth=2)}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fixture,layer", LAYERS, ids=[f"{f[:-5]}:{l}" for f, l in LAYERS])
def test_subnet_preserves_function(fixture, layer, variant):
    child, result = api.subnet(str(FIXTURES / fixture), layer, **VARIANTS[variant])
    onnx.checker.check_model(child, full_check=True)
    d = result.details
    assert d.split_residual < 1e-12 and d.residual < 1e-9
    assert len(d.path_layers) == d.paths and all(len(p) == d.depth + 1 for p in d.path_layers)
    assert result.verification.max_rel < 1e-5
    if d.paths > 1:  # one new Sum joins the paths (caffe2_zoo has a Sum of its own)
        parent_sums = sum(n.op_type == "Sum" for n in onnx.load(str(FIXTURES / fixture)).graph.node)
        assert sum(n.op_type == "Sum" for n in child.graph.node) == parent_sums + 1


def test_kernels_option_and_nin_style_path():
    _, result = api.subnet(str(FIXTURES / "cifar10_quick.onnx"), "conv2", paths=2, depth=2, kernels="3,3,1")
    shapes = [tuple(l.kernel) for l in result.details.path_layers[0]]
    assert shapes == [(3, 3), (3, 3), (1, 1)]
    assert result.verification.max_rel < 1e-5


def test_equal_split_values():
    child, result = api.subnet(str(FIXTURES / "tanh_mlp.onnx"), "fc2", paths=4, split="equal")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in child.graph.initializer}
    path_w = [w for n, w in weights.items() if "/morph_path" in n and n.endswith(".weight")]
    assert len(path_w) == 4 and all(np.allclose(w, path_w[0]) for w in path_w)


def test_bad_kernels_count():
    with pytest.raises(UsageError):
        api.subnet(str(FIXTURES / "cifar10_quick.onnx"), "conv2", depth=1, kernels="3,3,1")


@pytest.mark.parametrize("script", ["cifar_111_to_3333.sh", "cifar_base_to_width.sh", "vgg16_netmorph.sh"])
def test_paper_growth_sequences(script, tmp_path):
    res = subprocess.run(["bash", str(ROOT / "examples" / script), str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines and all("PASSED" in line for line in lines)
