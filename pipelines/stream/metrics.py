"""The stream's Beam counters, and a bound on the local runner's metrics.

Every step counts into the :data:`NS` namespace; :func:`read_counters` reads a
finished run's counters back. :func:`bound_local_metrics` patches Beam's local
FnApiRunner so that a long stream's metrics neither grow without bound nor end
in ``RecursionError`` (``docs/reliability.md``, section 4).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["NS", "bound_local_metrics", "read_counters"]

log = logging.getLogger(__name__)
#: The Beam metrics namespace of the stream's counters.
NS = "minewatch.stream"


def read_counters(result: Any) -> dict[str, int]:
    """This run's counters; empty when the runner reports none (the ledger stands)."""
    out: dict[str, int] = collections.defaultdict(int)
    try:
        for counter in result.metrics().query()["counters"]:
            if counter.key.metric.namespace == NS:
                value = counter.committed if counter.committed is not None else counter.attempted
                out[counter.key.metric.name] += int(value or 0)
    except Exception as exc:
        log.warning("could not read Beam counters: %s", exc)
    return dict(out)


def bound_local_metrics() -> bool:
    """Make Beam's local FnApiRunner merge each bundle's metrics at once; True if it did.

    Beam 2.77's DirectRunner runs the stream on the FnApiRunner, whose
    ``run_stages`` folds each finished bundle's monitoring infos into the
    earlier ones with ``consolidate(itertools.chain(new, previous))``, a lazy
    generator that nests one level per bundle and is read only when the
    pipeline ends. Every bundle's metric protos stay alive until then (memory),
    and reading them ends in ``RecursionError`` (the run's counters are lost). A
    ``PeriodicImpulse`` there re-runs its deferred remainder at once, so an idle
    stream executes hundreds of bundles a second: a bare ``PeriodicImpulse |
    Map`` grew by 230-450 MB/min (``docs/reliability.md``, section 4). Merging
    eagerly (``list(...)``) gives the same metrics and holds one merged list per
    stage. Other runners do not use this function; it is replaced once, in this
    process, and only where the module still has it. Streaming on the local
    runner is an open upstream effort (https://github.com/apache/beam/issues/21987);
    no upstream issue for this merge was found, so remove the patch when a Beam
    release reads the counters of a long local stream without it
    (``tests/pipelines/stream/test_job.py::test_local_runner_merges_each_bundles_metrics_at_once``).

    Returns:
        True when the runner now merges eagerly; False when this Beam has no
        such function (a warning is logged).
    """
    try:
        from apache_beam.metrics import monitoring_infos
        from apache_beam.runners.portability.fn_api_runner import fn_runner
    except ImportError:  # pragma: no cover - a Beam without the FnApiRunner
        return False
    current = getattr(fn_runner, "consolidate_monitoring_infos", None)
    if current is None:
        log.warning("Beam's FnApiRunner changed: its metrics are not bounded here")
        return False
    if getattr(current, "_minewatch_eager", False):
        return True

    def consolidate(infos: Iterable[Any]) -> list[Any]:
        return list(monitoring_infos.consolidate(infos))

    consolidate._minewatch_eager = True  # type: ignore[attr-defined]
    fn_runner.consolidate_monitoring_infos = consolidate
    return True
