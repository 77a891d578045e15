"""Issue 23: onnxmorph on a multi-GB decoder, against a plain load+save and two plain ONNX Runtime sessions.

Builds a Llama-style decoder with external data (benchmarks/decoder_model.py; default the issue's 2.7 GB: 12 layers,
hidden 2048, GQA 16:4, intermediate 5632), then runs in subprocesses, each timed and its peak RSS read with os.wait4:
  baseline load+save   onnx.load with its external data + onnx.save with external data
  baseline sessions    two plain ORT CPU sessions one after the other (default options), 3 runs each
  inspect --json, and every verb with its verify and with --no-verify:
  widen an MLP 2x, widen --heads (one GQA group more), deepen o_proj, deepen --block (one decoder layer),
  widen the stream by a quarter (LEMON)
and prints each as ratios: time to (load+save + sessions) with verify, to load+save without; peak RSS to
load+save's. The targets (issue 23): <= 1.2 and <= 1.3 with verify, <= 0.5 without, inspect <= 10 s and <= 1 GB.

    python benchmarks/bench_scale.py [--gb 2.7] [--dir DIR] [--keep] [--only widen_mlp,...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from decoder_model import BuiltDecoder, build_decoder, config_for_gb  # noqa: E402

_LOAD_SAVE = r"""
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, location=sys.argv[3])
"""
_SESSIONS = r"""
import sys, numpy as np, onnxruntime as ort
for path in sys.argv[1:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.int64) for i in s.get_inputs()}
    for _ in range(3):
        s.run(None, feed)
    del s
"""


def run(cmd: list[str]) -> dict:
    """Wall time, peak RSS (the child's own, from wait4) and exit code of a command run as a child process. Dirty
    pages of earlier runs are flushed first (untimed), so no run pays for another's writes to the disk."""
    os.sync()
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-600:]
    return {"seconds": wall, "rss": usage.ru_maxrss * 1024, "exit": proc.returncode, "tail": tail}


def verbs(built: BuiltDecoder, parent: Path, out: Path) -> dict[str, list[str]]:
    cfg = built.config
    base = [sys.executable, "-m", "onnxmorph"]
    mid = cfg.layers // 2
    mlp, q, o = (built.layer(mid, what) for what in ("mlp/gate_proj", "self_attn/q_proj", "self_attn/o_proj"))
    heads = cfg.heads + cfg.heads // cfg.kv_heads          # one more GQA group
    stream = cfg.hidden + cfg.hidden // 4
    common = ["-o", str(out), "--force"]
    return {
        "widen_mlp": base + ["widen", str(parent), "--layer", mlp, "--width", "2x"] + common,
        "widen_heads": base + ["widen", str(parent), "--layer", q, "--heads", str(heads)] + common,
        "deepen_o_proj": base + ["deepen", str(parent), "--layer", o] + common,
        "deepen_block": base + ["deepen", str(parent), "--block", built.block(mid)] + common,
        "widen_stream_lemon": base + ["widen", str(parent), "--layer", o, "--width", str(stream)] + common,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.7, help="decoder size (default 2.7, the issue's)")
    ap.add_argument("--dir", help="where to build (default: a temp folder beside this checkout)")
    ap.add_argument("--keep", action="store_true", help="keep the built model")
    ap.add_argument("--only", help="comma-separated verbs to run (default all)")
    ap.add_argument("--no-no-verify", action="store_true", help="skip the --no-verify runs")
    args = ap.parse_args(argv)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_scale-", dir=HERE.parent))
    folder.mkdir(parents=True, exist_ok=True)
    parent, out = folder / "decoder.onnx", folder / "child.onnx"
    try:
        config = config_for_gb(args.gb)
        shape = {k: getattr(config, k) for k in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")}
        if not parent.exists():
            print(f"building a {args.gb} GB decoder in {folder} ...", file=sys.stderr)
            built = build_decoder(parent, **shape)
        else:   # built by an earlier run with --dir: the same config
            built = BuiltDecoder(str(parent), str(parent) + ".data", config, config.params(), 0, 0.0)
        size = os.path.getsize(parent) + os.path.getsize(str(parent) + ".data")
        print(f"decoder: {config}, {size / 1e9:.2f} GB", file=sys.stderr)
        results = {}
        results["load+save"] = run([sys.executable, "-c", _LOAD_SAVE, str(parent), str(folder / "plain.onnx"),
                                    "plain.onnx.data"])
        for f in ("plain.onnx", "plain.onnx.data"):
            (folder / f).unlink(missing_ok=True)
        results["two sessions"] = run([sys.executable, "-c", _SESSIONS, str(parent), str(parent)])
        results["inspect"] = run([sys.executable, "-m", "onnxmorph", "inspect", str(parent), "--json"])
        chosen = verbs(built, parent, out)
        only = set(args.only.split(",")) if args.only else set(chosen)
        for name, cmd in chosen.items():
            if name not in only:
                continue
            for flags in ([], ["--no-verify"]) if not args.no_no_verify else ([],):
                results[" ".join([name] + flags)] = run(cmd + flags)
                for f in (out, Path(str(out) + ".data")):   # each run writes a new file, as load+save does
                    f.unlink(missing_ok=True)
        report(results, size)
        return results
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


def report(results: dict, size: int) -> None:
    ls, ss = results["load+save"], results["two sessions"]
    full = ls["seconds"] + ss["seconds"]
    print(f"{'run':28} {'time s':>8} {'peak GB':>8} {'time ratio':>11} {'RSS ratio':>10}  target")
    for name, r in results.items():
        if name in ("load+save", "two sessions"):
            ratio_t, ratio_m, target = "", "", "baseline"
        elif name == "inspect":
            ratio_t, ratio_m, target = "", "", "<= 10 s, <= 1 GB"
        elif name.endswith("--no-verify"):
            ratio_t, ratio_m, target = f"{r['seconds'] / ls['seconds']:.2f}x ls", f"{r['rss'] / ls['rss']:.2f}x", \
                "time <= 0.5x load+save"
        else:
            ratio_t, ratio_m, target = f"{r['seconds'] / full:.2f}x", f"{r['rss'] / ls['rss']:.2f}x", \
                "time <= 1.2x, RSS <= 1.3x"
        flag = "" if r["exit"] == 0 else f"  EXIT {r['exit']}: {r['tail'].strip().splitlines()[-1:]}"
        print(f"{name:28} {r['seconds']:8.1f} {r['rss'] / 1e9:8.2f} {ratio_t:>11} {ratio_m:>10}  {target}{flag}")
    print(json.dumps({"size_gb": size / 1e9, **{k: {"seconds": round(v["seconds"], 2), "rss_gb": round(v["rss"] / 1e9, 3),
                                                    "exit": v["exit"]} for k, v in results.items()}}))


if __name__ == "__main__":
    main()
