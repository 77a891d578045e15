"""onnxmorph's dependencies, decided when pip builds it for an environment (metadata in pyproject.toml).

The ONNX Runtime requirement depends on what the target environment already has, which no static environment
marker can see: onnxmorph/runtime_dist.py decides it (README, "Which ONNX Runtime").
"""
import importlib.util
import sys
from pathlib import Path

REQUIRES = ["onnx>=1.14", "numpy>=1.23", "scipy>=1.9", "click>=8.0",
            "tomli>=1.1; python_version < '3.11'"]   # grow's TOML plans (tomllib from 3.11)


def runtime_dist():
    """onnxmorph/runtime_dist.py loaded by path: the build environment has none of onnxmorph's dependencies."""
    spec = importlib.util.spec_from_file_location("runtime_dist", Path(__file__).parent / "onnxmorph" / "runtime_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":  # setuptools runs it so; .ci/check_platforms.py imports it for REQUIRES
    from setuptools import setup

    try:
        onnxruntime = runtime_dist().requirements(sys.executable)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    setup(install_requires=REQUIRES + onnxruntime)
