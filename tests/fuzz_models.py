"""A seeded generator of corrupted and hostile ONNX models, and a runner that feeds them to the CLI.

Each case is a path (a file, a directory or a fifo) plus the layer to ask `deepen` for. The runner runs
`inspect` and `deepen` on it in a forked process with a timeout and counts what the contract forbids:
tracebacks, internal errors (exit 4) or crashes, hangs, and inputs modified. Used by tests/test_fuzz.py (a
small run) and benchmarks/fuzz.py (a long one).
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BASES = ["shared_weight", "unnamed_nodes", "dynamic_batch", "constant_weights", "se_block", "conv_shapes",
         "tanh_mlp", "conv_bn_relu", "cifar10_quick", "opset9", "mnist_softmax"]


@dataclass
class Case:
    name: str
    path: Path
    layer: str


# --- mutations of a ModelProto (each returns bytes to write, or None when it does not apply) ---

def _bytes(model):
    return model.SerializeToString()


def m_truncate(model, rng):
    data = _bytes(model)
    return data[:int(rng.integers(0, max(len(data) - 1, 1)))]


def m_bitflip(model, rng):
    data = bytearray(_bytes(model))
    for _ in range(int(rng.integers(1, 20))):
        i = int(rng.integers(0, len(data)))
        data[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def m_garbage(model, rng):
    return [b"", b"\x00" * 64, rng.bytes(int(rng.integers(1, 4096))), b"not an onnx model\n"][int(rng.integers(0, 4))]


def m_wrong_type(model, rng):
    if not model.graph.initializer:
        return None
    t = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    t.data_type = int(rng.choice([TensorProto.STRING, TensorProto.INT8, TensorProto.BOOL, TensorProto.INT64,
                                  TensorProto.COMPLEX64, TensorProto.UNDEFINED, 999]))
    return _bytes(model)


def m_missing_initializer(model, rng):
    if not model.graph.initializer:
        return None
    del model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    return _bytes(model)


def m_cycle(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return None
    i = int(rng.integers(0, len(nodes) - 1))
    nodes[i].input[0] = nodes[-1].output[0]
    return _bytes(model)


def m_self_loop(model, rng):
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    node.input[0] = node.output[0]
    return _bytes(model)


def m_huge_dims(model, rng):
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            d.dim_value = int(rng.choice([2**31, 2**40, 10**12]))
    return _bytes(model)


def m_bad_dims(model, rng):
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            d.dim_value = int(rng.choice([0, -1, -7]))
    return _bytes(model)


def m_initializer_dims(model, rng):
    if not model.graph.initializer:
        return None
    t = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    dims = list(t.dims) or [1]
    dims[int(rng.integers(0, len(dims)))] = int(rng.choice([0, -3, 7, 2**40]))
    del t.dims[:]
    t.dims.extend(dims)
    return _bytes(model)


def m_weight_rank(model, rng):
    """A Conv/Gemm weight of the wrong rank or channel count (raw data consistent with the new dims)."""
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
    inits = {t.name: t for t in model.graph.initializer}
    layers = [n for n in layers if n.input[1] in inits]
    if not layers:
        return None
    t = inits[layers[int(rng.integers(0, len(layers)))].input[1]]
    w = numpy_helper.to_array(t)
    shape = [[w.size], [1] * 6 + [w.size], [w.shape[0] + 1] + list(w.shape[1:])][int(rng.integers(0, 3))]
    t.CopyFrom(numpy_helper.from_array(np.resize(w, shape).astype(w.dtype), t.name))
    return _bytes(model)


def m_dangling(model, rng):
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    node.input.append("does_not_exist") if rng.random() < 0.5 else node.input.__setitem__(0, "nowhere")
    return _bytes(model)


def m_nested(model, rng):
    """Wrap the whole graph in If branches, several levels deep."""
    graph = copy.deepcopy(model.graph)
    depth = int(rng.integers(1, 20))  # protobuf itself stops parsing near 100 levels of messages
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    outputs = [o.name for o in model.graph.output]
    other = helper.make_graph([helper.make_node("Constant", [], [o], value_float=0.0) for o in outputs], "other", [],
                              list(model.graph.output))
    for level in range(depth):
        body = helper.make_graph(list(graph.node), f"b{level}", [], list(graph.output), list(graph.initializer))
        node = helper.make_node("If", ["cond"], outputs, then_branch=body, else_branch=other)
        graph = helper.make_graph([node], f"g{level}", list(model.graph.input), list(model.graph.output), [cond])
    model.graph.CopyFrom(graph)
    return _bytes(model)


def m_bad_opset(model, rng):
    choice = int(rng.integers(0, 4))
    if choice == 0:
        del model.opset_import[:]
    else:
        for op in model.opset_import:
            op.version = [0, 999, -5][choice - 1]
    return _bytes(model)


def m_unknown_domain(model, rng):
    for node in model.graph.node:
        if rng.random() < 0.5:
            node.domain = "com.evil"
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return _bytes(model)


def m_non_float_weights(model, rng):
    dtype = [np.int64, np.float16, np.int8, np.uint8, np.bool_, np.complex64][int(rng.integers(0, 6))]
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype.kind == "f":
            t.CopyFrom(numpy_helper.from_array(w.astype(dtype), t.name))
    return _bytes(model)


def m_empty_graph(model, rng):
    del model.graph.node[:]
    if rng.random() < 0.5:
        del model.graph.output[:]
        del model.graph.input[:]
    return _bytes(model)


def m_duplicate_outputs(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return None
    nodes[1].output[0] = nodes[0].output[0]
    return _bytes(model)


def m_bad_attributes(model, rng):
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "Flatten", "MaxPool", "Reshape")]
    if not convs:
        return None
    node = convs[int(rng.integers(0, len(convs)))]
    name = str(rng.choice(["group", "strides", "pads", "kernel_shape", "dilations", "transB", "axis", "auto_pad"]))
    value = [0, -1, [0, 0], [-3, 2], 1.5, "SAME_WHATEVER", [10**9, 10**9], b"\xff"][int(rng.integers(0, 8))]
    kept = [a for a in node.attribute if a.name != name]
    node.ClearField("attribute")
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(name, value))
    return _bytes(model)


def m_external_data(model, rng):
    """An initializer whose data lives in a missing file, or outside the model's folder."""
    if not model.graph.initializer:
        return None
    t = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    location = str(rng.choice(["missing.bin", "../../../../etc/passwd", "/etc/passwd", "."]))
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(int(rng.integers(0, 9)))),
                       ("length", str(int(rng.choice([4, 2**40]))))):
        e = t.external_data.add()
        e.key, e.value = key, value
    return _bytes(model)


