"""The public functions. The CLI calls only these.

Each morph takes a path or ModelProto plus options named like the CLI flags, builds the child on a private
copy, checks it on ONNX Runtime (unless verify=False) and returns (child, MorphResult). With `output` it also
writes the child, atomically, and only once the check has passed.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from inspect import signature
from pathlib import Path


import onnx

from . import progress
from .errors import VerificationFailed
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
        if self.output:
            out.append(f"wrote {self.output}")
        out.append(f"total time {self.seconds:.2f} s")
        return out

    def to_dict(self) -> dict:
        return {"verb": self.verb, "details": asdict(self.details),
                "verification": self.verification.to_dict() if self.verification else None,
                "output": self.output, "seconds": self.seconds, "passed": self.passed}


def _run_pass(verb, pass_fn, model, options, output, force, verify_child, provider, atol, rtol, input_shape,
              exact=True):
    """Load once, morph in place, serialize once: ORT verifies those bytes (or that staged file, with external
    data) and the same bytes are written, with the provenance record appended as a protobuf merge. A parent with
    big external data is read lazily; the big tensors the pass makes go to a spill file in the work folder, so
    memory holds one of them at a time (graph/external.py)."""
    start = time.perf_counter()
    label = "the model" if isinstance(model, onnx.ModelProto) else Path(str(model)).name
    with progress.stage(f"loading {label}"):
        child = load_model(model)  # a path is parsed once; a caller's ModelProto is copied, never modified
    check_output_path(output, model)
    if output is not None:
        check_writable(output, force)
    history = onnx.ModelProto()
    history.metadata_props.extend(child.metadata_props)   # the parent's record, for the child's lineage
    # No onnx.checker here: real exports (old Caffe2, custom domains) often fail it while running fine.
    # ONNX Runtime's run of parent and child is the check that counts; the tests run the full checker.
    takes_progress = "progress" in signature(pass_fn).parameters
    with tempfile.TemporaryDirectory(dir=_work_folder(model, output), prefix=".onnxmorph-") as tmp:
        with spilling(Path(tmp)) as spill, progress.stage(f"{verb}: solving and building the child") as bar:
            child, details = pass_fn(child, **options, **({"progress": bar} if takes_progress else {}))
        result = MorphResult(verb, details)
        if verify_child or output is not None:
            _stage_verify_commit(verb, child, result, model, options, history, tmp, output, verify_child,
                                 dict(provider=provider, atol=atol, rtol=rtol, input_shape=input_shape), exact, start,
                                 spill.path)
        else:
            append_record(child, history, make_record(verb, options, details, None, model, input_shape))
        if result.output is None:   # the work folder goes: the child returned holds what it spilled
            materialize(child, tmp)
    result.seconds = time.perf_counter() - start  # the save included
    return child, result


def _work_folder(model, output):
    """Where the work folder goes: beside the output; for a lazily read parent without one, beside the parent
    (the same file system, so its data is copied in the kernel and no RAM-backed /tmp fills up); else the system's."""
    if output is not None:
        return Path(output).parent
    if not isinstance(model, onnx.ModelProto) and os.access(Path(str(model)).parent, os.W_OK):
        return Path(str(model)).parent
    return None


def _stage_verify_commit(verb, child, result, model, options, history, tmp, output, verify_child, check, exact,
                         start, spilled=None):
    """Serialize the child once, verify it against the parent, and (with an output) commit those same bytes.
    spilled: the pass's spill file, which becomes the child's data file when it holds mostly live tensors."""
    kept = list(child.metadata_props)
    child.ClearField("metadata_props")
    with progress.stage("serializing the child") as bar:
        staged = StagedModel(child, Path(tmp), Path(output).name if output is not None else "child.onnx",
                             progress=bar, adopt=spilled)
    child.metadata_props.extend(kept)
    if verify_child:
        result.verification = verify(model, staged.runtime, **check)
    if not result.passed and exact:
        result.seconds = time.perf_counter() - start
        v = result.verification
        why = v.message or (f"max rel error {v.max_rel:.3e}, {v.ratio:.1f} x the parent's floor {v.floor:.1e}")
        raise VerificationFailed(f"the {verb} child does not preserve the function ({why}); nothing written",
                                 result)
    append_record(child, history, make_record(verb, options, result.details, result.verification, model,
                                              check["input_shape"]))
    if output is not None:
        extra = onnx.ModelProto()
        extra.metadata_props.extend(child.metadata_props)
        with progress.stage(f"saving {Path(output).name}"):
            result.output = str(staged.commit(output, extra.SerializeToString()))


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
    from .passes.deepen import deepen_model
    options = dict(layer=layer, k1=k1, k2=k2, width=width, activation=activation, method=method,
                   algorithm=algorithm, batchnorm=batchnorm, after=after, seed=seed, full_rank=full_rank)
    if block is not None:
        options.update(block=block, init=init, count=count)
    return _run_pass("deepen", deepen_model, model, options, output, force, verify, provider, atol, rtol, input_shape)


def kernel(model, layer, *, size, output=None, force=False, verify=True, provider="auto", atol=None,
           rtol=None, input_shape=None):
    """Zero-pad a Conv kernel to `size` and grow its padding to match (paper, section 3.4.2)."""
    from .passes.kernel import kernel_model
    return _run_pass("kernel", kernel_model, model, dict(layer=layer, size=size), output, force, verify, provider,
                     atol, rtol, input_shape)


def subnet(model, layer, *, paths=2, depth=0, kernels=None, split="random", activation="auto", width=None,
           algorithm="practical", seed=0, output=None, force=False, verify=True, provider="auto", atol=None,
           rtol=None, input_shape=None):
    """Split a layer into parallel paths that sum to it, each optionally depth+1 layers (paper, section 3.5)."""
    from .passes.subnet import subnet_model
    options = dict(layer=layer, paths=paths, depth=depth, kernels=kernels, split=split, activation=activation,
                   width=width, algorithm=algorithm, seed=seed)
    return _run_pass("subnet", subnet_model, model, options, output, force, verify, provider, atol, rtol, input_shape)


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
