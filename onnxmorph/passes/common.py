"""Pieces the passes share: option parsing, the solver call with auto width, a layer's geometry."""
from __future__ import annotations

import functools

import numpy as np
from onnx import helper

from ..errors import CannotMorph, UsageError
from ..graph.edit import add_initializer, explicit_pads
from ..graph.einsum import contraction
from ..graph.fold import recording_float_casts, restore_float_casts
from ..graph.index import GraphIndex
from ..graph.layers import Layer
from ..solve import Factorization, SolveError, composite_size, factorize, identity_factorization, minimum_width
from .chain import LinearGeometry


def keeps_stored_types(pass_fn):
    """A pass whose model's Casts of constants from one float type to another (folded by GraphIndex) are put
    back afterwards over the source's own type (graph/fold.py): no kept tensor changes the type it is stored in."""
    @functools.wraps(pass_fn)
    def run(model, *args, **kwargs):
        with recording_float_casts(model) as casts:
            child, report = pass_fn(model, *args, **kwargs)
        restore_float_casts(child, casts)
        return child, report
    return run


def parse_width(width, c_out: int) -> int | None:
    """None, an int, '64' or a multiplier '4x' of the layer's output channels."""
    if width is None or width == "":
        return None
    text = str(width).strip().lower()
    try:
        if text.endswith("x"):
            value = int(round(float(text[:-1]) * c_out))
        else:
            value = int(text)
    except ValueError:
        raise UsageError(f"bad --width {width!r}: give a count (64) or a multiplier (4x)") from None
    if value < 1:
        raise UsageError(f"--width must be positive, got {width!r}")
    return value


def parse_kernel(k, rank: int, what: str):
    """None, an int, 'K', 'HxW' or a tuple, as a tuple of `rank` ints."""
    if k is None or k == "":
        return None
    if rank == 0:
        if str(k) not in ("1",) and k != (1,) and k != 1:
            raise UsageError(f"{what} applies to Conv layers; a fully-connected layer has no kernel")
        return ()
    try:
        if isinstance(k, (tuple, list)):
            parts = [int(v) for v in k]
        else:
            parts = [int(v) for v in str(k).lower().split("x")]
    except ValueError:
        raise UsageError(f"bad {what} {k!r}: give K or HxW") from None
    if len(parts) == 1:
        parts = parts * rank
    if len(parts) != rank or any(p < 1 for p in parts):
        raise UsageError(f"bad {what} {k!r} for a layer with {rank} spatial dims")
    return tuple(parts)


# Measured: amplification 2160 gave 1.05e-5 relative output error in float32, 148 gave 9e-7.
AMPLIFICATION_LIMIT = 200.0


