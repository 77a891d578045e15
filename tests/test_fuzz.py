"""Issue 13: a small seeded fuzz run. Corrupted and hostile models (tests/fuzz_models.py) through inspect and
deepen, each in a forked process with a timeout: no traceback, no internal error or crash, no hang, no input
modified. benchmarks/fuzz.py runs the long campaign."""
import os
import sys

import pytest

from fuzz_models import MUTATIONS, make_cases, run_cases

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the runner forks")


def test_fuzz_small_seeded_run(tmp_path):
    cases = make_cases(seed=13, count=40, workdir=tmp_path)
    assert len(cases) == 40 and len({c.name.split("/")[-1] for c in cases}) >= len(MUTATIONS)
    counts, bad = run_cases(cases, timeout=60, workdir=tmp_path)
    assert bad == [], bad
    assert counts["cases"] == 40 and counts["runs"] == 80
    assert counts["exit 2"] + counts["exit 3"] > 40  # most hostile inputs are refused, with one line


def test_runner_catches_what_it_must(tmp_path, monkeypatch):
    """The runner itself can fail: a traceback, an internal error and a hang are each counted."""
    import fuzz_models
    import onnxmorph.cli as cli

    def fake_main(argv):
        verb = argv[0]
        if verb == "inspect":
            raise RuntimeError("boom")      # main would turn it into exit 4; here it escapes: a traceback
        import time
        time.sleep(30)                      # deepen hangs

    monkeypatch.setattr(cli, "main", fake_main)
    case = fuzz_models.Case("x", tmp_path / "m.onnx", "conv1")
    case.path.write_bytes(b"")
    counts, bad = run_cases([case], timeout=2, workdir=tmp_path)
    assert counts["traceback"] == 1 and counts["hang"] == 1, (counts, bad)
    assert sys.modules["onnxmorph.cli"] is cli