def m_ir_version(model, rng):
    model.ir_version = int(rng.choice([0, 1, 2, 3, 99, 2**40]))
    return _bytes(model)


def m_value_info_lies(model, rng):
    """Declared shapes and types that contradict the graph."""
    for out in model.graph.output:
        out.type.tensor_type.elem_type = int(rng.choice([TensorProto.STRING, TensorProto.INT32]))
        out.type.tensor_type.shape.dim.add().dim_value = 5
    return _bytes(model)


def m_input_type(model, rng):
    for inp in model.graph.input:
        inp.type.tensor_type.elem_type = int(rng.choice([TensorProto.STRING, TensorProto.UNDEFINED,
                                                          TensorProto.COMPLEX128, 77]))
    return _bytes(model)


MUTATIONS = [m_truncate, m_bitflip, m_garbage, m_wrong_type, m_missing_initializer, m_cycle, m_self_loop,
             m_huge_dims, m_bad_dims, m_initializer_dims, m_weight_rank, m_dangling, m_nested, m_bad_opset,
             m_unknown_domain, m_non_float_weights, m_empty_graph, m_duplicate_outputs, m_bad_attributes,
             m_external_data, m_ir_version, m_value_info_lies, m_input_type]


def _first_layer(model) -> str:
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            return node.name or node.output[0]
    return "conv1"


