"""The rule table: for every op, the rules that carry the widened channel space through it.

A forward rule runs when the space is read at an input of a node, fn(an, node, tensor, entry, pos) with `pos` the
input positions that read `tensor`; a backward rule when the space is written at an output (something downstream
needs it there), fn(an, node, tensor, entry). `an` is the walk's state (coupling/analysis.py). A rule returns True
when it placed the space, False when it does not apply; the op's next rule is tried then, and when none applies the
op's refusal is raised. A rule may also refuse itself (an.refuse) when the op is its and the case is not exact.

Each rule family (one module of this package) registers its rules on import. Rules of one op run in registration
order, and coupling/__init__.py imports the families in a fixed order, so a family imported later adds fallbacks
(attention's head reshapes come after the plain reshape rules).
"""
from __future__ import annotations

from dataclasses import dataclass, field

WRITES = "this op writes the widened channels and onnxmorph cannot grow it"


@dataclass
class OpRules:
    forward: list = field(default_factory=list)
    backward: list = field(default_factory=list)
    refuse_forward: object = "unsupported op"   # a reason, or fn(an, node) -> reason
    refuse_backward: object = WRITES


RULES: dict[str, OpRules] = {}
NO_RULES = OpRules()   # custom domains, unknown ops


def rules_of(op: str) -> OpRules:
    return RULES.setdefault(op, OpRules())


def forward(*ops, both_ways: bool = False):
    """Register a forward rule of `ops`. both_ways: the op keeps the space in place on its data input and output,
    so the same function serves backwards too (called with pos None)."""
    def register(fn):
        for op in ops:
            rules_of(op).forward.append(fn)
            if both_ways:
                rules_of(op).backward.append(lambda an, node, tensor, entry, fn=fn: fn(an, node, tensor, entry, None))
        return fn
    return register


def backward(*ops):
    """Register a backward rule of `ops`."""
    def register(fn):
        for op in ops:
            rules_of(op).backward.append(fn)
        return fn
    return register


def refusal(*ops, forward=None, backward=None):
    """The reason given when none of the ops' rules applies (a string, or fn(an, node) -> str)."""
    for op in ops:
        if forward is not None:
            rules_of(op).refuse_forward = forward
        if backward is not None:
            rules_of(op).refuse_backward = backward


def reason(why, an, node) -> str:
    return why(an, node) if callable(why) else why
