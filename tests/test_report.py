"""Issue 13: small truths in the reports and the help."""
import fnmatch
import time

import click
import pytest

from onnxmorph import api
from onnxmorph.cli import _default_output, cli
from onnxmorph.errors import compact

from conftest import FIXTURES, ROOT, run_cli

CIFAR = FIXTURES / "cifar10_quick.onnx"


def test_deepen_names_the_algorithm_requested_and_the_step_that_ran():
    _, result = api.deepen(str(CIFAR), "conv2", algorithm="practical")
    d = result.details
    assert d.algorithm_requested == "practical" and d.algorithm in ("practical", "general")
    head = result.lines()[0]
    assert "--algorithm practical" in head and ("Algorithm 1 (general) ran" in head or "Algorithm 2" in head)
    assert "netmorph (general)" not in head


def test_total_time_includes_the_save(tmp_path, monkeypatch):
    from onnxmorph.graph import model_io
    real = model_io.StagedModel.commit   # the save: the staged child moved into place

    def slow_save(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_io.StagedModel, "commit", slow_save)
    _, result = api.kernel(str(CIFAR), "conv1", size=7, output=tmp_path / "c.onnx", verify=False)
    assert result.seconds >= 0.5 and result.lines()[-1].startswith("total time")


def test_grammar(tmp_path):
    _, result = api.subnet(str(CIFAR), "conv2", paths=1, verify=False)
    assert "into 1 path (random), 1 layer;" in result.lines()[0]
    _, result = api.subnet(str(CIFAR), "conv2", paths=2, depth=1, verify=False)
    assert "into 2 paths (random), each 2 layers;" in result.lines()[0]
    code, out, _ = run_cli("inspect", FIXTURES / "mnist_softmax.onnx")
    assert "1 layer:" in out and "1 layers" not in out
    _, result = api.widen(str(CIFAR), "conv2", width=40, method="net2net", verify=False)
    assert "zeros on the" not in "\n".join(result.lines())
    assert "zeros_on" not in compact(result.to_dict())["details"]
    _, result = api.widen(str(CIFAR), "conv2", width=32, verify=False)  # unchanged: nothing got zeros
    assert "zeros on the -" not in "\n".join(result.lines())


def test_width_is_quoted_as_typed(tmp_path):
    _, result = api.widen(str(CIFAR), "conv2", width="1.5x", verify=False)
    assert "from 32 to 48 channels (--width 1.5x)" in result.lines()[0]
    _, result = api.deepen(str(CIFAR), "conv2", width="1.5x", verify=False)
    assert "--width 1.5x" in result.lines()[0] and result.details.width_requested == "1.5x"
    code, _, err = run_cli("deepen", CIFAR, "--layer", "conv2", "--width", "0.5x", "-o", tmp_path / "c.onnx")
    assert code == 3 and "--width 0.5x means 16 channels" in err


def _commands():
    return list(cli.commands.values())


def test_every_option_has_help():
    missing = [f"{c.name} {p.opts[0]}" for c in _commands() for p in c.params
               if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_top_level_list_shows_whole_summaries():
    code, out, _ = run_cli("--help")
    commands = out.split("Commands:")[1]
    assert "..." not in commands
    for command in _commands():
        assert command.short_help in commands


def test_kernel_takes_no_seed():
    assert "--seed" not in run_cli("kernel", "--help")[1]
    assert "--seed" in run_cli("deepen", "--help")[1]


@pytest.mark.parametrize("verb", ["deepen", "kernel", "subnet", "widen"])
def test_gitignore_covers_default_outputs(verb):
    patterns = [p.strip() for p in (ROOT / ".gitignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    name = _default_output("fixtures/model.onnx", verb).name
    assert any(fnmatch.fnmatch(name, p) for p in patterns)
    assert any(fnmatch.fnmatch(name + ".data", p) for p in patterns)