def make_cases(seed: int, count: int, workdir: Path) -> list[Case]:
    """`count` cases, the same for the same seed: mutated fixtures, plus a directory and a fifo as the path."""
    rng = np.random.default_rng(seed)
    workdir = Path(workdir)
    bases = {name: onnx.load(str(FIXTURES / f"{name}.onnx")) for name in BASES}
    cases = []
    special = workdir / "a_directory.onnx"
    special.mkdir(exist_ok=True)
    cases.append(Case("directory", special, "conv1"))
    if hasattr(os, "mkfifo"):
        fifo = workdir / "a_fifo.onnx"
        if not fifo.exists():
            os.mkfifo(fifo)
        cases.append(Case("fifo", fifo, "conv1"))
    i = 0
    while len(cases) < count:
        base_name = BASES[int(rng.integers(0, len(BASES)))]
        mutation = MUTATIONS[i % len(MUTATIONS)] if i < len(MUTATIONS) else \
            MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
        i += 1
        model = copy.deepcopy(bases[base_name])
        try:
            data = mutation(model, rng)
        except Exception:  # a mutation that does not fit this model
            data = None
        if rng.random() < 0.15 and data:  # now and then, two mutations
            try:
                data = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))](onnx.ModelProto.FromString(data), rng) or data
            except Exception:
                pass
        if data is None:
            continue
        path = workdir / f"{len(cases):04d}_{base_name}_{mutation.__name__[2:]}.onnx"
        path.write_bytes(data)
        cases.append(Case(f"{base_name}/{mutation.__name__[2:]}", path, _first_layer(bases[base_name])))
    return cases


# --- the runner ---

def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_forked(argv, timeout: float):
    """Run onnxmorph's main(argv) in a forked child; (exit code or None on timeout, stdout, stderr)."""
    import onnxmorph.cli
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: its own stdout/stderr, exit with main's code
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
                onnxmorph.cli.main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 70)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 70
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
        out.seek(0)
        err.seek(0)
        text_out, text_err = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if status is None:
        return None, text_out, text_err
    code = os.waitstatus_to_exitcode(status)
    return code, text_out, text_err


def run_cases(cases: list[Case], timeout: float = 60.0, workdir: Path | None = None, verbose: bool = False):
    """Counts of outcomes, and the cases that broke the contract (name, command, what, detail)."""
    import onnxruntime  # noqa: F401  (imported once here, not in every forked run)
    import scipy.linalg  # noqa: F401
    import onnxmorph.cli  # noqa: F401
    counts: Counter = Counter()
    bad = []
    out_dir = Path(workdir or tempfile.mkdtemp(prefix="onnxmorph-fuzz-"))
    for n, case in enumerate(cases):
        before = _digest(case.path)
        output = out_dir / f"child_{n}.onnx"
        for verb, argv in (("inspect", ["inspect", str(case.path)]),
                           ("deepen", ["deepen", str(case.path), "--layer", case.layer, "-o", str(output),
                                       "--force"])):
            code, out, err = _run_forked(argv, timeout)
            counts["runs"] += 1
            problem = None
            if code is None:
                problem = "hang"
            elif "Traceback" in err or "Traceback" in out:
                problem = "traceback"
            elif code == 4:
                problem = "internal error"
            elif code not in (0, 1, 2, 3):
                problem = f"crash (exit {code})"
            elif code != 0 and len(err.strip().splitlines()) != 1:
                problem = "not one line"
            counts[f"exit {code}" if code is not None else "timeout"] += 1
            if problem:
                counts[problem] += 1
                bad.append((case.name, verb, problem, (err or out).strip()[-400:]))
            if verbose:
                print(f"{case.name:40s} {verb:8s} {code}  {(err.strip().splitlines() or [''])[-1][:100]}")
        if _digest(case.path) != before:
            counts["modified input"] += 1
            bad.append((case.name, "-", "modified input", ""))
        counts["cases"] += 1
    return counts, bad
