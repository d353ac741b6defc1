"""The Tile stage: scenes and camera frames into georeferenced, labelled TFRecord tiles.

``run(argv)`` is the job's entry point (Beam's convention); :mod:`.options`
declares and checks its options (and imports nothing heavy, so the CLI can
show them at once), :mod:`.job` builds the pipeline. The job's names load on
first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["TILE_ARGS", "TileConfig", "run", "run_tile", "tile_config"]

_WHERE = {
    "run": "job",
    "run_tile": "job",
    "TILE_ARGS": "options",
    "TileConfig": "options",
    "tile_config": "options",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
