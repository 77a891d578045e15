"""Decoder families beyond GPT-2 and Llama (fixtures/export_decoder_fixtures.py): the pattern each one adds widens
exactly (both methods, at 2x and at the smallest growth) or is refused in one line; the children train.

- GPT-NeoX: fused query_key_value viewed as (B, S, H, 3·d_h): Q/K/V interleaved per head, a head is 3·d_h
  consecutive features; partial rotary; parallel residual.
- Qwen2: q/k/v biases grow with their GQA group.
- Gemma: RMSNorm scale (1 + weight) (folded to one constant by both exporters), embeddings times sqrt(d_model),
  head_dim 16 with 4 heads on d_model 32, GeGLU, tied embeddings.
- Phi-3: fused gate_up_proj (chunk(2)): a channel grows in both parts; fused qkv_proj of uneven parts: refused.
- OPT: Q scaled before the head split; learned positions; ReLU FFN.
"""
import re

import onnx
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph

from conftest import FIXTURES

METHODS = ["netmorph", "net2net"]


def _widen(fixture, layer, width, method, **kw):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=5, **kw)
    onnx.checker.check_model(child)
    assert result.verification.passed and result.verification.max_rel < 2e-6, result.verification.max_rel
    return child, result


# (fixture, layer, unit: the smallest growth, head_dim or None)
NEOX_QKV = "/model/gpt_neox/layers.0/attention/query_key_value/MatMul"
HEADS = [("hf_gpt_neox_legacy17.onnx", NEOX_QKV, 24, 24),                          # interleaved q, k, v per head
         ("hf_gpt_neox_dynamo18.onnx", "node_MatMul_42", 24, 24),
         ("hf_qwen2_legacy17.onnx", "/model/model/layers.0/self_attn/q_proj/MatMul", 16, 8),   # biased GQA
         ("hf_qwen2_dynamo18.onnx", "node_MatMul_55", 8, 8),                                    # k_proj
         ("hf_gemma_legacy17.onnx", "/model/model/layers.1/self_attn/q_proj/MatMul", 32, 16),  # head_dim 16
         ("hf_gemma_dynamo18.onnx", "node_linear_2", 16, 16),                                  # v_proj
         ("hf_opt_legacy17.onnx", "/model/decoder/layers.0/self_attn/q_proj/MatMul", 8, 8),     # Q scaled
         ("hf_opt_dynamo18.onnx", "node_MatMul_45", 8, 8)]


def _ids(cases):
    return [f"{c[0][3:-5]}:{c[1].split('/')[-2] if '/' in c[1] else c[1]}" for c in cases]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fixture,layer,unit,head_dim", HEADS, ids=_ids(HEADS))
def test_heads_grow_whole(fixture, layer, unit, head_dim, method):
    channels = None
    for width in ("2x", "unit"):
        if width == "unit":
            width = str(channels + unit)
        child, result = _widen(fixture, layer, width, method)
        channels = result.details.channels_from
        assert result.details.group["head_dim"] == head_dim
    with pytest.raises(CannotMorph, match=f"a multiple of {unit} more than {channels}"):
        api.widen(str(FIXTURES / fixture), layer, width=str(channels + 1), seed=5)


def test_qwen2_qkv_biases_grow_with_the_group():
    """Widening any of q, k, v grows the GQA group in all three, and their three biases with it."""
    for layer in ("q_proj", "k_proj", "v_proj"):
        _, result = _widen("hf_qwen2_legacy17.onnx", f"/model/model/layers.0/self_attn/{layer}/MatMul", "2x",
                           "netmorph")
        params = result.details.group["parameters"]
        assert sorted(p.split("/")[-2] for p in params) == ["k_proj", "q_proj", "v_proj"]
        assert all(p.endswith(":add_const") for p in params)


