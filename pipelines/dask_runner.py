"""A Beam runner for dask.distributed that runs our jobs.

Use it as ``--runner=pipelines.dask_runner.DaskRunner --dask_client_address=tcp://HOST:8786``
(``deploy/runners/dask.yaml``). Beam's own ``apache_beam.runners.dask`` (Beam 2.77)
translates each transform to a ``dask.bag`` operation, but real pipelines go wrong on it:

1. ``ParDo(...).with_outputs(...)`` returns one bag with every output mixed in, and
   bags are keyed by producing transform, so each consumer of a tagged output gets
   all of them.
2. Outputs emitted in ``finish_bundle`` are dropped: results are collected before
   ``invoke_finish_bundle`` (Beam's file sinks, ``BatchElements``, ``RunInference``).
3. Only the last visited bag is computed, so other branches and sinks never run.
4. Side inputs are dask bags iterated inside worker tasks, which recomputes (and
   re-runs the side effects of) everything upstream.
5. ``ParDo`` subclasses (``WindowInto``, the group-also-by-window step), ``Impulse``,
   ``Read`` and ``Reshuffle`` are translated to a no-op, and elements get timestamp 0.
6. ``result.metrics()`` raises ``NotImplementedError``.

This runner keeps Beam's ``DaskOptions``, result class and transform overrides
(``dask_overrides``) and replaces the translation with its own visitor:

* bags are keyed by ``PCollection`` and hold ``WindowedValue`` s; a ``ParDo``'s bundle
  function returns ``(tag, value)`` pairs, one filtered bag per output tag;
* each bundle runs through Beam's ``DoFnRunner`` (setup, start, process, finish,
  teardown) on a fresh unpickled ``DoFn``, so ``finish_bundle`` outputs are kept;
* a side input is one ``dask.delayed`` list of its bag's partitions, a whole-object
  dependency of the consuming ``map_partitions``; its upstream tasks run once;
* every bag no transform consumes is counted, all in one ``client.compute``, so all
  sinks run and shared upstream tasks run once;
* ``GroupByKey`` groups on a stable hash of the key (not ``hash()``, which differs
  between worker processes) and then by window with Beam's group-also-by-window DoFn;
  ``Reshuffle`` deals elements round-robin over the cluster's threads;
* each bundle's Beam metrics come back with its outputs; ``result.metrics()`` holds
  them (committed) once ``wait_until_finish()`` returns, the client is closed then.

Not supported: stateful DoFns and timers, splittable DoFns other than ``Read``,
unbounded sources and streaming, triggers beyond what Beam's group-also-by-window
DoFn does on a whole key at once.

No Beam issue tracks 1-4 as far as we found; upstream work on windowing and side inputs
for this runner stalled in https://github.com/apache/beam/pull/27618.

Adapted from Beam's runner:
https://github.com/apache/beam/blob/v2.77.0/sdks/python/apache_beam/runners/dask/dask_runner.py
https://github.com/apache/beam/blob/v2.77.0/sdks/python/apache_beam/runners/dask/transform_evaluator.py
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.io.iobase import SourceBase
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import (
    _Create,
    _Flatten,
    _GroupByKeyOnly,
    _Read,
    _Reshuffle,
    dask_overrides,
)
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["DaskRunner"]

#: The tag of a bundle's metric updates among its outputs.
_METRICS = "__dask_runner_metrics__"

#: Bytes of a source to read in one bundle.
READ_BUNDLE_BYTES = 64 << 20


def _in_global_window(value: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


def _key_hash(key: Any) -> int:
    """A hash of a key that is the same in every process (``hash(str)`` is not)."""
    return int.from_bytes(hashlib.blake2b(pickle.dumps(key, 4), digest_size=8).digest(), "big")


class _Receiver(Receiver):
    """Collects one output tag's windowed values as ``(tag, value)`` pairs."""

    def __init__(self, tag: str | None, out: list[tuple[str | None, WindowedValue]]) -> None:
        self.tag, self.out = tag, out

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append((self.tag, windowed_value))


