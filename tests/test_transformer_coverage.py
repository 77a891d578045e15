"""Every projection of every transformer fixture: `widen` is exact (verify at fp32 rounding) or refused with one of
the known one-line reasons. Two widths per layer: 2x, and the smallest growth the layer accepts (one more channel,
or the unit the refusal names: a head, a GQA group, 3 heads of a fused QKV)."""
import re

import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers

from conftest import FIXTURES

TRANSFORMERS = sorted(p.name for p in FIXTURES.glob("*.onnx") if p.name.startswith(("hf_", "torch_transformer")))
SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}
UNIT = re.compile(r"a multiple of (\d+) more")
GRAPH_OUTPUT = "widening changes graph output"   # the classifier / LM head: refused at every width
POST_NORM = "post-norm"                           # BERT, nn.TransformerEncoder: 2x by duplication only
# Phi-3's qkv_proj under GQA: Q, K and V of different sizes in one output; a GQA group would grow Q by r heads
# and K, V by one each, a layout the coupling space (equal chunks) cannot hold. Refused at every width.
UNEVEN_QKV = "fused QKV of uneven parts"


def _layers(fixture):
    return [(layer.id, layer.out_channels) for layer in find_layers(GraphIndex(onnx.load(str(FIXTURES / fixture))))]


def _widen(fixture, layer, width):
    return api.widen(str(FIXTURES / fixture), layer, width=width, seed=3, input_shape=SHAPES.get(fixture))


def _smallest_growth(fixture, layer, channels):
    try:
        return _widen(fixture, layer, str(channels + 1)), channels + 1
    except CannotMorph as refusal:
        unit = UNIT.search(str(refusal))
        if not unit:
            raise
        return _widen(fixture, layer, str(channels + int(unit.group(1)))), channels + int(unit.group(1))


@pytest.mark.parametrize("fixture", TRANSFORMERS)
def test_every_projection_is_exact_or_refused_with_a_known_reason(fixture):
    outcome = {}
    for layer, channels in _layers(fixture):
        outcome[layer] = []
        for grow in (lambda: (_widen(fixture, layer, "2x"), 2 * channels),
                     lambda: _smallest_growth(fixture, layer, channels)):
            try:
                (child, result), width = grow()
            except CannotMorph as refusal:
                reason = next((r for r in (GRAPH_OUTPUT, POST_NORM, UNEVEN_QKV) if r in str(refusal)), None)
                assert reason, f"{layer}: {refusal}"
                outcome[layer].append(reason)
                continue
            assert result.verification.passed and result.verification.max_rel < 2e-6, (layer, width)
            assert result.details.channels_to == width
            outcome[layer].append("exact")
    heads = [layer for layer, seen in outcome.items() if seen == [GRAPH_OUTPUT, GRAPH_OUTPUT]]
    assert len(heads) == 1, outcome
    post_norm = [layer for layer, seen in outcome.items() if seen == ["exact", POST_NORM]]
    assert not post_norm or fixture.startswith(("hf_bert", "torch_transformer")), post_norm   # post-LN encoders
    uneven = [layer for layer, seen in outcome.items() if seen == [UNEVEN_QKV, UNEVEN_QKV]]
    assert not uneven or fixture.startswith("hf_phi3"), uneven
    assert all(seen == ["exact", "exact"] for layer, seen in outcome.items()
               if layer not in heads + post_norm + uneven)
