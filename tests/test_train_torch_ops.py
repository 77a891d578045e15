"""onnxmorph.torch_ops: the converters we add to onnx2torch, each on one-node models against ONNX Runtime."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")
pytest.importorskip("onnx2torch")
import onnxruntime as ort  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from onnxmorph.torch import run_torch, to_torch  # noqa: E402

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _model(node, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return model


def _max_rel(model, feed, reference=False):
    """Max |torch - ORT| over max |ORT| across every output; shapes and dtypes must agree exactly.
    reference: against onnx's reference evaluator instead, where ORT does not implement the spec."""
    if reference:
        expected = ReferenceEvaluator(model).run(None, feed)
    else:
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = run_torch(to_torch(model), feed, [i.name for i in model.graph.input])
    assert len(got) == len(expected)
    worst = 0.0
    for e, g in zip(expected, got):
        assert e.shape == g.shape and e.dtype == g.dtype, (e.shape, g.shape, e.dtype, g.dtype)
        if e.dtype == np.bool_:
            assert np.array_equal(e, g)
            continue
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-30)
        worst = max(worst, float(np.abs(e.astype(np.float64) - g).max(initial=0.0)) / scale)
    return worst


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 7, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("outputs,split,axis", [(3, None, 1), (2, None, -1), (1, None, 0), (2, [2, 5], 1),
                                                (3, [1, 1, 2], 3)])
def test_split18(outputs, split, axis):
    names = [f"y{i}" for i in range(outputs)]
    inputs, inits = ["x"], []
    if split is not None:
        inputs.append("split")
        inits.append(("split", np.array(split, np.int64)))
    attrs = dict(axis=axis) if split is not None else dict(axis=axis, num_outputs=outputs)
    node = helper.make_node("Split", inputs, names, **attrs)
    model = _model(node, [("x", FLOAT, X.shape)], [(n, FLOAT) for n in names], 18, inits)
    assert _max_rel(model, {"x": X}) == 0.0


REDUCE_CASES = [([1], 1, 0), ([-1, 0], 0, 0), ([], 1, 0), ([], 0, 1), (None, 1, 0), (None, 0, 1), ([2, 1], 0, 0)]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"])
@pytest.mark.parametrize("axes,keepdims,noop", REDUCE_CASES, ids=[str(c) for c in REDUCE_CASES])
def test_reduce18(op, axes, keepdims, noop):
    # Positive values: a sum of mixed signs cancels, and its float32 rounding (ORT and torch add in different
    # orders) is then large against the result; the test is about which axes and what is computed.
    x = np.abs(X) + 0.5
    inputs, inits = ["x"], []
    if axes is not None:
        inputs.append("axes")
        inits.append(("axes", np.array(axes, np.int64)))
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims, noop_with_empty_axes=noop)
    model = _model(node, [("x", FLOAT, x.shape)], [("y", FLOAT)], 18, inits)
    assert _max_rel(model, {"x": x}) <= 1e-6


@pytest.mark.parametrize("shape,allowzero,x_shape", [([0, 7, -1], 0, (2, 7, 3, 4)), ([4, 0, 2, -1], 0, (2, 7, 3, 4)),
                                                     ([14, 12], 1, (2, 7, 3, 4)), ([3, 0, 2], 1, (2, 0, 3)),
                                                     ([0, 5], 1, (5, 0))])
@pytest.mark.parametrize("opset", [14, 21])
def test_reshape(shape, allowzero, x_shape, opset):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)
    model = _model(node, [("x", FLOAT, x_shape)], [("y", FLOAT)], opset, [("shape", np.array(shape, np.int64))])
    assert _max_rel(model, {"x": x}) == 0.0


@pytest.mark.parametrize("op", ["LessOrEqual", "GreaterOrEqual"])
def test_comparisons16(op):
    a = RNG.integers(0, 3, (3, 4)).astype(np.float32)
    b = RNG.integers(0, 3, (4,)).astype(np.float32)
    model = _model(helper.make_node(op, ["a", "b"], ["y"]), [("a", FLOAT, a.shape), ("b", FLOAT, b.shape)],
                   [("y", BOOL)], 17)
    assert _max_rel(model, {"a": a, "b": b}) == 0.0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu20(approximate):
    x = (X * 3).astype(np.float32)
    model = _model(helper.make_node("Gelu", ["x"], ["y"], approximate=approximate), [("x", FLOAT, x.shape)],
                   [("y", FLOAT)], 20)
    assert _max_rel(model, {"x": x}) <= 1e-6


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1, -4])
@pytest.mark.parametrize("opset", [13, 21])
def test_flatten(axis, opset):
    model = _model(helper.make_node("Flatten", ["x"], ["y"], axis=axis), [("x", FLOAT, X.shape)],
                   [("y", FLOAT)], opset)
    assert _max_rel(model, {"x": X}) == 0.0