def test_neox_head_keeps_its_q_k_v_together():
    """A GPT-NeoX head is 3·d_h consecutive output features (its q, k and v): the unit is that triple, so 4 heads
    of 24 at 96 features; a new head copies (net2net) a whole old triple."""
    import numpy as np
    child, result = _widen("hf_gpt_neox_legacy17.onnx", NEOX_QKV, "120", "net2net")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in child.graph.initializer}
    w = weights[next(n.input[1] for n in child.graph.node if n.name == NEOX_QKV)]
    assert w.shape == (32, 120)
    assert any(np.array_equal(w[:, 96:], w[:, h * 24:(h + 1) * 24]) for h in range(4))


# The residual stream: duplication at 2x, LEMON at one more channel; through GPT-NeoX's parallel residual,
# Gemma's (1 + weight) RMSNorm and sqrt(d_model) embedding scale, OPT's learned positions, Phi-3, Qwen2.
STREAM = [("hf_gpt_neox_legacy17.onnx", "/model/gpt_neox/layers.0/attention/dense/MatMul", "layer"),
          ("hf_gpt_neox_dynamo18.onnx", "node_MatMul_141", "layer"),
          ("hf_gemma_legacy17.onnx", "/model/model/layers.0/self_attn/o_proj/MatMul", "rms"),
          ("hf_gemma_dynamo18.onnx", "node_linear_6", "rms"),
          ("hf_opt_legacy17.onnx", "/model/decoder/layers.0/fc2/Gemm", "layer"),
          ("hf_opt_dynamo18.onnx", "node_MatMul_76", "layer"),
          ("hf_phi3_legacy17.onnx", "/model/model/layers.0/mlp/down_proj/MatMul", "rms"),
          ("hf_qwen2_dynamo18.onnx", "node_linear_3", "rms")]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fixture,layer,kind", STREAM, ids=_ids(STREAM))
def test_stream_grows_at_any_width(fixture, layer, kind, method):
    _, result = _widen(fixture, layer, "2x", method)
    assert result.details.stream == "duplicate"
    _, result = _widen(fixture, layer, "33", method)
    assert result.details.stream == "lemon" and result.details.channels_to == 33


def test_gemma_norm_scales_are_one_plus_weight():
    """Gemma's RMSNorm multiplies by (1 + weight); both exporters fold the Add into one constant, a plain norm
    scale, which is then copied with the stream."""
    for fixture, layer in (("hf_gemma_legacy17.onnx", "/model/model/layers.0/self_attn/o_proj/MatMul"),
                           ("hf_gemma_dynamo18.onnx", "node_linear_3")):
        _, result = _widen(fixture, layer, "2x", "netmorph")
        roles = [p.split(":")[-1] for p in result.details.group["parameters"]]
        assert len(result.details.group["norms"]) == 5 and roles.count("norm_scale") == 5


# Feed-forward: GeGLU, ReLU, GPT-NeoX's GELU; Phi-3's fused gate_up grows a channel in both parts.
FFN = [("hf_gemma_legacy17.onnx", "/model/model/layers.0/mlp/gate_proj/MatMul", 1),
       ("hf_opt_dynamo18.onnx", "node_linear_4", 1),
       ("hf_gpt_neox_dynamo18.onnx", "node_MatMul_143", 1),
       ("hf_phi3_legacy17.onnx", "/model/model/layers.0/mlp/gate_up_proj/MatMul", 2),   # chunk Slices
       ("hf_phi3_legacy17.onnx", "/model/model/layers.1/mlp/gate_up_proj/MatMul", 2),   # bounds from Shape
       ("hf_phi3_dynamo18.onnx", "node_linear_2", 2)]                                   # Split


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fixture,layer,unit", FFN, ids=_ids(FFN))
def test_ffn_grows(fixture, layer, unit, method):
    _, result = _widen(fixture, layer, "2x", method)
    channels = result.details.channels_from
    _, result = _widen(fixture, layer, str(channels + unit), method)
    assert result.details.channels_to == channels + unit
    if unit > 1:
        with pytest.raises(CannotMorph, match=r"fused parts \(gate, up\) of 64 channels: .*a multiple of 2 more"):
            api.widen(str(FIXTURES / fixture), layer, width=str(channels + 1), seed=5)


