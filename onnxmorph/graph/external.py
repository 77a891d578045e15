"""Tensors whose data stays in their external data file: read memory-mapped, only when a value is needed, and
copied into a child's data file as byte ranges, never parsed.

A model loaded lazily (graph/model_io.load_model) keeps every external tensor as metadata; its `location` is
rewritten to the absolute path of its file, so the tensor knows where its bytes are wherever the model goes next.
Absolute locations never reach ONNX Runtime or a saved file: write_model_and_data puts a child's tensors in its own
data file and names that file, relatively.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

EXTERNAL = onnx.TensorProto.EXTERNAL
# Offsets of big tensors in a written data file are multiples of this, so ONNX Runtime can map them directly.
ALIGN = 4096
ALIGN_FROM = 1 << 20


# While a morph runs (api), the tensors it makes of this size or more go straight to a spill file in its work folder:
# the model holds their references only, so a morph that changes every weight holds one at a time.
SPILL_BYTES = 1 << 20
_SPILL: contextvars.ContextVar = contextvars.ContextVar("onnxmorph_spill", default=None)


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == EXTERNAL


def external_info(tensor: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = EXTERNAL


def _plain_dtype(data_type: int):
    """The numpy dtype whose bytes are the tensor's stored bytes (one element per item), or None (strings, 4-bit
    packed types)."""
    if data_type == onnx.TensorProto.STRING:
        return None
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    return None if dtype.name in ("int4", "uint4", "float4_e2m1fn", "int2", "uint2") else dtype.newbyteorder("<")


def element_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes its values take when stored raw, or None when that is not a plain size."""
    dtype = _plain_dtype(tensor.data_type)
    return None if dtype is None else int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values: inline ones decoded, external ones memory-mapped copy-on-write (pages are read when
    touched; writing to the array never reaches the file)."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    info = external_info(tensor)
    offset, length = int(info.get("offset", 0)), int(info.get("length", 0) or 0)
    dtype = _plain_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    if dtype is not None and 0 in shape:
        return np.zeros(shape, dtype)
    if dtype is not None:
        return np.memmap(info["location"], dtype=dtype, mode="c", offset=offset, shape=shape)
    with open(info["location"], "rb") as f:   # strings and packed types: decode a copy
        f.seek(offset)
        inline = onnx.TensorProto()
        inline.CopyFrom(tensor)
        del inline.external_data[:]
        inline.data_location = onnx.TensorProto.DEFAULT
        inline.raw_data = f.read(length)
    return numpy_helper.to_array(inline)


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of the model: initializers and Constant/attribute tensors, in subgraphs too."""
    def of_graph(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    yield from of_graph(g)
    yield from of_graph(model.graph)


class Spill:
    """An append-only data file for the tensors a morph makes: each is written once, aligned, and its TensorProto
    refers to it by absolute path."""

    def __init__(self, folder: Path):
        self.path = str(Path(folder).resolve() / "spilled.data")
        self.file = open(self.path, "wb")
        self.names: set = set()   # the tensors whose bytes are here

    def write(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        offset = self.file.tell()
        if offset % ALIGN:
            self.file.write(b"\0" * (ALIGN - offset % ALIGN))
            offset = self.file.tell()
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        self.file.write(memoryview(data.reshape(-1)).cast("B"))
        self.file.flush()   # readable at once through a memory map
        set_external(tensor, self.path, offset, data.nbytes)
        self.names.add(tensor.name)

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def spilling(folder: Path):
    """Tensors made by new_tensor inside this block go to a spill file in `folder` (which must outlive every use
    of them: api materializes or re-points them before the folder goes)."""
    spill = Spill(folder)
    token = _SPILL.set(spill)
    try:
        yield spill
    finally:
        _SPILL.reset(token)
        spill.close()


def new_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A TensorProto holding `array`: inline, or in the spill file of the morph running now when it is big."""
    array = np.asarray(array)
    spill = _SPILL.get()
    dtype = _plain_dtype(onnx.helper.np_dtype_to_tensor_dtype(array.dtype)) if array.dtype != object else None
    if spill is None or array.nbytes < SPILL_BYTES or dtype is None:
        return numpy_helper.from_array(np.ascontiguousarray(array).reshape(array.shape), name)
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    spill.write(tensor, array)
    return tensor


