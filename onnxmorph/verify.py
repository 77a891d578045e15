"""Function preservation, measured: run parent and child on ONNX Runtime with the same inputs.

By default the tolerance is calibrated to the parent's own numerical floor, measured on the same inputs: how far
the parent's outputs move when only its rounding changes (a float32 or float64 parent: ONNX Runtime's graph
optimisations on against off; a float16 or bfloat16 parent: the parent as it is, and the parent with every
tensor it stores in half precision rounded to it, against its float32 upcast; at least one unit in the last place
of the output's own type at its scale). An output passes when its max
error relative to its scale (the parent's max |value|) is at most FLOOR_MULTIPLE times that floor, and never
needs to be below DEFAULT_RTOL, the float32 rounding of an exact morph. Given --rtol or --atol, an output passes
when its max abs error is at most atol OR its max rel error at most rtol, as given. A model the runtime has no
kernels for (bfloat16 on the CPU) runs, parent and child, as its float32 upcast, and the report says so.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx

from .errors import UsageError, one_line
from .graph.model_io import load_model, needs_external_data, serialize_for_runtime
from .graph.precision import HALF, NP_FLOATS, model_precision, rounded_upcast, type_name, upcast
from .graph.shapes import light_model

from .verify_report import (DEFAULT_ATOL, DEFAULT_RTOL, FLOOR_MULTIPLE, OutputComparison, VerifyReport,  # noqa: F401
                            compare as _compare, max_abs_and_scale as _max_abs_and_scale)

DEFAULT_SAMPLES = 3
_MAX_INPUT_ELEMENTS = 2**28  # one sample of one input: 1 GiB of float32

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


@contextlib.contextmanager
def _quiet_stderr():
    """Keep ONNX Runtime's native log lines (written straight to fd 2) away from the user."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _cuda_driver_has_device() -> bool:
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return False
        return count.value > 0
    return False


_PROBE = r"""
import onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T
try:
    ort.preload_dlls()
except Exception:
    pass
g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "probe", [h.make_tensor_value_info("x", T.FLOAT, [1])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1])])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)]); m.ir_version = 7
s = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider"])
print("CUDA-OK" if s.get_providers()[0] == "CUDAExecutionProvider" else "NO-CUDA")
"""


_BROKEN_ORT = ("the onnxruntime module is broken here ({why}); this happens when onnxruntime and onnxruntime-gpu were "
               "both installed and one was removed: reinstall one of them, e.g. pip uninstall -y onnxruntime "
               "onnxruntime-gpu && pip install onnxruntime-gpu")


def onnxruntime():
    """The onnxruntime module, or one line saying how to repair a broken install."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UsageError(_BROKEN_ORT.format(why=f"import fails: {one_line(exc)}")) from None
    missing = [n for n in ("get_available_providers", "InferenceSession", "SessionOptions") if not hasattr(ort, n)]
    if missing:
        raise UsageError(_BROKEN_ORT.format(why=f"it has no {missing[0]}")) from None
    return ort


@functools.lru_cache(maxsize=1)
def cuda_works() -> bool:
    """Whether ONNX Runtime's CUDA provider really runs here (checked once, in a child process)."""
    ort = onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    if not _cuda_driver_has_device():
        return False
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "CUDA-OK" in res.stdout


def resolve_provider(provider: str) -> str:
    provider = (provider or "auto").lower()
    if provider not in ("auto", "cuda", "cpu"):
        raise UsageError(f"unknown provider {provider!r}: use auto, cuda or cpu")
    if provider == "cpu":
        return "cpu"
    if cuda_works():
        return "cuda"
    if provider == "cuda":
        raise UsageError("--provider cuda: ONNX Runtime's CUDA provider does not work on this machine")
    return "cpu"


class _LoadError(Exception):
    pass


def _as_proto(source) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes):
        return onnx.ModelProto.FromString(source)
    return load_model(source)


