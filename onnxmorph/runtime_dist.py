"""Which ONNX Runtime distribution onnxmorph depends on, and the check that only one is installed.

Every ONNX Runtime build on the package index is `import onnxruntime`: they all install the same `onnxruntime/`
directory, so two in one environment overwrite each other's files. setup.py loads this file by path when pip
builds onnxmorph (it needs only the standard library) and asks `requirements()` which one to depend on; the CLI
asks `clash_line()` at start-up. README, "Which ONNX Runtime", says the same for users.
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

# Builds of ONNX Runtime published under their own names, each installing the onnxruntime/ package.
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                 "onnxruntime-training", "onnxruntime-cann", "onnxruntime-migraphx")
FLOOR = ">=1.17"
# Set to one of DISTRIBUTIONS at install time to depend on that one instead of choosing.
ENV_VAR = "ONNXMORPH_ONNXRUNTIME"

# An environment without ONNX Runtime gets the GPU build where it is published (it carries the CPU provider too)
# and the CPU build everywhere else. These markers are also what a wheel built in a clean environment carries.
_GPU_WHEELS = '(sys_platform == "linux" and platform_machine == "x86_64") or ' \
              '(sys_platform == "win32" and platform_machine == "AMD64")'
_NO_GPU_WHEELS = '(sys_platform != "linux" or platform_machine != "x86_64") and ' \
                 '(sys_platform != "win32" or platform_machine != "AMD64")'
FOR_A_FRESH_ENVIRONMENT = (f"onnxruntime-gpu{FLOOR}; {_GPU_WHEELS}", f"onnxruntime{FLOOR}; {_NO_GPU_WHEELS}")


def installed() -> list[tuple[str, str]]:
    """(name, version) of each ONNX Runtime distribution this interpreter sees, in DISTRIBUTIONS order."""
    found = []
    for name in DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
    return found


def installed_in(python: str) -> list[str]:
    """Names of the ONNX Runtime distributions interpreter `python` has, asked in a clean `python -I` run.

    pip builds in an isolated environment whose sys.path hides the target's site-packages, and `-I` drops the
    PYTHONPATH that sets this up, so the child sees the target as a plain run of it would. [] if it cannot say.
    """
    try:
        res = subprocess.run([python, "-I", os.path.abspath(__file__)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return res.stdout.split() if res.returncode == 0 else []


def requirements(python: str) -> list[str]:
    """The ONNX Runtime requirement of onnxmorph when it is installed with interpreter `python`.

    The one named in ONNXMORPH_ONNXRUNTIME if set; else the one that environment already has, so that no second
    one lands beside it; else (none, or already two) the platform's default, FOR_A_FRESH_ENVIRONMENT.
    """
    asked = os.environ.get(ENV_VAR, "").strip().lower()
    if asked:
        if asked not in DISTRIBUTIONS:
            raise ValueError(f"{ENV_VAR}={asked}: not an ONNX Runtime distribution; use one of "
                             f"{', '.join(DISTRIBUTIONS)}, or leave it unset to choose by environment")
        return [asked + FLOOR]
    have = installed_in(python)
    if len(have) == 1:
        return [have[0] + FLOOR]
    return list(FOR_A_FRESH_ENVIRONMENT)


def clash_line(python: str = sys.executable) -> str | None:
    """One line saying that two ONNX Runtime distributions are installed and the command that fixes it, or None.

    The fix keeps the specialised build (GPU, DirectML, ...): plain onnxruntime is the one other tools pull in.
    """
    have = installed()
    if len(have) < 2:
        return None
    names = [name for name, _ in have]
    keep = next(name for name in names if name != "onnxruntime")
    pip = f"{python} -m pip"
    listed = ", ".join(f"{name} {version}" for name, version in have[:-1]) + f" and {' '.join(have[-1])}"
    return (f"warning: {listed} are {'both' if len(have) == 2 else 'all'} installed and share one onnxruntime/ "
            f"directory, so removing or upgrading one breaks it; keep one: "
            f"{pip} uninstall -y {' '.join(names)} && {pip} install {keep}")


if __name__ == "__main__":  # the probe installed_in() runs in the target interpreter
    print(*(name for name, _ in installed()))
