"""Norms over the residual stream written as subgraphs (graph/norms.py) and RMSNormalization-23: d_model grows by
duplication through them, exactly; subgraphs that are almost a norm are refused with the node named."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmorph import api
from onnxmorph.errors import CannotMorph
from onnxmorph.graph import norms
from onnxmorph.graph.shapes import infer_shapes
from onnxmorph.graph.index import GraphIndex

from conftest import FIXTURES

# (fixture, a layer writing the stream) -> norms over the stream; GPT-2 at opset 14 verifies on a real sequence
DECOMPOSED = {
    ("hf_llama_dynamo18.onnx", "node_linear_3"): 5,                                       # o_proj
    ("hf_llama_dynamo18.onnx", "node_linear_6"): 5,                                       # down_proj
    ("hf_llama_legacy17.onnx", "/model/model/layers.0/self_attn/o_proj/MatMul"): 5,
    ("hf_llama_legacy17.onnx", "/model/model/layers.0/mlp/down_proj/MatMul"): 5,
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.0/attn/c_proj/Gemm"): 5,
    ("hf_gpt2_legacy14.onnx", "/model/transformer/h.0/mlp/c_proj/Gemm"): 5,
}
SHAPES = {"hf_gpt2_legacy14.onnx": ["x:2x8"]}


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "3x"])
@pytest.mark.parametrize("fixture,layer", list(DECOMPOSED), ids=[f"{f[3:-5]}:{l}" for f, l in DECOMPOSED])
def test_d_model_grows_through_decomposed_norms(fixture, layer, width, method):
    child, result = api.widen(str(FIXTURES / fixture), layer, width=width, method=method, seed=7,
                              input_shape=SHAPES.get(fixture))
    onnx.checker.check_model(child, full_check=True)
    group = result.details.group
    assert len(group["norms"]) == DECOMPOSED[(fixture, layer)]
    roles = [p.split(":")[-1] for p in group["parameters"]]
    assert roles.count("norm_scale") == 5 and roles.count("mul_const") == 0
    assert roles.count("norm_bias") == (5 if "gpt2" in fixture else 0)
    assert result.details.channels_to == int(width[0]) * result.details.channels_from
    assert result.verification.passed and result.verification.max_rel < 2e-6


def test_decomposed_norms_refuse_non_integer_widths():
    with pytest.raises(CannotMorph, match="only an integer multiple of 32 .the stream duplicated. keeps it exact"):
        api.widen(str(FIXTURES / "hf_llama_dynamo18.onnx"), "node_linear_3", width="48", stream="duplicate")


def test_fixture_norms_are_found_whole():
    """Llama's RMSNorm (legacy: Casts around, Div(1, Sqrt); dynamo: Reciprocal), GPT-2's opset-14 LayerNorm."""
    for fixture, kind, ops in (
            ("hf_llama_legacy17.onnx", "rms", ["Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Cast", "Mul"]),
            ("hf_llama_dynamo18.onnx", "rms", ["Pow", "ReduceMean", "Add", "Sqrt", "Reciprocal", "Mul", "Mul"]),
            ("hf_gpt2_legacy14.onnx", "layer",
             ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"])):
        model = onnx.load(str(FIXTURES / fixture))
        index = GraphIndex(model)
        found, misses = norms.find(index, infer_shapes(model))
        unique = list({id(n): n for n in found.values()}.values())
        assert len(unique) == 5 and not misses
        for norm in unique:
            assert norm.kind == kind and norm.scale is not None
            assert [n.op_type for n in norm.nodes][-len(ops):] == ops
            assert norm.epsilon_value(index) == pytest.approx(1e-5)
            assert (norm.bias is not None) == (kind == "layer")


# --- synthetic norms: every variant exporters write ----------------------------------------------------------

D = 8


def _norm_model(kind="rms", square="pow", inverse="sqrt_div", casts=False, gamma=True, beta=False,
                eps="initializer", opset=17, axes=(-1,), exponent=2.0, eps_outside=False, numerator=None,
                leak=None, folded=None, post=False):
    """x (2, 3, 6) -> MatMul 'wide' (the stream, D) -> norm -> MatMul 'mid' -> + stream -> MatMul 'out' (5).
    post: the residual adds the norm's output (post-norm), so the walk from 'mid' enters the norm backwards."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W_in", (6, D)), ("W_mid", (D, D)), ("W_out", (D, 5)))]
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h"], name="wide")]
    dtype, np_dtype = (TensorProto.DOUBLE, np.float64) if casts else (TensorProto.FLOAT, np.float32)

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np_dtype), name))
        return name

    def reduce(name, data, out):
        if opset >= 18:
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), name + "_axes"))
            nodes.append(helper.make_node("ReduceMean", [data, name + "_axes"], [out], name=name, keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMean", [data], [out], name=name, axes=list(axes), keepdims=1))

    a = "h"
    if casts:
        nodes.append(helper.make_node("Cast", ["h"], ["a"], name="ln/cast_in", to=dtype))
        a = "a"
    t = a
    if kind == "layer":
        reduce("ln/mean", a, "m")
        nodes.append(helper.make_node("Sub", [a, "m"], ["d"], name="ln/center"))
        t = "d"
    if square == "pow":
        nodes.append(helper.make_node("Pow", [t, const("two", exponent)], ["sq"], name="ln/square"))
    else:
        nodes.append(helper.make_node("Mul", [t, t], ["sq"], name="ln/square"))
    reduce("ln/var", "sq", "v")
    if eps == "initializer":
        eps_name = const("eps", 1e-5)
    elif eps == "constant":
        nodes.append(helper.make_node("Constant", [], ["eps"], name="ln/eps",
                                      value=numpy_helper.from_array(np.asarray(1e-5, np_dtype))))
        eps_name = "eps"
    elif eps == "subgraph":   # 1e-5 computed from constants (folded to one)
        nodes.append(helper.make_node("Div", [const("one_e0", 1.0), const("one_e5", 1e5)], ["eps"], name="ln/eps"))
        eps_name = "eps"
    else:                     # a run-time value: not an epsilon
        eps_name = "x_eps"
    top = t
    if numerator:             # y = relu(h) / sqrt(v + eps): the numerator is not the normalised tensor
        nodes.append(helper.make_node("Relu", ["h"], [numerator], name="other"))
        top = numerator
    if eps_outside:           # (x - m) / (sqrt(v) + eps)
        nodes += [helper.make_node("Sqrt", ["v"], ["s0"], name="ln/root"),
                  helper.make_node("Add", ["s0", eps_name], ["s"], name="ln/eps_add"),
                  helper.make_node("Div", [top, "s"], ["y"], name="ln/divide")]
    elif folded:              # x·g + (β − m·g), g = γ/√(v + ε): tf.nn.batch_normalization ("tf"), keras 3
        nodes.append(helper.make_node("Add", ["v", eps_name], ["e"], name="ln/eps_add"))
        if inverse == "pow_half":
            nodes.append(helper.make_node("Pow", ["e", const("minus_half", -0.5)], ["r"], name="ln/r"))
        else:
            nodes += [helper.make_node("Sqrt", ["e"], ["s"], name="ln/s"),
                      helper.make_node("Reciprocal", ["s"], ["r"], name="ln/r")]
        g = "r"
        if gamma:
            inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, D).astype(np_dtype), "gamma"))
            nodes.append(helper.make_node("Mul", ["r", "gamma"], ["g"], name="ln/scale"))
            g = "g"
        nodes += [helper.make_node("Mul", [a, g], ["xg"], name="ln/xg"),
                  helper.make_node("Mul", ["m", g], ["mg"], name="ln/mg")]
        shift = "mg"
        if beta:
            inits.append(numpy_helper.from_array(rng.standard_normal(D).astype(np_dtype), "beta"))
        if folded == "tf":
            nodes.append(helper.make_node("Sub", ["beta", "mg"], ["shift"], name="ln/shift") if beta else
                         helper.make_node("Neg", ["mg"], ["shift"], name="ln/neg"))
            shift = "shift"
        else:
            nodes.append(helper.make_node("Neg", ["mg"], ["neg"], name="ln/neg"))
            shift = "neg"
            if beta:
                nodes.append(helper.make_node("Add", ["neg", "beta"], ["shift"], name="ln/shift"))
                shift = "shift"
        nodes.append(helper.make_node("Add", ["xg", shift], ["y"], name="ln/y"))
        gamma = beta = False
    else:
        nodes.append(helper.make_node("Add", ["v", eps_name], ["e"], name="ln/eps_add"))
        forms = {
            "sqrt_div": [("Sqrt", ["e"], "s"), ("Div", [top, "s"], "y")],
            "sqrt_reciprocal": [("Sqrt", ["e"], "s"), ("Reciprocal", ["s"], "r"), ("Mul", [top, "r"], "y")],
            "sqrt_one_div": [("Sqrt", ["e"], "s"), ("Div", [const("one", 1.0), "s"], "r"), ("Mul", ["r", top], "y")],
            "pow_half": [("Pow", ["e", const("minus_half", -0.5)], "r"), ("Mul", [top, "r"], "y")],
            "reciprocal_sqrt": [("Reciprocal", ["e"], "r0"), ("Sqrt", ["r0"], "r"), ("Mul", [top, "r"], "y")],
        }
        nodes += [helper.make_node(op, ins, [out], name=f"ln/{out}") for op, ins, out in forms[inverse]]
    y = "y"
    if casts:
        nodes.append(helper.make_node("Cast", ["y"], ["y32"], name="ln/cast_out", to=TensorProto.FLOAT))
        y = "y32"
    if gamma:
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, D).astype(np.float32), "gamma"))
        nodes.append(helper.make_node("Mul", ["gamma", y], ["yg"], name="ln/scale"))
        y = "yg"
    if beta:
        inits.append(numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), "beta"))
        nodes.append(helper.make_node("Add", [y, "beta"], ["yb"], name="ln/shift"))
        y = "yb"
    nodes += [helper.make_node("MatMul", [y, "W_mid"], ["branch"], name="mid"),
              helper.make_node("Add", [y if post else "h", "branch"], ["stream"], name="residual")]
    if leak:   # an intermediate of the norm read outside it
        nodes.append(helper.make_node("Add", ["stream", leak], ["leaky"], name="leak"))
        nodes.append(helper.make_node("MatMul", ["leaky", "W_out"], ["out"], name="out"))
    else:
        nodes.append(helper.make_node("MatMul", ["stream", "W_out"], ["out"], name="out"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6])]
    if eps == "input":
        inputs.append(helper.make_tensor_value_info("x_eps", dtype, [1]))
    graph = helper.make_graph(nodes, "norm", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 5])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