def _kernel_cover_refusal(kernel, k1, k2) -> str:
    """Why F_l (k1) and F_{l+1} (k2) cannot compose to the kernel, and the smallest pairs that can: the other
    factor completed for each one given, and the even split."""
    def size(ks):
        return "x".join(str(k) for k in ks) if len(set(ks)) > 1 else str(ks[0])
    with_k1 = tuple(max(1, k - a + 1) for a, k in zip(k1, kernel))
    with_k2 = tuple(max(1, k - b + 1) for b, k in zip(k2, kernel))
    even = tuple((k + 2) // 2 for k in kernel)
    pairs = dict.fromkeys([(size(k1), size(with_k1)), (size(with_k2), size(k2)), (size(even), size(
        tuple(k + 1 - e for k, e in zip(kernel, even))))])
    composed = size(tuple(a + b - 1 for a, b in zip(k1, k2)))
    options = ", or ".join(f"--k1 {a} --k2 {b}" for a, b in pairs)
    return (f"F_l (--k1 {size(k1)}) and F_l+1 (--k2 {size(k2)}) compose to a {composed} kernel, smaller than the "
            f"layer's {size(kernel)}: k1 + k2 - 1 must cover it; the smallest that do: {options}")


def solve_factors(weight, width, k1, k2, groups, method, algorithm, seed, c_out, width_requested=None,
                  full_rank=True, progress=None, solve=True):
    """Factor a layer weight into two (the deepen step), choosing the auto width; errors as the CLI reports them.
    width_requested: --width as the user typed it, quoted in errors beside the channel count it means.
    full_rank: random null-space component in the solved factor (see solve.factorize).
    solve=False (grow --dry-run): zero factors of the shapes the solve would give, at the auto width's start
    (the minimum; a real solve may add a few percent against float32 amplification)."""
    rank = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    k1 = k1 if k1 is not None else kernel
    k2 = k2 if k2 is not None else (1,) * rank
    if method == "idmorph":
        if width is not None and width != c_out:
            raise UsageError(f"idmorph keeps the width of the layer ({c_out}); drop --width or use netmorph")
        try:
            return identity_factorization(weight, k1, k2, groups), c_out
        except SolveError as exc:
            raise UsageError(str(exc)) from None
    if method != "netmorph":
        raise UsageError(f"unknown method {method!r}: use netmorph or idmorph")
    if algorithm not in ("practical", "general"):
        raise UsageError(f"unknown algorithm {algorithm!r}: use practical or general")
    if any(a + b - 1 < k for a, b, k in zip(k1, k2, kernel)):
        raise CannotMorph(_kernel_cover_refusal(kernel, k1, k2))
    minimum = minimum_width(weight.shape, k1, k2, groups, algorithm)
    auto = width is None
    if auto:
        width = -(-max(c_out, minimum) // groups) * groups
    elif width % groups:
        raise UsageError(f"width {width} must be a multiple of the layer's group count {groups}")
    if not solve:
        return _unsolved(weight, width, k1, k2, groups), minimum
    try:
        fac = factorize(weight, width, k1, k2, groups, algorithm=algorithm, seed=seed, full_rank=full_rank,
                        progress=progress)
        # Auto width: the smallest width whose factors do not amplify float32 rounding much. At the exact
        # minimum the block systems are square and often ill-conditioned; a few percent more width fixes it.
        tries = 0
        while auto and fac.amplification > AMPLIFICATION_LIMIT and tries < 12:
            step = 1.08 if tries == 0 else 1.04  # the bare minimum is square: start with real slack
            width = -(-max(width + groups, int(width * step)) // groups) * groups
            candidate = factorize(weight, width, k1, k2, groups, algorithm=algorithm, seed=seed,
                                  full_rank=full_rank)
            if candidate.amplification < fac.amplification:
                fac = candidate
            tries += 1
        return fac, minimum
    except SolveError as exc:
        typed = f" (--width {width_requested} means {width} channels)" \
            if width_requested is not None and str(width_requested) != str(width) else ""
        raise CannotMorph(f"{exc}{typed}") from None


def _unsolved(weight, width, k1, k2, groups) -> Factorization:
    """Zero factors of the solved shapes, centred in the composite kernel; residual and amplification unknown."""
    c_out, c_in_g, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    offset = tuple((t - k) // 2 for t, k in zip(composite_size(k1, k2), kernel))
    return Factorization(np.zeros((width, c_in_g) + tuple(k1)), np.zeros((c_out, width // groups) + tuple(k2)),
                         offset, float("nan"), float("nan"), "not solved (dry run)", solved_k1=k1, solved_k2=k2)


def geometry_of(index: GraphIndex, layer: Layer) -> LinearGeometry:
    if layer.op == "Conv":
        return LinearGeometry("Conv", explicit_pads(index, layer), tuple(layer.kernel), tuple(layer.strides),
                              tuple(layer.dilations), layer.group)
    if layer.op == "Einsum":   # replaced by MatMuls on its input flattened over the contracted axes (chain_input)
        return LinearGeometry("MatMul")
    return LinearGeometry(layer.op, trans_a=layer.trans_a, beta=layer.beta)


def chain_input(index: GraphIndex, layer: Layer) -> tuple[str, list]:
    """(the tensor the layers replacing `layer` read, the nodes that make it). An Einsum contraction's input is
    flattened over its contracted axes, a Reshape to (free axes..., -1) that keeps the free axes as they are (0),
    so MatMuls of the flattened weight compute it; any other layer's input is read as it is."""
    if layer.op != "Einsum":
        return layer.node.input[0], []
    free = len(contraction(layer.node).free)
    shape = add_initializer(index, f"{layer.id}/morph_flat.shape", np.array([0] * free + [-1], dtype=np.int64))
    out = index.unique_name(f"{layer.id}/morph_flat")
    return out, [helper.make_node("Reshape", [layer.node.input[0], shape], [out], name=out)]
