"""One-way imports: pipeline → storage, solvers; storage → solvers.errors only; no import cycle.

Every ``import`` in the package's modules counts, also those inside functions.
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("solvers", "storage", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Return ``{module: the package modules it imports}`` for every module of the three packages."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                # ``from solvers import tiling`` imports the submodule
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_the_import_graph_is_read():
    graph = imports()
    assert "solvers.errors" in graph["storage.runstore"] and "storage.runstore" in graph["pipeline.training"]


def test_no_import_cycle():
    graph = imports()
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " → ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_one_way_imports():
    graph = imports()
    bad = []
    for m, deps in graph.items():
        for d in deps:
            if m.startswith("solvers") and d.split(".")[0] in ("storage", "pipeline"):
                bad.append(f"{m} imports {d}")
            if m.startswith("storage") and (d.startswith("pipeline") or
                                            d.startswith("solvers") and d not in ("solvers", "solvers.errors")):
                bad.append(f"{m} imports {d}")
    assert not bad, bad


def test_importing_the_errors_loads_no_solver_and_no_scipy():
    code = ("import sys, solvers.errors, storage.runstore; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('solvers', 'scipy')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['solvers',", "'solvers.errors']"]


def test_test_modules_import_no_other_test_module():
    """Shared test helpers live in tests/conftest.py or tests/batch.py, not in another test module."""
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name} imports {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not bad, bad