VARIANTS = {
    "rms_pow_sqrt_div": dict(),
    "rms_mul_reciprocal_opset18": dict(square="mul", inverse="sqrt_reciprocal", opset=18),
    "rms_casts_one_div_constant_eps": dict(casts=True, inverse="sqrt_one_div", eps="constant"),
    "rms_pow_half_no_gamma": dict(inverse="pow_half", gamma=False),
    "rms_reciprocal_sqrt_eps_subgraph": dict(inverse="reciprocal_sqrt", eps="subgraph"),
    "layer_pow_sqrt_div_beta": dict(kind="layer", beta=True),
    "layer_mul_pow_half_opset18": dict(kind="layer", square="mul", inverse="pow_half", beta=True, opset=18),
    "layer_casts_reciprocal": dict(kind="layer", casts=True, inverse="sqrt_reciprocal", beta=True),
    "layer_beta_only": dict(kind="layer", gamma=False, beta=True, eps="constant"),
    "layer_folded_tf": dict(kind="layer", square="mul", folded="tf", beta=True),
    "layer_folded_tf_no_beta": dict(kind="layer", square="mul", folded="tf", opset=18),
    "layer_folded_keras_casts": dict(kind="layer", folded="keras", inverse="pow_half", beta=True, casts=True),
    "layer_folded_keras_no_gamma": dict(kind="layer", folded="keras", gamma=False, beta=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matcher_finds_each_variant(variant):
    options = VARIANTS[variant]
    model = _norm_model(**options)
    index = GraphIndex(model)
    found, misses = norms.find(index, infer_shapes(model))
    (norm,) = {id(n): n for n in found.values()}.values()
    assert not misses
    assert norm.kind == options.get("kind", "rms")
    assert norm.input == "h" and norm.output == next(n.input[0] for n in index.graph.node if n.name == "mid")
    assert norm.nodes[0].name == ("ln/cast_in" if options.get("casts") else
                                  "ln/mean" if norm.kind == "layer" else "ln/square")
    assert norm.scale == ("gamma" if options.get("gamma", True) else None)
    assert norm.bias == ("beta" if options.get("beta") else None)
    assert norm.epsilon[0].name == "ln/eps_add" and norm.epsilon_value(index) == pytest.approx(1e-5)
    # every node of it (epsilon's Constant aside): the per-channel tensors carry the space, the reduced ones never
    assert {n.name for n in norm.nodes} == {n.name for n in index.graph.node
                                            if n.name.startswith("ln/") and n.op_type != "Constant"}
    assert {"v", "m", "e", "s", "r", "r0", "neg" if options.get("gamma") is False else ""}.isdisjoint(
        norm.extra["channels"])
    assert {"h", "sq", "y"} <= set(norm.extra["channels"])


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("variant", ["rms_casts_one_div_constant_eps", "layer_pow_sqrt_div_beta", "layer_folded_tf"])
def test_post_norm_is_entered_from_its_output(variant, method):
    """Post-norm: growing 'mid' (it writes the stream after the norm) reaches the norm from its output, backwards,
    and through it the layer before."""
    child, result = api.widen(_norm_model(**VARIANTS[variant], post=True), "mid", width="2x", method=method, seed=4)
    group = result.details.group
    assert len(group["norms"]) == 1 and set(group["producers"]) == {"wide", "mid"}
    assert set(group["consumers"]) == {"mid", "out"}
    assert result.verification.passed and result.verification.max_rel < 2e-6


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "3x"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_synthetic_norms_grow_exactly(variant, width, method):
    options = VARIANTS[variant]
    child, result = api.widen(_norm_model(**options), "wide", width=width, method=method, seed=3)
    onnx.checker.check_model(child, full_check=True)
    group = result.details.group
    assert len(group["norms"]) == 1 and set(group["producers"]) == {"wide", "mid"}
    roles = sorted(p.split(":")[-1] for p in group["parameters"])
    assert roles == ["norm_bias"] * bool(options.get("beta")) + ["norm_scale"] * options.get("gamma", True)
    assert set(group["consumers"]) == {"mid", "out"}
    assert result.details.channels_to == int(width[0]) * D
    assert result.verification.passed and result.verification.max_rel < 2e-6


# near misses: refused at the ReduceMean, the reason naming where the pattern breaks
NEAR_MISSES = {
    "cube": (dict(exponent=3.0), r"ReduceMean 'ln/var'.*no norm \(Pow 'ln/square' raises to \[3.0\], not 2\)"),
    "two_axes": (dict(axes=(-2, -1)), r"ReduceMean 'ln/var'.*no norm \(ReduceMean 'ln/var' reduces axes \[1, 2\]"),
    "eps_outside_sqrt": (dict(kind="layer", eps_outside=True),
                         r"no norm \(the mean of squares 'v' is read by Sqrt 'ln/root', not added to a scalar"),
    "eps_at_run_time": (dict(eps="input"), r"not added to a scalar constant epsilon"),
    "other_numerator": (dict(numerator="x_other"), r"the root 's' is read by Div 'ln/y', not a division of 'h'"),
    "intermediate_read_outside": (dict(kind="layer", leak="d"), r"'d' inside the norm is also read by Add 'leak'"),
}


@pytest.mark.parametrize("case", list(NEAR_MISSES))
def test_near_misses_are_refused_naming_the_node(case):
    options, reason = NEAR_MISSES[case]
    model = _norm_model(**options)
    with pytest.raises(CannotMorph, match="cannot widen through ReduceMean .*reduces over the channel axis"):
        api.widen(model, "wide", width="2x")
    with pytest.raises(CannotMorph, match=reason):
        api.widen(model, "wide", width="2x")


def test_matcher_near_miss_is_not_a_norm():
    model = _norm_model(kind="layer", exponent=3.0)
    index = GraphIndex(model)
    reduce = next(n for n in index.graph.node if n.name == "ln/mean")
    with pytest.raises(norms.NotANorm, match="Pow 'ln/square' raises to"):
        norms.match(index, infer_shapes(model), reduce)
    # keepdims=0: the mean no longer lines up with the channels it came from
    model = _norm_model(kind="layer")
    shapes = infer_shapes(model)
    index = GraphIndex(model)
    reduce = next(n for n in index.graph.node if n.name == "ln/var")
    next(a for a in reduce.attribute if a.name == "keepdims").i = 0
    with pytest.raises(norms.NotANorm, match=r"ReduceMean 'ln/var' drops the reduced axis \(keepdims=0\)"):
        norms.match(index, shapes, reduce)


# --- RMSNormalization (opset 23) ------------------------------------------------------------------------------

def _rms23_model(axis=-1):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W_in", (6, D)), ("W_mid", (D, D)), ("W_out", (D, 5)))]
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, D if axis == -1 else (3, D)).astype(np.float32),
                                         "gamma"))
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h"], name="wide"),
             helper.make_node("RMSNormalization", ["h", "gamma"], ["n"], name="rms", axis=axis, epsilon=1e-6),
             helper.make_node("MatMul", ["n", "W_mid"], ["branch"], name="mid"),
             helper.make_node("Add", ["h", "branch"], ["stream"], name="residual"),
             helper.make_node("MatMul", ["stream", "W_out"], ["out"], name="out")]
    graph = helper.make_graph(nodes, "rms23", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("method", ["netmorph", "net2net"])
@pytest.mark.parametrize("width", ["2x", "3x"])
def test_rms_normalization_23_grows_exactly(width, method):
    """ONNX Runtime here runs RMSNormalization-23, so verify measures the child."""
    child, result = api.widen(_rms23_model(), "wide", width=width, method=method, seed=5)
    onnx.checker.check_model(child, full_check=True)
    group = result.details.group
    assert group["norms"] == ["rms"] and "rms:norm_scale" in group["parameters"]
    assert result.details.channels_to == int(width[0]) * D
    assert result.verification.passed and result.verification.max_rel < 2e-6


def test_rms_normalization_23_records_the_norm():
    from onnxmorph.graph.coupling import analyse
    from onnxmorph.graph.layers import find_layer
    model = _rms23_model()
    index = GraphIndex(model)
    group = analyse(index, find_layer(index, "wide"))
    (norm,) = group.norms
    assert (norm.kind, norm.input, norm.output, norm.scale, norm.bias) == ("rms", "h", "n", "gamma", None)
    assert norm.epsilon_value(index) == pytest.approx(1e-6)


def test_rms_normalization_23_over_two_axes_is_refused():
    with pytest.raises(CannotMorph, match="RMSNormalization 'rms'.*normalizes over more than the widened channels"):
        api.widen(_rms23_model(axis=-2), "wide", width="2x")
    with pytest.raises(CannotMorph, match="only an integer multiple of 8"):
        api.widen(_rms23_model(), "wide", width="12", stream="duplicate")


def test_norm_over_part_of_the_widened_axis_is_refused():
    """The stream is [wide_a; wide_b]: growing wide_a alone would change what the norm averages."""
    model = _norm_model()
    graph = model.graph
    w_in = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "W_in"))
    graph.initializer.extend([numpy_helper.from_array(w_in[:, :4].copy(), "W_a"),
                              numpy_helper.from_array(w_in[:, 4:].copy(), "W_b")])
    at = next(i for i, n in enumerate(graph.node) if n.name == "wide")
    del graph.node[at]
    for k, node in enumerate([helper.make_node("MatMul", ["x", "W_a"], ["ha"], name="wide_a"),
                              helper.make_node("MatMul", ["x", "W_b"], ["hb"], name="wide_b"),
                              helper.make_node("Concat", ["ha", "hb"], ["h"], name="stream_parts", axis=-1)]):
        graph.node.insert(at + k, node)
    with pytest.raises(CannotMorph, match="part of the RMSNorm .*normalizes over more than the widened channels"):
        api.widen(model, "wide_a", width="2x")


