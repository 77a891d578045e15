"""Print a model's conv architecture in the paper's notation, (kernel:width) per Conv layer in graph order,
and check it against an expected string. Usage: python examples/arch.py MODEL [EXPECTED]
With --decoder: a decoder's residual blocks and MLP widths instead, "blocks 3, mlp 128,128,128" (the output
channels of every MatMul whose id holds /mlp/gate_proj/, in graph order)."""
import sys

from onnxmorph import inspect


def architecture(path: str) -> str:
    report = inspect(path)
    return "".join(f"({layer.kernel[0]}:{layer.weight_shape[0]})" for layer in report.layers if layer.op == "Conv")


def decoder(path: str) -> str:
    report = inspect(path)
    widths = [str(layer.weight_shape[-1]) for layer in report.layers if "/mlp/gate_proj/" in layer.id]
    return f"blocks {len(report.blocks)}, mlp {','.join(widths)}"


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--decoder"]
    arch = decoder(args[0]) if "--decoder" in sys.argv else architecture(args[0])
    if len(args) > 1 and arch != args[1]:
        print(f"architecture {arch} != expected {args[1]}", file=sys.stderr)
        sys.exit(1)
    print(arch)
