import os
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.onnx"))

# onnx2torch imports torchvision; where none imports beside this torch, use the test-only stub (README, Development).
try:
    import torchvision  # noqa: F401
except Exception:
    sys.modules.pop("torchvision", None)
    _STUBS = str(Path(__file__).resolve().parent / "_stubs")
    sys.path.insert(0, _STUBS)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_STUBS, os.environ.get("PYTHONPATH")) if p)  # CLI runs


def fixture_layers():
    """(fixture file name, layer id) for every morphable layer of every fixture."""
    from onnxmorph.graph.index import GraphIndex
    from onnxmorph.graph.layers import find_layers
    out = []
    for path in FIXTURE_FILES:
        for layer in find_layers(GraphIndex(onnx.load(str(path)))):
            out.append((path.name, layer.id))
    return out


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


def relu_parent_and_child(tmp_path, child_op, constant):
    """p.onnx: y = Relu(x) on a (2, 3) x; c.onnx: y = child_op(x, constant), a child that differs or fails. Paths."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    value = numpy_helper.from_array(np.asarray(constant, np.int64), "k")
    parent = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "p", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 13)])
    child = helper.make_model(helper.make_graph([helper.make_node(child_op, ["x", "k"], ["y"])], "c", [x], [y],
                                                [value]), opset_imports=[helper.make_opsetid("", 13)])
    parent.ir_version = child.ir_version = 7
    onnx.save(parent, str(tmp_path / "p.onnx"))
    onnx.save(child, str(tmp_path / "c.onnx"))
    return tmp_path / "p.onnx", tmp_path / "c.onnx"


def run_cli(*args):
    """Run the CLI in a subprocess; returns (exit code, stdout, stderr)."""
    import subprocess
    res = subprocess.run([sys.executable, "-m", "onnxmorph", *map(str, args)], capture_output=True, text=True)
    return res.returncode, res.stdout, res.stderr
