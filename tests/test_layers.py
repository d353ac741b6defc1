"""The layers, read from the imports: core <- stages <- workflows <- CLI, and no cycles.

* The core (``minewatch`` less ``cli``, ``workflows`` and ``synth``) imports no
  stage, no workflow, no CLI and not the ground-truth generator.
* ``minewatch.synth`` (the ground-truth generator) builds on the core only.
* The stages, ``pipelines`` (Beam jobs and their algorithms) and ``nsl_models``
  (training), import the core, never each other, a workflow or the CLI.
* The workflows (``minewatch.workflows``: the demo, the nightly retrain) drive
  the stages; they never import the CLI, which sits on top of everything.

Imports inside functions count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("minewatch", "pipelines", "nsl_models")
STAGES = ("pipelines", "nsl_models")
ABOVE_CORE = ("minewatch.cli", "minewatch.workflows", "minewatch.synth")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``a.b`` and ``a.b.c``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _forbidden(module: str) -> tuple[str, ...]:
    if _within(module, ("minewatch.cli",)):
        return ()
    if _within(module, ("minewatch.workflows",)):
        return ("minewatch.cli",)
    if _within(module, ("minewatch.synth",)):
        return (*STAGES, "minewatch.cli", "minewatch.workflows")
    if _within(module, ("minewatch",)):
        return (*STAGES, *ABOVE_CORE)
    if _within(module, ("pipelines",)):
        return ("nsl_models", "minewatch.cli", "minewatch.workflows")
    return ("pipelines", "minewatch.cli", "minewatch.workflows")  # nsl_models


def test_no_arrow_runs_back_down():
    found = {}
    for module, path in _modules().items():
        bad = {m for m in _imports(path) if _within(m, _forbidden(module))}
        if bad:
            found[module] = sorted(bad)
    assert found == {}, f"layer breaks: {found}"


def test_no_import_cycle_between_modules():
    modules = _modules()

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {
        m: {owner(i) for i in _imports(p) if owner(i) not in ("", m)} for m, p in modules.items()
    }
    # Tarjan's strongly connected components; a component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_checks_see_a_break():
    """The rules are not vacuous: a core module importing a stage is caught."""
    assert _within("pipelines.tile.job", _forbidden("minewatch.tables"))
    assert _within("minewatch.synth", _forbidden("minewatch.scoring"))
    assert not _within("minewatch.tables", _forbidden("pipelines.tile.job"))
    assert len(_modules()) > 50
