"""The package's shape: imports run down the declared layers only, none hides in a function to dodge a cycle,
there is no import cycle, and reports are readable without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxstyle"

# Lowest first. A module may import its own layer and those below, never one above. Names are relative to
# ``onnxstyle``; a module takes the layer of its longest matching name (``bench.records`` before ``bench``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "text", "defaults"),
    ("files", "backbones", "losses", "images", "weights", "interference", "workers", "bench.records"),
    ("plugin_eps", "ort_providers", "precision", "runners", "sysinfo", "memory"),
    ("exporters", "tiling", "optimizers"),
    ("engines",),
    ("bench", "report", "gradient_checks"),
    ("cluster",),
    ("auto", "converge", "parity", "profiling", "provider_audit", "stylize"),
    ("commands", "console"),
    ("cli", "__main__"),
)

# The only reasons to import a third-party module inside a function: it is heavy or optional, and the
# commands that need none of it (``--help``, ``report show``, the tests' fake workers) must not load it.
LAZY_IMPORT_REASONS: dict[str, str] = {
    "torch": "seconds to import; reading a report or --help needs no tensors",
    "onnxruntime": "heavy and optional (onnxruntime or onnxruntime-gpu); only sessions need it",
    "onnx": "only exporting and inspecting graphs need it",
    "numpy": "only tensor work needs it; report readers stay light",
    "ray": "the optional cluster extra",
    "matplotlib": "only PNG charts need it",
    "rich": "only terminal rendering needs it",
    "psutil": "only measuring processes and memory needs it",
    "pynvml": "optional NVIDIA probe, absent on other machines",
    "typer": "which module holds click's exceptions depends on typer's version: known only by trying",
    "click": "which module holds click's exceptions depends on typer's version: known only by trying",
}


@dataclass(frozen=True)
class ImportEdge:
    """``importer`` imports ``target`` (both onnxstyle modules) at ``line``; ``lazy`` when inside a function."""

    importer: str
    target: str
    line: int
    lazy: bool


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[list[str], int, bool]]:
    """(names it may import, module last; line; inside a function) per absolute import that runs (type-checking blocks excepted)."""
    found: list[tuple[list[str], int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import):
            found.extend(([alias.name], node.lineno, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(([f"{node.module}.{alias.name}" for alias in node.names] + [node.module], node.lineno, lazy))
        inside = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def import_edges(package: Path = PACKAGE) -> tuple[list[ImportEdge], list[tuple[str, str, int]]]:
    """The package's imports of its own modules, and (module, third-party root, line) for third-party imports in functions.

    Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``, so those are edges too (except the
    importer's own packages, which are already running, and the root package).
    """
    root = package.name
    modules = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    edges: set[ImportEdge] = set()
    lazy_third_party: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        for targets, line, lazy in _imports(ast.parse(path.read_text(), str(path))):
            top = targets[-1].partition(".")[0]
            if top != root:
                if lazy and top not in sys.stdlib_module_names:
                    lazy_third_party.append((name, top, line))
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                while target and target != root:
                    if target != name and not name.startswith(target + "."):
                        edges.add(ImportEdge(name, target, line, lazy))
                    target = target.rpartition(".")[0]
    return sorted(edges, key=lambda edge: (edge.importer, edge.line, edge.target)), lazy_third_party


def import_graph(package: Path = PACKAGE, *, lazy: bool = True) -> dict[str, set[str]]:
    """Every module → the modules its imports run (``lazy`` False: only those at module level)."""
    graph: dict[str, set[str]] = {module_name(path, package): set() for path in package.rglob("*.py")}
    for edge in import_edges(package)[0]:
        if lazy or not edge.lazy:
            graph[edge.importer].add(edge.target)
    return graph


def layer_of(module: str) -> int | None:
    name = module.partition(".")[2]
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYERS):
        for declared in names:
            if (name == declared or name.startswith(declared + ".")) and (best is None or len(declared) > best[0]):
                best = (len(declared), index)
    return None if best is None else best[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def path_between(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import chain from ``start`` to ``goal``, or None."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt not in previous and nxt != start:
                    previous[nxt] = node
                    following.append(nxt)
        if goal in previous:
            chain = [goal]
            while chain[-1] != start:
                chain.append(previous[chain[-1]])
            return chain[::-1]
        frontier = following
    return None


def cycle_dodges(package: Path = PACKAGE) -> list[str]:
    """Imports inside functions that would close a cycle if moved to the top of their module."""
    edges = import_edges(package)[0]
    eager = import_graph(package, lazy=False)
    found = []
    for edge in edges:
        if edge.lazy and (chain := path_between(eager, edge.target, edge.importer)):
            found.append(f"{edge.importer}:{edge.line} imports {edge.target} in a function; at the top: {' → '.join([edge.importer, *chain])}")
    return found


def upward_imports() -> list[str]:
    found = []
    for edge in import_edges()[0]:
        importer, target = layer_of(edge.importer), layer_of(edge.target)
        if importer is not None and target is not None and target > importer:
            found.append(f"{edge.importer}:{edge.line} (layer {importer}) imports {edge.target} (layer {target})")
    return found


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root / "pkg"


def test_find_cycle_reports_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_function_level_import_that_dodges_a_cycle_is_found(tmp_path: Path) -> None:
    """The shape tiling had: ``low`` imports ``sub.base``, which runs ``sub/__init__``, which imports ``low`` in a function."""
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "from pkg.sub.base import Base\n",
        "pkg/sub/__init__.py": "def make():\n    from pkg.low import Thing\n",
        "pkg/sub/base.py": "import torch\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import low\n",
        "pkg/lazy.py": "def heavy():\n    import ray\n    import json\n    from pkg.low import Thing\n",
    })
    edges, lazy_third_party = import_edges(package)
    assert ImportEdge("pkg.low", "pkg.sub", 1, False) in edges  # the package a submodule import runs
    assert not any(edge.importer == "pkg.sub.base" for edge in edges)  # type-checking imports never run
    assert lazy_third_party == [("pkg.lazy", "ray", 2)]
    assert cycle_dodges(package) == ["pkg.sub:2 imports pkg.low in a function; at the top: pkg.sub → pkg.low → pkg.sub"]
    assert find_cycle(import_graph(package)) == ["pkg.low", "pkg.sub", "pkg.low"]


def test_every_module_has_a_layer() -> None:
    undeclared = sorted(name for name in import_graph() if name != PACKAGE.name and layer_of(name) is None)
    assert not undeclared, f"declare the layer of {undeclared} in LAYERS"


def test_no_import_runs_up_the_layers() -> None:
    assert layer_of("onnxstyle.bench.records") < layer_of("onnxstyle.report.schema")  # type: ignore[operator]
    assert layer_of("onnxstyle.tiling") < layer_of("onnxstyle.engines.tiled")  # type: ignore[operator]
    assert not upward_imports(), "\n".join(upward_imports())


def test_no_import_hides_in_a_function_to_dodge_a_cycle() -> None:
    assert not cycle_dodges(), "\n".join(cycle_dodges())


def test_imports_in_functions_load_only_heavy_or_optional_modules() -> None:
    unexplained = [f"{module}:{line} imports {name} in a function" for module, name, line in import_edges()[1] if name not in LAZY_IMPORT_REASONS]
    assert not unexplained, "import these at the top, or say in LAZY_IMPORT_REASONS why not:\n" + "\n".join(unexplained)


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None, " → ".join(find_cycle(import_graph()) or [])


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
