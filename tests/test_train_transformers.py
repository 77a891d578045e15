"""Transformer children train: widen heads, SwiGLU, GPT-2's FFN and d_model, convert the child to PyTorch
(onnxmorph.torch), and check that every created or changed value gets a gradient and moves, on every element.

Two SGD steps everywhere: netmorph gives the new rows (Q/K/V, gate/up) random values and the consumer columns
(output projection, down projection) zeros, so at step 1 the new rows see a zero upstream gradient; the columns move
at step 1 and the rows get a gradient at step 2. net2net runs with noise, so that the copies do not stay equal.
"""
import re

import onnx
import pytest

from conftest import FIXTURES

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

from onnxmorph import api  # noqa: E402
from onnxmorph.torch import to_torch, trainability  # noqa: E402

METHODS = [("netmorph", 0.0), ("net2net", 0.1)]
STEPS = 2
# The key projection's bias adds q·b_k to every score of a query: softmax over the keys cancels it, so its gradient
# is 0 in any softmax attention, the parent's too (test_key_bias_gets_no_gradient_in_the_parent_either). Its new
# entries cannot train: float rounding (~1e-12) is all they get, and trainability says "not trained by design".
KEY_BIAS = re.compile(r"(\.key|k_proj)\.bias$")
# A fused Q/K/V bias (nn.MultiheadAttention's in_proj_bias): its key third is a key bias, whose gradient is float
# rounding (~1e-9); an element of it may get exactly 0. Every element of the query and value thirds must train.
FUSED_QKV_BIAS = re.compile(r"in_proj_bias$")


def _fed_tokens(model) -> int:
    """The distinct token ids trainability feeds (make_inputs draws them from the whole embedding table): the
    embedding rows of those tokens, every column old and new, train."""
    import numpy as np
    from onnxmorph.feeds import make_inputs
    feeds = make_inputs(model, STEPS * 2, 1)   # trainability's steps × batch samples, seed + 1
    ids = [f[n] for f in feeds for n in f if np.issubdtype(f[n].dtype, np.integer) and "position" not in n]
    return len(np.unique(np.concatenate([i.ravel() for i in ids])))


def _assert_every_new_value_trains(fixture, layer, width, method, noise):
    path = str(FIXTURES / fixture)
    child, result = api.widen(path, layer, width=width, method=method, noise=noise, seed=6)
    assert result.verification.passed and result.verification.max_rel < 1e-6
    report = trainability(onnx.load(path), child, steps=STEPS)
    lines = "\n".join(report.lines())
    assert report.max_rel <= 1e-6, lines                 # the torch child computes what ONNX Runtime does
    assert report.params, "the morph created or changed nothing?"
    for p in report.params:
        assert p.torch_name is not None, lines            # every changed value is a parameter after conversion
        if KEY_BIAS.search(p.onnx_name):   # trainability finds the parent's key bias as stuck
            assert p.fixed_by_design and p.grad <= p.noise, lines
            continue
        # a gradient above float rounding, a step taken, and no element left out
        assert p.trains and not p.fixed_by_design and p.grad > p.noise > 0 and p.moved > 0, lines
        if p.role == "Gather input 0":
            rows = next(t.dims[0] for t in child.graph.initializer if t.name == p.onnx_name)
            assert round((1 - p.dead) * rows) == _fed_tokens(child), lines
        elif FUSED_QKV_BIAS.search(p.onnx_name):   # only its key third may get no gradient (rounding only, 0 here)
            third = next(t.dims[0] for t in child.graph.initializer if t.name == p.onnx_name) // 3
            assert p.dead < 1 / 3 and all(third <= i < 2 * third for i in p.dead_at), lines
        else:
            assert p.dead == 0, lines
    return report


