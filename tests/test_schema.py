"""Issue 13: every --json output, success or failure, fits cli/schema.json (the documented schema)."""
import json

import pytest

from conftest import FIXTURES, ROOT, relu_parent_and_child, run_cli

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((ROOT / "cli" / "schema.json").read_text())
CIFAR = FIXTURES / "cifar10_quick.onnx"


def _check(data, definition):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(data, SCHEMA)  # fits exactly one of the definitions
    jsonschema.validate(data, {"$ref": f"#/$defs/{definition}", "$defs": SCHEMA["$defs"]})


def _json(*args, code=0):
    got, out, err = run_cli(*args, "--json")
    assert got == code, err
    return json.loads(out)


def test_morph_reports_fit_the_schema(tmp_path):
    out = tmp_path / "c.onnx"
    deepen = _json("deepen", CIFAR, "--layer", "conv2", "--width", "1.5x", "-o", out)
    _check(deepen, "morph")
    assert deepen["details"]["width_requested"] == "1.5x"
    _check(_json("widen", out, "--layer", "conv3", "--width", "2x", "-o", tmp_path / "w.onnx"), "morph")
    _check(_json("widen", CIFAR, "--layer", "conv2", "--width", "40", "--dry-run"), "morph")
    _check(_json("widen", CIFAR, "--layer", "conv2", "--width", "40", "--method", "net2net", "--no-verify",
                 "-o", tmp_path / "n.onnx"), "morph")
    kernel = _json("kernel", CIFAR, "--layer", "conv2", "--size", "7", "-o", tmp_path / "k.onnx", "--no-verify")
    _check(kernel, "morph")
    assert "verification" not in kernel  # carries nothing: left out
    _check(_json("subnet", CIFAR, "--layer", "conv2", "--depth", "1", "-o", tmp_path / "s.onnx"), "morph")
    inspect = _json("inspect", tmp_path / "w.onnx")
    _check(inspect, "inspect")
    assert len(inspect["history"]) == 2
    _check(_json("inspect", CIFAR, "--layer", "conv2"), "group")
    _check(_json("verify", CIFAR, out), "verify")


def test_failures_fit_the_schema(tmp_path):
    _check(_json("inspect", tmp_path / "nope.onnx", code=2), "error")
    _check(_json("deepen", CIFAR, "--layer", "relu2", "-o", tmp_path / "c.onnx", code=3), "error")
    failed = _json("deepen", CIFAR, "--layer", "conv2", "--rtol", "0", "-o", tmp_path / "c.onnx", code=1)
    _check(failed, "error")
    assert failed["report"]["verification"]["passed"] is False


def test_a_failed_verify_fits_the_schema_with_non_finite_errors(tmp_path):
    relu_parent_and_child(tmp_path, "Unsqueeze", [0])   # the child's output has another shape: inf
    report = _json("verify", tmp_path / "p.onnx", tmp_path / "c.onnx", code=1)
    _check(report, "verify")
    assert report["passed"] is False and report["max_rel"] == "inf"


def test_a_half_precision_verify_fits_the_schema_with_its_floor():
    twin = FIXTURES / "half" / "torch_resnetish_legacy17_bf16.onnx"   # bf16: run as float32 upcasts, said so
    report = _json("verify", twin, twin)
    _check(report, "verify")
    assert report["precision"] == "bfloat16" and report["floor"] > 0 and report["upcast"]
    assert report["outputs"][0]["floor"] == report["floor"] and report["tolerance"] == "calibrated"
