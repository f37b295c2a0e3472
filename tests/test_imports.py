"""The package has no import cycles, counting imports inside functions too (a lazy import that closes
a loop is a cycle that only waits for the right call order)."""

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hwocr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the hwocr modules it imports (`from a import b` counts as a.b when b is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = set()
        for target in targets:
            while target and target not in modules:  # `from a import function` -> a
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "hwocr.run" in graph and "hwocr.config" in graph["hwocr.run"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle graphlib meets, one at a time: each found cycle loses an edge and the search goes on."""
    graph = {name: set(targets) for name, targets in graph.items()}
    found = []
    while True:
        try:
            tuple(graphlib.TopologicalSorter(graph).static_order())
            return found
        except graphlib.CycleError as error:
            cycle = error.args[1]  # [a, b, ..., a]: each module imports the one before it
            found.append(cycle)
            graph[cycle[1]].discard(cycle[0])


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()})


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(reversed(cycle)) for cycle in found)
