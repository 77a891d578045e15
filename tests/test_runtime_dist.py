"""Issue 22: one ONNX Runtime per environment: the build's choice, its platform markers, the start-up clash line."""
import os
import subprocess
import sys

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from onnxmorph import runtime_dist


def _pretend_installed(monkeypatch, **versions):
    """importlib.metadata answers as if exactly these distributions (name_with_underscores=version) were there."""
    have = {name.replace("_", "-"): version for name, version in versions.items()}

    def version(name):
        if name not in have:
            raise runtime_dist.metadata.PackageNotFoundError(name)
        return have[name]
    monkeypatch.setattr(runtime_dist.metadata, "version", version)


def test_clash_line_names_both_and_the_command_that_fixes_it(monkeypatch):
    _pretend_installed(monkeypatch, onnxruntime="1.30.0", onnxruntime_gpu="1.31.1")
    line = runtime_dist.clash_line("/venv/bin/python")
    assert "\n" not in line and line.startswith("warning: onnxruntime 1.30.0 and onnxruntime-gpu 1.31.1 are both")
    assert line.endswith("keep one: /venv/bin/python -m pip uninstall -y onnxruntime onnxruntime-gpu && "
                         "/venv/bin/python -m pip install onnxruntime-gpu")


def test_clash_line_keeps_the_specialised_build(monkeypatch):
    _pretend_installed(monkeypatch, onnxruntime="1.30.0", onnxruntime_directml="1.24.4", onnxruntime_gpu="1.31.1")
    line = runtime_dist.clash_line("python")
    assert "are all installed" in line
    assert line.endswith("uninstall -y onnxruntime onnxruntime-gpu onnxruntime-directml && python -m pip install "
                         "onnxruntime-gpu")


@pytest.mark.parametrize("versions", [{}, {"onnxruntime": "1.32.0"}, {"onnxruntime_gpu": "1.31.1"}])
def test_one_runtime_or_none_is_no_clash(monkeypatch, versions):
    _pretend_installed(monkeypatch, **versions)
    assert runtime_dist.clash_line() is None


def test_cli_warns_once_on_stderr_and_carries_on(fixtures_dir, tmp_path):
    # Two distributions as importlib.metadata sees them: their dist-info directories on the path, nothing installed.
    for name, version in (("onnxruntime", "1.30.0"), ("onnxruntime_gpu", "1.31.1")):
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run([sys.executable, "-m", "onnxmorph", "inspect", str(fixtures_dir / "cifar10_quick.onnx")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "conv2" in res.stdout, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: onnxruntime 1.30.0 and onnxruntime-gpu 1.31.1"), lines
    assert f"{sys.executable} -m pip uninstall -y onnxruntime onnxruntime-gpu && " in lines[0]


def test_the_build_keeps_the_runtime_the_environment_has(monkeypatch):
    monkeypatch.delenv(runtime_dist.ENV_VAR, raising=False)
    for have, expected in ((["onnxruntime"], ["onnxruntime>=1.17"]),
                           (["onnxruntime-openvino"], ["onnxruntime-openvino>=1.17"]),
                           ([], list(runtime_dist.FOR_A_FRESH_ENVIRONMENT)),
                           (["onnxruntime", "onnxruntime-gpu"], list(runtime_dist.FOR_A_FRESH_ENVIRONMENT))):
        monkeypatch.setattr(runtime_dist, "installed_in", lambda python, have=have: have)
        assert runtime_dist.requirements(sys.executable) == expected, have


def test_the_environment_variable_overrides_the_choice(monkeypatch):
    monkeypatch.setattr(runtime_dist, "installed_in", lambda python: ["onnxruntime"])
    monkeypatch.setenv(runtime_dist.ENV_VAR, "onnxruntime-gpu")
    assert runtime_dist.requirements(sys.executable) == ["onnxruntime-gpu>=1.17"]
    monkeypatch.setenv(runtime_dist.ENV_VAR, "onnxruntime-mac")
    with pytest.raises(ValueError, match="not an ONNX Runtime distribution"):
        runtime_dist.requirements(sys.executable)


def test_the_probe_sees_what_the_interpreter_sees():
    # The probe runs this interpreter in isolated mode, as the build does with the target's.
    assert runtime_dist.installed_in(sys.executable) == [name for name, _ in runtime_dist.installed()]


@pytest.mark.parametrize("sys_platform, machine, expected", [
    ("linux", "x86_64", "onnxruntime-gpu"), ("win32", "AMD64", "onnxruntime-gpu"),
    ("darwin", "arm64", "onnxruntime"), ("darwin", "x86_64", "onnxruntime"), ("linux", "aarch64", "onnxruntime"),
    ("win32", "ARM64", "onnxruntime"), ("linux", "ppc64le", "onnxruntime"),
])
def test_a_fresh_environment_gets_exactly_one_runtime_by_platform(sys_platform, machine, expected):
    env = dict(default_environment(), sys_platform=sys_platform, platform_machine=machine)
    chosen = [r.name for r in map(Requirement, runtime_dist.FOR_A_FRESH_ENVIRONMENT) if r.marker.evaluate(env)]
    assert chosen == [expected]