def _session(model, provider: str, workdir: str, what: str, optimize: bool = True):
    """An ORT session on a ModelProto, serialized bytes, or a path (read by ORT itself, external data too).
    optimize=False turns ORT's graph optimisations off (a second rounding of the same function)."""
    ort = onnxruntime()
    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # No pre-packed copies of the weights: a session starts in a fraction of the time (0.1 s instead of 6 s for
    # 0.5 GB of MatMul weights here) for the few runs verify makes; parent and child run the same kernels.
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if provider == "cuda":
        with _quiet_stderr():
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    for attempt in range(2):
        payload = serialize_for_runtime(model, tempfile.mkdtemp(dir=workdir)) \
            if isinstance(model, onnx.ModelProto) else model
        try:
            with _quiet_stderr():
                return ort.InferenceSession(payload, opts, providers=providers)
        except Exception as exc:
            text = str(exc)
            # A newer onnx writes IR versions this ONNX Runtime does not know yet; the ops are what matter, so
            # run a copy stamped with the newest IR version it supports (the saved child keeps its own).
            newest = re.search(r"max supported IR version: (\d+)", text)
            if attempt == 0 and newest:
                proto = _as_proto(model)
                if proto.ir_version <= int(newest.group(1)):
                    raise _LoadError(f"ONNX Runtime cannot load the {what}: {one_line(text)}") from None
                model = proto if proto is not model else (
                    onnx.ModelProto.FromString(model.SerializeToString()) if not needs_external_data(model)
                    else copy.deepcopy(model))
                model.ir_version = int(newest.group(1))
                continue
            raise _LoadError(f"ONNX Runtime cannot load the {what}: {one_line(text) or type(exc).__name__}") from None


