"""Solver speed on VGG16-sized layers, next to a dense scipy.linalg.lstsq baseline in the same run.

The baseline is the straightforward Algorithm-1 step: a random dense F_{l+1}, the full dense operator
(C_out·K~² × width·K1²), and scipy.linalg.lstsq (gelsd) for F_l. Ours: block-diagonal random F_{l+1}, many
small exact solves, a random orthogonal mix (onnxmorph.solve.factorize). Both report the relative residual.

Usage: python benchmarks/bench_solver.py [--quick] [--max-baseline-entries N]
"""
import argparse
import time
from math import prod

import numpy as np
import scipy.linalg

from onnxmorph.solve import compose, embed, factorize, minimum_width
from onnxmorph.solve.factorize import first_layer_operator


def baseline(weight, width, k1, k2, rng):
    kt = tuple(a + b - 1 for a, b in zip(k1, k2))
    offset = tuple((t - k) // 2 for t, k in zip(kt, weight.shape[2:]))
    target = embed(weight, kt, offset)
    c_out, c_in = weight.shape[:2]
    second = rng.standard_normal((c_out, width) + k2) / np.sqrt(width * prod(k2))
    op = first_layer_operator(second, k1)
    rhs = target.reshape(c_out, c_in, -1).transpose(0, 2, 1).reshape(c_out * prod(kt), c_in)
    sol = scipy.linalg.lstsq(op, rhs, check_finite=False)[0]
    first = np.moveaxis(sol.reshape((width,) + k1 + (c_in,)), -1, 1)
    return float(np.linalg.norm(compose(first, second) - target) / np.linalg.norm(target))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="64 and 128 channels only")
    parser.add_argument("--max-baseline-entries", type=float, default=1.2e8,
                        help="skip the dense baseline when its operator has more entries than this")
    args = parser.parse_args()
    channels = [64, 128] if args.quick else [64, 128, 256, 512]
    rng = np.random.default_rng(0)
    print(f"{'layer':>18} {'k1,k2':>6} {'width':>6} {'ours s':>8} {'ours res':>9} {'base s':>8} {'base res':>9} {'ratio':>7}")
    for c in channels:
        weight = rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
        for k1, k2 in (((3, 3), (1, 1)), ((3, 3), (3, 3))):
            algorithm = "practical" if k2 == (1, 1) else "general"
            width = minimum_width(weight.shape, k1, k2, 1, algorithm)
            width = int(width * 1.05) if algorithm == "general" else width  # slack, as auto width picks
            start = time.perf_counter()
            fac = factorize(weight, width, k1, k2, algorithm=algorithm, seed=0)
            ours = time.perf_counter() - start
            entries = c * prod(a + b - 1 for a, b in zip(k1, k2)) * width * prod(k1)
            if entries <= args.max_baseline_entries:
                start = time.perf_counter()
                base_res = baseline(weight, width, k1, k2, rng)
                base = time.perf_counter() - start
                base_txt, ratio = f"{base:8.2f} {base_res:9.1e}", f"{base / ours:6.1f}x"
            else:
                base_txt, ratio = f"{'skipped':>8} {'':>9}", "n/a"
            print(f"{f'conv {c}->{c} 3x3':>18} {f'{k1[0]},{k2[0]}':>6} {width:>6} {ours:8.3f} {fac.residual:9.1e} "
                  f"{base_txt} {ratio:>7}", flush=True)
    print("ratio = baseline time / ours; the baseline is skipped where its dense operator exceeds "
          f"{args.max_baseline_entries:.0e} entries (estimated cubic cost).")


if __name__ == "__main__":
    main()
