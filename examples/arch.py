"""Print a model's conv architecture in the paper's notation, (kernel:width) per Conv layer in graph order,
and check it against an expected string. Usage: python examples/arch.py MODEL [EXPECTED]"""
import sys

from onnxmorph import inspect


def architecture(path: str) -> str:
    report = inspect(path)
    return "".join(f"({layer.kernel[0]}:{layer.weight_shape[0]})" for layer in report.layers if layer.op == "Conv")


if __name__ == "__main__":
    arch = architecture(sys.argv[1])
    if len(sys.argv) > 2 and arch != sys.argv[2]:
        print(f"architecture {arch} != expected {sys.argv[2]}", file=sys.stderr)
        sys.exit(1)
    print(arch)
