"""The long fuzz campaign: corrupted and hostile models through `inspect` and `deepen`, counted.

Usage: python benchmarks/fuzz.py [--seed 0] [--cases 300] [--timeout 60]
Prints the outcome counts (exit codes) and every case that broke the contract: a traceback, an internal
error (exit 4) or crash, a hang, an error that is not one line, or an input file modified. Exit 1 if any.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzz_models import make_cases, run_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxmorph-fuzz-") as tmp:
        cases = make_cases(args.seed, args.cases, Path(tmp))
        counts, bad = run_cases(cases, timeout=args.timeout, workdir=Path(tmp), verbose=args.verbose)
    seconds = time.perf_counter() - start
    kinds = {}
    for case in cases:
        kind = case.name.split("/")[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{counts['cases']} cases ({len(kinds)} kinds), {counts['runs']} runs in {seconds:.0f} s "
          f"(seed {args.seed}, timeout {args.timeout:g} s)")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k.startswith("exit")))
    for what in ("traceback", "internal error", "hang", "modified input", "not one line"):
        print(f"{what}: {counts[what]}")
    crashes = sum(v for k, v in counts.items() if k.startswith("crash"))
    print(f"crash: {crashes}")
    for name, verb, what, detail in bad:
        print(f"  {name} {verb}: {what}: {detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
