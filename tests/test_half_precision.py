"""Half-precision models (issue 18). On every fp16/bf16 twin in fixtures/half (fixtures/export_half_fixtures.py:
pure fp16, fp16 with float32 edges, fp16 with float32 islands, bf16), every verb gives what it gives on the float32
source: the same layers found, each sampled layer exact (judged against the twin's own floor) or refused with the
same message, new weights in the layer's own type, no kept tensor or graph input/output changing type. verify:
exact children pass, 1e-2 perturbations fail, a float32 parent noisier than 1e-5 passes its exact children, the
report gives the floor, inputs of different types are one error. And the PyTorch handoff of an fp16 child."""
import functools
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph, UsageError, VerificationFailed
from onnxmorph.graph.blocks import find_blocks
from onnxmorph.graph.index import GraphIndex
from onnxmorph.graph.layers import find_layers
from onnxmorph.graph.precision import cast_floats
from onnxmorph.verify import FLOOR_MULTIPLE, verify

from conftest import FIXTURES, run_cli

HALF = FIXTURES / "half"
VARIANTS = ("fp16", "fp16io", "fp16mixed", "bf16")
TWINS = sorted(p.name for p in HALF.glob("*.onnx"))
PRECISION = {"fp16": "float16", "fp16io": "float16", "fp16mixed": "float16", "bf16": "bfloat16"}
FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _split(twin: str) -> tuple[str, str]:
    stem, variant = re.fullmatch(r"(.*)_(fp16io|fp16mixed|fp16|bf16)\.onnx", twin).groups()
    return stem + ".onnx", variant


def test_every_twin_has_its_source():
    assert len(TWINS) == 38
    sources = {_split(t)[0] for t in TWINS}
    assert len(sources) == 12 and all((FIXTURES / s).exists() for s in sources)


@functools.lru_cache(maxsize=None)
def _layers(path: str) -> list:
    return find_layers(GraphIndex(onnx.load(path)))


def _sampled(twin: str) -> list:
    """The first and last layers (the classifier or LM head: widen is refused there) and one middle layer that
    moves with the variant, so the twins of a source cover different layers; verify each sampled layer fully."""
    layers = _layers(str(HALF / twin))
    middle = layers[1:-1]
    picked = [layers[0], layers[-1]]
    if middle:
        picked.insert(1, middle[(VARIANTS.index(_split(twin)[1]) * 3) % len(middle)])
    return picked


def _morphs(layer):
    """(verb, call on a path) for every verb that applies to the layer."""
    out = [("deepen", lambda p: api.deepen(p, layer.id)), ("subnet", lambda p: api.subnet(p, layer.id)),
           ("widen", lambda p: api.widen(p, layer.id, width="2x", seed=3))]
    if layer.op == "Conv":
        out.append(("kernel", lambda p: api.kernel(p, layer.id, size=max(layer.kernel) + 2)))
    return out


def _outcome(call, path):
    """("exact", result, child) or ("refused" | "failed", message, None)."""
    try:
        child, result = call(path)
    except CannotMorph as exc:
        return "refused", str(exc), None
    except VerificationFailed as exc:
        return "failed", str(exc), None
    return "exact", result, child


@functools.lru_cache(maxsize=None)
def _source_outcome(source: str, verb: str, layer_id: str) -> tuple[str, str]:
    """The float32 source's outcome, computed once for all its twins."""
    path = str(FIXTURES / source)
    if verb == "block":
        call = lambda p: api.deepen(p, block=layer_id)  # noqa: E731
    else:
        layer = next(x for x in _layers(path) if x.id == layer_id)
        call = dict(_morphs(layer))[verb]
    kind, what, _ = _outcome(call, path)
    return kind, what if kind != "exact" else ""


def _check_types(parent: onnx.ModelProto, child: onnx.ModelProto, weight_type: int, where: str):
    """No kept initializer, graph input or output changes type; created float initializers are in the layer's."""
    before = {t.name: t.data_type for t in parent.graph.initializer}
    for t in child.graph.initializer:
        if t.name in before:
            assert t.data_type == before[t.name], f"{where}: kept {t.name} changed type"
        elif t.data_type in FLOATS:
            assert t.data_type == weight_type, f"{where}: new {t.name} is {t.data_type}, not {weight_type}"
    for side in ("input", "output"):
        types = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in getattr(m.graph, side)]  # noqa: E731
        assert types(child)[:len(types(parent))] == types(parent), f"{where}: graph {side}s changed type"


