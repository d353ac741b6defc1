"""Model following: the registry's current model, and serving the one each scene was cut for.

A unit is tiled for the model current at its poll (:class:`RegistryFollower`);
:class:`StreamModelHandler` serves, per element, the SavedModel the element was
tiled for, so a model promoted mid-stream labels the scenes tiled after it,
and never half a scene.
"""

from __future__ import annotations

import collections
import logging
import posixpath
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from minewatch.registry import ModelRef, resolve_model
from pipelines.infer.serving import TileModelHandler
from pipelines.stream.metrics import NS

__all__ = ["RegistryFollower", "StreamModelHandler", "model_of"]

log = logging.getLogger(__name__)


class RegistryFollower:
    """The registry's current model, resolved again at most once per poll."""

    def __init__(self, registry: str) -> None:
        self._registry = registry
        self._model: ModelRef | None = None
        self._poll: int | None = None

    def current(self, poll: int) -> ModelRef:
        """The current model at ``poll``; the last one while the registry cannot be read."""
        if self._model is None or poll != self._poll:
            self._poll = poll
            try:
                self._model = resolve_model(self._registry)
            except Exception as exc:  # half-promoted registry: keep serving the old model
                if self._model is None:
                    raise
                log.warning("keeping model %s: %s", self._model.version, exc)
        return self._model


class _Models:
    """Loaded models (:class:`~pipelines.infer.serving.ServedModel`) by path, a few kept."""

    def __init__(self, batch_size: int, keep: int) -> None:
        self._batch_size = batch_size
        self._keep = keep
        self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Any:
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = TileModelHandler(path, self._batch_size).load_model()
                Metrics.counter(NS, "model_loads").inc()
                log.info("loaded model %s", path)
            self._loaded.move_to_end(path)
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
            return self._loaded[path]


class StreamModelHandler(TileModelHandler):
    """Serve, per element, the SavedModel the element was tiled for.

    Examples are ``(saved_model_path, stack)``; each call groups them by path and
    runs each group through that model (the ``keep`` most recent ones stay
    loaded), and every ``PredictionResult`` carries the path in ``model_id``.
    So a model promoted mid-stream labels the scenes tiled after it, and never
    half a scene. :meth:`update_model_path` follows RunInference's model-update
    side input, where a runner supports it, by changing the default model.

    Example::

        handler = KeyedModelHandler(StreamModelHandler(model.saved_model))
        labelled = keyed_stacks | RunInference(handler)

    Args:
        saved_model: The SavedModel served when an example names none.
        batch_size: Most tiles per model call. Default 64.
        keep: Models kept loaded per worker. Default 2.
    """

    def __init__(self, saved_model: str, batch_size: int = 64, keep: int = 2) -> None:
        super().__init__(saved_model, batch_size)
        self._keep = keep

    def update_model_path(self, model_path: str | None = None) -> None:
        """Serve ``model_path`` for examples that name no model."""
        if model_path:
            self._saved_model = model_path

    def load_model(self) -> _Models:
        """Return a per-worker cache of loaded models (filled on first use)."""
        return _Models(self._batch_size, self._keep)

    def run_inference(
        self,
        batch: Sequence[Any],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Predict each ``(path, stack)`` with its model; ``model_id`` is the path."""
        examples = [e if isinstance(e, tuple) else (self._saved_model, e) for e in batch]
        by_path: dict[str, list[int]] = collections.defaultdict(list)
        for i, (path, _) in enumerate(examples):
            by_path[path or self._saved_model].append(i)
        results: list[PredictionResult | None] = [None] * len(examples)
        for path, index in by_path.items():
            served = model.get(path)
            stacks = [examples[i][1] for i in index]
            for i, r in zip(index, super().run_inference(stacks, served), strict=True):
                results[i] = PredictionResult(None, r.inference, path)
        return [r for r in results if r is not None]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of pixels (not a pickle of them)."""
        return int(sum(e[1].nbytes if isinstance(e, tuple) else e.nbytes for e in batch))


def model_of(saved_model: str, cache: dict[str, ModelRef]) -> ModelRef:
    """The model whose SavedModel is ``saved_model`` (resolved once, kept in ``cache``)."""
    if saved_model not in cache:
        cache[saved_model] = resolve_model(posixpath.dirname(saved_model.rstrip("/")))
    return cache[saved_model]
