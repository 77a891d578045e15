"""Load and save models: external data, atomic writes, the input never modified."""
from __future__ import annotations

import copy
import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..errors import UsageError, one_line
from .external import (BadExternalData, external_bytes, is_external, point_at_files, read_into_proto, repoint,
                       write_model_and_data)

PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the graph structure when deciding whether tensors must go to external data.
_EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20


# External data past this size stays in its file: tensors are read memory-mapped when a morph needs their values
# and copied into the child's data file as byte ranges (graph/external.py). Smaller models are read whole.
LAZY_BYTES = 64 * 2**20


def load_model(source, lazy: bool | None = None) -> onnx.ModelProto:
    """A private copy of the model: from a path (with external data) or a ModelProto (deep-copied).

    lazy: keep external data in its file (graph/external.py); None decides by size (LAZY_BYTES); False reads it
    all, also into the copy of a ModelProto whose tensors name their files by absolute path (a lazy child)."""
    if isinstance(source, onnx.ModelProto):
        model = copy.deepcopy(source)
        if lazy is False:
            _read_external_data(model)
        return model
    path = Path(source)
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if path.is_dir():
        raise UsageError(f"is a directory, not an ONNX file: {path}")
    if not path.is_file():  # a fifo or a device would block or never end
        raise UsageError(f"not a regular file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UsageError(f"not a readable ONNX model: {path} ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.input and not model.opset_import:
        raise UsageError(f"not an ONNX model (empty graph): {path}")
    locations = external_locations(model)
    _DATA_FILES[os.path.realpath(path)] = [path.parent / loc for loc in locations]
    try:
        held = point_at_files(model, path.parent) if locations else 0
        if locations and not (lazy or (lazy is None and held > LAZY_BYTES)):
            _read_external_data(model)
    except (BadExternalData, OSError) as exc:
        raise UsageError(f"cannot read the external data of {path}: {one_line(exc)}") from None
    validate(model, path)
    return model


def _read_external_data(model: onnx.ModelProto) -> None:
    """Bring the bytes of every external tensor (locations already absolute) into the proto."""
    from .external import all_tensors, external_info
    for tensor in all_tensors(model):
        if is_external(tensor) and os.path.isabs(external_info(tensor).get("location", "")):
            read_into_proto(tensor)


_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _check_tensor(t: onnx.TensorProto, where: str) -> None:
    """The element type is known and the stored values fill the declared dims (metadata only, no decoding)."""
    if any(d < 0 for d in t.dims):
        raise UsageError(f"{where}: tensor {t.name!r} declares negative dims {list(t.dims)}")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # not loaded (a light copy); ONNX Runtime checks it
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"{where}: tensor {t.name!r} has an unknown element type ({t.data_type})") from None
    count = 1
    for d in t.dims:
        count *= d
    if t.data_type == onnx.TensorProto.STRING:
        held = len(t.string_data)
    elif t.HasField("raw_data"):
        bits = 4 if t.data_type in _PACKED_4BIT else np.dtype(np_dtype).itemsize * 8
        want = (count * bits + 7) // 8
        if len(t.raw_data) != want:
            raise UsageError(f"{where}: tensor {t.name!r} declares shape {list(t.dims)} ({want} bytes) but holds "
                             f"{len(t.raw_data)} bytes")
        return
    else:
        held = len(getattr(t, field))
        if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            held //= 2
        elif t.data_type in _PACKED_4BIT:
            held *= 2
            count += count % 2
    if held != count:
        raise UsageError(f"{where}: tensor {t.name!r} declares shape {list(t.dims)} ({count} values) but holds {held}")


@functools.lru_cache(maxsize=4096)
def _attribute_types(op: str, domain: str, version: int) -> dict:
    try:
        schema = onnx.defs.get_schema(op, version, domain)
    except Exception:  # unknown op or domain: ONNX Runtime judges it
        return {}
    return {name: a.type for name, a in schema.attributes.items()}


def _opset_versions(model: onnx.ModelProto) -> dict:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def _check_graph(graph: onnx.GraphProto, opsets: dict, depth: int = 0) -> None:
    for t in graph.initializer:
        _check_tensor(t, "initializer")
    for node in graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        expected = _attribute_types(node.op_type, domain, opsets.get(domain, 0)) if domain in ("", "ai.onnx.ml") \
            and opsets.get(domain, 0) > 0 else {}
        for a in node.attribute:
            want = expected.get(a.name)
            if want is not None and a.type != want:
                raise UsageError(f"node {node.name or node.output[0] if node.output else node.op_type!r} "
                                 f"({node.op_type}): attribute {a.name} should be "
                                 f"{onnx.AttributeProto.AttributeType.Name(want)}, not "
                                 f"{onnx.AttributeProto.AttributeType.Name(a.type)}")
            if a.type == onnx.AttributeProto.TENSOR:
                _check_tensor(a.t, f"node {node.name or node.op_type!r}")
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _check_graph(g, opsets, depth + 1)


