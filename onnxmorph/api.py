"""The public functions. The CLI calls only these.

Each morph takes a path or ModelProto plus options named like the CLI flags, builds the child on a private
copy, checks it on ONNX Runtime (unless verify=False) and returns (child, MorphResult). With `output` it also
writes the child, atomically, and only once the check has passed.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from inspect import signature
from pathlib import Path


import onnx

from . import progress
from .errors import UsageError, VerificationFailed
from .export_folder import child_config, is_folder_output, read_config, source_folder, write_folder
from .graph.model_io import StagedModel, check_output_path, check_writable, load_model
from .inspect import inspect
from .provenance import append_record, make_record
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyReport, verify


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


def _run_pass(verb, pass_fn, model, options, output, force, verify_child, provider, atol, rtol, input_shape,
              exact=True):
    """Load once, morph in place, serialize once: ORT verifies those bytes (or that staged file, past 2 GB) and
    the same bytes are written, with the provenance record appended as a protobuf merge."""
    start = time.perf_counter()
    label = "the model" if isinstance(model, onnx.ModelProto) else Path(str(model)).name
    with progress.stage(f"loading {label}"):
        child = load_model(model)  # a path is parsed once; a caller's ModelProto is copied, never modified
    out_folder = None
    if is_folder_output(output):   # -o DIR/: the child keeps the input's file name, an export folder its config
        out_folder = Path(output)
        output = str(out_folder / ("model.onnx" if isinstance(model, onnx.ModelProto) else Path(str(model)).name))
        if not out_folder.parent.exists():
            raise UsageError(f"output folder does not exist: {out_folder.parent}")
        out_folder.mkdir(exist_ok=True)
    check_output_path(output, model)
    if output is not None:
        check_writable(output, force)
    history = onnx.ModelProto()
    history.metadata_props.extend(child.metadata_props)   # the parent's record, for the child's lineage
    # No onnx.checker here: real exports (old Caffe2, custom domains) often fail it while running fine.
    # ONNX Runtime's run of parent and child is the check that counts; the tests run the full checker.
    takes_progress = "progress" in signature(pass_fn).parameters
    with progress.stage(f"{verb}: solving and building the child") as bar:
        child, details = pass_fn(child, **options, **({"progress": bar} if takes_progress else {}))
    result = MorphResult(verb, details)
    if not verify_child and output is None:
        append_record(child, history, make_record(verb, options, details, None, model, input_shape))
        result.seconds = time.perf_counter() - start
        return child, result
    folder = Path(output).parent if output is not None else None
    with tempfile.TemporaryDirectory(dir=folder, prefix=".onnxmorph-") as tmp:
        kept = list(child.metadata_props)
        child.ClearField("metadata_props")
        with progress.stage("serializing the child"):
            staged = StagedModel(child, Path(tmp), Path(output).name if output is not None else "child.onnx")
        child.metadata_props.extend(kept)
        if verify_child:
            result.verification = verify(model, staged.runtime, provider=provider, atol=atol, rtol=rtol,
                                         input_shape=input_shape)
        if not result.passed and exact:
            result.seconds = time.perf_counter() - start
            why = result.verification.message or f"max rel error {result.verification.max_rel:.3e}"
            raise VerificationFailed(f"the {verb} child does not preserve the function ({why}); nothing written",
                                     result)
        append_record(child, history, make_record(verb, options, details, result.verification, model, input_shape))
        if output is not None:
            extra = onnx.ModelProto()
            extra.metadata_props.extend(child.metadata_props)
            with progress.stage(f"saving {Path(output).name}"):
                result.output = str(staged.commit(output, extra.SerializeToString()))
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


def deepen(model, layer=None, *, k1=None, k2=None, width=None, activation="auto", method="netmorph",
           algorithm="practical", batchnorm=False, after=None, seed=0, full_rank=True, output=None, force=False,
           verify=True, provider="auto", atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, input_shape=None, block=None,
           init="copy", count=1):
    """Replace a Conv/Gemm/MatMul layer by two layers computing the same function (network morphism eq. 6).

    full_rank (default): the solved factor gets a random null-space component, so it has the rank its shape
    allows; False keeps the minimum-norm solution, whose rank is that of the layer.
    With `block` (a residual Add's node name or output tensor, or 'A:B'): insert `count` identity-start copies
    of that residual block right after it, with `init` "copy" (its weights) or "random" (drawn at its scale).
    """
    from .passes.deepen import deepen_model
    options = dict(layer=layer, k1=k1, k2=k2, width=width, activation=activation, method=method,
                   algorithm=algorithm, batchnorm=batchnorm, after=after, seed=seed, full_rank=full_rank)
    if block is not None:
        options.update(block=block, init=init, count=count)
    return _run_pass("deepen", deepen_model, model, options, output, force, verify, provider, atol, rtol, input_shape)


def kernel(model, layer, *, size, output=None, force=False, verify=True, provider="auto", atol=DEFAULT_ATOL,
           rtol=DEFAULT_RTOL, input_shape=None):
    """Zero-pad a Conv kernel to `size` and grow its padding to match (paper, section 3.4.2)."""
    from .passes.kernel import kernel_model
    return _run_pass("kernel", kernel_model, model, dict(layer=layer, size=size), output, force, verify, provider,
                     atol, rtol, input_shape)


def subnet(model, layer, *, paths=2, depth=0, kernels=None, split="random", activation="auto", width=None,
           algorithm="practical", seed=0, output=None, force=False, verify=True, provider="auto", atol=DEFAULT_ATOL,
           rtol=DEFAULT_RTOL, input_shape=None):
    """Split a layer into parallel paths that sum to it, each optionally depth+1 layers (paper, section 3.5)."""
    from .passes.subnet import subnet_model
    options = dict(layer=layer, paths=paths, depth=depth, kernels=kernels, split=split, activation=activation,
                   width=width, algorithm=algorithm, seed=seed)
    return _run_pass("subnet", subnet_model, model, options, output, force, verify, provider, atol, rtol, input_shape)


def widen(model, layer, *, width=None, heads=None, method="netmorph", noise=0.0, zeros="auto", stream="auto", seed=0,
          dry_run=False, output=None, force=False,
          verify=True, provider="auto", atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, input_shape=None):
    """Give a layer more output channels; every coupled tensor follows (paper 3.4.1, Net2WiderNet).

    dry_run: only analyse and report the coupled group. zeros (netmorph): which side of the new channels gets
    zeros: auto (consumers before a ReLU-like op, so new channels train), producers or consumers. net2net noise
    sums to zero over each channel's copies, so the child stays exact. stream: how a residual stream under
    LayerNorm/RMSNorm grows: auto (duplicated at integer multiples, else LEMON, pre-norm only), duplicate, lemon.
    heads (instead of width): the number of heads a Q/K/V projection should have, per part of a fused QKV.
    """
    from .passes.widen import widen_model
    options = dict(layer=layer, width=width, heads=heads, method=method, noise=noise, zeros=zeros, stream=stream, seed=seed,
                   dry_run=dry_run)
    if dry_run:
        start = time.perf_counter()
        child, details = widen_model(load_model(model), **options)
        return child, MorphResult("widen", details, seconds=time.perf_counter() - start)
    return _run_pass("widen", widen_model, model, options, output, force, verify, provider, atol, rtol, input_shape)


def export_torch(model, *, output=None, force=False, verify=True, rtol=DEFAULT_RTOL, input_shape=None):
    """The model as a torch.nn.Module (extra onnxmorph[torch]), checked against ONNX Runtime and, with `output`,
    saved whole with torch.save. Returns (module, ExportReport)."""
    from .torch import export_torch as export
    check_output_path(output, model)  # never over the ONNX parent, whatever --force says
    return export(model, output=output, force=force, check=verify, rtol=rtol, input_shape=input_shape)


__all__ = ["deepen", "export_torch", "kernel", "subnet", "widen", "inspect", "verify", "MorphResult"]