def parse_input_shapes(specs) -> dict[str, list[int]]:
    """'name:1x3x224x224' strings (or a dict) to {name: [1, 3, 224, 224]}."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        return {k: [int(v) for v in s] for k, s in specs.items()}
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise UsageError(f"bad --input-shape {spec!r}: expected NAME:1x3x224x224") from None
    return shapes


def _real_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_input_shapes(model: onnx.ModelProto, shapes: dict) -> None:
    """Each --input-shape names a real input and fits its rank and fixed dims; the message lists the inputs."""
    inputs = {i.name: i for i in _real_inputs(model)}

    def declared(name):
        dims = inputs[name].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in dims]

    listing = "; ".join(f"{n}: {'x'.join(map(str, declared(n))) or 'scalar'}" for n in inputs) or "none"
    for name, shape in shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape {name}: the model has no input {name!r} (inputs: {listing})")
        want = declared(name)
        given = "x".join(map(str, shape))
        if len(shape) != len(want):
            raise UsageError(f"--input-shape {name}:{given} has {len(shape)} dims; {name} has {len(want)} "
                             f"(inputs: {listing})")
        if any(d < 1 for d in shape):
            raise UsageError(f"--input-shape {name}:{given}: dims must be positive")
        fixed = [(i, w, g) for i, (w, g) in enumerate(zip(want, shape)) if isinstance(w, int) and w != g]
        if fixed:
            i, w, g = fixed[0]
            raise UsageError(f"--input-shape {name}:{given}: dim {i} of {name} is fixed at {w}, not {g} "
                             f"(inputs: {listing})")


def make_inputs(model: onnx.ModelProto, samples: int, seed: int, input_shapes: dict | None = None):
    """Seeded random feeds: N(0,1) for floats, small non-negative ints (safe as indices), random bools."""
    input_shapes = input_shapes or {}
    rng = np.random.default_rng(seed)
    feeds = [{} for _ in range(samples)]
    for inp in _real_inputs(model):
        ttype = inp.type.tensor_type
        dtype = _NP_TYPES.get(ttype.elem_type)
        if dtype is None:
            raise UsageError(f"input {inp.name!r} has an element type onnxmorph cannot feed ({ttype.elem_type})")
        if inp.name in input_shapes:
            shape = input_shapes[inp.name]
        else:
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in ttype.shape.dim]
        if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.float64)) > _MAX_INPUT_ELEMENTS:
            raise UsageError(f"input {inp.name!r} has shape {list(shape)}: too big to feed (over "
                             f"{_MAX_INPUT_ELEMENTS:,} values); give a smaller one with --input-shape")
        for feed in feeds:
            if np.issubdtype(dtype, np.floating):
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[inp.name] = rng.random(shape) < 0.5
            else:
                feed[inp.name] = rng.integers(0, 3, size=shape).astype(dtype)
    return feeds


_ORT_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(double)": onnx.TensorProto.DOUBLE,
              "tensor(float16)": onnx.TensorProto.FLOAT16, "tensor(bfloat16)": onnx.TensorProto.BFLOAT16,
              "tensor(int64)": onnx.TensorProto.INT64,
              "tensor(int32)": onnx.TensorProto.INT32, "tensor(int8)": onnx.TensorProto.INT8,
              "tensor(uint8)": onnx.TensorProto.UINT8, "tensor(bool)": onnx.TensorProto.BOOL}


def _interface(session) -> onnx.ModelProto:
    """The inputs of a model as ORT sees them, as a graph-only ModelProto (no weights parsed in Python)."""
    model = onnx.ModelProto()
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in arg.shape]
        model.graph.input.append(onnx.helper.make_tensor_value_info(arg.name, _ORT_TYPES.get(arg.type, 0), dims))
    return model


def _path_or_proto(source):
    if isinstance(source, (onnx.ModelProto, bytes)):
        return source
    path = str(source)
    _check_path(path)
    return path


def _check_path(path: str) -> None:
    """The usual one-line errors for a path that is no model, without parsing it in Python."""
    from pathlib import Path
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file: {p}")
    if p.is_dir():
        raise UsageError(f"is a directory, not an ONNX file: {p}")


def _graph_of(source) -> onnx.ModelProto:
    """The model without its external data: enough to read its types."""
    if isinstance(source, (onnx.ModelProto, bytes)):
        return _as_proto(source)
    try:
        return onnx.load(source, load_external_data=False)
    except Exception:  # not an ONNX file: ORT's load (and then load_model) says so
        return onnx.ModelProto()


def _input_types(model: onnx.ModelProto) -> dict[str, int]:
    return {i.name: i.type.tensor_type.elem_type for i in _real_inputs(model)}


def _float_interface(interface: onnx.ModelProto) -> onnx.ModelProto:
    """The inputs alone, half-precision ones declared float32: make_inputs draws them in float32."""
    model = onnx.ModelProto()
    for inp in _real_inputs(interface):
        model.graph.input.append(inp)
        if inp.type.tensor_type.elem_type in HALF:
            model.graph.input[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model


def _no_kernel(exc: Exception) -> str:
    """The op ORT has no kernel for, from its load error ("" when the load failed otherwise)."""
    text = str(exc)
    found = re.search(r"Could not find an implementation for (\S+) node with name '([^']*)'", text)
    if found:
        return f"no {found.group(1)} kernel (node {found.group(2)!r})"
    return "no kernel for one of its ops" if "NOT_IMPLEMENTED" in text else ""


def _float32(feed: dict) -> dict:
    return {k: v.astype(np.float32) if v.dtype in (NP_FLOATS[t] for t in HALF) else v for k, v in feed.items()}


def _deviation(runs_a, runs_b) -> list[float]:
    """Per output, the max abs difference between two runs of the same model over the samples."""
    return [_max_abs_and_scale([a[i] for a in runs_a], [b[i] for b in runs_b])[0] for i in range(len(runs_a[0]))]


@dataclass
class _MeasuredParent:
    """What verify learns of a parent before the child runs: its feeds, outputs and floor."""
    precision: str
    provider: str
    upcast: str                  # why it runs as its float32 upcast ("" when it runs as it is)
    floor_method: str
    input_types: dict
    out_names: list
    feeds: list                  # as the runs that the child's are compared with take them
    runs: list
    floor_abs: list              # per output, max abs


# The last parent measured, by file identity (path, inode, mtime, ctime, size) and the verify options: several
# morphs of one parent file in one process (a sweep, a script) measure it once. Not kept: models with external
# data, and feeds and outputs over _KEEP_BYTES.
_LAST_PARENT: dict = {}
_KEEP_BYTES = 256 * 2**20


def _parent_key(parent, chosen, samples, seed, shapes):
    if not isinstance(parent, str):
        return None
    try:
        st = os.stat(parent)
    except OSError:
        return None
    return (os.path.realpath(parent), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, chosen, samples, seed,
            repr(sorted(shapes.items())))


def verify(parent, child, provider: str = "auto", atol: float | None = None, rtol: float | None = None,
           samples: int = DEFAULT_SAMPLES, seed: int = 0, input_shape=None) -> VerifyReport:
    """Run both models on the same seeded inputs and compare every output against the parent's floor.

    parent and child: ModelProtos, serialized bytes, or paths. Paths of float32 models go to ONNX Runtime as
    they are (external data included), so the weights are held once, by ORT, not again as Python protobufs; a
    half-precision parent is read in Python too (its float32 upcast is built from it). atol/rtol: None for the
    calibrated limit; either given, the fixed rule with the other at its default. One session at a time."""
    parent, child = _path_or_proto(parent), _path_or_proto(child)
    if samples < 1:
        raise UsageError("--samples must be at least 1")
    tolerance = "calibrated" if atol is None and rtol is None else "fixed"
    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    chosen = resolve_provider(provider)
    shapes = parse_input_shapes(input_shape)
    key = _parent_key(parent, chosen, samples, seed, shapes)
    with tempfile.TemporaryDirectory(prefix="onnxmorph-verify-") as workdir:
        measured = _LAST_PARENT.get(key) if key is not None else None
        if measured is None:
            measured, keep = _measure_parent(parent, chosen, samples, seed, shapes, workdir)
            _LAST_PARENT.clear()
            if key is not None and keep:
                _LAST_PARENT[key] = measured
        report = VerifyReport(True, measured.provider, "none", samples, atol, rtol, tolerance=tolerance,
                              precision=measured.precision, floor_method=measured.floor_method,
                              upcast=measured.upcast)
        child_runs = _run_child(report, child, chosen, workdir, measured.input_types, measured.out_names,
                                measured.feeds)
    if child_runs is None:
        report.passed = False
        return report
    for i, name in enumerate(measured.out_names):
        floor_abs = measured.floor_abs[i]
        comp = _compare(name, [r[i] for r in measured.runs], [r[i] for r in child_runs], atol, rtol,
                        floor_abs if tolerance == "calibrated" else None)
        if tolerance == "fixed":
            comp.floor = floor_abs / comp.scale if comp.scale > 0 else 0.0
        report.outputs.append(comp)
        report.passed = report.passed and comp.passed
    return report


def _measure_parent(parent, chosen, samples, seed, shapes, workdir) -> tuple[_MeasuredParent, bool]:
    """The parent's feeds, runs and floor, and whether they may be kept for its next verify (not with external
    data, which may change without the .onnx file changing). The parent runs first and its session is released
    before the next loads (one model's weights in ONNX Runtime at a time), then the runs that measure its floor."""
    from . import progress
    graph = _graph_of(parent)
    precision = model_precision(graph)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    del graph   # a float32 file's weights are held by ORT alone
    half = precision in HALF
    parent_model = _as_proto(parent) if half else None   # the upcasts are built from it
    measured = _MeasuredParent(type_name(precision), "none", "", "", {}, [], [], [], [])
    try:
        with progress.stage("verify: loading the parent in ONNX Runtime"):
            parent_sess = _session(parent, chosen, workdir, "parent")
    except _LoadError as exc:
        why = _no_kernel(exc) if half else ""
        if not why:
            if not isinstance(parent, onnx.ModelProto):  # a file ORT rejects: say what onnx says about it
                # (and inputs too big to feed, which ORT reports as a shape error of some node)
                make_inputs(_as_proto(parent), 1, seed, shapes)
            raise UsageError(str(exc)) from None
        measured.upcast = f"ONNX Runtime's {chosen.upper()} provider has {why} for this {measured.precision} model"
        with progress.stage("verify: loading the parent's float32 upcast in ONNX Runtime"):
            parent_sess = _session(upcast(parent_model), chosen, workdir, "parent's float32 upcast")
    interface = parent_model if parent_model is not None else (
        parent if isinstance(parent, onnx.ModelProto) else _interface(parent_sess))
    check_input_shapes(interface, shapes)
    measured.input_types = types = _input_types(interface)
    feeds = make_inputs(_float_interface(interface), samples, seed, shapes)
    feeds = [{k: v.astype(NP_FLOATS[types[k]]) if types.get(k) in HALF else v for k, v in feed.items()}
             for feed in feeds]
    parent_inputs = {i.name for i in parent_sess.get_inputs()}
    measured.out_names = out_names = [o.name for o in parent_sess.get_outputs()]
    out_types = [o.type.tensor_type.elem_type for o in parent_model.graph.output] if measured.upcast else \
        [_ORT_TYPES.get(o.type, 0) for o in parent_sess.get_outputs()]
    measured.provider = parent_sess.get_providers()[0]
    feeds = [{k: v for k, v in feed.items() if k in parent_inputs} for feed in feeds]
    upcast_feeds = [_float32(feed) for feed in feeds]
    measured.feeds = upcast_feeds if measured.upcast else feeds
    with progress.stage("verify: running the parent", len(feeds)) as bar:
        measured.runs = [_run(parent_sess, out_names, feed, bar) for feed in measured.feeds]
    del parent_sess
    floor_abs = _parent_floor(measured, parent, parent_model, feeds, upcast_feeds, chosen, workdir)
    measured.floor_abs = [max(f, _resolution([r[i] for r in measured.runs], t))
                          for i, (f, t) in enumerate(zip(floor_abs, out_types))]
    held = sum(np.asarray(v).nbytes for run in measured.runs for v in run) + \
        sum(np.asarray(v).nbytes for feed in measured.feeds for v in feed.values())
    return measured, not external and held <= _KEEP_BYTES


def _resolution(values, elem_type) -> float:
    """One unit in the last place of a float output type at the output's scale: an output stored in half
    precision moves by at least that whenever a rounding flips."""
    if elem_type not in NP_FLOATS:
        return 0.0
    scale = _max_abs_and_scale(values, values)[1]
    if not scale > 0 or not np.isfinite(scale):
        return 0.0
    return float(2.0 ** (np.floor(np.log2(scale)) - ml_dtypes.finfo(NP_FLOATS[elem_type]).nmant))


def _parent_floor(measured, parent, parent_model, feeds, upcast_feeds, chosen, workdir):
    """Per output, how far the parent's outputs move on these inputs when only its rounding changes (module
    docstring), as max abs differences; sets measured.floor_method."""
    from . import progress

    def runs_of(model, what, run_feeds, optimize=True):
        with progress.stage(f"verify: running the parent {what}", len(run_feeds)) as bar:
            sess = _session(model, chosen, workdir, f"parent {what}", optimize=optimize)
            try:
                return [_run(sess, measured.out_names, feed, bar) for feed in run_feeds]
            finally:
                del sess

    if parent_model is None:
        measured.floor_method = "ONNX Runtime's graph optimisations on vs off"
        return _deviation(measured.runs, runs_of(parent, "without graph optimisations", feeds, optimize=False))
    half = measured.precision
    wide = measured.runs if measured.upcast else runs_of(upcast(parent_model), "as its float32 upcast", upcast_feeds)
    rounded = runs_of(rounded_upcast(parent_model), f"with its {half} tensors rounded", upcast_feeds)
    floor = _deviation(rounded, wide)
    if measured.upcast:
        measured.floor_method = f"its float32 upcast with vs without its {half} tensors rounded"
        return floor
    measured.floor_method = f"as it is and with its {half} tensors rounded, vs its float32 upcast"
    return [max(a, b) for a, b in zip(floor, _deviation(measured.runs, wide))]


def _run_child(report, child, chosen, workdir, parent_types, out_names, feeds):
    """The child's runs on the parent's feeds, or None with report.message saying why there are none."""
    from . import progress
    child_model = _as_proto(child) if report.upcast else None
    if child_model is not None:   # it does not run as it is here: its types are checked by ONNX instead
        try:
            onnx.shape_inference.infer_shapes(light_model(child_model), strict_mode=True)
        except Exception as exc:
            report.message = f"the child's types do not check: {one_line(exc)}"
            return None
    try:
        with progress.stage("verify: loading the child in ONNX Runtime"):
            child_sess = _session(upcast(child_model) if child_model is not None else child, chosen, workdir,
                                  "child")
    except _LoadError as exc:
        if isinstance(child, str):  # not an ONNX file at all is a usage error, not a failed morph
            _as_proto(child)
        report.message = str(exc)
        return None
    child_inputs = {i.name for i in child_sess.get_inputs()}
    if set(parent_types) != child_inputs:
        raise UsageError(f"parent and child inputs differ: {sorted(parent_types)} vs {sorted(child_inputs)}")
    child_types = _input_types(child_model) if child_model is not None else _input_types(_interface(child_sess))
    differ = [f"{n} is {type_name(parent_types[n])} in the parent and {type_name(child_types[n])} in the child"
              for n in sorted(parent_types) if child_types.get(n) != parent_types[n]]
    if differ:
        raise UsageError(f"parent and child inputs differ in type: {'; '.join(differ)} (verify feeds both the same "
                         "inputs: compare models with the same input types)")
    report.child_provider = child_sess.get_providers()[0]
    missing = [n for n in out_names if n not in {o.name for o in child_sess.get_outputs()}]
    if missing:
        report.message = f"child lacks outputs {missing}"
        return None
    runs = []
    with progress.stage("verify: running the child", len(feeds)) as bar:
        for feed in feeds:
            try:
                runs.append(_run(child_sess, out_names, feed, bar, parent=False))
            except RuntimeError as exc:
                report.message = f"child failed to run: {one_line(exc)}"
                return None
    return runs


def _run(session, out_names, feed, bar, parent: bool = True):
    try:
        values = session.run(out_names, feed)
    except Exception as exc:
        if parent:
            raise UsageError(f"ONNX Runtime cannot run the parent: {one_line(exc)}") from None
        raise RuntimeError(str(exc)) from None
    bar.update(1)
    return values
