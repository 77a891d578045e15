"""Issue 24: growth plans (`onnxmorph grow`, api.grow) and the selectors of --layer and --block."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError, VerificationFailed, compact
from onnxmorph.graph.blocks import find_blocks
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers
from onnxmorph.graph.select import select_blocks, select_layers
from onnxmorph.passes import grow as grow_pass
from onnxmorph.passes.plan import CHOICES, read_plan
from onnxmorph.provenance import lineage_lines, read_history

from conftest import FIXTURES, ROOT, run_cli

LLAMA = FIXTURES / "hf_llama_legacy17.onnx"
CIFAR = FIXTURES / "cifar10_quick.onnx"
RESNET = FIXTURES / "resnet_blocks.onnx"


def _weights(model) -> dict:
    """Layer id -> weight shape as stored, on a copy (GraphIndex folds the model it indexes)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return {layer.id: tuple(layer.weight.shape) for layer in find_layers(GraphIndex(copy))}


def _write(tmp_path, text, name="plan.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_decoder_grows_by_a_plan_step_by_step(tmp_path):
    """LLaMA-Pro style: a block after every other block, then every MLP 2x (gate_proj and up_proj are one coupled
    group: selected both, grown once), then one more GQA group in every attention (k_proj grows with q_proj)."""
    plan = [{"verb": "deepen", "block": "every:2"},
            {"verb": "widen", "layer": "re:.*/mlp/(gate|up)_proj/.*", "width": "2x"},
            {"verb": "widen", "layer": "*/self_attn/[qk]_proj/*", "width": "1.5x"}]
    out = tmp_path / "grown.onnx"
    child, result = api.grow(str(LLAMA), plan, output=str(out))
    blocks, mlp, attention = result.details.steps
    assert blocks.selected == ["/model/model/layers.1/Add:/model/model/layers.1/Add_1"]
    assert (blocks.targets[0].details.blocks_before, blocks.targets[0].details.blocks_after) == (2, 3)
    assert len(mlp.selected) == 6 and [t.target for t in mlp.targets if not t.skipped] == [
        s for s in mlp.selected if "gate_proj" in s]
    assert all("grew with" in t.skipped and "gate_proj" in t.skipped for t in mlp.targets if "up_proj" in t.target)
    assert sum(1 for t in attention.targets if t.skipped) == 3  # each k_proj grew with its q_proj (GQA groups)
    assert mlp.parameters_before == blocks.parameters_after < mlp.parameters_after < attention.parameters_after
    shapes = _weights(onnx.load(str(out)))
    assert len(find_blocks(GraphIndex(onnx.load(str(out))))) == 3
    mlps = {k: v for k, v in shapes.items() if "/mlp/gate_proj/" in k or "/mlp/up_proj/" in k}
    assert len(mlps) == 6 and set(mlps.values()) == {(32, 128)}
    queries = {k: v for k, v in shapes.items() if "q_proj" in k}
    keys = {k: v for k, v in shapes.items() if "k_proj" in k}
    assert set(queries.values()) == {(32, 48)} and set(keys.values()) == {(32, 24)} and len(queries) == 3
    assert result.verification.passed and result.verification.max_rel < 1e-5
    history = read_history(onnx.load(str(out)))
    assert len(history) == 1 and history[0]["verb"] == "grow" and len(history[0]["steps"]) == 3
    assert history[0]["steps"][1]["options"] == {"layer": "re:.*/mlp/(gate|up)_proj/.*", "width": "2x"}
    assert len(history[0]["steps"][1]["targets"]) == 3
    lines = lineage_lines(history)
    assert lines[0] == "history: 1 morph (oldest first)" and "onnxmorph grow hf_llama_legacy17.onnx" in lines[1]
    assert "step 2: widen --layer 're:.*/mlp/(gate|up)_proj/.*' --width 2x --seed 0" in lines[3]


def test_a_cnn_grows_by_a_plan_like_its_verbs_one_by_one(tmp_path):
    """One load, the steps in memory: the same child as the verbs run one by one with the same seeds, and each
    step's effect is where the plan says."""
    plan = _write(tmp_path, """
[[step]]
verb = "kernel"
layer = "conv[12]"
size = 7

[[step]]
verb = "widen"
layer = "re:conv[23]"
width = "2x"
seed = 3

[[step]]
verb = "subnet"
layer = "conv1"
""")
    child, result = api.grow(str(CIFAR), str(plan), verify=True)
    assert result.details.plan == "plan.toml" and result.verification.passed
    kernel, widen, subnet = result.details.steps
    assert [t.details.kernel_to for t in kernel.targets] == [[7, 7], [7, 7]]
    assert [(t.details.channels_from, t.details.channels_to) for t in widen.targets] == [(32, 64), (64, 128)]
    shapes = _weights(child)
    assert shapes["conv2"] == (64, 32, 7, 7) and shapes["conv3"][:2] == (128, 64)
    assert any(node.op_type == "Sum" for node in child.graph.node)
    # the same steps as single verbs (the k-th target of a step gets seed + k)
    one_by_one, _ = api.kernel(str(CIFAR), "conv1", size=7, verify=False)
    one_by_one, _ = api.kernel(one_by_one, "conv2", size=7, verify=False)
    one_by_one, _ = api.widen(one_by_one, "conv2", width="2x", seed=3, verify=False)
    one_by_one, _ = api.widen(one_by_one, "conv3", width="2x", seed=4, verify=False)
    one_by_one, _ = api.subnet(one_by_one, "conv1", verify=False)
    got = {t.name: numpy_helper.to_array(t) for t in child.graph.initializer}
    want = {t.name: numpy_helper.to_array(t) for t in one_by_one.graph.initializer}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


def test_layer_selectors():
    index = GraphIndex(onnx.load(str(LLAMA)))
    ids = [layer.id for layer in select_layers(index, "*/mlp/gate_proj/*")]
    assert ids == [f"/model/model/layers.{i}/mlp/gate_proj/MatMul" for i in (0, 1)]
    assert [layer.id for layer in select_layers(index, "re:.*layers\\.1/self_attn/[kv]_proj/.*")] == [
        "/model/model/layers.1/self_attn/k_proj/MatMul", "/model/model/layers.1/self_attn/v_proj/MatMul"]
    assert len(select_layers(index, "*")) == 15
    cifar = GraphIndex(onnx.load(str(CIFAR)))
    assert [layer.id for layer in select_layers(cifar, "*2.weight")] == ["conv2", "ip2"]  # by the weight's name
    assert select_layers(index, "/model/lm_head/MatMul") is None  # a plain name: the pass resolves it
    with pytest.raises(UsageError, match="matches no layer"):
        select_layers(index, "*/mlp/nothing/*")
    with pytest.raises(UsageError, match="regular expression"):
        select_layers(index, "re:(")


def test_block_selectors():
    blocks = find_blocks(GraphIndex(onnx.load(str(RESNET))))
    ids = [b.id for b in blocks]
    assert len(ids) >= 2
    assert select_blocks(blocks, "all") == ids
    assert select_blocks(blocks, "every:2") == ids[1::2]
    assert select_blocks(blocks, f"1..{len(ids)}") == ids and select_blocks(blocks, "2..2") == ids[1:2]
    assert select_blocks(blocks, f"{ids[0]}..{ids[1]}") == ids[:2]
    assert select_blocks(blocks, ids[0]) is None  # a block's own id: deepen --block resolves it
    for bad, words in (("every:0", "at least 1"), ("2..1", "backwards"), (f"1..{len(ids) + 1}", "out of range"),
                       ("nope..1", "names no block"), (f"every:{len(ids) + 1}", "selects no block")):
        with pytest.raises(UsageError, match=words):
            select_blocks(blocks, bad)


def _resnet_stages(tmp_path):
    """examples/resnet_stages.py's three-stage ResNet (one repeatable block per stage), built in tmp_path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("resnet_stages", ROOT / "examples" / "resnet_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(str(tmp_path / "resnet_111.onnx"))
    return tmp_path / "resnet_111.onnx"


def test_a_single_verb_takes_selectors_and_reports_each_target(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "cli" / "schema.json").read_text())
    child, result = api.deepen(str(_resnet_stages(tmp_path)), block="all", verify=False)
    assert result.details.selected == ["s1_add", "s2_add", "s3_add"]
    assert [t.details.blocks_after for t in result.details.targets] == [4, 5, 6]
    jsonschema.validate(compact(result.to_dict()), schema)
    _, result = api.widen(str(CIFAR), "conv?", width="2x", dry_run=True)
    assert [t.target for t in result.details.targets] == ["conv1", "conv2", "conv3"]
    lines = result.lines()
    assert "  dry run: widening conv2 from 32 to 64 channels (--width 2x) with netmorph" in lines
    assert "    layers whose inputs grow: conv3" in lines and "nothing written (--dry-run)" in lines
    jsonschema.validate(compact(result.to_dict()), schema)
    _, plain = api.widen(str(CIFAR), "conv2", width="2x", dry_run=True)
    assert type(plain.details).__name__ == "WidenReport"  # a name: the verb's own report, as before


def test_bad_plans_are_usage_errors_naming_the_step_and_key(tmp_path):
    step = '[[step]]\nverb = "widen"\nlayer = "conv2"\nwidth = "2x"\n'
    for text, words in (
            ("[[step]\nverb = 1", "plan.toml: not valid TOML"),
            ('[[step]]\nverb = "grow"', "step 1: unknown verb 'grow'"),
            (step + '[[step]]\nverb = "widen"\nlayer = "x"\nwidht = 3', "step 2 (widen): unknown key 'widht'"),
            (step + '[[step]]\nverb = "kernel"\nlayer = "x"\nsize = true', "step 2 (kernel): size = True should be"),
            (step.replace('"2x"', '"2x"\nmethod = "net2nett"'), "method = 'net2nett' is none of netmorph, net2net"),
            (step.replace('"2x"', '"2x"\nrtol = 0.1'), "'rtol' is an option of grow itself (--rtol)"),
            ('[[step]]\nverb = "deepen"\nlayer = "a"\nblock = "b"', "exactly one of layer, after or block"),
            ('[[step]]\nverb = "deepen"\nlayer = "a"\ncount = 2', "count, copy and random apply to block"),
            ('seed = 3\n' + step, "unknown top-level key 'seed'"),
            ("", "no steps")):
        with pytest.raises(UsageError, match=None) as info:
            read_plan(_write(tmp_path, text))
        assert words in str(info.value), (words, str(info.value))
    plan = read_plan(_write(tmp_path, '[[step]]\nverb = "deepen"\nblock = "all"\nrandom = true\n'
                                      '[[step]]\nverb = "subnet"\nlayer = "c"\nkernels = [5, 1]\ndepth = 1'))
    assert plan.steps[0].options(seed=7) == {"block": "all", "seed": 7, "init": "random"}
    assert plan.steps[1].options()["kernels"] == "5,1"
    assert plan.steps[1].describe() == "subnet --layer c --kernels 5,1 --depth 1"
    step = read_plan([{"verb": "deepen", "block": "all", "copy": False, "count": 2}]).steps[0]
    assert step.describe() == "deepen --block all --random --count 2" and step.options()["init"] == "random"
    step = read_plan([{"verb": "deepen", "layer": "conv2", "full_rank": False}]).steps[0]
    assert step.describe() == "deepen --layer conv2 --min-norm" and step.options()["full_rank"] is False


def test_the_plan_choices_are_the_clis():
    from onnxmorph.cli import cli
    for (verb, key), choices in CHOICES.items():
        param = next(p for p in cli.commands[verb].params if p.name == key)
        assert tuple(param.type.choices) == choices, (verb, key)


def test_cli_failures_write_nothing(tmp_path):
    """A step that cannot be done stops the plan, names the step and its reason, exit 3; a pattern that matches
    nothing, exit 2; a bad plan, exit 2; one line each, and no output."""
    out = tmp_path / "out" / "child.onnx"
    out.parent.mkdir()
    refused = _write(tmp_path, '[[step]]\nverb = "widen"\nlayer = "conv2"\nwidth = "2x"\n'
                               '[[step]]\nverb = "widen"\nlayer = "ip*"\nwidth = "2x"\n')
    code, stdout, err = run_cli("grow", CIFAR, "--plan", refused, "-o", out)
    assert code == 3 and err.count("\n") == 1 and err.startswith("error: step 2 (widen --layer 'ip*' --width 2x)")
    assert "graph output" in err and "nothing written" in err
    nothing = _write(tmp_path, '[[step]]\nverb = "kernel"\nlayer = "conv9*"\nsize = 7\n', "nothing.toml")
    code, _, err = run_cli("grow", CIFAR, "--plan", nothing, "-o", out)
    assert code == 2 and "step 1 (kernel --layer 'conv9*' --size 7): --layer 'conv9*' matches no layer" in err
    code, _, err = run_cli("grow", CIFAR, "--plan", _write(tmp_path, "[[step]]\nverb = 'widen'\nwidth = 2"), "-o", out)
    assert code == 2 and err.count("\n") == 1 and "step 1 (widen): no layer" in err
    assert list(out.parent.iterdir()) == []  # no child, no staged leftovers


def test_dry_run_prints_steps_selections_and_parameters_without_solving(tmp_path, monkeypatch):
    plan = _write(tmp_path, '[[step]]\nverb = "deepen"\nlayer = "conv[23]"\nk1 = 3\nk2 = 3\nwidth = 96\n'
                            '[[step]]\nverb = "widen"\nlayer = "conv1"\nwidth = 48\n')
    code, out, err = run_cli("grow", CIFAR, "--plan", plan, "--dry-run", "-o", tmp_path / "c.onnx")
    assert code == 0, err
    assert "step 1: deepen --layer 'conv[23]' --k1 3 --k2 3 --width 96: 2 layers selected" in out
    assert "\n  conv2\n  conv3\n" in out and "parameters " in out and "nothing written (--dry-run)" in out
    assert not (tmp_path / "c.onnx").exists()
    from onnxmorph.passes import common

    def no_solve(*args, **kwargs):
        raise AssertionError("a dry run solved")
    monkeypatch.setattr(common, "factorize", no_solve)
    _, dry = api.grow(str(CIFAR), str(plan), dry_run=True)
    monkeypatch.undo()
    _, real = api.grow(str(CIFAR), str(plan), verify=False)
    assert dry.verification is None and dry.details.dry_run
    assert [(s.parameters_before, s.parameters_after) for s in dry.details.steps] == [
        (s.parameters_before, s.parameters_after) for s in real.details.steps]


def test_verify_each_checks_every_step_and_names_the_one_that_breaks(tmp_path, monkeypatch):
    plan = [{"verb": "kernel", "layer": "conv1", "size": 7}, {"verb": "widen", "layer": "conv2", "width": 40},
            {"verb": "kernel", "layer": "conv3", "size": 7}]
    _, result = api.grow(str(CIFAR), plan, verify_each=True)
    first, second, last = result.details.steps
    assert first.verification["passed"] and second.verification["passed"] and last.verification is None
    assert result.verification.passed  # the last step's check is the final one

    def broken_kernel(model, **options):  # the kernel pass, then its layer's weight 1% off
        model, report = grow_pass.kernel_model(model, **options)
        node = next(n for n in model.graph.node if n.name == options["layer"])
        weight = next(t for t in model.graph.initializer if t.name == node.input[1])
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
        return model, report
    monkeypatch.setitem(grow_pass.PASSES, "kernel", broken_kernel)
    out = tmp_path / "c.onnx"
    plan = [{"verb": "widen", "layer": "conv1", "width": 40}, {"verb": "kernel", "layer": "conv3", "size": 7},
            {"verb": "widen", "layer": "conv2", "width": 40}]
    with pytest.raises(VerificationFailed, match=r"^the grow child does not preserve the function"):
        api.grow(str(CIFAR), plan, output=str(out))  # one check, at the end
    with pytest.raises(VerificationFailed, match=r"^step 2 \(kernel --layer conv3 --size 7\): the child does not "):
        api.grow(str(CIFAR), plan, verify_each=True, output=str(out))
    with pytest.raises(VerificationFailed, match=r"^step 2 \(kernel --layer conv3 --size 7\): the child does not "):
        api.grow(str(CIFAR), plan[:2], verify_each=True, output=str(out))  # the last step's check is the final one
    assert not out.exists()
    with pytest.raises(UsageError, match="--no-verify"):
        api.grow(str(CIFAR), plan, verify_each=True, verify=False)
    with pytest.raises(CannotMorph, match="^step 1 "):
        api.grow(str(CIFAR), [{"verb": "kernel", "layer": "ip1", "size": 3}])


def _example(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_script_grows_and_verifies(tmp_path):
    """examples/grow_plans.sh on its fast plans: the ResNet stage schedule and the LLaMA-Pro decoder."""
    import subprocess
    res = subprocess.run(["bash", str(ROOT / "examples" / "grow_plans.sh"), str(tmp_path), "resnet_stages",
                          "llama_pro"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["resnet_stages 4,4,4", "llama_pro blocks 3, mlp 128,128,128"]
    assert all("PASSED" in line for line in lines)


@pytest.mark.parametrize("plan,parent,expected", [
    ("cifar_base_to_width", "cifar_base.onnx", "(5:64)(3:32)(5:64)(3:32)(5:128)(3:64)"),
    ("vgg16_netmorph", "vgg16_small.onnx",
     "(3:8)(3:8)(3:32)(1:8)(3:16)(3:16)(3:64)(1:16)(3:32)(3:32)(3:32)(3:128)(1:32)(3:64)(3:64)(3:64)(3:64)(3:64)(3:64)"),
])
def test_the_papers_plans_reach_their_architecture(plan, parent, expected):
    child, result = api.grow(str(FIXTURES / parent), str(ROOT / "examples" / "plans" / f"{plan}.toml"))
    assert result.verification.passed and _example("arch").architecture(child) == expected


def test_the_table_1_depth_plan_reaches_its_architecture_in_a_dry_run():
    """Its real run solves ten 4x-wide factorizations (examples/grow_plans.sh; the same sequence verb by verb is
    tests/test_subnet.py's cifar_111_to_3333.sh): the dry run builds the same structure without solving."""
    child, result = api.grow(str(CIFAR), str(ROOT / "examples" / "plans" / "cifar_111_to_3333.toml"), dry_run=True)
    assert [len(s.selected) for s in result.details.steps] == [1, 2, 1, 4]
    assert _example("arch").architecture(child) == \
        "(5:128)(3:128)(1:32)(5:128)(3:128)(1:32)(5:256)(3:256)(1:64)(5:256)(3:256)(1:64)"
