"""CI: onnxmorph's dependencies resolve on macOS ARM, Linux ARM, Linux x86-64 and Windows x86-64, each with
exactly one ONNX Runtime distribution, without installing anything.

The requirements checked are a fresh environment's (setup.py's REQUIRES plus runtime_dist's platform markers),
which are also what a wheel built in a clean environment carries. pip evaluates environment markers against the
interpreter it runs on, even with --platform, so this script evaluates them for each platform itself
(packaging.markers with that platform's environment), then has pip resolve the result for that platform:
binary wheels only, a dry run that reads the index's metadata and installs nothing. Needs pip, packaging and
the package index. Prints one line per platform; exits 1 if any platform fails.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manylinux(arch: str) -> list[str]:
    """Platform tags of a glibc 2.28 Linux (pip takes --platform literally for manylinux_2_x)."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(28, 16, -1)] + [f"manylinux2014_{arch}"]


# name: (pip --platform tags, the marker variables that differ between platforms)
PLATFORMS = {
    "macOS ARM": (["macosx_14_0_arm64"],  # pip adds the older macOS versions itself
                  {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"}),
    "Linux ARM": (_manylinux("aarch64"),
                  {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"}),
    "Linux x86-64": (_manylinux("x86_64"),
                     {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}),
    "Windows x86-64": (["win_amd64"],
                       {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"}),
}


def requirements_for(markers: dict, requires: list[str]) -> list[str]:
    """The requirements whose markers hold on the platform, markers stripped (pip would re-evaluate them here)."""
    kept = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(markers):
            req.marker = None
            kept.append(str(req))
    return kept


def resolve(tags: list[str], requirements: list[str]) -> dict[str, str]:
    """{name: version} pip would install for that platform, from a dry run's report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--python-version", PYTHON, "--target", str(Path(tmp) / "target"),
               "--report", str(report), *(f"--platform={tag}" for tag in tags), *requirements]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            errors = [line for line in res.stderr.splitlines() if "ERROR" in line] or res.stderr.splitlines()[-1:]
            raise RuntimeError(" / ".join(errors))
        return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def check(platform: str, requires: list[str], runtimes: set[str]) -> tuple[bool, str]:
    tags, markers = PLATFORMS[platform]
    asked = requirements_for(markers, requires)
    asked_runtimes = [r for r in asked if canonicalize_name(Requirement(r).name) in runtimes]
    where = f"{platform} ({tags[0]}, Python {PYTHON})"
    if len(asked_runtimes) != 1:
        return False, f"{where}: the requirements name {len(asked_runtimes)} ONNX Runtime distributions: {asked_runtimes}"
    try:
        resolved = resolve(tags, asked)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return False, f"{where}: {' '.join(asked)} does not resolve: {exc}"
    got = {name: version for name, version in resolved.items() if canonicalize_name(name) in runtimes}
    if len(got) != 1:
        return False, f"{where}: resolves to {len(got)} ONNX Runtime distributions: {got}"
    (name, version), = got.items()
    return True, f"{where}: {name} {version}, {len(resolved)} packages in all"


def main() -> int:
    setup_py = _load("setup_py", ROOT / "setup.py")  # not run as __main__: only its REQUIRES
    runtime_dist = setup_py.runtime_dist()
    requires = setup_py.REQUIRES + list(runtime_dist.FOR_A_FRESH_ENVIRONMENT)
    runtimes = {canonicalize_name(name) for name in runtime_dist.DISTRIBUTIONS}
    with ThreadPoolExecutor(len(PLATFORMS)) as pool:
        results = list(pool.map(lambda platform: check(platform, requires, runtimes), PLATFORMS))
    for ok, line in results:
        print(("ok    " if ok else "FAIL  ") + line)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
