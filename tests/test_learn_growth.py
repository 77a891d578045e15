"""benchmarks/learn_growth.py on tiny settings: every arm trains, every grown child starts where the parent
stopped, and the last printed line is the JSON the issue asks for (issue 21). Skipped without the torch extra."""
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")
pytest.importorskip("matplotlib")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learn_growth  # noqa: E402

PREFIXES = ("parent", "scratch", "netmorph", "idmorph", "net2net")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One seed of the teacher task, 20 parent steps and 20 after the growth: (results, printed lines, out dir)."""
    out, printed = tmp_path_factory.mktemp("learn_growth"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = learn_growth.main(["--task", "teacher-mlp", "--seeds", "1", "--parent-steps", "20",
                                     "--steps", "20", "--every", "10", "--out", str(out)])
    return results, printed.getvalue().strip().splitlines(), out


def test_teacher_classes_are_balanced():
    _, y, _, y_test = learn_growth.teacher_data()
    for labels in (y, y_test):
        share = np.bincount(labels, minlength=10) / len(labels)
        assert share.min() > 0.07 and share.max() < 0.13, share


def test_grown_children_start_at_the_parent_and_train(tiny_run):
    runs, parent_steps, stats = tiny_run[0]["teacher-mlp"]
    assert parent_steps == 20 and set(runs) == set(learn_growth.ARMS)
    curves = {name: rows[0] for name, rows in runs.items()}   # the one seed
    parent_at_growth = curves["parent"][curves["parent"][:, 0] == 20][0, 1]
    tests = 5000  # teacher_data's test set
    for name, rows in curves.items():
        assert rows[:, 0].tolist() == [0, 10, 20, 30, 40], name
        if not name.startswith("scratch"):  # one test error at most: the function is the parent's up to rounding
            at_growth = rows[rows[:, 0] == 20][0, 1]
            assert abs(at_growth - parent_at_growth) <= 1 / tests, name
        assert not np.allclose(rows[-1, 3], rows[-3, 3]), f"{name}: the train loss did not move"
    assert set(stats) == set(learn_growth.ARMS) - {"parent", *learn_growth.SCRATCH}
    assert "distinct units 10" in stats["net2net-widen"]["trained"]      # copies without noise stay copies
    assert "distinct units 64" in stats["net2net-widen+noise"]["trained"]


def test_last_line_is_the_json(tiny_run):
    _, lines, out = tiny_run
    result = json.loads(lines[-1])
    assert result["task"] == "teacher-mlp"
    assert set(result["arms"]) == set(learn_growth.ARMS) | {"scratch@20", "scratch-ptanh@20"}
    for name, arm in result["arms"].items():
        assert name.startswith(PREFIXES)
        assert 0 <= arm["final"] <= 1
        assert arm["steps"] == (20 if name.endswith("@20") else 40)
    assert (out / "learn_growth.png").stat().st_size > 10_000
