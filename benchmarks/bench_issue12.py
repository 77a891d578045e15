"""Issue 12's table, each row next to its baseline run in the same process.

The model is a VGG16 (torchvision layout, 138 M parameters, 553 MB) built here with random weights; nothing is
downloaded. Whole-command rows run the CLI in a subprocess and read that subprocess's own peak RSS
(os.wait4), so wall time and memory are the user's. Solve rows call the pass's solver entry point
(passes.common.solve_factors, auto width and amplification guard included) on random weights of the layer's
shape; their baseline is one float64 matrix product of the layer's size (the floor the issue describes).

Usage: python benchmarks/bench_issue12.py [--rows cli,solve,memory,verify] [--timeout S] [--large]
  --large  also widen a ZFNet-like FC so the child passes 2 GB (needs ~6 GB free memory).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VGG16_CONVS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_vgg16(path: Path, fc_widths=(4096, 4096, 1000), seed: int = 0) -> None:
    """VGG16 with torchvision's names (features.N, classifier.N), random weights, opset 13."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(seed)
    nodes, inits, x, c_in, idx = [], [], "input", 3, 0

    def weight(shape, fan_in):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))

    for v in VGG16_CONVS:
        if v == "M":
            nodes.append(h.make_node("MaxPool", [x], [f"pool{idx}"], name=f"/features/features.{idx}/MaxPool",
                                     kernel_shape=[2, 2], strides=[2, 2]))
            x, idx = f"pool{idx}", idx + 1
            continue
        w, b = f"features.{idx}.weight", f"features.{idx}.bias"
        inits += [nh.from_array(weight((v, c_in, 3, 3), 9 * c_in), w), nh.from_array(np.zeros(v, np.float32), b)]
        nodes.append(h.make_node("Conv", [x, w, b], [f"conv{idx}"], name=f"/features/features.{idx}/Conv",
                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(h.make_node("Relu", [f"conv{idx}"], [f"relu{idx + 1}"], name=f"/features/features.{idx + 1}/Relu"))
        x, c_in, idx = f"relu{idx + 1}", v, idx + 2
    nodes.append(h.make_node("Flatten", [x], ["flat"], name="/Flatten", axis=1))
    x, fan_in = "flat", 512 * 7 * 7
    for i, n in enumerate(fc_widths):
        w, b = f"classifier.{3 * i}.weight", f"classifier.{3 * i}.bias"
        inits += [nh.from_array(weight((n, fan_in), fan_in), w), nh.from_array(np.zeros(n, np.float32), b)]
        out = "output" if i == len(fc_widths) - 1 else f"fc{i}"
        nodes.append(h.make_node("Gemm", [x, w, b], [out], name=f"/classifier/classifier.{3 * i}/Gemm", transB=1))
        if i < len(fc_widths) - 1:
            nodes.append(h.make_node("Relu", [out], [f"fc{i}_relu"], name=f"/classifier/classifier.{3 * i + 1}/Relu"))
            out = f"fc{i}_relu"
        x, fan_in = out, n
    graph = h.make_graph(nodes, "vgg16", [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 224, 224])],
                         [h.make_tensor_value_info("output", T.FLOAT, [1, fc_widths[-1]])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run_measured(args: list[str], timeout: float | None = None, env=None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in bytes, exit code, stderr tail) of a subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = None if timeout is None else start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return float("inf"), usage.ru_maxrss * 1024.0, -9, "timed out"
        time.sleep(0.02)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.read()
    return wall, usage.ru_maxrss * 1024.0, os.waitstatus_to_exitcode(status), err[-400:]


PY = sys.executable
LOAD_SAVE = "import onnx,sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
ORT_TWO_SESSIONS = """
import sys, numpy as np, onnxruntime as ort
x = np.random.default_rng(0).standard_normal((3, 1, 3, 224, 224)).astype(np.float32)
a = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
b = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
n = a.get_inputs()[0].name
for s in x:
    a.run(None, {n: s}); b.run(None, {n: s})
"""
SOLVE = """
import sys, time, numpy as np
from onnxmorph.passes.common import solve_factors
shape = tuple(int(v) for v in sys.argv[1].split("x"))
k1 = tuple(int(v) for v in sys.argv[2].split("x")) if sys.argv[2] != "-" else None
k2 = tuple(int(v) for v in sys.argv[3].split("x")) if sys.argv[3] != "-" else None
width = int(sys.argv[4]) if sys.argv[4] != "-" else None
w = np.random.default_rng(0).standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
t = time.perf_counter()
fac, minimum = solve_factors(w, width, k1, k2, 1, "netmorph", "practical", 0, shape[0])
print(f"{time.perf_counter() - t:.4f} {fac.first.shape[0]} {fac.residual:.1e} {fac.amplification:.1f}")
"""


def solve_row(shape, k1, k2, width, timeout):
    """Solve seconds in a fresh process (so the row's memory is its own)."""
    args = [PY, "-c", SOLVE, "x".join(map(str, shape)), k1 or "-", k2 or "-", str(width) if width else "-"]
    start = time.perf_counter()
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf"), f"timed out after {timeout:.0f} s"
    if res.returncode:
        return float("nan"), res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
    seconds, width_used, residual, amp = res.stdout.split()
    return float(seconds), f"width {width_used}, residual {residual}, amplification {amp}, wall {time.perf_counter() - start:.1f} s"


def matmul_floor(c_out: int, c_in: int, width: int) -> float:
    """One float64 product of a (width × C_out) by a (C_out × C_in) matrix: the floor of F_l = F_{l+1}ᵀ·G."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((width, c_out)), rng.standard_normal((c_out, c_in))
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def fmt_ratio(ours, base):
    return "n/a" if not np.isfinite(ours) or base <= 0 else f"{ours / base:.2f}x"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="cli,solve,memory,verify",
                        help="comma list of row groups: cli, solve, memory, verify, large")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-command limit (a slow row prints '>')")
    parser.add_argument("--large", action="store_true", help="also the > 2 GB ZFNet-like widen row")
    parser.add_argument("--workdir", help="keep the model here (default: a temp folder)")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_vgg16(Path(args.build))
        return
    rows = set(args.rows.split(","))
    if args.large:
        rows.add("large")
    with tempfile.TemporaryDirectory(prefix="bench12-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        model = tmp / "vgg16.onnx"
        start = time.perf_counter()
        # In a subprocess: a forked child starts with its parent's peak RSS, so this process must stay small.
        subprocess.run([PY, __file__, "--build", str(model)], check=True)
        size = model.stat().st_size
        print(f"VGG16-scale model, random weights: {size / 1e6:.0f} MB, built in {time.perf_counter() - start:.1f} s")
        print(f"{'measure':<58} {'ours':>10} {'baseline':>10} {'ratio':>8} target")
        cli = [PY, "-m", "onnxmorph"]
        conv = "/features/features.26/Conv"   # 512 -> 512, 3x3
        fc = "/classifier/classifier.0/Gemm"  # 25088 -> 4096
        base_t, base_m, rc, err = run_measured([PY, "-c", LOAD_SAVE, str(model), str(tmp / "copy.onnx")])
        if "cli" in rows or "memory" in rows or "verify" in rows:
            t, m, rc, err = run_measured(cli + ["deepen", str(model), "--layer", conv, "--no-verify", "-o",
                                                str(tmp / "conv.onnx"), "--force"], args.timeout)
            note = "" if rc == 0 else f"  (exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''})"
            print(f"{'deepen one conv --no-verify, wall (base: onnx.load+save)':<58} {t:9.2f}s {base_t:9.2f}s "
                  f"{fmt_ratio(t, base_t):>8} <= 1.3x{note}")
            print(f"{'  peak memory of that deepen (base: the file size)':<58} {m / 1e9:8.2f}GB {size / 1e9:8.2f}GB "
                  f"{fmt_ratio(m, size):>8} <= 2x  (load+save peak {base_m / 1e9:.2f} GB)")
        if "memory" in rows:
            t, m, rc, err = run_measured(cli + ["deepen", str(model), "--layer", fc, "--no-verify", "-o",
                                                str(tmp / "fc.onnx"), "--force"], args.timeout)
            note = "" if rc == 0 else f"  (exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''})"
            print(f"{'deepen first FC --no-verify: peak memory (base: file size)':<58} {m / 1e9:8.2f}GB "
                  f"{size / 1e9:8.2f}GB {fmt_ratio(m, size):>8} <= 2x  (wall {t:.1f} s){note}")
        if "verify" in rows and (tmp / "conv.onnx").exists():
            bt, bm, brc, berr = run_measured([PY, "-c", ORT_TWO_SESSIONS, str(model), str(tmp / "conv.onnx")])
            t, m, rc, err = run_measured(cli + ["verify", str(model), str(tmp / "conv.onnx"), "--provider", "cpu"],
                                         args.timeout)
            note = "" if rc == 0 else f"  (exit {rc})"
            print(f"{'verify parent child, wall (base: 2 plain ORT sessions, 3 runs)':<58} {t:9.2f}s {bt:9.2f}s "
                  f"{fmt_ratio(t, bt):>8} <= 1.2x{note}")
            print(f"{'  verify peak memory (base: the same 2 sessions)':<58} {m / 1e9:8.2f}GB {bm / 1e9:8.2f}GB "
                  f"{fmt_ratio(m, bm):>8} <= 1.2x")
        if "solve" in rows:
            cases = [("deepen 25088->4096 FC: solve", (4096, 25088), None, None, None, 1.0, (4096, 25088, 4096)),
                     ("deepen 512->512 3x3 conv: solve", (512, 512, 3, 3), None, None, None, 0.2, (512 * 9, 512, 512)),
                     ("deepen --k1 3 --k2 3 of 512->512 5x5: solve", (512, 512, 5, 5), "3x3", "3x3", None, 5.0,
                      (512 * 25, 512, 512)),
                     ("deepen --width 10000 of 32->32 3x3: solve", (32, 32, 3, 3), None, None, 10000, 10.0,
                      (32 * 9, 32, 10000))]
            for label, shape, k1, k2, width, target, (m_out, m_in, m_w) in cases:
                floor = matmul_floor(m_out, m_in, m_w)
                seconds, info = solve_row(shape, k1, k2, width, args.timeout)
                shown = f"{seconds:9.2f}s" if np.isfinite(seconds) else f">{args.timeout:8.0f}s"
                print(f"{label + ' (base: one GEMM of its size)':<58} {shown} {floor:9.3f}s "
                      f"{fmt_ratio(seconds, floor):>8} <= {target:g} s  ({info})")
        if "large" in rows:
            large_row(tmp, args.timeout)


def large_row(tmp: Path, timeout: float):
    """ZFNet-like: a 9216→4096→4096→1000 head whose first FC widens to 60000 (child ≈ 2.5 GB)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    sizes = [9216, 4096, 4096, 1000]
    nodes, inits, x = [], [], "input"
    for i in range(3):
        w = (rng.standard_normal((sizes[i + 1], sizes[i]), dtype=np.float32) / np.float32(np.sqrt(sizes[i])))
        inits += [nh.from_array(w, f"fc{i}.weight"), nh.from_array(np.zeros(sizes[i + 1], np.float32), f"fc{i}.bias")]
        out = "output" if i == 2 else f"fc{i}"
        nodes.append(h.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        if i < 2:
            nodes.append(h.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            out = f"r{i}"
        x = out
    g = h.make_graph(nodes, "zfnet_head", [h.make_tensor_value_info("input", T.FLOAT, [1, 9216])],
                     [h.make_tensor_value_info("output", T.FLOAT, [1, 1000])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp / "zfnet_head.onnx"
    onnx.save(model, str(path))
    del model, inits
    size = path.stat().st_size
    base_t, base_m, _, _ = run_measured([PY, "-c", LOAD_SAVE, str(path), str(tmp / "zcopy.onnx")])
    out = tmp / "zwide.onnx"
    t, m, rc, err = run_measured([PY, "-m", "onnxmorph", "widen", str(path), "--layer", "fc0", "--width", "60000",
                                  "-o", str(out), "--force"], timeout)
    child = sum(p.stat().st_size for p in tmp.glob("zwide.onnx*"))
    verdict = "written and verified" if rc == 0 else f"exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}"
    print(f"{'widen ZFNet FC so the child passes 2 GB (base: load+save)':<58} {t:9.2f}s {base_t:9.2f}s "
          f"{fmt_ratio(t, base_t):>8} {verdict}; child {child / 1e9:.2f} GB, peak {m / 1e9:.2f} GB "
          f"(parent {size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