def test_phi3_gate_up_new_channels_sit_at_the_end_of_each_part():
    import numpy as np
    fixture, layer = "hf_phi3_dynamo18.onnx", "node_linear_2"
    parent = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(FIXTURES / fixture)).graph.initializer}
    child, _ = _widen(fixture, layer, "132", "net2net")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in child.graph.initializer}
    name = lambda model_nodes: next(n.input[1] for n in model_nodes if n.name == layer)   # noqa: E731
    old = parent[name(onnx.load(str(FIXTURES / fixture)).graph.node)]
    new = weights[name(child.graph.node)]
    assert new.shape == (32, 132)
    np.testing.assert_array_equal(new[:, :64], old[:, :64])        # gate, then 2 new gate channels
    np.testing.assert_array_equal(new[:, 66:130], old[:, 64:])     # up, then 2 new up channels


@pytest.mark.parametrize("fixture,layer", [("hf_phi3_legacy17.onnx", "/model/model/layers.0/self_attn/qkv_proj/MatMul"),
                                           ("hf_phi3_dynamo18.onnx", "node_linear_4")], ids=["legacy17", "dynamo18"])
def test_phi3_uneven_fused_qkv_is_refused_in_one_line(fixture, layer):
    for width in ("2x", "96"):
        with pytest.raises(CannotMorph, match=r"fused QKV of uneven parts \[32, 16, 16\] \(GQA\)") as refusal:
            api.widen(str(FIXTURES / fixture), layer, width=width, seed=5)
        assert "\n" not in str(refusal.value)


# One trainability check per new pattern: the child converts to PyTorch and every created or changed value gets a
# gradient and moves, on every element (as tests/test_train_transformers.py). Qwen2's key bias trains too: RoPE
# rotates it by the key's position, so unlike BERT's it is not the same for every key and softmax does not cancel it.
# OPT has no RoPE: its key bias gets no gradient, in the parent either (trainability says "not trained by design").
OPT_KEY_BIAS = re.compile(r"decoder\.layers\.\d+\.self_attn\.k_proj\.bias$")
TRAIN = [("hf_gpt_neox_dynamo18.onnx", "node_MatMul_42"),                                 # interleaved QKV
         ("hf_qwen2_legacy17.onnx", "/model/model/layers.0/self_attn/q_proj/MatMul"),     # biased GQA, RoPE
         ("hf_gemma_dynamo18.onnx", "node_linear_3"),                                     # (1 + w) stream
         ("hf_phi3_dynamo18.onnx", "node_linear_2"),                                      # fused gate_up
         ("hf_opt_dynamo18.onnx", "node_MatMul_45")]                                      # scaled Q


@pytest.mark.parametrize("method,noise", [("netmorph", 0.0), ("net2net", 0.1)], ids=["netmorph", "net2net"])
@pytest.mark.parametrize("fixture,layer", TRAIN, ids=_ids(TRAIN))
def test_decoder_children_train(fixture, layer, method, noise):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from onnxmorph.torch import trainability
    path = str(FIXTURES / fixture)
    child, result = api.widen(path, layer, width="2x", method=method, noise=noise, seed=6)
    assert result.verification.passed and result.verification.max_rel < 1e-6
    report = trainability(onnx.load(path), child, steps=2)   # netmorph's new rows get a gradient at step 2
    lines = "\n".join(report.lines())
    assert report.max_rel <= 1e-6 and report.params, lines
    for p in report.params:
        assert p.torch_name is not None, lines
        if OPT_KEY_BIAS.search(p.onnx_name):
            assert p.fixed_by_design and p.grad <= p.noise, lines
            continue
        assert p.trains and not p.fixed_by_design and p.grad > p.noise > 0 and p.moved > 0, lines
        if p.role != "Gather input 0":   # embedding rows of tokens never fed get no gradient
            assert p.dead == 0, lines
