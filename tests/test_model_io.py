"""Saving: atomic, external data past the protobuf cap (threshold lowered to test it cheaply)."""
import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import UsageError
from onnxmorph.graph import model_io


def test_external_data_roundtrip(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "_EXTERNAL_THRESHOLD", 1000)
    out = tmp_path / "big.onnx"
    child, result = api.deepen(str(fixtures_dir / "cifar10_quick.onnx"), "conv3", output=str(out))
    assert result.passed and (tmp_path / "big.onnx.data").exists()
    assert out.stat().st_size < 100_000  # tensors live in the data file
    reloaded = model_io.load_model(str(out))
    assert api.verify(str(fixtures_dir / "cifar10_quick.onnx"), reloaded).passed


def test_load_copies_the_proto(fixtures_dir):
    model = onnx.load(str(fixtures_dir / "tanh_mlp.onnx"))
    before = model.SerializeToString()
    api.deepen(model, "fc1")
    assert model.SerializeToString() == before


def test_save_refuses_missing_folder(fixtures_dir, tmp_path):
    with pytest.raises(UsageError):
        model_io.save_model(onnx.load(str(fixtures_dir / "tanh_mlp.onnx")), tmp_path / "no" / "x.onnx")