class _Receivers(dict[str | None, Any]):
    def __init__(self, out: list[tuple[str | None, WindowedValue]]) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, tag: str | None) -> _Receiver:
        self[tag] = _Receiver(tag, self.out)
        return self[tag]


def _run_bundle(items: Any, blob: bytes, *side_values: list[WindowedValue]) -> list[Any]:
    """Run one bundle of a ParDo; return every output as ``(tag, windowed value)``."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.common import DoFnRunner, DoFnState
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.utils.counters import CounterFactory

    fn, args, kwargs, views, windowing, label = pickler.loads(blob)
    side_inputs = [
        SideInputMap(view_class, options, values)
        for (view_class, options), values in zip(views, side_values, strict=True)
    ]
    out: list[tuple[str | None, Any]] = []
    runner = DoFnRunner(
        fn,
        args,
        kwargs,
        side_inputs,
        windowing,
        tagged_receivers=_Receivers(out),
        step_name=label,
        state=DoFnState(CounterFactory()),
    )
    # Beam's Metrics find their container through the thread's state sampler.
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer(label)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            runner.setup()
            runner.start()
            for item in items:
                runner.process(item)
            runner.finish()  # finish_bundle's outputs land in `out` too
            runner.teardown()
    finally:
        statesampler.set_current_tracker(None)
    out.append((_METRICS, container.get_cumulative()))
    return out


def _select(pairs: list[tuple[str | None, WindowedValue]], tag: str | None) -> list[Any]:
    return [value for t, value in pairs if t == tag]


def _concat(parts: list[list[Any]]) -> list[Any]:
    return [item for part in parts for item in part]


def _read_split(splits: Any) -> list[WindowedValue]:
    out: list[WindowedValue] = []
    for split in splits:
        tracker = split.source.get_range_tracker(split.start_position, split.stop_position)
        out.extend(_in_global_window(v) for v in split.source.read(tracker))
    return out


def _deal(items: Any, n: int) -> list[tuple[int, Any]]:
    return [(i % n, item) for i, item in enumerate(items)]


def _group_by_key(groups: Any) -> list[WindowedValue]:
    """``(hash, [(key, value), ...])`` groups to one ``(key, [values])`` per key."""
    out: list[WindowedValue] = []
    for _, pairs in groups:
        by_key: dict[Any, list[Any]] = {}
        for key, value in pairs:
            by_key.setdefault(key, []).append(value)
        out.extend(_in_global_window(kv) for kv in by_key.items())
    return out


def _windowing(pcoll: beam.PCollection) -> beam.Windowing:
    try:
        return pcoll.windowing
    except AttributeError:  # made by a primitive on the pipeline's root: Read, Create
        return beam.Windowing(GlobalWindows())


class _BagVisitor(PipelineVisitor):
    """Builds one dask bag of ``WindowedValue`` s per PCollection."""

    def __init__(self, bag_kwargs: dict[str, int], parallelism: int) -> None:
        self.bag_kwargs = bag_kwargs
        self.parallelism = max(1, parallelism)
        self.bags: dict[beam.pvalue.PValue, Any] = {}
        self.consumed: set[beam.pvalue.PValue] = set()
        self.metrics: list[Any] = []  # a bag of MetricUpdates per ParDo

    def _sequence(self, items: list[Any]) -> Any:
        import dask.bag as db

        if "npartitions" in self.bag_kwargs:
            n = self.bag_kwargs["npartitions"]
        else:
            size = self.bag_kwargs.get("partition_size") or -(-len(items) // self.parallelism)
            n = -(-len(items) // max(1, size))
        return db.from_sequence(items, npartitions=max(1, min(n, len(items) or 1)))

    def _input(self, node: AppliedPTransform) -> Any:
        (pcoll,) = node.main_inputs.values()
        self.consumed.add(pcoll)
        return self.bags[pcoll]

    def visit_transform(self, node: AppliedPTransform) -> None:
        import dask
        import dask.bag as db

        transform = node.transform
        if isinstance(transform, beam.Impulse):
            outputs = {None: self._sequence([_in_global_window(b"")])}
        elif isinstance(transform, _Create):
            outputs = {None: self._sequence([_in_global_window(v) for v in transform.values])}
        elif isinstance(transform, _Read):
            source: SourceBase = transform.source
            splits = list(source.split(READ_BUNDLE_BYTES))
            outputs = {None: self._sequence(splits).map_partitions(_read_split)}
        elif isinstance(transform, _Flatten):
            inputs = list(node.main_inputs.values())
            self.consumed.update(inputs)
            bags = [self.bags[p] for p in inputs]
            outputs = {None: db.concat(bags) if bags else self._sequence([])}
        elif isinstance(transform, _Reshuffle):
            n = self.bag_kwargs.get("npartitions") or self.parallelism
            dealt = self._input(node).map_partitions(_deal, n)
            grouped = dealt.groupby(lambda pair: pair[0], npartitions=n)
            outputs = {None: grouped.map_partitions(lambda g: [v for _, vs in g for _, v in vs])}
        elif isinstance(transform, _GroupByKeyOnly):
            # Input: (key, reified windowed value); output: (key, [values]) to group by window.
            pairs = self._input(node).map(lambda wv: wv.value)
            grouped = pairs.groupby(lambda kv: _key_hash(kv[0]))
            outputs = {None: grouped.map_partitions(_group_by_key)}
        elif isinstance(transform, beam.ParDo):
            main = self._input(node)
            views, sides = [], []
            for si in node.side_inputs:
                self.consumed.add(si.pvalue)
                parts = self.bags[si.pvalue].to_delayed(optimize_graph=False)
                sides.append(dask.delayed(_concat)(parts))  # type: ignore[attr-defined]
                views.append((type(si), si._view_options()))
            (main_pcoll,) = node.main_inputs.values()
            blob = pickler.dumps(
                (
                    transform.fn,
                    list(transform.args),
                    dict(transform.kwargs),
                    views,
                    _windowing(main_pcoll),
                    node.full_label,
                )
            )
            pairs = main.map_partitions(_run_bundle, blob, *sides)
            outputs = {tag: pairs.map_partitions(_select, tag) for tag in node.outputs}
            self.metrics.append(pairs.map_partitions(_select, _METRICS))
        else:
            raise NotImplementedError(
                f"DaskRunner cannot run {type(transform).__name__} ({node.full_label})"
            )
        for tag, pcoll in node.outputs.items():
            self.bags[pcoll] = outputs[tag]

    def sinks(self) -> list[Any]:
        """What to compute: every bundle's metric updates, then a count of each bag.

        Counted are the bags no transform consumes; computing them runs everything.
        """
        import dask.bag as db

        updates = db.concat(self.metrics) if self.metrics else db.from_sequence([])
        ends = [bag.count() for pcoll, bag in self.bags.items() if pcoll not in self.consumed]
        return [updates, *ends]


class _Result(beam_dask.DaskRunnerResult):
    """Beam's result, closing the client when done and committing the bundles' metrics."""

    _metrics: DirectMetrics | None = None

    def wait_until_finish(self, duration: int | None = None) -> str:
        try:
            state = super().wait_until_finish(duration)
            metrics = DirectMetrics()
            for i, updates in enumerate(self.futures[0].result()):
                metrics.commit_logical(i, updates)
            self._metrics = metrics
            return state
        finally:
            if self.state in ("DONE", "FAILED"):
                self.client.close()

    def metrics(self) -> DirectMetrics:
        if self._metrics is None:
            raise RuntimeError("metrics are there once wait_until_finish() has returned")
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Runs a batch pipeline on a dask.distributed cluster (``--dask_client_address``)."""

    def run_pipeline(self, pipeline: beam.Pipeline, options: Any) -> _Result:
        """Translate the pipeline to one dask graph and submit it to the cluster."""
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        try:
            pipeline.replace_all(dask_overrides())
            visitor = _BagVisitor(bag_kwargs, sum(client.nthreads().values()))
            pipeline.visit(visitor)
            # One graph: tasks shared by several sinks or side inputs run once.
            futures = client.compute(visitor.sinks(), optimize_graph=False)
        except BaseException:
            client.close()
            raise
        return _Result(client, futures)
