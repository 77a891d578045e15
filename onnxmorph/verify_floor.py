"""The parent's own numerical floor: how far its outputs move on verify's inputs when only its rounding changes
(verify.py's module docstring). Pure measurement over ONNX Runtime sessions that verify.py opens."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .graph.precision import HALF, NP_FLOATS, rounded_upcast, upcast
from .verify_report import max_abs_and_scale as _max_abs_and_scale


def float32(feed: dict) -> dict:
    return {k: v.astype(np.float32) if v.dtype in (NP_FLOATS[t] for t in HALF) else v for k, v in feed.items()}


def _deviation(runs_a, runs_b) -> list[float]:
    """Per output, the max abs difference between two runs of the same model over the samples."""
    return [_max_abs_and_scale([a[i] for a in runs_a], [b[i] for b in runs_b])[0] for i in range(len(runs_a[0]))]


def resolution(values, elem_type) -> float:
    """One unit in the last place of a float output type at the output's scale: an output stored in half
    precision moves by at least that whenever a rounding flips."""
    if elem_type not in NP_FLOATS:
        return 0.0
    scale = _max_abs_and_scale(values, values)[1]
    if not scale > 0 or not np.isfinite(scale):
        return 0.0
    return float(2.0 ** (np.floor(np.log2(scale)) - ml_dtypes.finfo(NP_FLOATS[elem_type]).nmant))


def parent_floor(measured, parent, parent_model, feeds, upcast_feeds, session, chosen, workdir):
    """Per output, how far the parent's outputs move on these inputs when only its rounding changes, as max abs
    differences, and how that was measured. session(model, chosen, workdir, what, optimize=) opens a session."""
    from . import progress

    def runs_of(model, what, run_feeds, optimize=True):
        with progress.stage(f"verify: running the parent {what}", len(run_feeds)) as bar:
            sess = session(model, chosen, workdir, f"parent {what}", optimize=optimize)
            try:
                runs = []
                for feed in run_feeds:
                    runs.append(sess.run(measured.out_names, feed))
                    bar.update(1)
                return runs
            finally:
                del sess

    if parent_model is None:
        return _deviation(measured.runs, runs_of(parent, "without graph optimisations", feeds, optimize=False)), \
            "ONNX Runtime's graph optimisations on vs off"
    half = measured.precision
    wide = measured.runs if measured.upcast else runs_of(upcast(parent_model), "as its float32 upcast", upcast_feeds)
    rounded = runs_of(rounded_upcast(parent_model), f"with its {half} tensors rounded", upcast_feeds)
    floor = _deviation(rounded, wide)
    if measured.upcast:
        return floor, f"its float32 upcast with vs without its {half} tensors rounded"
    return [max(a, b) for a, b in zip(floor, _deviation(measured.runs, wide))], \
        f"as it is and with its {half} tensors rounded, vs its float32 upcast"
