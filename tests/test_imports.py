"""The floors of the house: no import circle between the modules of ``pipeline/`` and
``semore/``, none between their packages (folders), ``semore/`` never imports ``pipeline/``, and
the shared launcher (``pipeline/launch/``) imports no stage. Every import statement counts: at
module level, under ``if TYPE_CHECKING:`` and inside functions (a lazy import hides a circle, it
does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "semore")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that the file ``path`` (module ``name``) imports anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up (level - 1) packages from this one
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports the submodule a.b when there is one, else names of a.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def package_of(module: str) -> str:
    """The folder a module lives in (``pipeline.compare.run`` -> ``pipeline.compare``); a file
    directly under ``pipeline/`` (``pipeline.cli``) is a room of its own."""
    parts = module.split(".")
    folder = ROOT.joinpath(*parts[:2])
    return ".".join(parts[:2]) if len(parts) > 1 and folder.is_dir() else module


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module imports as imports between packages (a package's imports of itself dropped)."""
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        mine = package_of(name)
        packages.setdefault(mine, set()).update(package_of(t) for t in targets)
        packages[mine].discard(mine)
    return packages


def stage_packages() -> set[str]:
    """The stages: every package under ``pipeline/`` with a ``run.py`` (its command), and
    ``semore-run``'s module."""
    runs = {f"pipeline.{p.parent.name}" for p in (ROOT / "pipeline").glob("*/run.py")}
    return runs | {"pipeline.run_all"}


def test_the_cycle_finder_finds_a_circle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_type_checking_and_function_level_imports():
    graph = import_graph()
    assert "pipeline.sim.highway" in graph["pipeline.sim"]  # inside make_env
    assert "pipeline.finetune.reference" in graph["pipeline.finetune.loop"]  # TYPE_CHECKING


def test_no_import_circle_in_pipeline_or_semore():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_circle_between_packages_is_seen_though_no_module_circle_is():
    graph = {
        "pipeline.compare.run": {"pipeline.launch.cli"},
        "pipeline.launch.study": {"pipeline.compare.jobs"},
        "pipeline.launch.cli": set(),
        "pipeline.compare.jobs": set(),
    }
    assert find_cycle(graph) is None
    cycle = find_cycle(package_graph(graph))
    assert cycle is not None and set(cycle) == {"pipeline.compare", "pipeline.launch"}


def test_no_import_circle_between_packages():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package circle: " + " -> ".join(cycle)


def test_the_launcher_imports_no_stage():
    stages = stage_packages()
    assert {"pipeline.collect", "pipeline.annotate", "pipeline.compare"} <= stages
    assert "pipeline.launch" not in stages
    imports = package_graph(import_graph())["pipeline.launch"]
    assert imports & stages == set(), f"pipeline/launch/ imports the stages {imports & stages}"


def test_semore_never_imports_pipeline():
    graph = import_graph()
    leaks = {m: sorted(t for t in ts if t.startswith("pipeline")) for m, ts in graph.items()}
    assert {m: ts for m, ts in leaks.items() if m.startswith("semore") and ts} == {}
