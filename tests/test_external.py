"""Lazily loaded external data (graph/external.py, model_io.load_model): tensors stay in their file, are read
memory-mapped, and reach a child's data file as byte ranges; the parent's files are never touched; bad references
are refused in one line at load."""
import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from conftest import run_cli
from onnxmorph import api
from onnxmorph.errors import UsageError
from onnxmorph.graph import model_io
from onnxmorph.graph.external import ALIGN, ALIGN_FROM, external_info, is_external, tensor_array
from onnxmorph.graph.index import GraphIndex


def _mlp(folder, widths=(16, 512, 512, 8), name="mlp.onnx"):
    """x -> Gemm -> Relu -> ... with every weight in one external data file (the biggest 1 MiB, so aligned)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits += [nh.from_array((rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32), f"fc{i}.weight"),
                  nh.from_array(rng.standard_normal(b).astype(np.float32), f"fc{i}.bias")]
        nodes.append(h.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"], name=f"fc{i}", transB=1))
        x = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(h.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [2, widths[0]])],
                         [h.make_tensor_value_info(x, T.FLOAT, [2, widths[-1]])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9
    path = folder / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=0)
    return path


def _digest(*paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture
def lazy(monkeypatch):
    """Every model with external data loads lazily, whatever its size."""
    monkeypatch.setattr(model_io, "LAZY_BYTES", 0)


def test_lazy_load_keeps_tensors_in_their_file_and_reads_them_mapped(tmp_path, lazy):
    path = _mlp(tmp_path)
    eager = onnx.load(str(path))
    model = model_io.load_model(path)
    data = str((tmp_path / "mlp.onnx.data").resolve())
    assert all(is_external(t) and external_info(t)["location"] == data for t in model.graph.initializer)
    index = GraphIndex(model)
    for t in eager.graph.initializer:
        value = index.constant(t.name)
        assert isinstance(value, np.memmap)
        np.testing.assert_array_equal(value, nh.to_array(t))
    value[...] = 0   # copy-on-write: the file never changes
    np.testing.assert_array_equal(tensor_array(model.graph.initializer[-1]), nh.to_array(eager.graph.initializer[-1]))


def test_small_external_data_is_read_whole_by_default(tmp_path):
    model = model_io.load_model(_mlp(tmp_path))
    assert not any(is_external(t) for t in model.graph.initializer)


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
def test_a_lazy_parent_grows_into_a_child_with_its_own_data(tmp_path, lazy, method):
    parent = _mlp(tmp_path)
    before = _digest(parent, tmp_path / "mlp.onnx.data")
    out = tmp_path / "out" / "child.onnx"
    out.parent.mkdir()
    child, result = api.widen(str(parent), "fc1", width="2x", method=method, output=str(out))
    assert result.verification.passed and result.verification.max_rel < 1e-6
    assert _digest(parent, tmp_path / "mlp.onnx.data") == before
    saved = onnx.load(str(out), load_external_data=False)
    locations = {external_info(t)["location"] for t in saved.graph.initializer if is_external(t)}
    assert locations == {"child.onnx.data"}
    for t in saved.graph.initializer:   # big tensors start on ALIGN boundaries, so ONNX Runtime can map them
        if is_external(t) and int(external_info(t)["length"]) >= ALIGN_FROM:
            assert int(external_info(t)["offset"]) % ALIGN == 0
    # unchanged tensors are byte for byte the parent's; the file stands alone when the parent is gone
    full = onnx.load(str(out))
    kept = {t.name: t for t in onnx.load(str(parent)).graph.initializer}
    assert nh.to_array(next(t for t in full.graph.initializer if t.name == "fc0.bias")).tobytes() == \
        nh.to_array(kept["fc0.bias"]).tobytes()
    os.remove(tmp_path / "mlp.onnx.data")
    assert api.verify(str(out), str(out)).passed
    # the child the API returns still reads the parent's file (absolute locations), staged again when saved
    assert any(is_external(t) for t in child.graph.initializer)


def test_the_parents_unchanged_bytes_are_copied_in_the_kernel_into_an_adopted_spill_file(tmp_path, lazy,
                                                                                           monkeypatch):
    """The grown fc1 (2 MiB) fills the spill file, which becomes the child's data file; the parent's other tensors
    are appended by copy_file_range, none read into Python (a file opened to append would refuse it: EBADF)."""
    from onnxmorph.graph import external
    if not hasattr(os, "copy_file_range"):
        pytest.skip("no copy_file_range on this OS")
    copied, reads = [], []
    real_copy, real_copy_range = os.copy_file_range, external._copy_range

    def counted(src, dst, count, offset_src=None, *args):
        n = real_copy(src, dst, count, offset_src, *args)
        copied.append(n)
        return n

    def watched(source, offset, length, out, cache):
        reads.append(length)
        return real_copy_range(source, offset, length, out, cache)
    monkeypatch.setattr(os, "copy_file_range", counted)
    monkeypatch.setattr(external, "_copy_range", watched)
    parent = _mlp(tmp_path)
    out = tmp_path / "child.onnx"
    adopted = []
    real_mostly_live = external._mostly_live
    monkeypatch.setattr(external, "_mostly_live", lambda t, p: adopted.append(real_mostly_live(t, p)) or adopted[-1])
    _, result = api.widen(str(parent), "fc1", width="2x", output=str(out))
    assert result.verification.passed and adopted == [True]
    assert sum(reads) > 0 and sum(copied) == sum(reads)
    assert api.verify(str(parent), str(out)).passed


def test_staging_leaves_the_model_as_it_was(tmp_path, lazy):
    model = model_io.load_model(_mlp(tmp_path))
    before = model.SerializeToString()
    staged = model_io.StagedModel(model, tmp_path, "staged.onnx")
    assert model.SerializeToString() == before
    assert isinstance(staged.runtime, str) and os.path.exists(staged.runtime)


def _rewrite(path, change):
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.name == "fc1.weight":
            info = {e.key: e for e in t.external_data}
            change(t, info)
    onnx.save(model, str(path))


@pytest.mark.parametrize("change, words", [
    (lambda t, i: setattr(i["location"], "value", "../elsewhere.data"), "is not a file beside the model"),
    (lambda t, i: setattr(i["location"], "value", "missing.data"), "does not exist"),
    (lambda t, i: setattr(i["offset"], "value", str(10**9)), "past the end"),
    (lambda t, i: setattr(i["length"], "value", "12"), "declares shape"),
])
def test_bad_external_references_are_refused_at_load(tmp_path, change, words):
    path = _mlp(tmp_path)
    _rewrite(path, change)
    with pytest.raises(UsageError, match=words):
        model_io.load_model(path, lazy=True)
    code, out, err = run_cli("inspect", path)
    assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
