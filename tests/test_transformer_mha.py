"""PyTorch's nn.MultiheadAttention (fixtures/torch_transformer_*.onnx, export_torch_fixtures.py): the fused in_proj
writes Q, K and V side by side (3 x 4 heads of 8), unflattens them into (..., 3, 32), moves the chunk axis first
(Unsqueeze, Transpose, Squeeze) and picks Q, K and V with a Gather each. Widen grows whole heads in each part (verify
exact), the unflatten and head Reshapes and the out_proj's columns follow, and a width that is not whole heads in
each part is refused with the reason."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph.shapes import infer_shapes

from conftest import FIXTURES

# (fixture, in_proj) -> (its bias Add, out_proj Gemm, the unflatten Reshape into (3, E), the per-part head Reshapes)
MHA = {
    ("torch_transformer_legacy17.onnx", "/enc/self_attn/MatMul"):
        ("/enc/self_attn/Add", "/enc/self_attn/Gemm", "/enc/self_attn/Reshape_2",
         [f"/enc/self_attn/Reshape_{k}" for k in (3, 4, 5)]),
    ("torch_transformer_dynamo18.onnx", "node_MatMul_3"):
        ("node_linear_1", "node_Gemm_100", "node_view", ["node_view_1", "node_view_2", "node_view_3"]),
}
IDS = [f"{f[18:-5]}:{layer}" for f, layer in MHA]


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _const(model, node_name):
    """The constant input of a node (its weight, or the bias of an Add)."""
    inits = {t.name: t for t in model.graph.initializer}
    node = _node(model, node_name)
    return numpy_helper.to_array(next(inits[i] for i in node.input[1:] + node.input[:1] if i in inits))


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["120", "2x"])   # one more head in each of Q, K, V (96 -> 120); 4 more each
@pytest.mark.parametrize("fixture,layer", list(MHA), ids=IDS)
def test_in_proj_grows_whole_heads_in_each_part(fixture, layer, width, method):
    path = str(FIXTURES / fixture)
    child, result = api.widen(path, layer, width=width, method=method, seed=3)
    onnx.checker.check_model(child, full_check=True)
    assert result.verification.passed and result.verification.max_rel < 2e-6
    bias_add, out_proj, unflatten, head_reshapes = MHA[(fixture, layer)]
    fused = 120 if width == "120" else 192
    heads = fused // 3 // 8
    assert result.details.channels_to == fused
    assert result.details.group["producers"] == [layer] and result.details.group["consumers"] == [out_proj]
    w, b = _const(child, layer), _const(child, bias_add)
    assert w.shape == (32, fused) and b.shape == (fused,)
    assert _const(child, out_proj).shape == (32, heads * 8)   # transB: (d_model, heads·d_h)
    shapes = infer_shapes(child)
    assert shapes[_node(child, unflatten).output[0]] == [6, 1, 3, fused // 3]
    for name in head_reshapes:
        assert shapes[_node(child, name).output[0]] == [6, heads, 8]
    parent = onnx.load(path)
    old_w, old_b = _const(parent, layer), _const(parent, bias_add)
    if method == "net2net":
        # Q, K and V of a new head (weights and bias) copy the same old head: the heads stay paired across parts
        for new in range(4, heads):
            sources = []
            for part in range(3):
                cols = slice(part * fused // 3 + new * 8, part * fused // 3 + (new + 1) * 8)
                sources.append({h for h in range(4) if np.array_equal(w[:, cols], old_w[:, 32 * part + 8 * h:
                                                                                   32 * part + 8 * (h + 1)]) and
                                np.array_equal(b[cols], old_b[32 * part + 8 * h:32 * part + 8 * (h + 1)])})
            assert sources[0] & sources[1] & sources[2]
    else:   # new heads: random Q/K/V columns, zero out_proj columns
        grown = _const(child, out_proj)
        assert int((np.abs(grown).sum(axis=0) == 0).sum()) == (heads - 4) * 8


@pytest.mark.parametrize("fixture,layer", list(MHA), ids=IDS)
def test_in_proj_refuses_a_width_that_is_not_whole_heads_in_each_part(fixture, layer):
    for width in ("100", "104"):   # 104: one head of 8 more, but only in one of Q, K, V
        with pytest.raises(CannotMorph, match="whole heads to each part, a multiple of 24 more than 96"):
            api.widen(str(FIXTURES / fixture), layer, width=width)


@pytest.mark.parametrize("method,noise", [("netmorph", 0.0), ("net2net", 0.1)], ids=["netmorph", "net2net"])
def test_new_heads_of_the_fused_in_proj_train(method, noise):
    """The dynamo child converts to PyTorch, computes what ONNX Runtime does, and every changed value (in_proj
    weight and bias, out_proj weight) gets a gradient on every element and moves within two SGD steps."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from test_train_transformers import _assert_every_new_value_trains
    report = _assert_every_new_value_trains("torch_transformer_dynamo18.onnx", "node_MatMul_3", "2x", method, noise)
    assert {p.onnx_name for p in report.params} == {"val_2", "enc.self_attn.in_proj_bias",
                                                     "enc.self_attn.out_proj.weight"}


def _rewritten(path, tmp_path, pick):
    """The dynamo fixture with K's Gather reading the chunks through an Identity (pick "gather": the walk then
    reaches K's chunk from the attention scores' side first, backwards through the Gather), or each pick written
    as Slice [k, k + 1) of the chunk axis and a Squeeze of it (pick "slice", torch's x[k:k+1].squeeze(0)). The
    same function."""
    model = onnx.load(path)
    nodes = []
    for node in model.graph.node:
        if node.name not in ("node_select", "node_select_1", "node_select_2"):
            nodes.append(node)
            continue
        out = node.output[0]
        if pick == "gather":
            if node.name == "node_select_1":
                nodes.append(onnx.helper.make_node("Identity", [node.input[0]], ["chunks"], name="chunks"))
                node.input[0] = "chunks"
            nodes.append(node)
            continue
        k = int(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[1])))
        bounds = [numpy_helper.from_array(np.array(v, dtype=np.int64), f"{node.name}_{what}")
                  for what, v in (("starts", [k]), ("ends", [k + 1]), ("axes", [0]))]
        model.graph.initializer.extend(bounds)
        nodes.append(onnx.helper.make_node("Slice", [node.input[0]] + [b.name for b in bounds], [out + "_one"],
                                           name=node.name + "_slice"))
        nodes.append(onnx.helper.make_node("Squeeze", [out + "_one", node.name + "_axes"], [out], name=node.name))
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    saved = tmp_path / f"mha_{pick}.onnx"
    onnx.save(model, str(saved))
    return str(saved)


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("pick", ["gather", "slice"])
def test_in_proj_grows_whatever_picks_the_chunks(tmp_path, pick, method):
    path = _rewritten(str(FIXTURES / "torch_transformer_dynamo18.onnx"), tmp_path, pick)
    child, result = api.widen(path, "node_MatMul_3", width="120", method=method, seed=3)
    assert result.verification.passed and result.verification.max_rel < 2e-6
    assert _const(child, "node_MatMul_3").shape == (32, 120) and _const(child, "node_Gemm_100").shape == (32, 40)
    with pytest.raises(CannotMorph, match="whole heads to each part, a multiple of 24 more than 96"):
        api.widen(path, "node_MatMul_3", width="104")
