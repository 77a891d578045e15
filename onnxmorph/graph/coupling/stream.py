"""Rules for the residual stream's ends: an embedding table (Gather of a constant table by token ids) writes the
stream and grows a column per channel; a Gather that selects tokens (ViT's class token, the last position) reads
it along another axis. The norms over the stream are coupling/normalization.py's."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..proto import attr, norm_axis
from ..space import Entry, ParamUse
from .table import backward, forward


@forward("Gather")
def select_tokens(an, node, tensor, entry, pos):
    """Gather by constant indices along another axis than the space's: the space moves with the axes."""
    if pos != [0] or not an.index.is_constant(node.input[1]):
        return False
    axis = norm_axis(attr(node, "axis", 0), an.rank(tensor))
    if axis == entry.axis:
        return False
    picked = np.asarray(an.index.constant(node.input[1]))
    moved = entry.axis if entry.axis < axis else entry.axis + picked.ndim - 1
    an.add(node.output[0], replace(entry, axis=moved))
    return True


@backward("Gather")
def embedding(an, node, tensor, entry):
    """A constant (tokens, D) table gathered on axis 0 writes the whole last axis: its columns grow."""
    if not an.index.is_constant(node.input[0]) or attr(node, "axis", 0) != 0:
        return False
    table = an.index.constant(node.input[0])
    rank = an.rank(tensor)
    if table.ndim != 2 or rank is None or entry.axis != rank - 1 or not an.whole_axis(tensor, entry):
        return False
    an.group.params.append(ParamUse(node, 0, Entry(1), "embedding"))
    return True
