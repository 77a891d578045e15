"""What was done to a model: one record per morph in the child's metadata_props["onnxmorph.history"].

The value is a JSON list, oldest first; a child carries its parent's records plus its own. A record holds the
verb and its options as given, the seed, the solver's residual and amplification where the morph has them, the
verification figures and provider, the onnxmorph version, and the sha256 of the parent (its .onnx file, or its
serialized proto for an in-memory model), so a grown model found months later can be regrown from its parent.
producer_name and producer_version are left as the exporter wrote them: they name the tool that defined the
graph's conventions (PyTorch, tf2onnx, ...), which tools and people key on; onnxmorph's part is in this history.
"""
from __future__ import annotations

import hashlib
import json

import onnx

from .errors import compact
from .passes.plan import option_words
from .version import __version__

HISTORY_KEY = "onnxmorph.history"


def parent_sha256(source) -> str | None:
    """sha256 of the parent's file, or of its serialized proto (None past protobuf's 2 GB cap)."""
    digest = hashlib.sha256()
    if isinstance(source, onnx.ModelProto):
        try:
            digest.update(source.SerializeToString(deterministic=True))
        except ValueError:
            return None
        return digest.hexdigest()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_history(model: onnx.ModelProto) -> list[dict]:
    """The records a model carries (an unreadable history counts as none)."""
    for prop in model.metadata_props:
        if prop.key == HISTORY_KEY:
            try:
                history = json.loads(prop.value)
            except ValueError:
                return []
            return [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []
    return []


def make_record(verb: str, options: dict, details, verification, source, input_shape=None, steps=None) -> dict:
    """One morph's record. steps (grow): each step's verb, options as the plan gave them, seed, what it grew and
    its solver figures; the record then stands for the whole plan, one grow in the lineage."""
    record = {"verb": verb, "options": {k: v for k, v in options.items() if k not in ("seed", "dry_run")},
              "seed": options.get("seed"), "input_shape": list(input_shape or []),
              "residual": getattr(details, "residual", None), "amplification": getattr(details, "amplification", None),
              "onnxmorph": __version__,
              "parent": {"file": None if isinstance(source, onnx.ModelProto) else str(source).replace("\\", "/")
                         .rsplit("/", 1)[-1], "sha256": parent_sha256(source)}}
    if verification is not None:
        record["verification"] = {"passed": verification.passed, "max_rel": verification.max_rel,
                                  "max_abs": verification.max_abs, "provider": verification.child_provider,
                                  "samples": verification.samples, "rtol": verification.rtol,
                                  "atol": verification.atol, "tolerance": verification.tolerance,
                                  "precision": verification.precision, "floor": verification.floor,
                                  "ratio": verification.ratio}
    else:
        record["verification"] = {"skipped": True}
    if steps is not None:
        record["steps"] = steps
    return compact(record)


def append_record(child: onnx.ModelProto, parent: onnx.ModelProto, record: dict) -> None:
    history = read_history(parent) + [record]
    kept = [p for p in child.metadata_props if p.key != HISTORY_KEY]
    child.ClearField("metadata_props")
    child.metadata_props.extend(kept)
    child.metadata_props.add(key=HISTORY_KEY, value=json.dumps(history, separators=(",", ":")))


def command_line(record: dict) -> str:
    """The record as the command that regrows the child from its parent."""
    parts = ["onnxmorph", record.get("verb", "?"), record.get("parent", {}).get("file") or "PARENT"]
    parts.extend(option_words(record.get("options", {})))
    if "seed" in record:
        parts.extend(["--seed", str(record["seed"])])
    parts.extend(f"--input-shape {s}" for s in record.get("input_shape", []))
    return " ".join(parts)


def step_line(step: dict) -> str:
    """A grow step as the verb's options (what the plan's [[step]] table says), with its seed."""
    seed = ["--seed", str(step["seed"])] if "seed" in step else []
    return " ".join([step.get("verb", "?"), *option_words(step.get("options", {})), *seed])


def lineage_lines(history: list[dict]) -> list[str]:
    if not history:
        return []
    out = [f"history: {len(history)} morph{'s' if len(history) != 1 else ''} (oldest first)"]
    for i, r in enumerate(history, 1):
        v = r.get("verification", {})
        check = "not verified" if v.get("skipped") or not v else \
            f"verified max rel {v.get('max_rel', float('nan')):.2e}" + \
            (f" ({v['ratio']:.2f} x the parent's floor {v['floor']:.1e})" if isinstance(v.get("floor"), float) and
             isinstance(v.get("ratio"), float) else "") + f" on {v.get('provider', '?')}"
        figures = ", ".join(f"{k} {r[k]:{fmt}}" for k, fmt in (("residual", ".2e"), ("amplification", ".1f"))
                            if isinstance(r.get(k), (int, float)))
        sha = r.get("parent", {}).get("sha256") or "?"
        out.append(f"  {i}. {command_line(r)}")
        out.extend(f"       step {k}: {step_line(step)}" for k, step in enumerate(r.get("steps", []), 1))
        out.append(f"     {check}{'; ' + figures if figures else ''}; parent sha256 {sha[:16]}; "
                   f"onnxmorph {r.get('onnxmorph', '?')}")
    return out
