"""Issue 13: every morph appends one record to the child's onnxmorph.history; inspect prints the lineage."""
import hashlib
import json
import shutil

import onnx

import onnxmorph

from onnxmorph import api
from onnxmorph.provenance import HISTORY_KEY, read_history

from conftest import FIXTURES, run_cli


def test_two_morphs_two_records_with_the_parents_hashes(tmp_path):
    parent = tmp_path / "p.onnx"
    shutil.copy(FIXTURES / "cifar10_quick.onnx", parent)
    c1, c2 = tmp_path / "c1.onnx", tmp_path / "c2.onnx"
    assert run_cli("deepen", parent, "--layer", "conv2", "--width", "1.5x", "--seed", "7", "-o", c1)[0] == 0
    assert run_cli("widen", c1, "--layer", "conv3", "--width", "2x", "-o", c2, "--no-verify")[0] == 0
    child = onnx.load(str(c2))
    history = read_history(child)
    assert len(history) == 2 and [r["verb"] for r in history] == ["deepen", "widen"]
    first, second = history
    assert first["parent"]["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert second["parent"]["sha256"] == hashlib.sha256(c1.read_bytes()).hexdigest()
    assert first["options"]["width"] == "1.5x" and first["seed"] == 7 and first["options"]["layer"] == "conv2"
    assert first["residual"] < 1e-10 and first["amplification"] >= 1
    assert first["verification"]["passed"] and first["verification"]["max_rel"] < 1e-5
    assert first["verification"]["provider"].endswith("ExecutionProvider")
    assert second["verification"] == {"skipped": True}
    assert first["onnxmorph"] == second["onnxmorph"] == onnxmorph.__version__
    original = onnx.load(str(parent))
    assert child.producer_name == original.producer_name  # ONNX-conventional: the exporter's name stays
    code, out, _ = run_cli("inspect", c2)
    assert code == 0 and "history: 2 morphs" in out
    assert "onnxmorph deepen p.onnx --layer conv2 --width 1.5x" in out and "--seed 7" in out
    code, out, _ = run_cli("inspect", c2, "--json")
    assert json.loads(out)["history"] == history
    code, out, _ = run_cli("inspect", parent, "--json")
    assert "history" not in json.loads(out)  # nothing to say: left out


def test_in_memory_parent_is_hashed_by_its_proto():
    model = onnx.load(str(FIXTURES / "tanh_mlp.onnx"))
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    child, _ = api.kernel(onnx.load(str(FIXTURES / "cifar10_quick.onnx")), "conv1", size=7)
    assert read_history(child)[0]["verb"] == "kernel" and "seed" not in read_history(child)[0]
    child, _ = api.deepen(model, "fc2")
    record = read_history(child)[0]
    assert record["parent"] == {"sha256": digest} and not read_history(model)
    assert [p.key for p in child.metadata_props].count(HISTORY_KEY) == 1
