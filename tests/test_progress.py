"""Progress lines: on stderr when it is a terminal, nothing otherwise (pipes, CI logs, --json)."""
import os
import pty
import subprocess
import sys

import pytest

from conftest import FIXTURES

MODEL = FIXTURES / "vgg16_small.onnx"


def _run(args, tty: bool):
    """Run the CLI with stderr on a pseudo-terminal (tty=True) or a pipe; returns (rc, stdout, stderr)."""
    cmd = [sys.executable, "-m", "onnxmorph", *map(str, args)]
    if not tty:
        res = subprocess.run(cmd, capture_output=True, text=True)
        return res.returncode, res.stdout, res.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not MODEL.exists(), reason="fixture missing")
def test_progress_on_a_terminal_only(tmp_path):
    from onnxmorph.graph.index import GraphIndex
    from onnxmorph.graph.layers import find_layers
    import onnx
    layer = find_layers(GraphIndex(onnx.load(str(MODEL))))[0].id
    args = ["deepen", MODEL, "--layer", layer, "-o", tmp_path / "a.onnx"]
    rc, out, err = _run(args, tty=True)
    assert rc == 0, err
    for stage in ("loading", "deepen: solving", "verify: running the child", "saving"):
        assert stage in err
    assert "loading" not in out
    rc, out, err = _run(args[:-1] + [tmp_path / "b.onnx"], tty=False)
    assert rc == 0 and err == ""
    rc, out, err = _run(args[:-1] + [tmp_path / "c.onnx", "--json"], tty=True)
    assert rc == 0 and "loading" not in err and out.lstrip().startswith("{")


def test_stage_is_silent_off_a_terminal(capsys):
    from onnxmorph import progress
    with progress.stage("x", 3) as bar:
        bar.update(1)
        bar(1, 3)
    assert capsys.readouterr().err == ""