@pytest.mark.parametrize("attrs", [{}, dict(reverse=1), dict(exclusive=1), dict(exclusive=1, reverse=1)],
                         ids=["default", "reverse", "exclusive", "both"])
def test_cumsum(attrs):
    """onnx2torch reads a missing `reverse` as 1; ONNX's default is 0 (OPT's legacy export counts positions so)."""
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)
    model = _model(node, [("x", FLOAT, X.shape)], [("y", FLOAT)], 14, [("axis", np.array(1, np.int64))])
    assert _max_rel(model, {"x": X}) < 1e-6


def test_identity21():
    model = _model(helper.make_node("Identity", ["x"], ["y"]), [("x", FLOAT, X.shape)], [("y", FLOAT)], 21)
    assert _max_rel(model, {"x": X}) == 0.0


CONV_CASES = [  # (input shape, kernel, strides, dilations, group); odd total padding on most axes (UPPER != LOWER)
    ((1, 4, 10), (3,), (2,), (1,), 1), ((1, 4, 10), (2,), (1,), (3,), 2),
    ((2, 4, 9, 8), (4, 2), (2, 1), (1, 1), 1), ((1, 4, 7, 7), (5, 4), (3, 1), (2, 1), 4),
    ((1, 2, 5, 6, 7), (2, 2, 3), (2, 2, 1), (1, 1, 1), 1),
]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("x_shape,kernel,strides,dilations,group", CONV_CASES, ids=[str(c[0]) for c in CONV_CASES])
def test_conv_same(auto_pad, x_shape, kernel, strides, dilations, group):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal((6 if group == 1 else 8, x_shape[1] // group, *kernel)).astype(np.float32)
    b = RNG.standard_normal(w.shape[0]).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad=auto_pad, strides=strides,
                            dilations=dilations, group=group)
    model = _model(node, [("x", FLOAT, x_shape)], [("y", FLOAT)], 17, [("w", w), ("b", b)])
    # ORT refuses dilations with SAME_*; the spec allows them: check those against onnx's reference
    assert _max_rel(model, {"x": x}, reference=max(dilations) > 1) <= 1e-6
    module = to_torch(model)   # the weight and bias are the trainable parameters
    assert sorted(module.onnx_parameters.values()) == ["b", "w"]


def test_still_missing_is_refused_on_one_line():
    from onnxmorph.errors import CannotConvert
    model = _model(helper.make_node("Trilu", ["x"], ["y"]), [("x", FLOAT, (3, 3))], [("y", FLOAT)], 17)
    with pytest.raises(CannotConvert, match=r"^onnx2torch cannot convert Trilu \(opset 17\)$"):
        to_torch(model)


@pytest.mark.parametrize("x_shape,kernel,pads,strides,dilations,group", [
    ((1, 4, 12), (5,), (3, 4), (2,), (2,), 1), ((1, 4, 9, 8), (3, 3), (0, 1, 2, 1), (2, 2), (1, 1), 2),
    ((1, 2, 5, 6, 7), (3, 2, 3), (1, 0, 2, 2, 1, 0), (1, 2, 1), (1, 1, 2), 1)])
def test_conv_pads_that_differ_at_the_ends(x_shape, kernel, pads, strides, dilations, group):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal((6, x_shape[1] // group, *kernel)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=pads, strides=strides, dilations=dilations,
                            group=group)
    model = _model(node, [("x", FLOAT, x_shape)], [("y", FLOAT)], 17, [("w", w), ("b", b)])
    assert _max_rel(model, {"x": x}) <= 1e-6
    assert sorted(to_torch(model).onnx_parameters.values()) == ["b", "w"]   # not hidden in a Sequential


@pytest.mark.parametrize("fixture", ["conv_shapes.onnx", "hf_gpt2_dynamo18.onnx", "hf_llama_dynamo18.onnx"])
def test_modules_save_and_load_whole(fixture, tmp_path):
    """export-torch writes torch.save(module): our modules pickle by name (PadFirstConv, Split, Reduce, Reshape)."""
    import torch
    from conftest import FIXTURES
    from onnxmorph.torch import export_torch
    from onnxmorph.verify import make_inputs
    model = onnx.load(str(FIXTURES / fixture))
    module, report = export_torch(model, output=tmp_path / "m.pt")
    assert report.max_rel <= 1e-6
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    feed = make_inputs(model, 1, 0)[0]
    for a, b in zip(run_torch(module, feed, list(feed)), run_torch(loaded, feed, list(feed))):
        assert np.array_equal(a, b)


POOL_CASES = [  # (op, input shape, kernel, strides, extra attributes)
    ("MaxPool", (1, 3, 10), (3,), (2,), {}), ("MaxPool", (2, 3, 9, 8), (4, 2), (2, 1), {}),
    ("MaxPool", (1, 2, 5, 6, 7), (2, 2, 3), (2, 2, 1), {}),
    ("AveragePool", (1, 3, 10), (3,), (2,), {}), ("AveragePool", (2, 3, 9, 8), (4, 2), (2, 1), {}),
    ("AveragePool", (2, 3, 9, 8), (4, 2), (2, 1), dict(count_include_pad=1)),
    ("AveragePool", (1, 2, 5, 6, 7), (2, 2, 3), (2, 2, 1), {}),
]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op,x_shape,kernel,strides,extra", POOL_CASES,
                         ids=[f"{c[0]}{c[1]}{'-' + '-'.join(c[4]) if c[4] else ''}" for c in POOL_CASES])
def test_pool_same(op, x_shape, kernel, strides, extra, auto_pad):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    node = helper.make_node(op, ["x"], ["y"], auto_pad=auto_pad, kernel_shape=kernel, strides=strides, **extra)
    model = _model(node, [("x", FLOAT, x_shape)], [("y", FLOAT)], 17)
    assert _max_rel(model, {"x": x}) <= 1e-6


@pytest.mark.parametrize("extra,reason", [(dict(ceil_mode=1), "ceil_mode=1"),
                                          (dict(dilations=[2]), "ONNX Runtime and the ONNX spec disagree")])
def test_pool_same_refusals(extra, reason):
    """ceil_mode with SAME is not implemented; with dilations ORT's MaxPool gives 7 rows for the spec's 9 (the
    onnx reference evaluator follows the spec), so no conversion can match both."""
    from onnxmorph.errors import CannotConvert
    node = helper.make_node("MaxPool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[3], **extra)
    with pytest.raises(CannotConvert, match=f"^onnx2torch cannot convert MaxPool node .*{reason}"):
        to_torch(_model(node, [("x", FLOAT, (1, 2, 9))], [("y", FLOAT)], 17))


def test_conv_same_keeps_float64():
    x = RNG.standard_normal((1, 3, 9, 8))
    w, b = RNG.standard_normal((4, 3, 2, 3)), RNG.standard_normal(4)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 1])
    model = _model(node, [("x", TensorProto.DOUBLE, x.shape)], [("y", TensorProto.DOUBLE)], 17, [("w", w), ("b", b)])
    assert _max_rel(model, {"x": x}, reference=True) <= 1e-14   # ORT has no float64 Conv


