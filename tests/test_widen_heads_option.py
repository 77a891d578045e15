"""widen --heads N: the width that gives a Q/K/V projection N heads of its head size (N per part of a fused QKV)."""
import pytest

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError

from conftest import FIXTURES, run_cli

LLAMA = str(FIXTURES / "hf_llama_dynamo18.onnx")     # 4 query heads over 2 KV heads, head size 8
GPT2 = str(FIXTURES / "hf_gpt2_legacy17.onnx")       # fused QKV, 4 heads of 8 in each part
C_ATTN, C_FC = "/model/transformer/h.0/attn/c_attn/Gemm", "/model/transformer/h.0/mlp/c_fc/Gemm"


@pytest.mark.parametrize("model,layer,heads,width", [(LLAMA, "node_linear", 8, 64),     # query heads: 2 groups more
                                                     (LLAMA, "node_linear_1", 3, 24),   # KV heads
                                                     (GPT2, C_ATTN, 6, 144)])           # 6 heads in each of Q, K, V
def test_heads_sets_the_width(model, layer, heads, width):
    child, result = api.widen(model, layer, heads=heads, seed=2)
    assert result.details.channels_to == width
    assert result.verification.passed and result.verification.max_rel < 2e-6


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(layer="node_linear", heads=5), CannotMorph, "whole GQA groups of 2 heads: --heads must be 4 plus a multiple of 2"),
    (dict(layer="node_linear", heads=3), UsageError, "fewer than the 4 heads"),
    (dict(layer="node_linear", heads=0), UsageError, "positive whole number"),
    (dict(layer="node_linear", heads=8, width="2x"), UsageError, "not both"),
    (dict(layer="node_linear_4", heads=8), UsageError, "not split into attention heads: use --width"),
    (dict(layer="node_linear"), UsageError, "--width .or --heads"),
])
def test_heads_refusals(kwargs, error, match):
    with pytest.raises(error, match=match):
        api.widen(LLAMA, dry_run=True, **kwargs)


def test_heads_on_the_command_line(tmp_path):
    code, out, err = run_cli("widen", GPT2, "--layer", C_ATTN, "--heads", "5", "-o", tmp_path / "c.onnx")
    assert code == 0 and "from 96 to 120 channels (--heads 5)" in out, err
    code, out, err = run_cli("widen", GPT2, "--layer", C_FC, "--heads", "5", "-o", tmp_path / "d.onnx")
    assert code == 2 and err.strip().startswith("error:") and "not split into attention heads" in err
    assert not (tmp_path / "d.onnx").exists()
