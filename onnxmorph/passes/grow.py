"""One growth step over everything its selector picks (graph/select.py), on the model in place.

A step is a verb with its options; its --layer (or --after) may be a pattern and deepen's --block a block
selector. The selection is resolved on the model as it is when the step starts, then each target is grown in
model order by the verb's own pass, which builds a fresh GraphIndex of the model as the previous target left it.
The k-th target (from 0) gets seed + k, so a step of one target is exactly the single verb. Widening a layer grows
its whole coupled group (graph/coupling): a selected layer whose output already grew in this step, because an
earlier target's group held it (a fused gate/up pair, the query and key projections of one GQA group, the whole
residual stream), is grown once and reported as skipped. A name that is no selector runs the pass once, as the
single verb always has, and its report is the pass's own.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from inspect import signature

import numpy as np
import onnx

from ..errors import CannotMorph, UsageError
from ..graph.blocks import find_blocks
from ..graph.index import GraphIndex
from ..graph.select import is_block_selector, is_layer_pattern, select_blocks, select_layers
from .deepen import deepen_model
from .kernel import kernel_model
from .plan import SELECTORS
from .subnet import subnet_model
from .widen import widen_model

PASSES = {"deepen": deepen_model, "widen": widen_model, "kernel": kernel_model, "subnet": subnet_model}


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def parameter_count(model: onnx.ModelProto) -> int:
    """Float values held by initializers and Constant nodes (shapes, axes and indices are no parameters), counted
    from their dims: nothing is decoded."""
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in _FLOATS)


@dataclass
class TargetReport:
    """One selected layer or block: the pass's report, or why the step did not grow it."""
    target: str
    details: object = None
    skipped: str = ""


@dataclass
class StepReport:
    verb: str
    label: str                          # the step as options: widen --layer '*/mlp/*' --width 2x
    kind: str                           # "layer" or "block"
    selected: list[str]
    targets: list[TargetReport] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    step: int | None = None             # its number in a plan, from 1
    dry_run: bool = False               # nothing checked or written (grow --dry-run: nothing solved either)
    verification: dict | None = None    # grow --verify-each: the check of the child after this step

    def _figure(self, name: str) -> float | None:
        values = [v for t in self.targets if isinstance(v := getattr(t.details, name, None), (int, float))
                  and math.isfinite(v)]
        return max(values) if values else None

    @property
    def residual(self) -> float | None:
        return self._figure("residual")

    @property
    def amplification(self) -> float | None:
        return self._figure("amplification")

    def lines(self) -> list[str]:
        head = f"step {self.step}: " if self.step is not None else ""
        kinds = f"{self.kind}{'s' if len(self.selected) != 1 else ''}"
        grown = sum(1 for t in self.targets if not t.skipped)
        done = "to grow" if self.dry_run else "grown"
        out = [f"{head}{self.label}: {len(self.selected)} {kinds} selected, {grown} {done}"
               + (f", {len(self.targets) - grown} skipped" if grown < len(self.targets) else "")]
        unsolved = False
        for t in self.targets:
            if t.skipped:
                out.append(f"  {t.target}: skipped, {t.skipped}")
            elif self.dry_run and not getattr(t.details, "dry_run", False):  # grow --dry-run: zero weights
                out.append(f"  {t.target}")
                unsolved = True
            else:   # the pass's report (widen --dry-run's lists the coupled group)
                out.extend(f"  {line}" for line in t.details.lines())
        if not self.dry_run or unsolved:
            out.append(f"  parameters {self.parameters_before:,} -> {self.parameters_after:,}"
                       + (" (new weights not solved: --dry-run)" if unsolved else ""))
        if self.verification is not None:
            v = self.verification
            out.append(f"  checked after this step: {'PASSED' if v['passed'] else 'FAILED'}, max rel error "
                       f"{v['max_rel']:.3e} on {v['provider']} (--verify-each)")
        return out


def selector_key(options: dict) -> str:
    return next((k for k in SELECTORS if options.get(k) is not None), "layer")


