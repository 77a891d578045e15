"""Issue 24's target: one `grow` that widens every MLP of a 12-layer decoder (weights in one external data file)
costs at most 1.5x one single `widen` of one MLP, both with verification and a save, as a ratio in one run.

The decoder is benchmarks/decoder_model.py's (default: 12 layers of hidden 2048, TinyLlama's shape, 2.7 GB). Each
measure runs in its own subprocess (a fresh heap, as the CLI has), the single widen first; each prints where its
time went (load, the passes, serialize, verify, save), from timers around onnxmorph's stages.

    python benchmarks/bench_grow.py                      # the 2.7 GB decoder: --width 2x, then +256 channels
    python benchmarks/bench_grow.py --hidden 512          # a small one (12 layers, 0.27 GB), seconds
    python benchmarks/bench_grow.py --width 2x            # one width only

At 2x the grown child is 1.54x the single widen's (4.35 GB against 2.83 GB), and serializing and verifying it cost
that much more whatever grow does; at +256 channels the two children are about the same size and the ratio
measures what the other eleven widens cost inside one grow.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_model import PRESETS, build_decoder  # noqa: E402

MLP = "/model/layers.{}/mlp/gate_proj/MatMul"


def _timed(owner, name: str, totals: dict, label: str):
    """Wrap owner.name so each call adds its wall time to totals[label]."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, timed)


def measure(kind: str, model: str, out: str, width: str) -> dict:
    """One run (in this process): 'single' widens layer 0's MLP, 'grow' every MLP in one plan."""
    from onnxmorph import api
    from onnxmorph.graph import model_io
    from onnxmorph.passes import grow
    totals: dict = {}
    _timed(api, "_load", totals, "load")
    _timed(grow, "_call", totals, "passes")
    _timed(api, "_stage", totals, "serialize")
    _timed(api._Check, "run", totals, "verify")
    _timed(model_io.StagedModel, "commit", totals, "save")
    start = time.perf_counter()
    if kind == "single":
        _, result = api.widen(model, MLP.format(0), width=width, output=out, force=True)
    else:
        _, result = api.grow(model, [{"verb": "widen", "layer": "*/mlp/gate_proj/*", "width": width}], output=out,
                             force=True)
    totals["total"] = time.perf_counter() - start
    totals["max_rel"] = result.verification.max_rel
    totals["grown"] = 1 if kind == "single" else sum(1 for t in result.details.steps[0].targets if not t.skipped)
    totals["child_bytes"] = Path(out).stat().st_size + sum(p.stat().st_size for p in Path(out).parent.glob(
        Path(out).name + ".data"))
    return totals


def _run(kind: str, model: Path, out: Path, width: str) -> dict:
    os.sync()   # untimed: no run pays for the disk writes of the one before
    res = subprocess.run([sys.executable, __file__, "--measure", kind, str(model), str(out), width],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{kind} run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _line(kind: str, t: dict) -> str:
    stages = ", ".join(f"{k} {t.get(k, 0.0):.1f} s" for k in ("load", "passes", "serialize", "verify", "save"))
    return (f"  {kind:>6}: {t['total']:6.1f} s ({stages}); {t['grown']} MLP(s) grown, child "
            f"{t['child_bytes'] / 1e9:.2f} GB, max rel {t['max_rel']:.1e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=2048, choices=sorted(PRESETS))
    parser.add_argument("--width", action="append", help="widen's --width for every MLP: a count, a multiplier (2x) "
                        "or +N channels; repeat for several (default: 2x and +256)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating; the fastest of each counts "
                        "(the shared machine's disk and memory make single runs noisy)")
    parser.add_argument("--measure", nargs=4, metavar=("KIND", "MODEL", "OUT", "WIDTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        kind, model, out, width = args.measure
        print(json.dumps(measure(kind, model, out, width)))
        return 0
    heads, kv_heads, intermediate = PRESETS[args.hidden]
    widths = args.width or ["2x", "+256"]
    with tempfile.TemporaryDirectory(prefix="bench_grow-") as tmp:
        model = Path(tmp) / "decoder.onnx"
        built = build_decoder(model, layers=args.layers, hidden=args.hidden, heads=heads, kv_heads=kv_heads,
                              intermediate=intermediate)
        print(f"decoder: {args.layers} layers, hidden {args.hidden}, MLP {intermediate}, {built.params:,} parameters, "
              f"{built.data_bytes / 1e9:.2f} GB of external data (built in {built.seconds:.0f} s)")
        for width in widths:
            given = str(intermediate + int(width[1:])) if width.startswith("+") else width
            runs = {}
            for _ in range(args.repeat):
                for kind in ("single", "grow"):
                    out = Path(tmp) / f"{kind}.onnx"
                    run = _run(kind, model, out, given)
                    if kind not in runs or run["total"] < runs[kind]["total"]:
                        runs[kind] = run
                    for written in (out, out.with_name(out.name + ".data")):
                        written.unlink(missing_ok=True)
            print(f"widen --width {width} ({given} channels):")
            print(_line("single", runs["single"]))
            print(_line("grow", runs["grow"]))
            print(f"  grow of every MLP / one widen of one MLP: {runs['grow']['total'] / runs['single']['total']:.2f}x "
                  "(target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