# Attention heads: Q, K and V grow by whole heads together, the output projection's columns follow.
HEADS = [("hf_bert_dynamo18.onnx", "node_MatMul_102"),     # query
         ("hf_bert_dynamo18.onnx", "node_MatMul_110"),     # key
         ("hf_bert_dynamo18.onnx", "node_MatMul_118"),     # value
         ("hf_vit_dynamo18.onnx", "node_MatMul_29"),
         ("hf_llama_dynamo18.onnx", "node_linear"),        # GQA: 4 query heads over 2 KV heads, RoPE on Q and K
         ("hf_llama_dynamo18.onnx", "node_linear_1"),
         ("hf_bert_legacy17.onnx", "/model/bert/encoder/layer.0/attention/self/query/MatMul"),  # computed shapes
         ("hf_llama_legacy17.onnx", "/model/model/layers.0/self_attn/k_proj/MatMul"),  # GQA repeat by Expand
         ("hf_gpt2_dynamo18.onnx", "node_addmm"),                 # fused QKV: heads in each of Q, K and V
         ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_attn/Gemm")]
# Feed-forward blocks: SwiGLU's gate and up grow together through the Mul; GPT-2's Conv1D is a Gemm.
FFN = [("hf_llama_dynamo18.onnx", "node_linear_4"),
       ("hf_llama_legacy17.onnx", "/model/model/layers.0/mlp/gate_proj/MatMul"),
       ("hf_llama_legacy17.onnx", "/model/model/layers.1/mlp/up_proj/MatMul"),
       ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/mlp/c_fc/Gemm")]
# d_model by duplication: embeddings, every producer into the stream, the norms and every reader grow.
STREAM = [("hf_bert_dynamo18.onnx", "node_MatMul_89"),                          # post-LN
          ("hf_gpt2_legacy17.onnx", "/model/transformer/h.0/attn/c_proj/Gemm"),  # pre-LN, tied token embedding
          ("hf_vit_dynamo18.onnx", "node_conv2d"),                               # patch Conv, class token, positions
          ("hf_llama_dynamo18.onnx", "node_linear_3"),                           # decomposed RMSNorm
          ("hf_llama_legacy17.onnx", "/model/model/layers.1/mlp/down_proj/MatMul")]


def _ids(cases):
    return [f"{f[3:-5]}:{layer}" for f, layer in cases]


@pytest.mark.parametrize("method,noise", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("fixture,layer", HEADS, ids=_ids(HEADS))
def test_new_heads_train(fixture, layer, method, noise):
    _assert_every_new_value_trains(fixture, layer, "2x", method, noise)


@pytest.mark.parametrize("method,noise", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("fixture,layer", FFN, ids=_ids(FFN))
def test_new_ffn_units_train(fixture, layer, method, noise):
    _assert_every_new_value_trains(fixture, layer, "2x", method, noise)


@pytest.mark.parametrize("method,noise", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("fixture,layer", STREAM, ids=_ids(STREAM))
def test_duplicated_d_model_trains(fixture, layer, method, noise):
    report = _assert_every_new_value_trains(fixture, layer, "2x", method, noise)
    roles = {p.role for p in report.params}
    assert "LayerNormalization input 1" in roles or "Mul per-channel value" in roles   # the norms' scales grew


def test_netmorph_new_rows_need_the_second_step():
    """The reason for STEPS = 2, measured: after one step the new Q/K/V rows have no gradient, the output
    projection's new (zero) columns do."""
    path = str(FIXTURES / "hf_llama_dynamo18.onnx")
    child, _ = api.widen(path, "node_linear", width="2x", seed=6)
    report = trainability(onnx.load(path), child, steps=1)
    by_reader = {n.name: n.input[1] for n in child.graph.node if n.op_type == "MatMul"}
    dead = {p.onnx_name: p.dead for p in report.params}
    assert [dead[by_reader[q]] for q in ("node_linear", "node_linear_1", "node_linear_2")] == [0.5, 0.5, 0.5]
    assert dead[by_reader["node_linear_3"]] == 0


def test_key_bias_gets_no_gradient_in_the_parent_either():
    path = str(FIXTURES / "hf_bert_dynamo18.onnx")
    module = to_torch(onnx.load(path))
    from onnxmorph.verify import make_inputs
    feed = make_inputs(onnx.load(path), 1, 1)[0]
    out = module(*[torch.from_numpy(v) for v in feed.values()])
    (out if torch.is_tensor(out) else out[0]).square().mean().backward()
    params = dict(module.named_parameters())
    grads = {onnx_name: float(params[name].grad.abs().max()) for name, onnx_name in module.onnx_parameters.items()
             if params[name].grad is not None and "layer.1.attention.self." in onnx_name}
    assert grads["model.bert.encoder.layer.1.attention.self.key.bias"] < 1e-9
    assert grads["model.bert.encoder.layer.1.attention.self.query.bias"] > 1e-7


@pytest.mark.parametrize("method,noise,diverge", [("netmorph", 0.0, True), ("net2net", 0.1, True),
                                                  ("net2net", 0.0, False)])
@pytest.mark.parametrize("fixture,layer,table,axis", [
    ("hf_bert_dynamo18.onnx", "node_MatMul_89", "model.bert.embeddings.word_embeddings.weight", 1),
    ("hf_vit_dynamo18.onnx", "node_conv2d", "model.vit.embeddings.patch_embeddings.projection.weight", 0)],
    ids=["bert-embedding", "vit-patch-conv"])
def test_duplicated_stream_copies_diverge(fixture, layer, table, axis, method, noise, diverge):
    """x' = [x; x]: the copies of each stream channel must come apart under training, or the wider model is the
    narrow one twice. netmorph's consumers read the copies asymmetrically; net2net needs its noise (the control)."""
    from onnxmorph.verify import make_inputs
    child, _ = api.widen(str(FIXTURES / fixture), layer, width="2x", method=method, noise=noise, seed=6)
    module = to_torch(child)
    weight = dict(module.named_parameters())[{v: k for k, v in module.onnx_parameters.items()}[table]]
    d = weight.shape[axis] // 2
    assert torch.equal(weight.narrow(axis, 0, d), weight.narrow(axis, d, d))     # copies before training
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for feed in make_inputs(child, STEPS, 1):
        opt.zero_grad()
        out = module(*[torch.from_numpy(v) for v in feed.values()])
        ((out if torch.is_tensor(out) else out[0]) - 1).square().mean().backward()
        opt.step()
    gap = float((weight.narrow(axis, 0, d) - weight.narrow(axis, d, d)).abs().max().detach())
    assert (gap > 1e-6) if diverge else gap == 0.0
