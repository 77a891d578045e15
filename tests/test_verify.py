"""verify: passes on identical models, fails on a 1e-3 relative perturbation, reports per output."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmorph import verify
from onnxmorph.errors import UsageError
from onnxmorph.verify import cuda_works

from conftest import FIXTURE_FILES, run_cli


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_identical_copy_passes(path):
    report = verify(str(path), str(path))
    assert report.passed and report.max_abs == 0.0
    assert report.child_provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


def _perturb_one_layer(path, tmp_path, rel=1e-3):
    model = onnx.load(str(path))
    index = {t.name: t for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in index)
    w = numpy_helper.to_array(index[conv.input[1]])
    rng = np.random.default_rng(0)
    index[conv.input[1]].CopyFrom(numpy_helper.from_array(
        (w * (1 + rel * rng.choice([-1.0, 1.0], size=w.shape))).astype(w.dtype), conv.input[1]))
    out = tmp_path / f"{path.stem}.perturbed.onnx"
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("name", ["cifar10_quick", "resnet_blocks", "transformer_mlp", "mnist_softmax"])
def test_perturbed_layer_fails(name, fixtures_dir, tmp_path):
    path = fixtures_dir / f"{name}.onnx"
    child = _perturb_one_layer(path, tmp_path)
    report = verify(str(path), str(child))
    assert not report.passed and report.max_rel > 1e-5
    code, out, err = run_cli("verify", path, child)
    assert code == 1 and "FAILED" in out.splitlines()[-1]


def test_cli_verify_pass_and_json(fixtures_dir):
    path = fixtures_dir / "conv_bn_relu.onnx"
    code, out, _ = run_cli("verify", path, path)
    assert code == 0 and out.splitlines()[-1].startswith("PASSED")
    code, out, _ = run_cli("verify", path, path, "--json")
    data = json.loads(out)
    assert code == 0 and data["passed"] and data["outputs"][0]["max_abs"] == 0.0


def test_dynamic_dims_from_input_shape(fixtures_dir):
    path = fixtures_dir / "dynamic_batch.onnx"
    report = verify(str(path), str(path), input_shape=["x:4x3x12x12"])
    assert report.passed and report.outputs[0].parent_shape == [4, 4]
    with pytest.raises(UsageError):
        verify(str(path), str(path), input_shape=["x=4x3"])


@pytest.mark.skipif(cuda_works(), reason="this machine has a working CUDA provider")
def test_cuda_without_gpu_is_a_usage_error_without_spam(fixtures_dir):
    path = fixtures_dir / "mnist_softmax.onnx"
    code, out, err = run_cli("verify", path, path, "--provider", "cuda")
    assert code == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("verify", path, path)  # auto falls back to the CPU quietly
    assert code == 0 and err == "" and "CPUExecutionProvider" in out


def test_newer_ir_version_than_the_runtime_knows(fixtures_dir, tmp_path):
    """onnx's helper stamps its newest IR version; ONNX Runtime may not know it yet."""
    model = onnx.load(str(fixtures_dir / "cifar10_quick.onnx"))
    model.ir_version = onnx.IR_VERSION
    path = tmp_path / "new_ir.onnx"
    onnx.save(model, str(path))
    from onnxmorph import deepen
    child, result = deepen(str(path), "conv2", output=str(tmp_path / "child.onnx"))
    assert result.verification.passed and child.ir_version == model.ir_version
