"""Function preservation, measured: run parent and child on ONNX Runtime with the same inputs.

An output passes when its max absolute error is at most `atol` OR its max error relative to the output's scale
(the parent's max |value|) is at most `rtol`. The defaults hold the float32 rounding of an exact morph and
reject a 1e-3 relative perturbation of one layer.
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
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .errors import UsageError, one_line
from .feeds import _real_inputs, make_inputs  # noqa: F401  (onnxmorph.torch reads them here)
from .graph.kv_cache import cache_output_names
from .graph.model_io import load_model, needs_external_data, serialize_for_runtime
from .feeds import Feeder, cache_pairs, child_outputs, describe_runs, graph_of, parent_part, parent_samples

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 0.0
DEFAULT_SAMPLES = 3


@dataclass
class OutputComparison:
    name: str
    parent_shape: list
    child_shape: list
    max_abs: float
    max_rel: float      # max_abs / scale
    scale: float        # max |parent value|
    passed: bool

    def line(self) -> str:
        shapes = f"{tuple(self.parent_shape)}" if self.parent_shape == self.child_shape else \
            f"{tuple(self.parent_shape)} != {tuple(self.child_shape)}"
        return (f"output {self.name}: shape {shapes}; max abs {self.max_abs:.3e}, max rel {self.max_rel:.3e} "
                f"(scale {self.scale:.3g})  {'PASSED' if self.passed else 'FAILED'}")


@dataclass
class VerifyReport:
    passed: bool
    parent_provider: str
    child_provider: str
    samples: int
    atol: float
    rtol: float
    outputs: list[OutputComparison] = field(default_factory=list)
    message: str = ""
    inputs: list[str] = field(default_factory=list)   # what was fed: dims per sample, value ranges (feeds.py)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def lines(self) -> list[str]:
        out = list(self.inputs) + [o.line() for o in self.outputs]
        if self.message:
            out.append(self.message)
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(f"{verdict}: max rel error {self.max_rel:.3e} (rtol {self.rtol:g}, atol {self.atol:g}) over "
                   f"{self.samples} samples on {self.child_provider}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_rel"], d["max_abs"] = self.max_rel, self.max_abs
        return d


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


def _session(model, provider: str, workdir: str, what: str):
    """An ORT session on a ModelProto, serialized bytes, or a path (read by ORT itself, external data too)."""
    ort = onnxruntime()
    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
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


def _compare(name, parent_values, child_values, atol, rtol) -> OutputComparison:
    p_shape, c_shape = list(parent_values[0].shape), list(child_values[0].shape)
    if p_shape != c_shape:
        return OutputComparison(name, p_shape, c_shape, float("inf"), float("inf"), 0.0, False)
    max_abs, scale = 0.0, 0.0
    for p, c in zip(parent_values, child_values):
        p = np.asarray(p, dtype=np.float64)
        c = np.asarray(c, dtype=np.float64)
        both_nan = np.isnan(p) & np.isnan(c)
        diff = np.where(both_nan, 0.0, np.abs(p - c))
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            finite = np.abs(p[np.isfinite(p)])
            scale = max(scale, float(finite.max()) if finite.size else 0.0)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputComparison(name, p_shape, c_shape, max_abs, max_rel, scale, max_abs <= atol or max_rel <= rtol)


_ORT_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(double)": onnx.TensorProto.DOUBLE,
              "tensor(float16)": onnx.TensorProto.FLOAT16, "tensor(int64)": onnx.TensorProto.INT64,
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


def verify(parent, child, provider: str = "auto", atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           samples: int = DEFAULT_SAMPLES, seed: int = 0, input_shape=None) -> VerifyReport:
    """Run both models on the same seeded inputs and compare every output.

    parent and child: ModelProtos, serialized bytes, or paths. Paths go to ONNX Runtime as they are (external
    data included), so the weights are held once, by ORT, not again as Python protobufs."""
    from . import progress
    parent, child = _path_or_proto(parent), _path_or_proto(child)
    if samples < 1:
        raise UsageError("--samples must be at least 1")
    chosen = resolve_provider(provider)
    shapes = parse_input_shapes(input_shape)
    with tempfile.TemporaryDirectory(prefix="onnxmorph-verify-") as workdir:
        try:
            with progress.stage("verify: loading the parent in ONNX Runtime"):
                parent_sess = _session(parent, chosen, workdir, "parent")
        except _LoadError as exc:
            if not isinstance(parent, onnx.ModelProto):  # a file ORT rejects: say what onnx says about it
                # (and inputs too big to feed, which ORT reports as a shape error of some node)
                make_inputs(_as_proto(parent), 1, seed, shapes)
            raise UsageError(str(exc)) from None
        interface = parent if isinstance(parent, onnx.ModelProto) else _interface(parent_sess)
        check_input_shapes(interface, shapes)
        feeder = Feeder(interface, graph_of(parent), shapes)
        out_names = [o.name for o in parent_sess.get_outputs()]
        caches = cache_pairs(feeder.names, out_names)
        parent_provider = parent_sess.get_providers()[0]
        # The parent runs first and its session is released before the child's loads: one model's weights
        # in ONNX Runtime at a time.
        with progress.stage("verify: running the parent", samples) as bar:
            runs, fallback, error = _parent_runs(parent_sess, feeder, caches, out_names, samples, seed, bar)
        del parent_sess
        try:
            with progress.stage("verify: loading the child in ONNX Runtime"):
                child_sess = _session(child, chosen, workdir, "child")
        except _LoadError as exc:
            if isinstance(child, str):  # not an ONNX file at all is a usage error, not a failed morph
                _as_proto(child)
            return VerifyReport(False, parent_provider, "none", samples, atol, rtol, message=str(exc))
        child_feeder = Feeder(child if isinstance(child, onnx.ModelProto) else _interface(child_sess), None,
                              {k: v for k, v in shapes.items() if k not in caches})
        child_out = [o.name for o in child_sess.get_outputs()]
        child_caches = cache_pairs(child_feeder.names, child_out)
        parent_inputs, child_inputs = set(feeder.names), set(child_feeder.names)
        extra = child_inputs - parent_inputs - set(child_caches)   # a new layer's caches may be new inputs
        if parent_inputs - child_inputs or extra:
            raise UsageError(f"parent and child inputs differ: {sorted(parent_inputs)} vs {sorted(child_inputs)}")
        report = VerifyReport(True, parent_provider, child_sess.get_providers()[0], samples, atol, rtol,
                              inputs=describe_runs(feeder, runs, fallback, error))
        missing = [n for n in out_names if n not in child_out]
        if missing:
            report.passed = False
            report.message = f"child lacks outputs {missing}"
            return report
        child_runs = []
        with progress.stage("verify: running the child", samples) as bar:
            for sample in runs:
                try:
                    child_runs.append(child_outputs(lambda feed: _run(child_sess, child_out, feed),
                                                    child_feeder, child_caches, child_out, sample))
                except RuntimeError as exc:
                    report.passed = False
                    report.message = f"child failed to run: {one_line(exc)}"
                    return report
                bar.update(1)
    grown = set()
    for i, name in enumerate(out_names):
        is_cache = name in cache_output_names(feeder.names, out_names)
        theirs = [parent_part(s.outputs[i], c[name], is_cache) for s, c in zip(runs, child_runs)]
        if any(np.shape(t) != np.shape(c[name]) for t, c in zip(theirs, child_runs)):
            grown.add(name)
        ours = [s.outputs[i] for s in runs]
        odd = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if np.shape(a) != np.shape(b)), None)
        if odd is not None:   # a sample whose shapes differ fails on its own (never broadcast)
            ours, theirs = ours[odd:odd + 1], theirs[odd:odd + 1]
        comp = _compare(name, ours, theirs, atol, rtol)
        report.outputs.append(comp)
        report.passed = report.passed and comp.passed
    if grown:
        report.inputs.append(f"cache outputs that grew ({', '.join(sorted(grown))}): compared on the parent's "
                             "part (its heads come first); their grown part feeds the child's next step")
    return report


def _parent_runs(session, feeder, caches, out_names, samples, seed, bar):
    """The parent's runs (feeds.parent_samples); when it runs on no inputs onnxmorph can make, one line that
    says so and suggests --input-shape."""
    try:
        runs, fallback, error = parent_samples(lambda feed: session.run(out_names, feed), feeder, caches, out_names,
                                               samples, seed)
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


def _run(session, out_names, feed):
    try:
        return session.run(out_names, feed)
    except Exception as exc:
        raise RuntimeError(str(exc)) from None