def read_into_proto(tensor: onnx.TensorProto) -> None:
    """Bring an external tensor's bytes into the proto (it no longer needs its file)."""
    info = external_info(tensor)
    with open(info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        raw = f.read(int(info.get("length", 0) or 0))
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = raw


def materialize(model: onnx.ModelProto, folder) -> None:
    """Bring into the proto every tensor whose bytes are in a file inside `folder` (a work folder about to go)."""
    folder = Path(folder).resolve()
    for tensor in all_tensors(model):
        if is_external(tensor) and folder in Path(external_info(tensor).get("location", "")).parents:
            read_into_proto(tensor)


class BadExternalData(ValueError):
    """An external data reference that does not hold what its tensor declares (the message says which)."""


def point_at_files(model: onnx.ModelProto, folder: Path) -> int:
    """Rewrite every external tensor's location to the absolute path of its file under `folder`, after checking that
    the file exists inside the folder and holds the tensor's bytes. Returns the bytes they hold in all."""
    folder = Path(os.path.realpath(folder))
    sizes: dict[str, int] = {}
    total = 0
    for tensor in all_tensors(model):
        if not is_external(tensor):
            continue
        info = external_info(tensor)
        location = info.get("location", "")
        path = Path(os.path.realpath(folder / location))
        if not location or os.path.isabs(location) or folder not in path.parents:
            raise BadExternalData(f"tensor {tensor.name!r}: external data location {location!r} is not a file "
                                  "beside the model")
        if str(path) not in sizes:
            if not path.is_file():
                raise BadExternalData(f"tensor {tensor.name!r}: external data file {location!r} does not exist")
            sizes[str(path)] = path.stat().st_size
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise BadExternalData(f"tensor {tensor.name!r}: external data offset or length is not a number") from None
        want = element_bytes(tensor)
        length = want if length is None else length
        if length is None or offset < 0 or offset + length > sizes[str(path)]:
            raise BadExternalData(f"tensor {tensor.name!r}: bytes {offset}..{offset + (length or 0)} are past the end "
                                  f"of {location!r} ({sizes[str(path)]} bytes)")
        if want is not None and want != length:
            raise BadExternalData(f"tensor {tensor.name!r} declares shape {list(tensor.dims)} ({want} bytes) but its "
                                  f"external data holds {length}")
        set_external(tensor, str(path), offset, length)
        total += length
    return total


def external_bytes(model: onnx.ModelProto) -> int:
    return sum(int(external_info(t).get("length", 0) or 0) for t in all_tensors(model) if is_external(t))


def _copy_range(source: str, offset: int, length: int, out, cache: dict) -> None:
    """Append bytes [offset, offset + length) of file `source` to `out`, in the kernel where it can."""
    src = cache.get(source)
    if src is None:
        src = cache[source] = open(source, "rb")
    out.flush()
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src.fileno(), out.fileno(), length - done, offset + done)
        except (AttributeError, OSError):   # another file system, or an OS without it
            n = 0
        if n <= 0:
            src.seek(offset + done)
            chunk = src.read(min(length - done, 1 << 24))
            if not chunk:
                raise BadExternalData(f"{source} ends before byte {offset + length}")
            out.write(chunk)
            out.flush()
            n = len(chunk)
        done += n
    out.seek(0, os.SEEK_END)


_INLINE_MAX = 1024   # tensors smaller than this stay inside the .onnx file


def write_model_and_data(model: onnx.ModelProto, model_path: Path, data_name: str, progress=None,
                         adopt: str | None = None) -> list:
    """model_path and its data file `data_name` beside it: external tensors' bytes copied from their files as
    ranges, big inline tensors' bytes moved out while the proto is serialized; afterwards every tensor is as it was
    (external ones pointing at their old files again). adopt: a spill file in the same folder that becomes the data
    file when it holds mostly live tensors: those stay where they are (written once), the rest is appended.
    Returns [(tensor, offset, length)] of the external ones, so that they can be pointed at the written file
    (repoint) once it is in place. progress(advance, total): once per tensor (onnxmorph.progress's bars)."""
    restore, placed = [], []
    sources: dict = {}
    tensors = list(all_tensors(model))
    data_path = model_path.parent / data_name
    adopted = adopt is not None and _mostly_live(tensors, adopt)
    if adopted:
        os.replace(adopt, data_path)
    try:
        # r+b, not ab: the kernel's copy_file_range refuses a file opened for appending (EBADF)
        with open(data_path, "r+b" if adopted else "wb") as data:
            data.seek(0, os.SEEK_END)
            for k, tensor in enumerate(tensors):
                external = is_external(tensor)
                if external:
                    info = external_info(tensor)
                    length = int(info.get("length", 0) or 0)
                else:   # the size without copying the bytes out of the proto
                    length = element_bytes(tensor) if tensor.HasField("raw_data") else 0
                    length = len(tensor.raw_data) if length is None else length
                if progress:
                    progress(1, None if k else len(tensors))
                if not external and length < _INLINE_MAX:
                    continue
                if adopted and external and info["location"] == adopt:   # already in the data file
                    offset = int(info.get("offset", 0))
                    restore.append((tensor, {**info, "location": str(data_path.resolve())}, None))
                    placed.append((tensor, offset, length))
                    set_external(tensor, data_name, offset, length)
                    continue
                offset = data.tell()
                if length >= ALIGN_FROM and offset % ALIGN:
                    data.write(b"\0" * (ALIGN - offset % ALIGN))
                    offset = data.tell()
                if external:
                    _copy_range(info["location"], int(info.get("offset", 0)), length, data, sources)
                    restore.append((tensor, info, None))
                    placed.append((tensor, offset, length))
                else:
                    raw = tensor.raw_data
                    data.write(raw)
                    restore.append((tensor, None, raw))
                set_external(tensor, data_name, offset, length)
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
    finally:
        for f in sources.values():
            f.close()
        for tensor, info, raw in restore:
            if info is not None:
                set_external(tensor, info["location"], int(info.get("offset", 0)), int(info.get("length", 0) or 0))
            else:
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = raw
    return placed


def _mostly_live(tensors, path: str) -> bool:
    """Whether the tensors still using file `path` hold at least 90% of it (a spill file worth keeping as it is)."""
    if not os.path.exists(path):
        return False
    live = sum(int(external_info(t).get("length", 0) or 0) for t in tensors
               if is_external(t) and external_info(t).get("location") == path)
    size = os.path.getsize(path)
    return size > 0 and live >= 0.9 * size


def repoint(placed: list, data_path: Path) -> None:
    """Point the tensors write_model_and_data placed at the data file where it now lies (absolute path)."""
    location = str(Path(data_path).resolve())
    for tensor, offset, length in placed:
        set_external(tensor, location, offset, length)
