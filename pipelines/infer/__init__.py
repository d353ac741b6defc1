"""The Infer stage: scenes, frames or tile records labelled by a model; sites; tables.

``run(argv)`` is the job's entry point (Beam's convention); :mod:`.options`
declares and checks its options (and imports nothing heavy, so the CLI can
show them at once), :mod:`.job` builds the pipeline from the steps of
:mod:`.serving`, :mod:`.reading`, :mod:`.sites`, :mod:`.scene_outputs`,
:mod:`.linking` and :mod:`.accounting`; :mod:`.quicklook` draws its pictures.
The job's names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "INFER_ARGS",
    "OUTPUT_ARGS",
    "SITE_ARGS",
    "InferConfig",
    "InferScenes",
    "SiteOptions",
    "infer_config",
    "output_options",
    "run",
    "run_infer",
    "site_options",
]

_WHERE = {
    "run": "job",
    "run_infer": "job",
    "InferScenes": "job",
    "INFER_ARGS": "options",
    "SITE_ARGS": "options",
    "OUTPUT_ARGS": "options",
    "output_options": "options",
    "InferConfig": "options",
    "SiteOptions": "options",
    "infer_config": "options",
    "site_options": "options",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