@pytest.mark.parametrize("twin", TWINS)
def test_every_verb_on_a_twin_does_what_it_does_on_the_source(twin):
    source, variant = _split(twin)
    path = str(HALF / twin)
    parent = onnx.load(path)
    assert [x.id for x in _layers(path)] == [x.id for x in _layers(str(FIXTURES / source))]
    index = GraphIndex(onnx.load(path))
    cases = [(verb, layer.id, call, index.constant_dtype(layer.weight_name))
             for layer in _sampled(twin) for verb, call in _morphs(layer)]
    blocks = find_blocks(index)
    assert [b.id for b in blocks] == [b.id for b in find_blocks(GraphIndex(onnx.load(str(FIXTURES / source))))]
    if blocks:
        cases.append(("block", blocks[0].id, lambda p: api.deepen(p, block=blocks[0].id), None))
    exact = 0
    for verb, layer_id, call, weight_type in cases:
        where = f"{twin} {verb} {layer_id}"
        kind, what, child = _outcome(call, path)
        expected_kind, expected_message = _source_outcome(source, verb, layer_id)
        assert kind == expected_kind, f"{where}: {kind} ({what}) where the source is {expected_kind}"
        if kind != "exact":
            assert what == expected_message, where
            continue
        exact += 1
        v = what.verification
        assert v.passed and v.tolerance == "calibrated" and v.precision == PRECISION[variant], where
        assert 0 < v.floor and v.ratio <= FLOOR_MULTIPLE, where
        assert bool(v.upcast) == (variant == "bf16"), where   # ORT's CPU has no bf16 kernels
        _check_types(parent, child, weight_type if weight_type is not None else parent.graph.initializer[0].data_type,
                     where)
    assert exact >= len(cases) // 2


# --- verify ------------------------------------------------------------------------------------------------------

