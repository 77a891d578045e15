"""Every projection of every transformer fixture: `widen` is exact (verify at fp32 rounding) or refused with one of
the known one-line reasons. Two widths per layer: 2x, and the smallest growth the layer accepts (one more channel,
or the unit the refusal names: a head, a GQA group, 3 heads of a fused QKV)."""
import re

import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph.layers import GraphIndex, find_layers

from conftest import FIXTURES

TRANSFORMERS = sorted(p.name for p in FIXTURES.glob("*.onnx") if p.name.startswith(("hf_", "torch_transformer")))
SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}
UNIT = re.compile(r"a multiple of (\d+) more")
# The only refusals allowed on these fixtures: the classifier / LM head writes the graph output.
ALLOWED = ("widening changes graph output",)


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
    exact, refused = 0, []
    for layer, channels in _layers(fixture):
        try:
            for grow in (lambda: (_widen(fixture, layer, "2x"), 2 * channels),
                         lambda: _smallest_growth(fixture, layer, channels)):
                (child, result), width = grow()
                assert result.verification.passed and result.verification.max_rel < 2e-6, (layer, width)
                assert result.details.channels_to == width
            exact += 1
        except CannotMorph as refusal:
            assert any(reason in str(refusal) for reason in ALLOWED), f"{layer}: {refusal}"
            refused.append(layer)
    assert len(refused) == 1 and exact == len(_layers(fixture)) - 1, (exact, refused)
