"""The package's shape: no import cycles (counting imports inside functions too), and reports readable without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxstyle"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every onnxstyle module → the onnxstyle modules it imports anywhere in its body (type-checking blocks excepted)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("onnxstyle") and target != name and (target != "onnxstyle" or name == "onnxstyle"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "onnxstyle.bench.run" in graph and "onnxstyle.tiling" in graph["onnxstyle.bench.run"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_reading_a_report_imports_neither_torch_nor_onnxruntime(tmp_path: Path) -> None:
    from onnxstyle.bench.records import Cell, GemmRate
    from onnxstyle.report import new_report, write_report

    cell = Cell("ort-cpu", "nin", 64, 64, status="ok", windows=[{"iterations": 10, "seconds": 1.0, "engine_seconds": 0.9}])
    cell.stats = {"median": 600.0, "q1": 590.0, "q3": 610.0, "min": 580.0, "max": 620.0, "mean": 600.0, "stdev": 1.0, "n": 1}
    report = new_report([cell], {"runs": 1}, {"cpu": GemmRate("cpu", 8, 1, [1.0])}, {"nin": "synthetic"}, ["onnxstyle", "bench"], False)
    write_report(report, tmp_path, "light")
    script = (
        "import sys; from onnxstyle.cli import main; sys.argv = ['onnxstyle', 'report', 'show', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "heavy = sorted(name for name in ('torch', 'onnxruntime', 'onnx') if name in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    shown = subprocess.run([sys.executable, "-c", script, str(tmp_path / "light.json")], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "600" in shown.stdout and shown.stdout.strip().endswith("HEAVY="), shown.stdout[-500:]
    assert json.loads((tmp_path / "light.json").read_text())["cells"][0]["runner"] == "ort-cpu"