def _perturbed(model: onnx.ModelProto, name: str, rel: float) -> onnx.ModelProto:
    """The model with initializer `name` times (1 +- rel), random signs, in its own type."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensor = next(t for t in out.graph.initializer if t.name == name)
    w = numpy_helper.to_array(tensor)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=w.shape)
    tensor.CopyFrom(numpy_helper.from_array((w.astype(np.float64) * (1 + rel * signs)).astype(w.dtype), name))
    return out


def _fp16(name: str) -> onnx.ModelProto:
    return cast_floats(onnx.load(str(FIXTURES / name)), (TensorProto.FLOAT,), TensorProto.FLOAT16)


# Layers whose 1e-2 perturbation moves the output by more than fp16 rounding does: the first layer of small plain
# networks, and the heads of the fixtures/half twins (most of their other layers move it by less: there nothing
# could tell the perturbation from the twin's own fp16 rounding, which exact children reach).
SENSITIVE = [("cifar10_quick.onnx", 0), ("mnist_softmax.onnx", 0), ("transformer_mlp.onnx", 0),
             ("half/torch_resnetish_legacy17_fp16.onnx", -1), ("half/timm_convnext_legacy17_fp16io.onnx", -1),
             ("half/hf_llama_dynamo18_fp16.onnx", -1)]


@pytest.mark.parametrize("name,which", SENSITIVE, ids=[s[0] for s in SENSITIVE])
def test_a_1e2_perturbation_fails_on_fp16_and_fp32(name, which):
    path = str(FIXTURES / name)
    models = [onnx.load(path)] if name.startswith("half/") else [onnx.load(path), _fp16(name)]
    weight = _layers(path)[which].weight_name
    for model in models:
        assert verify(model, model).passed
        report = verify(model, _perturbed(model, weight, 1e-2))
        assert not report.passed and report.ratio > FLOOR_MULTIPLE, (name, report.ratio)


def _noisy_parent(tmp_path):
    """A float32 parent whose rounding ONNX Runtime's graph optimisations change by 2.4e-5 (as a Keras ResNet50's
    does by 2e-5): a Conv adding 4000 that a BatchNormalization takes off again; fused, the 4000 cancels in the
    weights, unfused in the values (float32 holds 4000 + y to 2.4e-4)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 3, "w")
    b = numpy_helper.from_array(np.full(8, 4000.0, np.float32), "b")
    bn = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
          (("scale", np.ones(8)), ("bias", np.zeros(8)), ("mean", np.full(8, 4000.0)), ("var", np.ones(8)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn")],
        "noisy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w, b, *bn])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "noisy.onnx"
    onnx.save(model, str(path))
    return path


def test_a_noisy_float32_parent_passes_its_exact_children(tmp_path):
    parent = _noisy_parent(tmp_path)
    child, result = api.subnet(str(parent), "conv", output=str(tmp_path / "s.onnx"))  # the Sum keeps BN unfused
    v = result.verification
    assert v.passed and v.precision == "float32" and v.floor > 1e-5 and v.max_rel > 1e-5
    assert "floor" in v.lines()[-1] and f"{v.floor:.2e}" in v.lines()[-1]
    fixed = verify(str(parent), str(tmp_path / "s.onnx"), rtol=1e-5)   # the old fixed rule refuses it
    assert not fixed.passed and fixed.tolerance == "fixed" and fixed.floor == pytest.approx(v.floor)
    assert not verify(str(parent), _perturbed(onnx.load(str(parent)), "w", 1e-2)).passed


def test_float32_fixtures_keep_the_float32_limit():
    """Where a float32 parent's floor is below 1e-5 / FLOOR_MULTIPLE the limit stays 1e-5: no looser than before."""
    path = str(FIXTURES / "torch_resnetish_legacy17.onnx")
    report = verify(path, path)
    assert report.passed and report.floor < 1e-6 and report.outputs[0].limit == 1e-5


def test_the_report_gives_the_floor(tmp_path):
    twin = HALF / "torch_effnetish_legacy17_fp16.onnx"
    child, result = api.deepen(str(twin), "/head/Conv", output=str(tmp_path / "d.onnx"))
    v = result.verification
    line = v.lines()[-1]
    assert line.startswith("PASSED: max rel error") and f"floor {v.floor:.2e}" in line and "ratio" in line
    assert "float16" in line and f"limit {FLOOR_MULTIPLE:g} x floor" in line
    data = v.to_dict()
    assert data["floor"] == v.floor and data["ratio"] == v.ratio and data["outputs"][0]["floor"] > 0
    assert data["precision"] == "float16" and data["tolerance"] == "calibrated"
    code, out, _ = run_cli("verify", twin, tmp_path / "d.onnx")
    assert code == 0 and "floor" in out.splitlines()[-1]


def test_bf16_runs_as_float32_upcasts_and_says_so():
    twin = str(HALF / "hf_gpt2_legacy17_bf16.onnx")
    report = verify(twin, twin)
    assert report.passed and report.precision == "bfloat16" and "no " in report.upcast and "kernel" in report.upcast
    assert any(line.startswith("ran as float32 upcasts") for line in report.lines())
    assert report.floor > 1e-3   # bf16 keeps 8 bits


def test_inputs_of_different_types_are_one_error():
    source, twin = FIXTURES / "torch_resnetish_legacy17.onnx", HALF / "torch_resnetish_legacy17_fp16.onnx"
    with pytest.raises(UsageError, match="x is float32 in the parent and float16 in the child"):
        verify(str(source), str(twin))
    code, out, err = run_cli("verify", source, twin)
    assert code == 2 and "FAILED" not in out and len(err.strip().splitlines()) == 1


def test_a_child_that_fails_to_run_is_never_an_error_of_zero(tmp_path):
    from conftest import relu_parent_and_child
    parent, child = relu_parent_and_child(tmp_path, "Reshape", [7])   # a Reshape that cannot run on (2, 3)
    report = verify(str(parent), str(child))
    assert not report.passed and report.lines()[-1].startswith("FAILED: nothing compared")


def test_fp16mixed_norm_weights_stay_float16_behind_their_casts():
    """In the Llama fp16mixed twin the norm weights are fp16 initializers Cast to float32 in front of the island:
    LEMON changes them; they stay fp16, read by the same Casts."""
    path = str(HALF / "hf_llama_dynamo18_fp16mixed.onnx")
    child, result = api.widen(path, "node_linear_3", width="33", seed=3)   # the stream, off an integer multiple
    assert result.details.stream == "lemon" and result.verification.passed
    inits = {t.name: t for t in child.graph.initializer}
    norm = inits["model.model.layers.0.input_layernorm.weight"]
    assert norm.data_type == TensorProto.FLOAT16 and list(norm.dims) == [33]
    cast = next(n for n in child.graph.node if n.op_type == "Cast" and n.input[0] == norm.name)
    assert cast.output[0] not in inits
    assert not [t.name for t in child.graph.initializer if t.data_type == TensorProto.FLOAT]


def test_an_fp16_child_trains_as_its_float32_upcast(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from onnxmorph.torch import to_torch, trainability
    twin = HALF / "torch_resnetish_legacy17_fp16.onnx"
    api.deepen(str(twin), "/l1/c1/Conv", output=str(tmp_path / "d.onnx"))
    report = trainability(str(twin), str(tmp_path / "d.onnx"))
    assert report.passed and report.max_rel < 1e-6 and len(report.params) == 4
    assert "float16 model is handed to PyTorch as its float32 upcast" in report.lines()[1]
    module = to_torch(str(tmp_path / "d.onnx"))
    assert module.onnx_upcast and all(p.dtype.is_floating_point and p.element_size() == 4
                                      for p in module.parameters())
