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

The inputs are the ones onnxmorph/feeds.py builds to fit the graph (KV caches from a prefix run of the parent); the
parent's floor is measured in verify_floor.py.
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

import numpy as np
import onnx

from .errors import UsageError, one_line
from .feeds import (Feeder, _real_inputs, cache_pairs, child_outputs, describe_runs, graph_of,  # noqa: F401
                    make_inputs, parent_part, parent_samples)
from .graph.kv_cache import cache_output_names
from .graph.model_io import load_model, needs_external_data, serialize_for_runtime
from .graph.precision import HALF, NP_FLOATS, model_precision, type_name, upcast
from .graph.shapes import light_model
from .verify_floor import float32 as _float32, parent_floor, resolution
from .verify_report import (DEFAULT_ATOL, DEFAULT_RTOL, FLOOR_MULTIPLE, OutputComparison, VerifyReport,  # noqa: F401
                            compare as _compare)

DEFAULT_SAMPLES = 3


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
    samples: list = None         # feeds.Sample per run: its plan, feed and prefix (the caches' source)
    feeder: object = None        # the Feeder that built them (the inputs as the parent declares them)
    caches: dict = None          # past_key_values input -> present output
    inputs: list = None          # what was fed, as the report says it (feeds.describe_runs)


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
                              upcast=measured.upcast, inputs=list(measured.inputs))
        child_runs = _run_child(report, child, chosen, workdir, measured, shapes)
    if child_runs is None:
        report.passed = False
        return report
    caches = cache_output_names(measured.feeder.names, measured.out_names)
    grown = set()
    for i, name in enumerate(measured.out_names):
        ours = [r[i] for r in measured.runs]
        theirs = [parent_part(p, c[i], name in caches) for p, c in zip(ours, child_runs)]
        if any(np.shape(t) != np.shape(c[i]) for t, c in zip(theirs, child_runs)):
            grown.add(name)
        odd = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if np.shape(a) != np.shape(b)), None)
        if odd is not None:   # a sample whose shapes differ fails on its own (never broadcast)
            ours, theirs = ours[odd:odd + 1], theirs[odd:odd + 1]
        floor_abs = measured.floor_abs[i]
        comp = _compare(name, ours, theirs, atol, rtol, floor_abs if tolerance == "calibrated" else None)
        if tolerance == "fixed":
            comp.floor = floor_abs / comp.scale if comp.scale > 0 else 0.0
        report.outputs.append(comp)
        report.passed = report.passed and comp.passed
    if grown:
        report.inputs.append(f"cache outputs that grew ({', '.join(sorted(grown))}): compared on the parent's "
                             "part (its heads come first); their grown part feeds the child's next step")
    return report


def _session_feed(feed: dict, types: dict, upcast_run: bool) -> dict:
    """A feed as a session takes it: half-precision inputs in their type (drawn in float32), unless the model runs
    as its float32 upcast."""
    if upcast_run:
        return _float32(feed)
    return {k: v.astype(NP_FLOATS[types[k]]) if types.get(k) in HALF else v for k, v in feed.items()}


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
    measured.feeder = feeder = Feeder(_float_interface(interface), parent_model or graph_of(parent), shapes)
    measured.out_names = out_names = [o.name for o in parent_sess.get_outputs()]
    measured.caches = caches = cache_pairs(feeder.names, out_names)
    out_types = [o.type.tensor_type.elem_type for o in parent_model.graph.output] if measured.upcast else \
        [_ORT_TYPES.get(o.type, 0) for o in parent_sess.get_outputs()]
    measured.provider = parent_sess.get_providers()[0]
    with progress.stage("verify: running the parent", samples) as bar:
        runs, fallback, error = _parent_runs(parent_sess, feeder, caches, out_names, samples, seed, bar,
                                             lambda feed: _session_feed(feed, types, bool(measured.upcast)))
    del parent_sess
    measured.samples, measured.inputs = runs, describe_runs(feeder, runs, fallback, error)
    measured.feeds = [_session_feed(s.feed, types, bool(measured.upcast)) for s in runs]
    measured.runs = [s.outputs for s in runs]
    feeds = [_session_feed(s.feed, types, False) for s in runs]
    floor_abs, measured.floor_method = parent_floor(measured, parent, parent_model, feeds, [_float32(f) for f in feeds],
                                                    _session, chosen, workdir)
    measured.floor_abs = [max(f, resolution([r[i] for r in measured.runs], t))
                          for i, (f, t) in enumerate(zip(floor_abs, out_types))]
    held = sum(np.asarray(v).nbytes for run in measured.runs for v in run) + \
        sum(np.asarray(v).nbytes for feed in measured.feeds for v in feed.values())
    return measured, not external and held <= _KEEP_BYTES