def _check_dataflow(graph: onnx.GraphProto) -> None:
    """Every tensor the main graph reads is defined, and the nodes have no cycle (in any order)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers = {}
    for n, node in enumerate(graph.node):
        for out in filter(None, node.output):  # "" is an optional output left out
            if out in producers or out in defined:
                raise UsageError(f"tensor {out!r} is written twice")
            producers[out] = n
    waiting = [0] * len(graph.node)  # Kahn's algorithm: a cycle leaves nodes waiting forever
    readers: dict[int, list[int]] = {}
    for n, node in enumerate(graph.node):
        for name in node.input:
            if name in producers:
                waiting[n] += 1
                readers.setdefault(producers[name], []).append(n)
            elif name not in defined:
                raise UsageError(f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines")
    ready = [n for n, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        n = ready.pop()
        done += 1
        for r in readers.get(n, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if done != len(graph.node):
        stuck = next(graph.node[n] for n, count in enumerate(waiting) if count > 0)
        raise UsageError(f"the graph has a cycle through node {stuck.name or stuck.op_type!r}")


def validate(model: onnx.ModelProto, path) -> None:
    """What onnxmorph's own code relies on, checked once at load so a hostile file gets one clear line:
    every tensor's type is known and its values fill its dims; attributes of standard ops have their schema's
    type. Anything else (graph structure, ops, opsets) ONNX Runtime judges when it loads the parent."""
    try:
        _check_graph(model.graph, _opset_versions(model))
        _check_dataflow(model.graph)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


_DATA_FILES: dict[str, list[Path]] = {}  # real path of a loaded model -> its external data files


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The external data files a model (loaded without its data) refers to, relative to its folder."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    locations = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if loc and loc not in locations:
                locations.append(loc)
    return locations


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where the names lead
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(output, source) -> None:
    """Refuse (whatever --force says) an output that would overwrite the parent or its external data."""
    if output is None or isinstance(source, onnx.ModelProto):
        return
    output, source = Path(output), Path(source)
    real = os.path.realpath(source)
    if real not in _DATA_FILES:
        try:
            _DATA_FILES[real] = [source.parent / loc for loc in
                                 external_locations(onnx.load(str(source), load_external_data=False))]
        except Exception:
            _DATA_FILES[real] = []
    parent_files = [source, *_DATA_FILES[real]]
    # The child's own external data (past 2 GB) goes to <output>.data: that must not hit the parent either.
    for written in (output, output.with_name(output.name + ".data")):
        for parent_file in parent_files:
            if _same_file(written, parent_file):
                what = "the input model" if parent_file is source else f"the input's external data {parent_file}"
                raise UsageError(f"refusing to write {written}: it is {what}; a morph never replaces its parent "
                                 "(choose another -o)")


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers and Constant node tensors, inline or in external data files."""
    total = sum(t.ByteSize() for t in model.graph.initializer if not is_external(t)) + external_bytes(model)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                total += attr.t.ByteSize()
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Past protobuf's cap, or holding tensors that live in external data files (a lazily loaded model)."""
    return external_bytes(model) > 0 or tensor_bytes(model) > _EXTERNAL_THRESHOLD


def check_writable(path, force: bool = False) -> Path:
    """The usual errors for an output that exists (without --force) or whose folder does not."""
    path = Path(path)
    if path.exists() and not force:
        raise UsageError(f"output exists: {path} (use --force to overwrite)")
    if not path.parent.exists():
        raise UsageError(f"output folder does not exist: {path.parent}")
    if not path.parent.is_dir():
        raise UsageError(f"output folder is not a folder: {path.parent}")
    return path


class StagedModel:
    """A child serialized once: ONNX Runtime runs it (`runtime`: bytes, or a path with external data past 2 GB)
    and `commit` puts the same bytes in place, with `extra` (serialized ModelProto fields, merged by protobuf
    on load: the provenance record) appended."""

    def __init__(self, model: onnx.ModelProto, folder: Path, name: str, progress=None, adopt: str | None = None):
        """adopt: a spill file in `folder` that may become the data file (graph/external.write_model_and_data)."""
        self.folder, self.name = Path(folder), name
        self.placed: list = []   # external tensors, where the staged data file holds them
        if needs_external_data(model):
            self.path = self.folder / name
            self.placed = write_model_and_data(model, self.path, name + ".data", progress, adopt)
            self.runtime: str | bytes = str(self.path)
        else:
            self.path = None
            self.runtime = model.SerializeToString()

    def commit(self, destination, extra: bytes = b"") -> Path:
        destination = Path(destination)
        if self.path is None:
            tmp = self.folder / (self.name + ".part")
            with open(tmp, "wb") as f:
                f.write(self.runtime)
                f.write(extra)
            self.runtime = b""
            os.replace(tmp, destination)
            return destination
        with open(self.path, "ab") as f:
            f.write(extra)
        if self.path.name != destination.name:  # the data file's location is the staged name
            raise ValueError("a staged model with external data keeps its file name")
        os.replace(self.folder / (self.name + ".data"), destination.parent / (destination.name + ".data"))
        os.replace(self.path, destination)
        # the in-memory model's external tensors now read the committed file (its spill folder may go)
        repoint(self.placed, destination.parent / (destination.name + ".data"))
        return destination


def save_model(model: onnx.ModelProto, path, force: bool = False) -> Path:
    """Write atomically: a temp file in the target folder, then rename. External data past 2 GB."""
    path = check_writable(path, force)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        return StagedModel(model, Path(tmp), path.name).commit(path)


def serialize_for_runtime(model: onnx.ModelProto, workdir: str) -> str | bytes:
    """Bytes for ONNX Runtime, or a path in `workdir` (with external data) when too big for protobuf."""
    return StagedModel(model, Path(workdir), "model.onnx").runtime
