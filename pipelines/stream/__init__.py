"""The stream: watch a folder (or GCS notifications), label each new scene once.

``run(argv)`` is the job's entry point (Beam's convention); :mod:`.options`
declares and checks its options (and imports nothing heavy, so the CLI can
show them at once), :mod:`.job` builds the pipeline from the steps of
:mod:`.sources`, :mod:`.ledger`, :mod:`.models`, :mod:`.labelling` and
:mod:`.frames`; :mod:`.metrics` holds its counters and the bound on the local
runner's metrics. The job's names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "STREAM_ARGS",
    "STREAM_TABLES",
    "StreamConfig",
    "bound_local_metrics",
    "compact_ledger",
    "ledger_entries",
    "run",
    "run_stream",
    "stream_config",
]

_WHERE = {
    "run": "job",
    "run_stream": "job",
    "STREAM_TABLES": "job",
    "STREAM_ARGS": "options",
    "StreamConfig": "options",
    "stream_config": "options",
    "bound_local_metrics": "metrics",
    "compact_ledger": "ledger",
    "ledger_entries": "ledger",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