def _selection(model: onnx.ModelProto, key: str, query) -> tuple[list[str], dict] | None:
    """(target ids, id -> output tensors of that layer) a selector picks, or None for a plain name."""
    if key == "block":
        if not is_block_selector(query):
            return None
        ids = select_blocks(find_blocks(GraphIndex(model)), query)
        return None if ids is None else (ids, {})
    if not is_layer_pattern(query):
        return None
    layers = select_layers(GraphIndex(model), query, f"--{key}")
    if layers is None:
        return None
    return [layer.id for layer in layers], {layer.id: {layer.output, layer.final_output} for layer in layers}


def _call(pass_fn, model, options: dict, progress, solve: bool):
    takes = signature(pass_fn).parameters
    extra = {"progress": progress} if progress is not None and "progress" in takes else {}
    if not solve and "solve" in takes:
        extra["solve"] = False
    return pass_fn(model, **options, **extra)


def run_step(model: onnx.ModelProto, verb: str, options: dict, *, label: str | None = None, step: int | None = None,
             progress=None, solve: bool = True, always_report: bool = False):
    """Grow what the step's selector picks, in place. Returns (model, report): a StepReport, or the pass's own
    report for a plain name (unless always_report, as a plan wants every step alike). solve=False: new weights are
    zeros of the solved shapes (grow --dry-run)."""
    if verb not in PASSES:
        raise UsageError(f"unknown verb {verb!r}: use {', '.join(PASSES)}")
    pass_fn = PASSES[verb]
    key = selector_key(options)
    query = options.get(key)
    label = label or f"{verb} --{key} {shlex.quote(str(query))}"
    before = parameter_count(model)
    picked = _selection(model, key, query) if query is not None else None
    kind = "block" if key == "block" else "layer"
    if picked is None:
        model, details = _call(pass_fn, model, options, progress, solve)
        if not always_report:
            return model, details
        name = getattr(details, "block", None) or getattr(details, "layer", None) or str(query)
        return model, StepReport(verb, label, kind, [name], [TargetReport(name, details)], before,
                                 parameter_count(model), step, not solve or bool(options.get("dry_run")))
    ids, outputs = picked
    report = StepReport(verb, label, kind, list(ids), parameters_before=before, step=step,
                        dry_run=not solve or bool(options.get("dry_run")))
    grew_with: dict[str, str] = {}   # a tensor of a coupled group this step widened -> the target that did
    for k, target in enumerate(ids):
        reached = sorted(t for t in outputs.get(target, ()) if t in grew_with)
        if reached:
            report.targets.append(TargetReport(target, skipped=f"its outputs grew with {grew_with[reached[0]]} "
                                                               "(one coupled group, grown once)"))
            continue
        given = dict(options, **{key: target})
        if "seed" in given and given["seed"] is not None:
            given["seed"] = int(given["seed"]) + k
        try:
            model, details = _call(pass_fn, model, given, progress, solve)
        except (CannotMorph, UsageError) as exc:  # which of the selected failed, unless the message says
            raise type(exc)(str(exc) if target in str(exc) else f"{target}: {exc}") from None
        report.targets.append(TargetReport(target, details))
        for tensor in (getattr(details, "group", None) or {}).get("tensors", []):
            grew_with.setdefault(tensor, target)
    report.parameters_after = parameter_count(model)
    return model, report


@dataclass
class GrowReport:
    """A plan's run: each step's report, in order."""
    plan: str | None
    steps: list[StepReport] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    dry_run: bool = False

    @property
    def residual(self) -> float | None:
        values = [s.residual for s in self.steps if s.residual is not None]
        return max(values) if values else None

    @property
    def amplification(self) -> float | None:
        values = [s.amplification for s in self.steps if s.amplification is not None]
        return max(values) if values else None

    def lines(self) -> list[str]:
        what = "dry run of" if self.dry_run else "grew by"
        out = [f"{what} {self.plan or 'a plan'}: {len(self.steps)} step{'s' if len(self.steps) != 1 else ''}, "
               f"parameters {self.parameters_before:,} -> {self.parameters_after:,}"]
        for step in self.steps:
            out.extend(step.lines())
        return out
