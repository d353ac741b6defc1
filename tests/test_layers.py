"""The layers, read from the imports: core <- stages (pipelines, nsl_models) <- workflows <- CLI.

The core (``minewatch`` less ``minewatch.cli`` and the workflows) imports no
stage and no CLI (workflows no CLI); ``pipelines`` never imports the trainer or the CLI;
``nsl_models`` never imports ``pipelines`` or the CLI. Three arrows still run
the wrong way today; they are listed by name, and the list must shrink, not
grow (issue 21, "One house", removes them).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Workflows: modules of ``minewatch`` that drive several stages.
WORKFLOWS = {"minewatch/retrain.py"}
#: Imports that break the layers today (issue 21): module -> forbidden imports.
KNOWN = {
    "pipelines/tiling.py": {"minewatch.cli.tile"},
    "pipelines/similarity_graph.py": {"minewatch.cli.graph"},
    "minewatch/retrain.py": {"minewatch.cli.tile", "minewatch.cli.graph"},
}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _forbidden(rel: str) -> tuple[str, ...]:
    if rel.startswith("minewatch/cli/"):
        return ()
    if rel.startswith("minewatch/"):
        if rel in WORKFLOWS:
            return ("minewatch.cli",)
        return ("pipelines", "nsl_models", "minewatch.cli", "minewatch.retrain")
    if rel.startswith("pipelines/"):
        return ("nsl_models", "minewatch.cli", "minewatch.retrain")
    if rel.startswith("nsl_models/"):
        return ("pipelines", "minewatch.cli", "minewatch.retrain")
    return ()


def test_no_arrow_runs_back_down_beyond_the_known_ones():
    found: dict[str, set[str]] = {}
    for pkg in ("minewatch", "pipelines", "nsl_models"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad = {
                m
                for m in _imports(path)
                for prefix in _forbidden(rel)
                if m == prefix or m.startswith(prefix + ".")
            }
            if bad:
                found[rel] = bad
    assert found == KNOWN, f"layer breaks: {found}"
