"""deepen --block: residual units and blocks found on every fixture, identity-start copies exact, refusals."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError
from onnxmorph.graph.blocks import find_blocks

from conftest import FIXTURE_FILES, FIXTURES, run_cli


def _blocks(path):
    return find_blocks(onnx.load(str(path)))


def _cases():
    """(fixture, block id) for the first, middle and last repeatable block of every fixture."""
    out = []
    for path in FIXTURE_FILES:
        ok = [b.id for b in _blocks(path) if not b.problem]
        for bid in dict.fromkeys([ok[0], ok[len(ok) // 2], ok[-1]] if ok else []):
            out.append((path.name, bid))
    return out


CASES = _cases()


def test_fixtures_have_repeatable_blocks():
    names = {f for f, _ in CASES}
    assert {"resnet_blocks.onnx", "mobilenetv2.onnx", "torch_resnetish_legacy11.onnx",
            "torch_resnetish_dynamo18.onnx", "torch_effnetish_dynamo18.onnx"} <= names
    transformers = {f"hf_{net}_{kind}.onnx" for net in ("vit", "gpt2", "llama") for kind in ("legacy17", "dynamo18")}
    assert transformers <= names
    for name in transformers:  # attention unit + MLP unit, one block per layer of the config (2)
        blocks = _blocks(FIXTURES / name)
        assert len(blocks) == 2 and all(b.kind == "transformer" and not b.problem for b in blocks)


@pytest.mark.parametrize("init,count", [("copy", 1), ("random", 3)])  # both inits and both counts at every place
@pytest.mark.parametrize("fixture,block", CASES, ids=[f"{f[:-5]}:{b}" for f, b in CASES])
def test_block_copies_are_exact(fixture, block, init, count):
    before = len(_blocks(FIXTURES / fixture))
    child, result = api.deepen(str(FIXTURES / fixture), block=block, init=init, count=count)
    assert result.verification.max_rel <= 1e-5
    onnx.checker.check_model(child, full_check=True)
    after = find_blocks(child)
    assert len(after) == before + count
    assert result.details.blocks_after == before + count
    base = block.split(":")[-1]
    new = [t.name for t in child.graph.initializer if "/morph_block" in t.name]
    assert new and all(n.startswith(f"{base}/morph_block") for n in new)
    assert {f"{base}/morph_block{k}/" for k in range(1, count + 1)} <= {n[:n.index("/morph_block") + 13] + "/"
                                                                        for n in new}
    # the zeroed parameters really are zero; everything else copied from the block is not all zero
    zeroed = set(result.details.zeroed)
    values = {t.name: numpy_helper.to_array(t) for t in child.graph.initializer if t.name in new}
    assert zeroed and all(not values[z].any() for z in zeroed)
    assert any(values[n].any() for n in new if n not in zeroed)


def test_random_init_draws_new_weights():
    path = FIXTURES / "resnet_blocks.onnx"
    copy, _ = api.deepen(str(path), block="b1_add", init="copy")
    rand, _ = api.deepen(str(path), block="b1_add", init="random", seed=3)
    parent = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    c = {t.name: numpy_helper.to_array(t) for t in copy.graph.initializer}
    r = {t.name: numpy_helper.to_array(t) for t in rand.graph.initializer}
    w = "b1_add/morph_block1/b1_conv1.weight"
    assert np.array_equal(c[w], parent["b1_conv1.weight"])
    assert not np.allclose(r[w], parent["b1_conv1.weight"])
    assert abs(r[w].std() / parent["b1_conv1.weight"].std() - 1) < 0.2


@pytest.mark.parametrize("fixture,block,reason", [
    ("resnet_blocks.onnx", "b2_add", "projection shortcut"),
    ("torch_resnetish_legacy17.onnx", "/l2/Add", "projection shortcut"),
    ("torch_transformer_legacy17.onnx", "/enc/Add_1", "post-norm"),
    ("torch_transformer_dynamo18.onnx", "node_add:node_add_1", "post-norm"),
    ("transformer_mlp.onnx", "residual", "post-norm"),
    ("hf_bert_legacy17.onnx", "/model/bert/encoder/layer.1/attention/output/Add:/model/bert/encoder/layer.1/output/Add",
     "post-norm"),
    ("hf_bert_dynamo18.onnx", "node_add_5", "post-norm"),
])
def test_refusals_exit_3_with_reason(fixture, block, reason, tmp_path):
    code, out, err = run_cli("deepen", FIXTURES / fixture, "--block", block, "-o", tmp_path / "child.onnx")
    assert code == 3 and reason in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "child.onnx").exists()


def _residual_chain(post_first="Relu", post_second=None, dim=8):
    """Two residual MLP units on unnamed nodes: s1 = post1(x + W1·x), y = post2(s1 + W2·s1)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def unit(x, k, post):
        w = numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), f"w{k}")
        b = numpy_helper.from_array(rng.standard_normal(dim).astype(np.float32), f"b{k}")
        inits.extend([w, b])
        nodes.append(helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]))
        nodes.append(helper.make_node("Add", [f"m{k}", f"b{k}"], [f"h{k}"]))
        nodes.append(helper.make_node("Add", [x, f"h{k}"], [f"r{k}"]))
        if post is None:
            return f"r{k}"
        nodes.append(helper.make_node(post, [f"r{k}"], [f"s{k}"]))
        return f"s{k}"

    s = unit("x", 1, post_first)
    s = unit(s, 2, post_second)
    nodes.append(helper.make_node("Identity", [s], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unnamed_nodes_ids_are_output_tensors():
    blocks = find_blocks(_residual_chain())
    assert [b.id for b in blocks] == ["r1", "r2"] and not any(b.problem for b in blocks)
    child, result = api.deepen(_residual_chain(), block="r1", count=2)
    assert result.verification.max_rel == 0 and len(find_blocks(child)) == 4


def test_relu_after_add_reads_relu_output():
    # The copy of unit 1 reads ReLU(·) ≥ 0, so its own ReLU is the identity: exact.
    _, result = api.deepen(_residual_chain(), block="s1")
    assert result.verification.max_rel == 0
    # A span whose output is not a ReLU output: the first unit's ReLU would clip the copy's input.
    with pytest.raises(CannotMorph, match="Relu after r1"):
        api.deepen(_residual_chain(post_second=None), block="r1:r2")


def test_non_idempotent_op_after_add_is_refused():
    with pytest.raises(CannotMorph, match="Sigmoid follows the Add"):
        api.deepen(_residual_chain(post_first="Sigmoid"), block="r1")


def test_block_output_that_is_a_graph_output():
    model = _residual_chain(post_second=None)
    model.graph.node.pop()  # drop the Identity: r2 itself is the graph output
    model.graph.output[0].name = "r2"
    child, result = api.deepen(model, block="r2", count=2)
    assert result.verification.max_rel == 0 and [o.name for o in child.graph.output] == ["r2"]


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown block"):
        api.deepen(str(FIXTURES / "resnet_blocks.onnx"), block="nope")
    with pytest.raises(UsageError, match="count"):
        api.deepen(str(FIXTURES / "resnet_blocks.onnx"), block="b1_add", count=0)
    code, _, err = run_cli("deepen", FIXTURES / "resnet_blocks.onnx", "--layer", "b1_conv1", "--count", "2",
                           "-o", tmp_path / "c.onnx")
    assert code == 2 and "--block" in err


def test_inspect_lists_blocks():
    report = api.inspect(str(FIXTURES / "resnet_blocks.onnx"))
    assert [(b.id, b.repeat == "ok") for b in report.blocks] == [("b1_add", True), ("b2_add", False)]
    code, out, _ = run_cli("inspect", FIXTURES / "torch_transformer_legacy17.onnx")
    assert code == 0 and "/enc/Add:/enc/Add_1: transformer" in out and "post-norm" in out


def test_cli_block_copy_and_random(tmp_path):
    code, out, _ = run_cli("deepen", FIXTURES / "mobilenetv2.onnx", "--block", "residual_add", "--random",
                           "--count", "2", "-o", tmp_path / "c.onnx")
    assert code == 0 and "PASSED" in out and "2 copies (random weights)" in out
    assert len(find_blocks(onnx.load(str(tmp_path / "c.onnx")))) == 3


def test_grow_resnet_stages_example(tmp_path):
    import subprocess
    from conftest import ROOT
    res = subprocess.run(["bash", str(ROOT / "examples" / "grow_resnet_stages.sh"), str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["resnet_211 2,1,1", "resnet_221 2,2,1", "resnet_222 2,2,2",
                                                       "resnet_444 4,4,4"]
    assert all("PASSED" in line for line in lines)


# Softmax over keys is invariant to the key bias (q·(k_j + b) shifts every score of a query by q·b), so a key
# projection's bias gets no gradient in any transformer, the parent's included.
KEY_BIAS = ("k_proj.bias", "key.bias")


@pytest.mark.parametrize("fixture,block", [
    ("resnet_blocks.onnx", "b1_add"), ("torch_resnetish_legacy11.onnx", "/l1/Add"), ("mobilenetv2.onnx", "residual_add"),
    ("torch_effnetish_legacy11.onnx", "/b/Add"), ("hf_vit_legacy17.onnx", "/model/vit/layers.1/Add:/model/vit/layers.1/Add_1"),
])
@pytest.mark.parametrize("init", ["copy", "random"])
def test_every_new_parameter_trains(fixture, block, init):
    torch_bridge = pytest.importorskip("onnxmorph.torch")
    if not (FIXTURES / fixture).exists():
        pytest.skip(f"{fixture} is not among the fixtures")
    child, _ = api.deepen(str(FIXTURES / fixture), block=block, init=init)
    # lr 0.1: the layers before a zeroed one get a gradient at step 2 that is lr times smaller; at lr 0.01 their
    # float32 update can round away on values near 1 (BatchNorm γ)
    report = torch_bridge.trainability(str(FIXTURES / fixture), child, steps=2, lr=0.1)
    assert report.max_rel <= 1e-5
    created = [p for p in report.params if p.change == "created"]
    assert created and all(p.torch_name for p in created if not p.fixed_by_design)
    stuck = [p.onnx_name for p in created if not p.trains and not p.onnx_name.endswith(KEY_BIAS)]
    assert not stuck


def test_json_reports_fit_the_schema(tmp_path):
    import json
    from conftest import ROOT
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "cli" / "schema.json").read_text())
    code, out, err = run_cli("deepen", FIXTURES / "resnet_blocks.onnx", "--block", "b1_add", "--json", "-o",
                             tmp_path / "c.onnx")
    assert code == 0, err
    report = json.loads(out)
    jsonschema.validate(report, {"$ref": "#/$defs/morph", "$defs": schema["$defs"]})
    assert report["details"]["zero_kind"] == ["batchnorm"] and report["details"]["blocks_after"] == 3
    code, out, _ = run_cli("inspect", tmp_path / "c.onnx", "--json")
    report = json.loads(out)
    jsonschema.validate(report, {"$ref": "#/$defs/inspect", "$defs": schema["$defs"]})
    assert [b["repeat"] == "ok" for b in report["blocks"]] == [True, True, False]
