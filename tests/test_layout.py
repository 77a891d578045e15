"""The code's layout stays a ladder (README, "How the code is laid out"): every import of the package, lazy ones
inside functions included, goes to a module of the same layer or a lower one, the import graph has no cycle, and
no code module grows past about 600 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first. A module belongs to the first layer whose prefix names it (the longest prefix wins).
LAYERS = [
    ("base", ("onnxmorph.errors", "onnxmorph.progress", "onnxmorph.version", "onnxmorph.runtime_dist")),
    ("solve", ("onnxmorph.solve",)),
    ("graph", ("onnxmorph.graph",)),
    ("passes", ("onnxmorph.passes", "onnxmorph.activations")),
    ("tools", ("onnxmorph.inspect", "onnxmorph.verify", "onnxmorph.verify_report", "onnxmorph.verify_floor",
               "onnxmorph.feeds", "onnxmorph.export_folder", "onnxmorph.provenance", "onnxmorph.torch",
               "onnxmorph.torch_ops")),
    ("api", ("onnxmorph.api",)),
    ("face", ("onnxmorph", "onnxmorph.__main__", "onnxmorph.cli")),
]
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for base, package in ((ROOT / "onnxmorph", "onnxmorph"), (ROOT / "cli", "onnxmorph.cli")):
        for path in base.rglob("*.py"):
            parts = [package, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules and m != name}


def _layer(name: str) -> int:
    best, rank = -1, None
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), k
    assert rank is not None, f"{name} is in no layer of tests/test_layout.py"
    return rank


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
              for a, targets in _graph().items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above can fail: a package whose modules import each other, and one importing upwards."""
    pkg = tmp_path / "onnxmorph"
    (pkg / "graph").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "graph" / "__init__.py").write_text("")
    (pkg / "graph" / "a.py").write_text("from .b import x\n")
    (pkg / "graph" / "b.py").write_text("def f():\n    from .a import y\n    from ..api import run\n")
    (pkg / "api.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    graph = _graph()
    assert graph["onnxmorph.graph.a"] == {"onnxmorph.graph.b"}
    assert graph["onnxmorph.graph.b"] == {"onnxmorph.graph.a", "onnxmorph.api"}
    assert _layer("onnxmorph.api") > _layer("onnxmorph.graph.b")


def test_no_code_module_is_over_600_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
