"""verify's report: per output the error against the parent, the parent's own floor and the limit, and the verdict
(the rules in onnxmorph/verify.py's docstring)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_RTOL = 1e-5   # the float32 rounding of an exact morph: the lowest limit, and the fixed rule's default
DEFAULT_ATOL = 0.0
# Calibrated limit: this many times the parent's floor. Measured on every layer of the fixtures/half twins, exact
# children of every verb reach 1.7 x the floor (float16, both converter modes and fp32 islands) and 0.63 x
# (bfloat16); a 1e-2 relative perturbation of one layer's weights reaches 5 to 30 x where it moves the outputs more
# than fp16 rounding does (heads, some projections), and far less on layers whose effect is below fp16 noise.
FLOOR_MULTIPLE = 4.0


@dataclass
class OutputComparison:
    name: str
    parent_shape: list
    child_shape: list
    max_abs: float
    max_rel: float      # max_abs / scale
    scale: float        # max |parent value|
    passed: bool
    floor: float = 0.0  # the parent's own deviation on these inputs, relative to scale
    limit: float = 0.0  # the max rel error that passes (calibrated), or rtol (fixed)

    @property
    def ratio(self) -> float:
        """The error in units of the parent's floor."""
        return _ratio(self.max_rel, self.floor)

    def line(self) -> str:
        shapes = f"{tuple(self.parent_shape)}" if self.parent_shape == self.child_shape else \
            f"{tuple(self.parent_shape)} != {tuple(self.child_shape)}"
        return (f"output {self.name}: shape {shapes}; max abs {self.max_abs:.3e}, max rel {self.max_rel:.3e} "
                f"(scale {self.scale:.3g}), floor {self.floor:.2e}, ratio {self.ratio:.2f}, limit {self.limit:.2e}  "
                f"{'PASSED' if self.passed else 'FAILED'}")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _ratio(error: float, floor: float) -> float:
    if floor > 0:
        return error / floor
    return 0.0 if error == 0 else float("inf")


@dataclass
class VerifyReport:
    passed: bool
    parent_provider: str
    child_provider: str
    samples: int
    atol: float
    rtol: float          # fixed: as given; calibrated: the lowest limit (DEFAULT_RTOL)
    outputs: list[OutputComparison] = field(default_factory=list)
    message: str = ""
    tolerance: str = "calibrated"   # or "fixed" (--rtol/--atol given)
    multiple: float = FLOOR_MULTIPLE
    precision: str = "float32"      # the parent's lowest float precision
    floor_method: str = ""          # how the floor was measured
    upcast: str = ""                # why both models ran as float32 upcasts ("" when they ran as they are)
    inputs: list[str] = field(default_factory=list)   # what was fed: dims per sample, value ranges (feeds.py)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def floor(self) -> float:
        """The floor of the output with the largest ratio (the one nearest its limit)."""
        worst = max(self.outputs, key=lambda o: o.ratio, default=None)
        return worst.floor if worst is not None else 0.0

    @property
    def ratio(self) -> float:
        return max((o.ratio for o in self.outputs), default=0.0)

    def lines(self) -> list[str]:
        out = list(self.inputs) + [o.line() for o in self.outputs]
        if self.upcast:
            out.append(f"ran as float32 upcasts, parent and child: {self.upcast}")
        if self.message:
            out.append(self.message)
        verdict = "PASSED" if self.passed else "FAILED"
        where = f"over {self.samples} samples on {self.child_provider}"
        if not self.outputs:   # nothing was compared: say why, never an error of 0
            out.append(f"{verdict}: nothing compared ({self.message or 'no outputs'}) {where}")
            return out
        if self.tolerance == "calibrated":
            rule = f"limit {self.multiple:g} x floor, at least {self.rtol:g}"
        else:
            rule = f"fixed rtol {self.rtol:g}, atol {self.atol:g}"
        out.append(f"{verdict}: max rel error {self.max_rel:.3e}, floor {self.floor:.2e} ({self.precision} parent: "
                   f"{self.floor_method}), ratio {self.ratio:.2f} ({rule}) {where}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = [o.to_dict() for o in self.outputs]
        d["max_rel"], d["max_abs"], d["floor"], d["ratio"] = self.max_rel, self.max_abs, self.floor, self.ratio
        return d


def max_abs_and_scale(parent_values, child_values) -> tuple[float, float]:
    """Max |parent - child| over the samples (NaN where only one is NaN counts as inf) and max |parent|."""
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
    return max_abs, scale


def compare(name, parent_values, child_values, atol, rtol, floor_abs=None) -> OutputComparison:
    """One output. floor_abs: the parent's own max abs deviation (calibrated: the limit is FLOOR_MULTIPLE times
    it, relative to the output's scale, at least rtol); None: the fixed rule, abs <= atol or rel <= rtol."""
    p_shape, c_shape = list(parent_values[0].shape), list(child_values[0].shape)
    if p_shape != c_shape:
        return OutputComparison(name, p_shape, c_shape, float("inf"), float("inf"), 0.0, False)
    max_abs, scale = max_abs_and_scale(parent_values, child_values)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    floor = (floor_abs or 0.0) / scale if scale > 0 else 0.0
    if floor_abs is None:
        return OutputComparison(name, p_shape, c_shape, max_abs, max_rel, scale, max_abs <= atol or max_rel <= rtol,
                                floor, rtol)
    limit = max(rtol, FLOOR_MULTIPLE * floor)
    return OutputComparison(name, p_shape, c_shape, max_abs, max_rel, scale, max_rel <= limit, floor, limit)
