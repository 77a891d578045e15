"""A small three-stage ResNet for examples/grow_resnet_stages.sh, and a per-stage block count.

    python examples/resnet_stages.py build OUT.onnx          # one basic block per stage (16, 32, 64 channels)
    python examples/resnet_stages.py stages MODEL [EXPECTED]  # residual blocks per stage, e.g. 2,1,1

Stages are joined by strided transition convs (not residual blocks), so every stage's block has an identity
shortcut and can be repeated (Istrate et al. grow a network stage by stage in the same way).
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTHS = (16, 32, 64)


def build(path: str) -> None:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv_bn(x, name, c_in, c_out, stride=1):
        w = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
        nodes.append(helper.make_node("Conv", [x, const(f"{name}.weight", w)], [f"{name}_conv"], name=name,
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        params = [const(f"{name}_bn.{p}", v) for p, v in (
            ("scale", rng.normal(1, 0.2, c_out)), ("bias", rng.normal(0, 0.2, c_out)),
            ("mean", rng.normal(0, 0.2, c_out)), ("var", rng.uniform(0.5, 1.5, c_out)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv"] + params, [f"{name}_bn"],
                                      name=f"{name}_bn"))
        return f"{name}_bn"

    def relu(x, name):
        nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    x = relu(conv_bn("x", "stem", 3, WIDTHS[0]), "stem_relu")
    for s, c in enumerate(WIDTHS, 1):
        if s > 1:
            x = relu(conv_bn(x, f"s{s}_transition", WIDTHS[s - 2], c, stride=2), f"s{s}_transition_relu")
        y = conv_bn(relu(conv_bn(x, f"s{s}_conv1", c, c), f"s{s}_relu1"), f"s{s}_conv2", c, c)
        nodes.append(helper.make_node("Add", [y, x], [f"s{s}_add"], name=f"s{s}_add"))
        x = relu(f"s{s}_add", f"s{s}_relu2")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    w = rng.standard_normal((10, WIDTHS[-1])) / np.sqrt(WIDTHS[-1])
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.weight", w), const("fc.bias", np.zeros(10))], ["y"],
                                  name="fc", transB=1))
    graph = helper.make_graph(nodes, "resnet_stages",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def stages(path: str) -> str:
    """Residual blocks per stage: a copy's id starts with the id of the block it copies (s<k>_add/...)."""
    from onnxmorph import inspect
    ids = [b.id for b in inspect(path).blocks]
    return ",".join(str(sum(i.startswith(f"s{s}_add") for i in ids)) for s in range(1, len(WIDTHS) + 1))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        got = stages(sys.argv[2])
        if len(sys.argv) > 3 and got != sys.argv[3]:
            print(f"blocks per stage {got} != expected {sys.argv[3]}", file=sys.stderr)
            sys.exit(1)
        print(got)
