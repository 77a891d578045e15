"""Every Conv/Gemm/MatMul layer of the timm fixtures (fixtures/export_timm_fixtures.py: ViT with fused qkv and
LayerScale, ConvNeXt, MobileNetV3, ResNet; legacy opset 17 and dynamo opset 18): deepen, kernel (convs), subnet
and widen (2x and the smallest growth the layer accepts) are exact at fp32 rounding, or refused for the reason
listed here."""
import re

import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers

from conftest import FIXTURES

TIMM = sorted(p.name for p in FIXTURES.glob("timm_*.onnx"))
UNIT = re.compile(r"a multiple of (\d+) more")
OUTPUT = "widening changes graph output"   # the classifier writes the graph output
# ConvNeXt's stream (and the depthwise convs on it) grows by integer multiples only: a depthwise conv between the
# stream and a norm would need its new channel to carry the mean of the old channels' different kernels (LEMON).
DEPTHWISE = "acts on the stream channel by channel; the LEMON fill does not go through it"
MULTIPLES_ONLY = {"timm_convnext_legacy17.onnx": ["/stem/stem.0/Conv", "/stages/stages.0/blocks/blocks.0/conv_dw/Conv",
                                                  "/stages/stages.0/blocks/blocks.0/mlp/fc2/MatMul",
                                                  "/stages/stages.1/downsample/downsample.1/Conv",
                                                  "/stages/stages.1/blocks/blocks.0/conv_dw/Conv",
                                                  "/stages/stages.1/blocks/blocks.0/mlp/fc2/MatMul"],
                  "timm_convnext_dynamo18.onnx": ["node_conv2d", "node_conv2d_1", "node_MatMul_10", "node_conv2d_2",
                                                  "node_conv2d_3", "node_MatMul_27"]}
# Smallest growth when it is not one channel: a head in each of Q, K and V of the fused qkv (3 x d_h = 24).
STEP = {"timm_vit_legacy17.onnx": {"/blocks/blocks.0/attn/qkv/MatMul": 24, "/blocks/blocks.1/attn/qkv/MatMul": 24},
        "timm_vit_dynamo18.onnx": {"node_MatMul_11": 24, "node_MatMul_81": 24}}
LAYERS = {"timm_vit_legacy17.onnx": 10, "timm_vit_dynamo18.onnx": 10, "timm_convnext_legacy17.onnx": 11,
          "timm_convnext_dynamo18.onnx": 11, "timm_mobilenetv3_legacy17.onnx": 15,
          "timm_mobilenetv3_dynamo18.onnx": 15, "timm_resnet_legacy17.onnx": 14, "timm_resnet_dynamo18.onnx": 14}


def _exact(morph):
    _, result = morph()
    assert result.verification.passed and result.verification.max_rel < 2e-6, result.verification.max_rel
    return result


def test_every_timm_fixture_is_listed():
    assert TIMM == sorted(LAYERS)


@pytest.mark.parametrize("fixture", TIMM)
def test_every_layer_of_a_timm_fixture(fixture):
    path = str(FIXTURES / fixture)
    layers = find_layers(GraphIndex(onnx.load(path)))
    assert len(layers) == LAYERS[fixture]
    heads = [layer for layer in layers if layer.id == layers[-1].id]
    for layer in layers:
        _exact(lambda: api.deepen(path, layer.id))
        _exact(lambda: api.subnet(path, layer.id))
        if layer.op == "Conv":
            _exact(lambda: api.kernel(path, layer.id, size=max(layer.kernel) + 2))
        multiples_only = layer.id in MULTIPLES_ONLY.get(fixture, [])
        step = layer.out_channels if multiples_only else STEP.get(fixture, {}).get(layer.id, 1)
        refused = OUTPUT if layer in heads else None
        for width in (2 * layer.out_channels, layer.out_channels + step):
            if refused:
                with pytest.raises(CannotMorph, match=re.escape(refused)):
                    api.widen(path, layer.id, width=str(width), seed=3)
                continue
            result = _exact(lambda: api.widen(path, layer.id, width=str(width), seed=3))
            assert result.details.channels_to == width
        if step > 1:   # one more channel is refused: a part of a head (the unit named), or off the multiples
            reason = re.escape(DEPTHWISE) if multiples_only else f"a multiple of {step} more"
            with pytest.raises(CannotMorph, match=reason):
                api.widen(path, layer.id, width=str(layer.out_channels + 1), seed=3)


def test_convnext_dynamo_head_gather_indices_grow():
    # dynamo's as_strided in ConvNeXt's head: the pooled (1, C, 1, 1) flattened to (C,), Gathered back by indices
    # 0..C-1 of shape (1, C, 1, 1); they grow to 0..C'-1 (2x by duplication, 17 by LEMON through the head norm)
    for width in (32, 17):
        child, result = api.widen(str(FIXTURES / "timm_convnext_dynamo18.onnx"), "node_conv2d_5", width=str(width))
        assert result.verification.max_rel < 2e-6
        indices = next(onnx.numpy_helper.to_array(t) for t in child.graph.initializer if t.name == "val_51")
        assert indices.shape == (1, width, 1, 1) and (indices.reshape(-1) == list(range(width))).all()


def test_vit_stream_grows_through_layer_scale_by_lemon():
    # not an integer multiple of d_model: LEMON, through timm's LayerScale (gamma's new entries 1)
    child, result = api.widen(str(FIXTURES / "timm_vit_legacy17.onnx"), "/blocks/blocks.0/mlp/fc2/MatMul",
                              width="33", seed=3)
    assert result.details.stream == "lemon" and result.verification.max_rel < 2e-6
    gammas = [onnx.numpy_helper.to_array(t) for t in child.graph.initializer if t.name.endswith("gamma")]
    assert len(gammas) == 4 and all(g.shape == (33,) and g[32] == 1 for g in gammas)
