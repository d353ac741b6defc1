"""The Graph stage: a tile job's tiles into a similarity graph and NSL's packed examples.

``run(argv)`` is the job's entry point (Beam's convention); :mod:`.options`
declares and checks its options (and imports nothing heavy, so the CLI can
show them at once), :mod:`.job` builds the pipeline from the steps of
:mod:`.descriptors` (tiles into vectors), :mod:`.edges` (similarity, spatial and
temporal edges), :mod:`.pack` (graph file and packed examples) and
:mod:`.accounting` (``stats.json``), and :mod:`.neighbours` and :mod:`.packing`
are the numpy and byte-level algorithms its workers run.
The job's names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["GRAPH_ARGS", "GraphConfig", "graph_config", "run", "run_graph"]

_WHERE = {
    "run": "job",
    "run_graph": "job",
    "GRAPH_ARGS": "options",
    "GraphConfig": "options",
    "graph_config": "options",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
