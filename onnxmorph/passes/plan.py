"""Growth plans: a TOML file of [[step]] tables, each a verb and that verb's long CLI options with - written as _.

    [[step]]
    verb = "widen"
    layer = "*/mlp/gate_proj/*"
    width = "2x"

    [[step]]
    verb = "deepen"
    block = "every:2"

The plan is read and checked whole before the model is loaded: TOML syntax, verbs, keys, value types and
choices. What only the model can tell (an unknown layer, a refusal) is found when the step runs. The options
of grow itself (-o, --force, --no-verify, --provider, --atol, --rtol, --input-shape, --json, --dry-run,
--verify-each) are not step keys; --seed is the seed of every step that gives none.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

TEXT, SIZE, INT, NUMBER, FLAG, KERNELS = "a string", "a count or a string", "a whole number", "a number", \
    "true or false", "a string or a list"
CHOICES = {
    ("deepen", "method"): ("netmorph", "idmorph"),
    ("deepen", "algorithm"): ("practical", "general"),
    ("widen", "method"): ("netmorph", "net2net"),
    ("widen", "zeros"): ("auto", "producers", "consumers"),
    ("widen", "stream"): ("auto", "duplicate", "lemon"),
    ("subnet", "split"): ("random", "equal"),
    ("subnet", "algorithm"): ("practical", "general"),
}
STEP_KEYS = {
    "deepen": {"layer": TEXT, "after": TEXT, "block": TEXT, "k1": SIZE, "k2": SIZE, "width": SIZE,
               "activation": TEXT, "method": TEXT, "algorithm": TEXT, "batchnorm": FLAG, "full_rank": FLAG,
               "min_norm": FLAG, "copy": FLAG, "random": FLAG, "count": INT, "seed": INT},
    "widen": {"layer": TEXT, "width": SIZE, "heads": INT, "method": TEXT, "noise": NUMBER, "zeros": TEXT,
              "stream": TEXT, "seed": INT},
    "kernel": {"layer": TEXT, "size": SIZE},
    "subnet": {"layer": TEXT, "paths": INT, "depth": INT, "kernels": KERNELS, "split": TEXT, "width": SIZE,
               "activation": TEXT, "algorithm": TEXT, "seed": INT},
}
GROW_OPTIONS = ("output", "force", "no_verify", "verify", "provider", "atol", "rtol", "input_shape", "json",
                "dry_run", "verify_each", "plan")
SELECTORS = ("layer", "after", "block")  # the keys that pick what a step grows
_BLOCK_ONLY = ("count", "copy", "random")


def _fits(kind: str, value) -> bool:
    if kind == FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == TEXT:
        return isinstance(value, str)
    if kind == SIZE:
        return isinstance(value, (int, str))
    if kind == INT:
        return isinstance(value, int)
    if kind == NUMBER:
        return isinstance(value, (int, float))
    return isinstance(value, str) or (isinstance(value, list) and all(
        isinstance(v, (int, str)) and not isinstance(v, bool) for v in value))


@dataclass
class Step:
    """One step as the plan gives it: `given` holds its keys as written (the CLI's long options, - as _)."""
    number: int
    verb: str
    given: dict = field(default_factory=dict)

    def options(self, seed: int = 0) -> dict:
        """The options of the verb's pass (api names): --copy/--random as init, --min-norm as full_rank, kernels
        as "5,3,1"; `seed` for a verb that draws random numbers and a step that gives none."""
        out = {k: v for k, v in self.given.items() if k not in ("copy", "random", "min_norm")}
        if "seed" in STEP_KEYS[self.verb]:
            out.setdefault("seed", seed)
        if self.given.get("random") or self.given.get("copy") is False:
            out["init"] = "random"
        elif "block" in self.given:
            out["init"] = "copy"
        if "min_norm" in self.given:
            out["full_rank"] = not self.given["min_norm"]
        if isinstance(out.get("kernels"), list):
            out["kernels"] = ",".join(str(k) for k in out["kernels"])
        return out

    def flags(self) -> dict:
        """The step's keys as the CLI's flags have them: full_rank = false is --min-norm, copy = false --random."""
        renamed = {"full_rank": "min_norm", "copy": "random"}
        return dict((renamed[k], True) if k in renamed and v is False else (k, v) for k, v in self.given.items())

    def describe(self) -> str:
        """The step as the verb's command-line options: `widen --layer '*/mlp/*' --width 2x`."""
        return " ".join([self.verb] + option_words(self.flags()))


def option_words(options: dict) -> list[str]:
    """Options as command-line words: --key value, a true flag alone, false flags and None left out."""
    words = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not False and value is not None:
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            words.extend([flag, shlex.quote(text)])
    return words


@dataclass
class Plan:
    steps: list[Step]
    name: str | None = None   # the plan file's name; None for a plan given as data


def _check_step(where: str, number: int, table) -> Step:
    at = f"{where}: step {number}"
    if not isinstance(table, dict):
        raise UsageError(f"{at}: a step is a [[step]] table, not {type(table).__name__}")
    verb = table.get("verb")
    if verb is None:
        raise UsageError(f"{at}: no verb; give verb = one of {', '.join(STEP_KEYS)}")
    if verb not in STEP_KEYS:
        raise UsageError(f"{at}: unknown verb {verb!r}; use one of {', '.join(STEP_KEYS)}")
    at = f"{at} ({verb})"
    keys = STEP_KEYS[verb]
    given = {k: v for k, v in table.items() if k != "verb"}
    for key, value in given.items():
        if key in GROW_OPTIONS:
            raise UsageError(f"{at}: {key!r} is an option of grow itself (--{key.replace('_', '-')}), not of a step")
        if key not in keys:
            raise UsageError(f"{at}: unknown key {key!r}; {verb} takes {', '.join(keys)}")
        if not _fits(keys[key], value):
            raise UsageError(f"{at}: {key} = {value!r} should be {keys[key]}")
        choices = CHOICES.get((verb, key))
        if choices and value not in choices:
            raise UsageError(f"{at}: {key} = {value!r} is none of {', '.join(choices)}")
    picked = [k for k in SELECTORS if k in given and k in keys]
    if verb == "deepen" and len(picked) != 1:
        raise UsageError(f"{at}: give exactly one of layer, after or block")
    if verb != "deepen" and not picked:
        raise UsageError(f"{at}: no layer; give layer = a layer id or a pattern")
    if verb == "deepen" and "block" not in given and any(k in given for k in _BLOCK_ONLY):
        raise UsageError(f"{at}: count, copy and random apply to block")
    if given.get("copy") is True and given.get("random") is True:
        raise UsageError(f"{at}: give copy or random, not both")
    if "full_rank" in given and "min_norm" in given:
        raise UsageError(f"{at}: give full_rank or min_norm, not both")
    if verb == "kernel" and "size" not in given:
        raise UsageError(f"{at}: no size; give size = K, \"HxW\" or \"DxHxW\"")
    if verb == "widen" and "width" not in given and "heads" not in given:
        raise UsageError(f"{at}: give width (or heads for an attention projection)")
    return Step(number, verb, given)


def parse_plan(data, name: str | None = None) -> Plan:
    """A plan from parsed TOML ({"step": [tables]}) or a list of step tables (dicts with a verb)."""
    where = name or "plan"
    if isinstance(data, dict):
        unknown = [k for k in data if k != "step"]
        if unknown:
            raise UsageError(f"{where}: unknown top-level key {unknown[0]!r}; a plan is a list of [[step]] tables")
        data = data.get("step", [])
    if not isinstance(data, list):
        raise UsageError(f"{where}: 'step' must be an array of tables ([[step]])")
    if not data:
        raise UsageError(f"{where}: no steps; give one [[step]] table per step")
    return Plan([_check_step(where, i, table) for i, table in enumerate(data, 1)], name)


def read_plan(source) -> Plan:
    """A Plan from a TOML file's path, a Plan, parsed TOML or a list of step tables."""
    if isinstance(source, Plan):
        return source
    if isinstance(source, (dict, list)):
        return parse_plan(source)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"no such plan file: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path.name}: not a text file (TOML plans are UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path.name}: not valid TOML: {exc}") from None
    return parse_plan(data, path.name)
