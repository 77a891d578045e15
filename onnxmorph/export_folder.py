"""Hugging Face export folders (Optimum's main_export: model.onnx beside config.json): a child written to a folder
(`-o DIR/`) gets the folder's config.json with its new sizes, and the folder's other files (generation_config.json,
tokenizer files) copied, so that it loads and generates as its parent did (ORTModelForCausalLM.from_pretrained).

The sizes follow the morph's report: deepen --block adds decoder layers (num_hidden_layers); widen of the residual
stream changes hidden_size (head_dim is then written, since it no longer is hidden_size / heads); widen of a layer's
heads or MLP changes that layer's num_attention_heads / num_key_value_heads / intermediate_size. A config holds one
value for all layers: it gets the new value when every layer has it, and `onnxmorph_layer_sizes` lists the sizes
per layer whenever they differ (a note says so: ORTModelForCausalLM sizes every layer's first, empty cache alike).
Other ONNX files of the folder (the legacy layout's second decoder) are not copied: they would not match the child.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError

# Canonical size -> the keys configs of different families store it under (GPT-2 writes n_layer, n_head, ...).
_KEYS = {"num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
         "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
         "num_key_value_heads": ("num_key_value_heads",),
         "hidden_size": ("hidden_size", "n_embd", "d_model"),
         "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim")}
PER_LAYER = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
LAYER_SIZES = "onnxmorph_layer_sizes"
_LAYER_INDEX = re.compile(r"(?:^|[/.])(?:layers|layer|h|blocks|block)\.(\d+)(?:[/.]|$)")


def is_folder_output(output) -> bool:
    """-o names a folder: an existing directory, or a path ending in a separator."""
    return output is not None and (str(output).endswith(("/", os.sep)) or Path(output).is_dir())


def source_folder(model) -> Path | None:
    """The export folder a model file sits in (a config.json beside it), or None."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    folder = Path(model).resolve().parent
    return folder if (folder / "config.json").is_file() else None


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {folder / 'config.json'}: {exc}") from None


def _get(config: dict, size: str):
    for key in _KEYS[size]:
        if config.get(key) is not None:
            return key, config[key]
    return None, None


def _set(config: dict, size: str, value) -> None:
    """Under the key the config holds the size (GPT-2's n_inner may be null: it is set then)."""
    key = _get(config, size)[0] or next((k for k in _KEYS[size] if k in config), None)
    if key is not None:
        config[key] = value


def _layers(config: dict) -> int:
    return int(_get(config, "num_hidden_layers")[1] or 0)


def _per_layer(config: dict) -> dict:
    """Per-layer sizes: the record of earlier morphs, else every layer at the model-wide value."""
    record = {k: list(v) for k, v in (config.get(LAYER_SIZES) or {}).items()}
    n = _layers(config)
    for size in PER_LAYER:
        if size not in record:
            _, value = _get(config, size)
            if size == "num_key_value_heads" and value is None:
                _, value = _get(config, "num_attention_heads")   # MHA: as many KV heads as heads
            if size == "intermediate_size" and value is None and _get(config, "hidden_size")[1]:
                value = 4 * _get(config, "hidden_size")[1]        # GPT-2's n_inner None
            if value is not None:
                record[size] = [value] * n
    return record


def layer_index(name: str) -> int | None:
    """The decoder layer a node belongs to, from the exporter's names (/model/layers.3/..., /transformer/h.3/...)."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def child_config(config: dict, verb: str, details) -> tuple[dict, list[str]]:
    """The child's config.json (a copy) and notes on what could not be said in it."""
    config = json.loads(json.dumps(config))
    notes = []
    head_dim = config.get("head_dim") or _head_dim(config)
    record = _per_layer(config)
    if verb == "deepen" and getattr(details, "block", None):
        added = getattr(details, "layers_added", 0)
        if added:
            sources = [i for i in (layer_index(u) for u in details.units) if i is not None]
            n = _layers(config)
            per_layer = [v for k, v in config.items() if isinstance(v, list) and len(v) == n and k != LAYER_SIZES]
            for values in list(record.values()) + per_layer:   # layer_types (Qwen2) and the like follow
                copied = [values[i] for i in sources if i < len(values)] or values[-1:]
                for _ in range(details.count):
                    values.extend(copied)
            _set(config, "num_hidden_layers", n + added)
    elif verb == "widen":
        group = details.group or {}
        if details.stream:   # the residual stream: hidden_size
            _set(config, "hidden_size", details.channels_to)
            if head_dim and not config.get("head_dim"):
                config["head_dim"] = head_dim
        else:
            index = layer_index(details.layer)
            if index is None or index >= _layers(config):
                notes.append(f"config.json: the layer of {details.layer} is not in its name; per-layer sizes unchanged")
            elif group.get("head_dim"):
                units_from, units_to = details.units
                for size in ("num_attention_heads", "num_key_value_heads"):
                    if size in record:
                        record[size][index] = record[size][index] * units_to // units_from
                if head_dim and not config.get("head_dim"):
                    config["head_dim"] = head_dim
            elif "intermediate_size" in record:
                record["intermediate_size"][index] = details.channels_to // max(details.parts, 1)
    uneven = {}
    for size, values in record.items():
        if len(set(values)) == 1:
            if next((k for k in _KEYS[size] if k in config), None) is not None:
                _set(config, size, values[0])
            elif size == "num_key_value_heads" and _get(config, "num_attention_heads")[1] != values[0]:
                config["num_key_value_heads"] = values[0]
        elif values:
            uneven[size] = values
    config.pop(LAYER_SIZES, None)
    if uneven:
        config[LAYER_SIZES] = uneven
        notes.append(f"config.json: the layers differ in {', '.join(uneven)} ({LAYER_SIZES} lists them per layer); "
                     "a config holds one value for all layers, so loaders that size every layer alike "
                     "(ORTModelForCausalLM's first, empty cache) need every layer grown the same way")
    return config, notes


def _head_dim(config: dict):
    _, hidden = _get(config, "hidden_size")
    _, heads = _get(config, "num_attention_heads")
    return hidden // heads if hidden and heads else None


def write_folder(source: Path, folder: Path, config: dict, child_name: str, force: bool) -> list[str]:
    """config.json (atomically) and the source folder's other non-ONNX files into `folder`; the files written."""
    written = []
    for item in sorted(source.iterdir()):
        if not item.is_file() or item.name == child_name or item.suffix in (".onnx", ".onnx_data", ".data") or \
                item.name.startswith("."):
            continue
        target = folder / item.name
        if target.exists() and not force and target.resolve() != item.resolve():
            raise UsageError(f"output exists: {target} (use --force to overwrite)")
        if target.resolve() == item.resolve():
            continue
        with tempfile.NamedTemporaryFile("w" if item.name == "config.json" else "wb", dir=folder, delete=False,
                                         prefix=f".{item.name}.") as tmp:
            if item.name == "config.json":
                json.dump(config, tmp, indent=2)
                tmp.write("\n")
            else:
                with open(item, "rb") as src:
                    shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, target)
        written.append(str(target))
    return written