def _parent_runs(session, feeder, caches, out_names, samples, seed, bar, typed):
    """The parent's runs (feeds.parent_samples); when it runs on no inputs onnxmorph can make, one line that
    says so and suggests --input-shape."""
    try:
        runs, fallback, error = parent_samples(lambda feed: session.run(out_names, typed(feed)), feeder, caches,
                                               out_names, samples, seed)
    except UsageError:
        raise
    except Exception as exc:
        made = feeder.plan(past=0).describe()
        raise UsageError(f"ONNX Runtime cannot run the parent on the inputs onnxmorph made ({made}): "
                         f"{one_line(exc)}; give the input shapes with --input-shape NAME:DIMS (inputs: "
                         f"{_listing(feeder)})") from None
    bar.update(samples)
    return runs, fallback, error


def _listing(feeder) -> str:
    """The inputs as declared, NAME: dims ('?' for unnamed dynamic ones)."""
    return "; ".join(f"{name}: {'x'.join(str(d) if d is not None else '?' for d in declared) or 'scalar'}"
                     for name, _, declared in feeder.inputs) or "none"


def _run_child(report, child, chosen, workdir, measured, shapes):
    """The child's runs on the parent's samples (outputs in the parent's order), or None with report.message
    saying why there are none. Its caches: the parent's values, and what the child computes where it has more
    (feeds.child_outputs)."""
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
    child_interface = child_model if child_model is not None else (
        child if isinstance(child, onnx.ModelProto) else _interface(child_sess))
    child_feeder = Feeder(_float_interface(child_interface), None,
                          {k: v for k, v in shapes.items() if k not in measured.caches})
    child_out = [o.name for o in child_sess.get_outputs()]
    child_caches = cache_pairs(child_feeder.names, child_out)
    parent_inputs, child_inputs = set(measured.feeder.names), set(child_feeder.names)
    extra = child_inputs - parent_inputs - set(child_caches)   # a new layer's caches may be new inputs
    if parent_inputs - child_inputs or extra:
        raise UsageError(f"parent and child inputs differ: {sorted(parent_inputs)} vs {sorted(child_inputs)}")
    parent_types = measured.input_types
    child_types = _input_types(child_interface)
    differ = [f"{n} is {type_name(parent_types[n])} in the parent and {type_name(child_types[n])} in the child"
              for n in sorted(parent_types) if child_types.get(n) != parent_types[n]]
    if differ:
        raise UsageError(f"parent and child inputs differ in type: {'; '.join(differ)} (verify feeds both the same "
                         "inputs: compare models with the same input types)")
    report.child_provider = child_sess.get_providers()[0]
    missing = [n for n in measured.out_names if n not in child_out]
    if missing:
        report.message = f"child lacks outputs {missing}"
        return None
    runs = []

    def run(feed):
        return child_sess.run(child_out, _session_feed(feed, child_types, bool(report.upcast)))
    with progress.stage("verify: running the child", len(measured.samples)) as bar:
        for sample in measured.samples:
            try:
                outputs = child_outputs(run, child_feeder, child_caches, child_out, sample)
            except UsageError:
                raise
            except Exception as exc:
                report.message = f"child failed to run: {one_line(exc)}"
                return None
            runs.append([outputs[n] for n in measured.out_names])
            bar.update(1)
    return runs


def _run(session, out_names, feed, bar=None, parent: bool = True):
    try:
        values = session.run(out_names, feed)
    except Exception as exc:
        if parent:
            raise UsageError(f"ONNX Runtime cannot run the parent: {one_line(exc)}") from None
        raise RuntimeError(str(exc)) from None
    if bar is not None:
        bar.update(1)
    return values
