"""Widen one layer of a ~100 MB VGG-style model, next to a plain load + save of the same model (baseline).

Usage: python benchmarks/bench_widen.py
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxmorph import api
from onnxmorph.graph.model_io import load_model, save_model


def vgg_like(path: Path):
    rng = np.random.default_rng(0)
    nodes, inits, x, c_in = [], [], "x", 3
    for i, c in enumerate([64, 128, 256, 512, 512, 512, 512, 512]):
        w = (rng.standard_normal((c, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        inits += [nh.from_array(w, f"conv{i}.weight"), nh.from_array(np.zeros(c, np.float32), f"conv{i}.bias")]
        nodes += [h.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}",
                              pads=[1, 1, 1, 1]),
                  h.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, c_in = f"r{i}", c
    nodes.append(h.make_node("Flatten", [x], ["f"], name="flatten"))
    fc = (rng.standard_normal((1024, 512 * 8 * 8)) / 64).astype(np.float32)
    inits += [nh.from_array(fc, "fc.weight"), nh.from_array(np.zeros(1024, np.float32), "fc.bias")]
    nodes.append(h.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1))
    g = h.make_graph(nodes, "vgg_like", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 1024])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "vgg_like.onnx"
        vgg_like(src)
        size_mb = src.stat().st_size / 2**20
        start = time.perf_counter()
        save_model(load_model(str(src)), Path(tmp) / "copy.onnx")
        base = time.perf_counter() - start
        for layer in ("conv7", "conv3"):
            start = time.perf_counter()
            _, result = api.widen(str(src), layer, width="2x", output=str(Path(tmp) / f"w_{layer}.onnx"),
                                  verify=False)
            ours = time.perf_counter() - start
            print(f"widen {layer} 512->1024 of a {size_mb:.0f} MB model: {ours:.2f} s "
                  f"(load+save baseline {base:.2f} s, ratio {ours / base:.1f}x)")
        start = time.perf_counter()
        _, result = api.widen(str(src), "conv7", width="2x", output=str(Path(tmp) / "wv.onnx"), force=True)
        print(f"with verification on {result.verification.child_provider}: {time.perf_counter() - start:.2f} s, "
              f"max rel error {result.verification.max_rel:.2e}")


if __name__ == "__main__":
    main()