SLICES = [  # starts, ends, axes, steps on a (4, 7) input
    ([1], [5], [1], None), ([-3], [100], [1], None), ([0, 2], [3, -1], [0, 1], [1, 2]),
    ([6], [-100], [1], [-1]), ([5], [1], [1], [-2]), ([-1], [-9], [0], [-1]), ([3], [3], [1], None),
    ([100], [200], [1], None), ([0], [9223372036854775807], [-1], [3]), ([2], [0], [0], None),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES, ids=[str(i) for i in range(len(SLICES))])
@pytest.mark.parametrize("opset", [10, 13])
def test_slice(starts, ends, axes, steps, opset):
    inputs = [("x", FLOAT, [4, 7])]
    consts = [("starts", np.array(starts, np.int64)), ("ends", np.array(ends, np.int64)),
              ("axes", np.array(axes, np.int64))]
    if steps is not None:
        consts.append(("steps", np.array(steps, np.int64)))
    node = helper.make_node("Slice", ["x"] + [n for n, _ in consts], ["y"])
    model = _model(node, inputs, [("y", FLOAT)], opset, consts)
    x = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
    assert _max_rel(model, {"x": x}) == 0.0


def test_slice_1_attributes():
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, -4], ends=[3, 100], axes=[0, 1])
    model = _model(node, [("x", FLOAT, [4, 7])], [("y", FLOAT)], 9)
    x = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32)
    assert _max_rel(model, {"x": x}) == 0.0
