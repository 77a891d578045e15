"""The public functions. The CLI calls only these.

Each morph takes a path or ModelProto plus options named like the CLI flags, builds the child on a private
copy, checks it on ONNX Runtime (unless verify=False) and returns (child, MorphResult). With `output` it also
writes the child, atomically, and only once the check has passed. `grow` runs a plan of such morphs on one
load, one check and one save. A morph's data flows through three stages that single verbs and grow share:
_load (parse once), _apply (one pass in place; grow's _grow_step runs one step of its plan), _finish (serialize
once, verify those bytes, commit the same bytes with the provenance record).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from inspect import signature
from pathlib import Path


import onnx

from . import progress
from .errors import CannotMorph, UsageError, VerificationFailed
from .export_folder import child_config, is_folder_output, read_config, source_folder, write_folder
from .graph.external import materialize, spilling
from .graph.model_io import StagedModel, check_output_path, check_writable, load_model
from .inspect import inspect
from .provenance import append_record, make_record
from .verify import DEFAULT_RTOL, VerifyReport, verify


@dataclass
class MorphResult:
    verb: str
    details: object                      # the pass's own report dataclass
    verification: VerifyReport | None = None
    output: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)   # written beside the child: an export folder's config.json, ...

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    def lines(self) -> list[str]:
        out = list(self.details.lines())
        if self.verification is not None:
            out.extend(self.verification.lines())
        elif getattr(self.details, "dry_run", False):
            out.append("nothing written (--dry-run)")
        else:
            out.append("not verified (--no-verify)")
        out.extend(f"note: {n}" for n in self.notes)
        if self.output:
            out.append(f"wrote {self.output}" + (f" and {', '.join(Path(f).name for f in self.files)}"
                                                 if self.files else ""))
        out.append(f"total time {self.seconds:.2f} s")
        return out

    def to_dict(self) -> dict:
        return {"verb": self.verb, "details": asdict(self.details),
                "verification": self.verification.to_dict() if self.verification else None,
                "output": self.output, "seconds": self.seconds, "passed": self.passed, "notes": self.notes,
                "files": self.files}


@dataclass(frozen=True)
class _Check:
    """Whether and how the child is checked against its parent on ONNX Runtime (verify's options)."""
    enabled: bool
    provider: str
    atol: float | None    # None: calibrated to the parent's floor (verify.py)
    rtol: float | None
    input_shape: list | None

    def run(self, parent, runtime) -> VerifyReport:
        return verify(parent, runtime, provider=self.provider, atol=self.atol, rtol=self.rtol,
                      input_shape=self.input_shape)


def _load(model, output, force):
    """Stage 1: the parent parsed once into a private copy (a caller's file or ModelProto is never modified), the
    output checked, and the parent's metadata kept (the lineage the child's record extends)."""
    label = "the model" if isinstance(model, onnx.ModelProto) else Path(str(model)).name
    with progress.stage(f"loading {label}"):
        child = load_model(model)
    check_output_path(output, model)
    if output is not None:
        check_writable(output, force)
    history = onnx.ModelProto()
    history.metadata_props.extend(child.metadata_props)
    # No onnx.checker here: real exports (old Caffe2, custom domains) often fail it while running fine.
    # ONNX Runtime's run of parent and child is the check that counts; the tests run the full checker.
    return child, history


def _apply(verb, pass_fn, child, options):
    """Stage 2: one pass, in place on the private copy. Returns (child, the pass's report)."""
    takes_progress = "progress" in signature(pass_fn).parameters
    with progress.stage(f"{verb}: solving and building the child") as bar:
        return pass_fn(child, **options, **({"progress": bar} if takes_progress else {}))


@dataclass
class _Work:
    """The work folder of one run: the spill file where the passes put the big tensors they make, and the staged
    child (graph/external.py). It goes when the run ends."""
    folder: Path
    spill: object


@contextlib.contextmanager
def _workspace(model, output):
    """Beside the output; for a parent without one, beside the parent (the same file system, so its data is copied
    in the kernel and no RAM-backed /tmp fills up) when it can be written there; else the system's temp folder."""
    if output is not None:
        folder = Path(output).parent
    elif not isinstance(model, onnx.ModelProto) and os.access(Path(str(model)).parent, os.W_OK):
        folder = Path(str(model)).parent
    else:
        folder = None
    try:
        work = tempfile.TemporaryDirectory(dir=folder, prefix=".onnxmorph-")
    except OSError as exc:
        raise UsageError(f"cannot make a work folder in {folder or tempfile.gettempdir()}: {exc.strerror}") from None
    with work as tmp, spilling(Path(tmp)) as spill:
        yield _Work(Path(tmp), spill)


def _stage(child, folder: Path, name: str, adopt: str | None = None) -> StagedModel:
    """The child serialized once, without its metadata (the commit appends that, with the new record). adopt: the
    spill file, which becomes the child's data file when it holds mostly live tensors (written once)."""
    kept = list(child.metadata_props)
    child.ClearField("metadata_props")
    try:
        with progress.stage("serializing the child") as bar:
            return StagedModel(child, folder, name, progress=bar, adopt=adopt)
    finally:
        child.metadata_props.extend(kept)


def _failure(what, report) -> str:
    why = report.message or (f"max rel error {report.max_rel:.3e}, {report.ratio:.1f} x the parent's floor "
                             f"{report.floor:.1e}")
    return f"{what} does not preserve the function ({why}); nothing written"


def _finish(what, child, history, record, model, output, check: _Check, result: MorphResult, start, work: _Work,
            exact=True):
    """Stage 3: serialize once; ORT verifies those bytes (or that staged file, with external data) against the
    parent, and the same bytes are written, with the provenance record (record(verification) -> dict) appended as
    a protobuf merge. Nothing is written when the check fails; the error names `what` failed ("the widen child").
    Without a commit, the tensors in the work folder come back into the child before the folder goes."""
    if check.enabled or output is not None:
        work.spill.close()   # no pass writes to it any more: it may become the staged data file
        staged = _stage(child, work.folder, Path(output).name if output is not None else "child.onnx",
                        adopt=work.spill.path)
        if check.enabled:
            result.verification = check.run(model, staged.runtime)
        if not result.passed and exact:
            result.seconds = time.perf_counter() - start
            raise VerificationFailed(_failure(what, result.verification), result)
        append_record(child, history, record(result.verification))
        if output is not None:
            extra = onnx.ModelProto()
            extra.metadata_props.extend(child.metadata_props)
            with progress.stage(f"saving {Path(output).name}"):
                result.output = str(staged.commit(output, extra.SerializeToString()))
    else:
        append_record(child, history, record(None))
    if result.output is None:
        materialize(child, work.folder)
    return child


def _output_path(model, output):
    """(the file to write, the folder given as -o DIR/ or None): in a folder the child keeps the input's file name
    (an export folder's model.onnx), and the folder gets the export folder's config and files (_export_folder)."""
    if not is_folder_output(output):
        return output, None
    out_folder = Path(output)
    if not out_folder.parent.exists():
        raise UsageError(f"output folder does not exist: {out_folder.parent}")
    out_folder.mkdir(exist_ok=True)
    return str(out_folder / ("model.onnx" if isinstance(model, onnx.ModelProto) else Path(str(model)).name)), \
        out_folder


def _run_pass(verb, pass_fn, model, options, output, force, verify_child, provider, atol, rtol, input_shape,
              exact=True):
    """Load once, morph in place, serialize once: ORT verifies those bytes and the same bytes are written. A
    parent with big external data is read lazily and the big tensors the pass makes are spilled to the work
    folder, so memory holds about one of them at a time (graph/external.py)."""
    start = time.perf_counter()
    output, out_folder = _output_path(model, output)
    child, history = _load(model, output, force)
    with _workspace(model, output) as work:
        child, details = _apply(verb, pass_fn, child, options)
        result = MorphResult(verb, details)
        check = _Check(verify_child, provider, atol, rtol, input_shape)
        child = _finish(f"the {verb} child", child, history, lambda verification: make_record(
            verb, options, details, verification, model, input_shape), model, output, check, result, start, work,
            exact)
    if result.output is not None:
        _export_folder(verb, model, out_folder, Path(output).name, details, force, result)
    result.seconds = time.perf_counter() - start  # the save included
    return child, result


def _export_folder(verb, model, out_folder, name, details, force, result) -> None:
    """A parent in a Hugging Face export folder (config.json beside it): written to a folder, the child gets the
    folder's config.json with its new sizes and the folder's other files (onnxmorph/export_folder.py); written
    to a file, a note says how to get them."""
    source = source_folder(model)
    if source is None:
        return
    config, notes = child_config(read_config(source), verb, details)
    result.notes.extend(notes)
    if out_folder is None:
        result.notes.append(f"{Path(str(model)).name} sits in an export folder ({source / 'config.json'}): give -o "
                            "a folder (-o DIR/) to write the child with its config.json, sizes updated")
        return
    result.files.extend(write_folder(source, out_folder, config, name, force))


def _selecting(verb: str):
    """The verb's pass behind its selectors (graph/select.py): a --layer pattern or a --block selector grows every
    layer or block it picks; a plain name runs the pass once, exactly as before (passes/grow.py)."""
    from .passes.grow import run_step

    def run(model, progress=None, **options):
        return run_step(model, verb, options, progress=progress)
    return run


def deepen(model, layer=None, *, k1=None, k2=None, width=None, activation="auto", method="netmorph",
           algorithm="practical", batchnorm=False, after=None, seed=0, full_rank=True, output=None, force=False,
           verify=True, provider="auto", atol=None, rtol=None, input_shape=None, block=None,
           init="copy", count=1):
    """Replace a Conv/Gemm/MatMul layer by two layers computing the same function (network morphism eq. 6).

    full_rank (default): the solved factor gets a random null-space component, so it has the rank its shape
    allows; False keeps the minimum-norm solution, whose rank is that of the layer.
    With `block` (a residual Add's node name or output tensor, or 'A:B'): insert `count` identity-start copies
    of that residual block right after it, with `init` "copy" (its weights) or "random" (drawn at its scale).
    """
    options = dict(layer=layer, k1=k1, k2=k2, width=width, activation=activation, method=method,
                   algorithm=algorithm, batchnorm=batchnorm, after=after, seed=seed, full_rank=full_rank)
    if block is not None:
        options.update(block=block, init=init, count=count)
    return _run_pass("deepen", _selecting("deepen"), model, options, output, force, verify, provider, atol, rtol,
                     input_shape)


def kernel(model, layer, *, size, output=None, force=False, verify=True, provider="auto", atol=None,
           rtol=None, input_shape=None):
    """Zero-pad a Conv kernel to `size` and grow its padding to match (paper, section 3.4.2)."""
    return _run_pass("kernel", _selecting("kernel"), model, dict(layer=layer, size=size), output, force, verify,
                     provider, atol, rtol, input_shape)


def subnet(model, layer, *, paths=2, depth=0, kernels=None, split="random", activation="auto", width=None,
           algorithm="practical", seed=0, output=None, force=False, verify=True, provider="auto", atol=None,
           rtol=None, input_shape=None):
    """Split a layer into parallel paths that sum to it, each optionally depth+1 layers (paper, section 3.5)."""
    options = dict(layer=layer, paths=paths, depth=depth, kernels=kernels, split=split, activation=activation,
                   width=width, algorithm=algorithm, seed=seed)
    return _run_pass("subnet", _selecting("subnet"), model, options, output, force, verify, provider, atol, rtol,
                     input_shape)


def widen(model, layer, *, width=None, heads=None, method="netmorph", noise=0.0, zeros="auto", stream="auto", seed=0,
          dry_run=False, output=None, force=False,
          verify=True, provider="auto", atol=None, rtol=None, input_shape=None):
    """Give a layer more output channels; every coupled tensor follows (paper 3.4.1, Net2WiderNet).

    dry_run: only analyse and report the coupled group. zeros (netmorph): which side of the new channels gets
    zeros: auto (consumers before a ReLU-like op, so new channels train), producers or consumers. net2net noise
    sums to zero over each channel's copies, so the child stays exact. stream: how a residual stream under
    LayerNorm/RMSNorm grows: auto (duplicated at integer multiples, else LEMON, pre-norm only), duplicate, lemon.
    heads (instead of width): the number of heads a Q/K/V projection should have, per part of a fused QKV.
    """
    options = dict(layer=layer, width=width, heads=heads, method=method, noise=noise, zeros=zeros, stream=stream, seed=seed,
                   dry_run=dry_run)
    if dry_run:
        start = time.perf_counter()
        child, details = _selecting("widen")(load_model(model), **options)
        return child, MorphResult("widen", details, seconds=time.perf_counter() - start)
    return _run_pass("widen", _selecting("widen"), model, options, output, force, verify, provider, atol, rtol,
                     input_shape)


def grow(model, plan, *, seed=0, output=None, force=False, verify=True, verify_each=False, dry_run=False,
         provider="auto", atol=None, rtol=None, input_shape=None):
    """Run a growth plan on one load of the model: every step in memory, in order; the child checked once against
    the original parent (after every step with verify_each) and written once, with one provenance record that
    holds every step. Returns (child, MorphResult with a GrowReport).

    plan: a TOML file of [[step]] tables (passes/plan.py), or the same as data. seed: the seed of every step that
    gives none. dry_run: each step's selection and parameter counts, nothing solved (new weights are zeros),
    nothing checked or written.
    """
    from .passes.grow import GrowReport, parameter_count
    from .passes.plan import read_plan
    start = time.perf_counter()
    plan = read_plan(plan)  # the whole plan is checked before the model loads
    if verify_each and not verify:
        raise UsageError("--verify-each checks after every step; it cannot go with --no-verify")
    output = None if dry_run else output
    child, history = _load(model, output, force)
    check = _Check(verify and not dry_run, provider, atol, rtol, input_shape)
    details = GrowReport(plan.name, dry_run=dry_run, parameters_before=parameter_count(child))
    result = MorphResult("grow", details)
    with _workspace(model, output) as work:
        for step in plan.steps:
            child, report = _grow_step(child, step, seed, dry_run)
            details.steps.append(report)
            details.parameters_after = report.parameters_after
            if verify_each and not dry_run and step is not plan.steps[-1]:  # the last step's check is the final one
                report.verification = _check_step(child, model, step, check, work, result, start)
        if dry_run:
            materialize(child, work.folder)
            result.seconds = time.perf_counter() - start
            return child, result
        steps = [_step_record(step, report, seed) for step, report in zip(plan.steps, details.steps)]
        last = plan.steps[-1]
        what = f"step {last.number} ({last.describe()}): the child" if verify_each else "the grow child"
        child = _finish(what, child, history, lambda verification: make_record(
            "grow", {"plan": plan.name}, details, verification, model, input_shape, steps=steps), model, output,
            check, result, start, work)
    result.seconds = time.perf_counter() - start
    return child, result


def _grow_step(child, step, seed, dry_run):
    """One plan step in place; a refusal or usage error names the step."""
    from .passes.grow import run_step
    try:
        with progress.stage(f"step {step.number}: {step.verb}") as bar:
            return run_step(child, step.verb, step.options(seed), label=step.describe(), step=step.number,
                            progress=bar, solve=not dry_run, always_report=True)
    except (CannotMorph, UsageError) as exc:
        raise type(exc)(f"step {step.number} ({step.describe()}): {exc}; nothing written") from None


def _check_step(child, model, step, check: _Check, work: _Work, result: MorphResult, start) -> dict:
    """--verify-each: the child as this step left it, checked against the original parent (staged on its own in
    the work folder: the spill file stays the passes')."""
    with tempfile.TemporaryDirectory(dir=work.folder, prefix=f"step{step.number}-") as tmp:
        report = check.run(model, _stage(child, Path(tmp), "child.onnx").runtime)
    figures = {"passed": report.passed, "max_rel": report.max_rel, "max_abs": report.max_abs,
               "provider": report.child_provider}
    if not report.passed:
        result.verification, result.seconds = report, time.perf_counter() - start
        raise VerificationFailed(_failure(f"step {step.number} ({step.describe()}): the child", report), result)
    return figures


def _step_record(step, report, seed) -> dict:
    """A step as the provenance record keeps it: its options as the plan gave them, its seed, what it grew."""
    options = {k: v for k, v in step.flags().items() if k != "seed"}
    return {"verb": step.verb, "options": options, "seed": step.options(seed).get("seed"),
            "targets": [t.target for t in report.targets if not t.skipped],
            "residual": report.residual, "amplification": report.amplification}


def export_torch(model, *, output=None, force=False, verify=True, rtol=DEFAULT_RTOL, input_shape=None):
    """The model as a torch.nn.Module (extra onnxmorph[torch]), checked against ONNX Runtime and, with `output`,
    saved whole with torch.save. Returns (module, ExportReport)."""
    from .torch import export_torch as export
    check_output_path(output, model)  # never over the ONNX parent, whatever --force says
    return export(model, output=output, force=force, check=verify, rtol=rtol, input_shape=input_shape)


__all__ = ["deepen", "export_torch", "grow", "kernel", "subnet", "widen", "inspect", "verify", "MorphResult"]
