"""CLI contract: inspect on every fixture, one-line errors and exit codes, the input never modified."""
import hashlib
import json

import pytest

from conftest import FIXTURE_FILES, run_cli


# Fixtures where no layer can be widened: mnist_softmax has one layer, on the graph output.
NOTHING_WIDENABLE = {"mnist_softmax"}


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_inspect_every_fixture(path):
    code, out, err = run_cli("inspect", path)
    assert code == 0 and err == ""
    assert "opset" in out.splitlines()[0]
    code, out, _ = run_cli("inspect", path, "--json")
    data = json.loads(out)
    assert code == 0 and data["layers"] and all(layer["id"] for layer in data["layers"])
    assert all(layer["morphs"]["deepen"] == "ok" == layer["morphs"]["subnet"] for layer in data["layers"])
    assert all((layer["morphs"]["kernel"] == "ok") == (layer["op"] == "Conv") for layer in data["layers"])
    assert any(layer["morphs"]["widen"] == "ok" for layer in data["layers"]) != (path.stem in NOTHING_WIDENABLE)


def test_inspect_unnamed_nodes_get_usable_ids(fixtures_dir, tmp_path):
    code, out, _ = run_cli("inspect", fixtures_dir / "unnamed_nodes.onnx", "--json")
    ids = [layer["id"] for layer in json.loads(out)["layers"]]
    assert len(set(ids)) == len(ids) == 3
    code, out, err = run_cli("deepen", fixtures_dir / "unnamed_nodes.onnx", "--layer", ids[1],
                             "-o", tmp_path / "c.onnx")
    assert code == 0, err


def _one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_missing_file(tmp_path):
    code, _, err = run_cli("inspect", tmp_path / "nope.onnx")
    assert code == 2 and _one_line_error(err) and "no such file" in err


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    for args in (("inspect", bad), ("deepen", bad, "--layer", "x"), ("verify", bad, bad)):
        code, _, err = run_cli(*args)
        assert code == 2 and _one_line_error(err), err


def test_missing_external_data(fixtures_dir, tmp_path):
    import onnx
    model = onnx.load(str(fixtures_dir / "mnist_softmax.onnx"))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    code, _, err = run_cli("inspect", path)
    assert code == 2 and _one_line_error(err) and "external data" in err


def test_unknown_layer_lists_closest(fixtures_dir, tmp_path):
    code, _, err = run_cli("deepen", fixtures_dir / "cifar10_quick.onnx", "--layer", "conv9", "-o", tmp_path / "o.onnx")
    assert code == 2 and _one_line_error(err) and "conv1" in err


def test_non_linear_node_is_refused_with_reason(fixtures_dir, tmp_path):
    code, _, err = run_cli("deepen", fixtures_dir / "cifar10_quick.onnx", "--layer", "relu2", "-o", tmp_path / "o.onnx")
    assert code == 3 and _one_line_error(err) and "Relu" in err


def test_ambiguous_shared_weight(fixtures_dir, tmp_path):
    code, _, err = run_cli("deepen", fixtures_dir / "shared_weight.onnx", "--layer", "shared.weight",
                           "-o", tmp_path / "o.onnx")
    assert code == 2 and _one_line_error(err) and "ambiguous" in err


def test_bad_option_is_one_line(fixtures_dir):
    code, _, err = run_cli("deepen", fixtures_dir / "cifar10_quick.onnx", "--layer", "conv2", "--method", "magic")
    assert code == 2 and _one_line_error(err)


def test_output_exists_needs_force_and_input_untouched(fixtures_dir, tmp_path):
    src = fixtures_dir / "conv_bn_relu.onnx"
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "child.onnx"
    assert run_cli("deepen", src, "--layer", "conv2", "-o", out)[0] == 0
    code, _, err = run_cli("deepen", src, "--layer", "conv2", "-o", out)
    assert code == 2 and "--force" in err
    assert run_cli("deepen", src, "--layer", "conv2", "-o", out, "--force")[0] == 0
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["child.onnx"]  # no temp files left behind


def test_default_output_name(fixtures_dir, tmp_path):
    import shutil
    src = tmp_path / "m.onnx"
    shutil.copy(fixtures_dir / "tanh_mlp.onnx", src)
    code, out, err = run_cli("deepen", src, "--layer", "fc2")
    assert code == 0, err
    assert (tmp_path / "m.deepen.onnx").exists()


def test_python_m_and_help():
    code, out, _ = run_cli("--help")
    assert code == 0 and "deepen" in out and "verify" in out
