"""Issue 13: the parent is never lost, verify's --input-shape is checked, a broken onnxruntime says what to do,
--debug shows tracebacks, --json failures are one JSON object."""
import hashlib
import json
import os
import shutil

import onnx
import pytest

from conftest import relu_parent_and_child, run_cli


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


@pytest.fixture
def parent(fixtures_dir, tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(fixtures_dir / "conv_bn_relu.onnx", path)
    return path


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_output_never_replaces_the_parent(parent, tmp_path, how, monkeypatch):
    before = _digest(parent)
    monkeypatch.chdir(tmp_path)
    if how == "same":
        out = parent
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        out = "sub/../m.onnx"
    elif how == "symlink":
        out = tmp_path / "link.onnx"
        out.symlink_to(parent)
    else:
        out = tmp_path / "hard.onnx"
        os.link(parent, out)
    code, _, err = run_cli("deepen", parent, "--layer", "conv2", "-o", out, "--force")
    assert code == 2 and _one_line_error(err) and "parent" in err
    assert _digest(parent) == before


def test_export_torch_never_replaces_the_parent(parent):
    before = _digest(parent)
    code, _, err = run_cli("export-torch", parent, "-o", parent, "--force")
    assert code == 2 and _one_line_error(err) and "parent" in err
    assert _digest(parent) == before


def _external_parent(fixtures_dir, tmp_path, location):
    """conv_bn_relu saved as tmp_path/ext.onnx with its weights in tmp_path/location."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(onnx.load(str(fixtures_dir / "conv_bn_relu.onnx")), str(path), save_as_external_data=True,
                    location=location, size_threshold=0)
    return path


def test_output_never_replaces_the_parents_external_data(fixtures_dir, tmp_path):
    path = _external_parent(fixtures_dir, tmp_path, "w.bin")
    data = tmp_path / "w.bin"
    before = _digest(data)
    code, _, err = run_cli("deepen", path, "--layer", "conv2", "-o", data, "--force")
    assert code == 2 and _one_line_error(err) and "external data" in err
    assert _digest(data) == before


def test_child_external_data_never_hits_the_parent(fixtures_dir, tmp_path):
    path = _external_parent(fixtures_dir, tmp_path, "c.onnx.data")
    code, _, err = run_cli("deepen", path, "--layer", "conv2", "-o", tmp_path / "c.onnx", "--force")
    assert code == 2 and "c.onnx.data" in err


@pytest.mark.parametrize("spec, words", [
    ("y:1x3x16x16", ["no input 'y'", "x: 1x3x16x16"]),
    ("x:1x3x16", ["3 dims", "x: 1x3x16x16"]),
    ("x:4x3x16x16", ["fixed at 1", "x: 1x3x16x16"]),
    ("x:1x3x0x16", ["positive"]),
])
def test_verify_input_shape_is_checked(parent, spec, words):
    code, _, err = run_cli("verify", parent, parent, "--input-shape", spec)
    assert code == 2 and _one_line_error(err) and all(w in err for w in words), err


def test_verify_input_shape_fits_dynamic_dims(fixtures_dir):
    path = fixtures_dir / "dynamic_batch.onnx"
    name = onnx.load(str(path)).graph.input[0].name
    shape = [d.dim_value or 3 for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    code, out, err = run_cli("verify", path, path, "--input-shape", f"{name}:{'x'.join(map(str, shape))}")
    assert code == 0, err


def test_broken_onnxruntime_says_what_to_do(parent, tmp_path):
    import subprocess
    import sys
    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")  # what is left after uninstalling one of two onnxruntime wheels
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    for args in (("verify", parent, parent), ("deepen", parent, "--layer", "conv2", "-o", tmp_path / "c.onnx")):
        res = subprocess.run([sys.executable, "-m", "onnxmorph", *map(str, args)], capture_output=True, text=True,
                             env=env)
        assert res.returncode == 2 and _one_line_error(res.stderr), res.stderr
        assert "reinstall" in res.stderr and "get_available_providers" in res.stderr


def test_onnxruntime_errors_keep_their_whole_message():
    from onnxmorph.errors import one_line
    text = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x\n index: 2 Got: 12 Expected: 16\n"
    assert one_line(text) == ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x "
                              "index: 2 Got: 12 Expected: 16")


def test_runtime_error_message_is_whole_in_the_cli(fixtures_dir, tmp_path):
    # a child that fails to run: its expected dims must appear on the one line
    relu_parent_and_child(tmp_path, "Reshape", [4, 4])
    code, out, err = run_cli("verify", tmp_path / "p.onnx", tmp_path / "c.onnx")
    assert code == 1
    line = next(line for line in out.splitlines() if "failed to run" in line)
    assert "{4,4}" in line.replace(" ", "") or "16" in line, line


def test_debug_shows_the_traceback(tmp_path):
    for args in (("--debug", "inspect", tmp_path / "nope.onnx"), ("inspect", tmp_path / "nope.onnx", "--debug")):
        code, _, err = run_cli(*args)
        assert code == 2 and "Traceback (most recent call last)" in err and "no such file" in err


@pytest.mark.parametrize("args, code, kind", [
    (("inspect", "{tmp}/nope.onnx"), 2, "usage"),
    (("deepen", "{parent}", "--layer", "conv9"), 2, "usage"),
    (("deepen", "{parent}", "--layer", "relu2"), 3, "cannot_morph"),
    (("deepen", "{parent}", "--method", "magic"), 2, "usage"),
    (("kernel", "{parent}", "--layer", "conv2", "--size", "5", "--seed", "3"), 2, "usage"),
])
def test_json_failures_are_one_object(parent, tmp_path, args, code, kind):
    args = [a.format(tmp=tmp_path, parent=parent) for a in args]
    got, out, err = run_cli(*args, "-o", tmp_path / "c.onnx", "--json") if args[0] != "inspect" else \
        run_cli(*args, "--json")
    data = json.loads(out)
    assert got == code and data["exit_code"] == code and data["kind"] == kind and data["error"]
    assert set(data) <= {"error", "exit_code", "kind", "report"} and err == ""


def test_json_verification_failure_carries_the_report(parent, tmp_path):
    code, out, _ = run_cli("deepen", parent, "--layer", "conv2", "-o", tmp_path / "c.onnx", "--rtol", "0",
                           "--atol", "0", "--json")
    data = json.loads(out)  # one object, the report inside
    assert code == 1 == data["exit_code"] and data["kind"] == "verification_failed"
    assert data["report"]["verification"]["passed"] is False and "output" not in data["report"]
    assert not (tmp_path / "c.onnx").exists()


def _mutated(fixtures_dir, tmp_path, change):
    model = onnx.load(str(fixtures_dir / "cifar10_quick.onnx"))
    change(model)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    return path


def _shrink_weight(model):
    t = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    t.raw_data = t.raw_data[: len(t.raw_data) // 2]


def _wrong_attribute_type(model):
    from onnx import helper
    node = next(n for n in model.graph.node if n.name == "conv2")
    kept = [a for a in node.attribute if a.name != "strides"]
    node.ClearField("attribute")
    node.attribute.extend(kept + [helper.make_attribute("strides", 1)])


def _unknown_type(model):
    model.graph.initializer[0].data_type = 999


@pytest.mark.parametrize("change, words", [(_shrink_weight, "conv2.weight"), (_wrong_attribute_type, "INTS"),
                                           (_unknown_type, "element type")])
def test_hostile_files_are_refused_at_load(fixtures_dir, tmp_path, change, words):
    path = _mutated(fixtures_dir, tmp_path, change)
    for args in (("inspect", path), ("deepen", path, "--layer", "conv2", "-o", tmp_path / "c.onnx")):
        code, _, err = run_cli(*args)
        assert code == 2 and _one_line_error(err) and words in err, err


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no fifos here")
    import subprocess
    import sys
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    res = subprocess.run([sys.executable, "-m", "onnxmorph", "inspect", str(fifo)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "not a regular file" in res.stderr


def test_inputs_too_big_to_feed_are_refused(fixtures_dir, tmp_path):
    def huge(model):
        for d in model.graph.input[0].type.tensor_type.shape.dim:
            d.dim_value = 2**20
    path = _mutated(fixtures_dir, tmp_path, huge)
    code, _, err = run_cli("verify", path, path)
    assert code == 2 and _one_line_error(err) and "--input-shape" in err
