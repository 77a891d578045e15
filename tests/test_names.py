"""Issue 13: one naming scheme. Tensors keep their names when their size or values change; only new things get
`<layer id>/morph_<what>` names; layer ids that worked on the parent keep working on the child."""
import onnx
import pytest

from onnxmorph import api

from conftest import FIXTURES

CIFAR = FIXTURES / "cifar10_quick.onnx"


def _names(model):
    return {t.name for t in model.graph.initializer}


def test_widen_keeps_names_then_deepen_finds_the_same_layer():
    parent = onnx.load(str(FIXTURES / "cifar10_quick.onnx"))
    widened, _ = api.widen(parent, "conv2.weight", width=48)
    assert _names(widened) == _names(parent)
    shapes = {t.name: list(t.dims) for t in widened.graph.initializer}
    assert shapes["conv2.weight"][0] == 48 and shapes["conv3.weight"][1] == 48
    deepened, result = api.deepen(widened, "conv2.weight")
    assert result.details.layer == "conv2" and result.passed
    assert {"conv2/morph_l.weight", "conv2/morph_l1.weight"} <= _names(deepened)


def test_kernel_keeps_the_name_then_widen_finds_the_layer():
    parent = onnx.load(str(FIXTURES / "cifar10_quick.onnx"))
    grown, _ = api.kernel(parent, "conv2.weight", size=7)
    assert _names(grown) == _names(parent)
    assert [list(t.dims) for t in grown.graph.initializer if t.name == "conv2.weight"][0][2:] == [7, 7]
    widened, result = api.widen(grown, "conv2.weight", width="2x")
    assert result.passed and _names(widened) == _names(parent)


def test_a_weight_shared_with_an_unchanged_node_gets_a_new_name():
    parent = onnx.load(str(FIXTURES / "shared_weight.onnx"))
    widened, result = api.widen(parent, "conv_b", width=12)
    assert result.passed
    assert _names(widened) == _names(parent) | {"conv_b/morph_widen.weight"}
    conv_a = next(n for n in widened.graph.node if n.name == "conv_a")
    assert conv_a.input[1] == "shared.weight"  # conv_a is unchanged and still reads the original
    grown, result = api.kernel(parent, "conv_a", size=5)
    assert result.passed and _names(grown) == _names(parent) | {"conv_a/morph_kernel.weight"}


@pytest.mark.parametrize("verb,options", [
    ("deepen", {}), ("deepen", {"k1": 3, "k2": 3}), ("deepen", {"batchnorm": True}),
    ("subnet", {"paths": 2, "depth": 1}), ("kernel", {"size": 7}), ("widen", {"width": 48}),
])
def test_every_new_name_follows_the_scheme(verb, options):
    """Everything a morph adds (initializers, nodes, tensors) is named <layer id>/morph_<what>..."""
    parent = onnx.load(str(CIFAR))
    child, _ = getattr(api, verb)(str(CIFAR), "conv2", verify=False, **options)
    old = {t.name for t in parent.graph.initializer} | {n.name for n in parent.graph.node} | \
        {o for n in parent.graph.node for o in n.output}
    new = ({t.name for t in child.graph.initializer} | {n.name for n in child.graph.node} |
           {o for n in child.graph.node for o in n.output}) - old
    assert new or verb in ("kernel", "widen")
    assert all("/morph_" in name for name in new), sorted(n for n in new if "/morph_" not in n)


def test_deepen_after_names_follow_the_scheme():
    parent = onnx.load(str(CIFAR))
    child, _ = api.deepen(str(CIFAR), after="conv2", verify=False)
    old = {n.name for n in parent.graph.node} | {t.name for t in parent.graph.initializer}
    new = ({n.name for n in child.graph.node} | {t.name for t in child.graph.initializer}) - old
    assert new and all("/morph_" in name for name in new), sorted(new)