def _conv_w_norm_model(beta):
    """Conv channels on axis 1, an RMSNorm (with beta: and a shift) over the last (W) axis."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (4, 3, 1, 1)), ("W2", (2, 4, 1, 1)), ("gamma", (6,)), ("beta", (6,)))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("two", 2.0), ("eps", 1e-5),
                                                                               ("minus_half", -0.5))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["h"], name="conv1"),
             helper.make_node("Pow", ["h", "two"], ["sq"], name="ln/square"),
             helper.make_node("ReduceMean", ["sq"], ["v"], name="ln/var", axes=[-1], keepdims=1),
             helper.make_node("Add", ["v", "eps"], ["e"], name="ln/eps_add"),
             helper.make_node("Pow", ["e", "minus_half"], ["r"], name="ln/inverse_root"),
             helper.make_node("Mul", ["h", "r"], ["y"], name="ln/normalize"),
             helper.make_node("Mul", ["y", "gamma"], ["yg"], name="ln/scale")]
    if beta:
        nodes.append(helper.make_node("Add", ["yg", "beta"], ["yb"], name="ln/shift"))
    nodes.append(helper.make_node("Conv", [nodes[-1].output[0], "W2"], ["out"], name="conv2"))
    graph = helper.make_graph(nodes, "w_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 5, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("method,zeros", [("netmorph", "producers"), ("netmorph", "consumers"), ("net2net", "auto")])
def test_norm_over_another_axis_passes_channel_by_channel(beta, method, zeros):
    """The norm acts on each conv channel apart: nothing to record, any width; zero new channels stay zero through
    it unless beta shifts them."""
    model = _conv_w_norm_model(beta)
    index = GraphIndex(model)
    assert len({id(n) for n in norms.find(index, infer_shapes(model))[0].values()}) == 1
    if beta and zeros == "producers":
        with pytest.raises(CannotMorph, match="--zeros producers: an activation on the space maps 0 to a non-zero"):
            api.widen(model, "conv1", width="7", method=method, zeros=zeros)
        return
    child, result = api.widen(model, "conv1", width="7", method=method, zeros=zeros, seed=1)
    assert "norms" not in result.details.group and result.details.group["consumers"] == ["conv2"]
    assert result.details.channels_to == 7
    assert result.verification.passed and result.verification.max_rel < 2e-6


@pytest.mark.parametrize("read_from", ["stream", "other"])
def test_reshape_reading_another_tensors_last_dim(read_from):
    """GPT-2 at opset 14 reshapes ln_f's output to a shape that reads the last dim of the embedding sum: it follows
    the growth when that tensor grows with the data; a tensor outside the widened channels is refused."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W_in", (6, D)), ("W_other", (6, D)), ("W_out", (D, 5)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("zero", [0]), ("two", [2]), ("start", [-1]), ("stop", [2 ** 62]))]
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h"], name="wide"),
             helper.make_node("MatMul", ["x", "W_other"], ["o"], name="other"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Shape", ["h" if read_from == "stream" else "o"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "start", "stop"], ["last"], name="last_dim"),
             helper.make_node("Shape", ["hr"], ["data_shape"], name="data_shape"),
             helper.make_node("Slice", ["data_shape", "zero", "two"], ["first"], name="first_dims"),
             helper.make_node("Concat", ["first", "last"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["hr", "target"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "W_out"], ["out"], name="out"),
             helper.make_node("ReduceSum", ["o"], ["o_sum"], name="o_sum", keepdims=0)]
    graph = helper.make_graph(nodes, "reads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("o_sum", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if read_from == "other":
        with pytest.raises(CannotMorph, match="Reshape 'flatten' on tensor 'o': its shape reads the last dim of a "
                                              "tensor that does not grow with it"):
            api.widen(model, "wide", width="12", input_shape=["x:2x3x6"])
        return
    child, result = api.widen(model, "wide", width="12", input_shape=["x:2x3x6"], seed=2)
    assert result.details.group["consumers"] == ["out"]
    assert result.verification.passed and result.verification.max_rel < 2e-6
