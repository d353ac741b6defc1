"""Labelling a unit: tile it for the current model, write its tables, link its area's sites.

* :class:`PrepareScene` skips a unit the ledger has, else tiles it with the
  batch job's per-scene code (:class:`PlanScene`, :class:`CutTiles`,
  :class:`ExampleMaker`) for the registry's current model; Beam's
  ``RunInference`` then runs that model (:class:`~.models.StreamModelHandler`).
* :class:`WriteTables` writes the same files as ``minewatch infer``
  (:class:`WriteSceneOutputs`).
* :class:`LinkArea` is keyed by area: Beam runs one key at a time, so two
  workers never rewrite one area's ``sites`` file at once; the area's scenes
  live in keyed state, backed by ``_ledger/areas/`` for restarts.
* With ``--bigquery``, both hand each unit's rows (tagged :data:`BIGQUERY`) to
  :class:`pipelines.bigquery.UpsertRows`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from minewatch.paths import write_json
from minewatch.registry import ModelRef, resolve_model
from minewatch.scenes import safe_id
from pipelines.infer.linking import LinkSites
from pipelines.infer.scene_outputs import WriteSceneOutputs
from pipelines.infer.serving import ExampleMaker
from pipelines.infer.sites import SceneSites
from pipelines.stream.ledger import LEDGER, LedgerIndex, read_json
from pipelines.stream.metrics import NS
from pipelines.stream.models import RegistryFollower, model_of
from pipelines.stream.options import StreamConfig
from pipelines.stream.sources import StableInput, content_key
from pipelines.tile.accounting import DEAD, dead_row
from pipelines.tile.cut import CutTiles, TileBatch
from pipelines.tile.options import TileConfig
from pipelines.tile.plan import PlanScene

__all__ = [
    "AREAS",
    "BIGQUERY",
    "DONE",
    "FRAMES",
    "LinkArea",
    "PrepareScene",
    "WriteTables",
    "failed_inference",
]

log = logging.getLogger(__name__)

# Tags of the labelling steps' extra outputs.
#: Finished units (labelled, dead or late), ready to be recorded.
DONE = "done"
#: Labelled camera frames, ``(entry, frame_labels row)``.
FRAMES = "frames"
#: Labelled scenes with sites, ``(area, (entry, sites))``.
AREAS = "areas"
#: With ``--bigquery``: ``(table, rows, stale keys)`` for :class:`pipelines.bigquery.UpsertRows`.
BIGQUERY = "bigquery"

# State parameter as a module-level singleton (Beam's idiom, without calls in defaults).
_AREA = beam.DoFn.StateParam(ReadModifyWriteStateSpec("area", PickleCoder()))

# What LinkSites yields with ``bigquery``, by table; its main output is the series.
_LINKED_TAGS = {"site_rows": "sites", "observation_rows": "site_observations"}
_LINKED_TABLES = ("sites", "site_observations", "stockpile_series")


def _entry(f: StableInput, run_id: str) -> dict[str, Any]:
    return {
        "path": f.source,
        "files": [p for p, _, _ in f.files],
        "size": f.size,
        "mtime": f.mtime,
        "key": f.key,
        "poll": f.poll,
        "run_id": run_id,
        "found": time.time(),
    }


class PrepareScene(beam.DoFn):  # type: ignore[misc]
    """Tile one unit for the registry's current model, unless the ledger has it.

    Yields ``(meta, (saved_model, stack))`` for ``RunInference``; a unit with no
    tile to label goes to ``done`` as a dead entry with the reason.

    Args:
        config: The stream's options.
        run_id: Written into each ledger entry.
    """

    def __init__(self, config: StreamConfig, run_id: str) -> None:
        self._config = config
        self._run_id = run_id
        self._skipped = Metrics.counter(NS, "units_already_done")
        self._vanished = Metrics.counter(NS, "units_vanished")

    def setup(self) -> None:
        """Open the ledger index and follow the registry."""
        self._ledger = LedgerIndex(self._config.out)
        self._registry = RegistryFollower(self._config.registry)

    def process(self, f: StableInput) -> Iterator[Any]:
        """Tile ``f`` unless the ledger has it."""
        if self._ledger.has(f.key):
            self._skipped.inc()
            return
        try:
            content = content_key(f)
        except Exception as exc:  # vanished or unreadable: the next poll sees what happened
            self._vanished.inc()
            log.warning(
                "cannot read %s (%s): tried again when it changes or after a restart", f.source, exc
            )
            return
        if self._ledger.has(content):
            self._skipped.inc()
            return
        model = self._registry.current(f.poll)
        entry = {**_entry(f, self._run_id), "content_key": content}
        entry.update(model_version=model.version, model=model.path)
        dead: list[dict[str, str]] = []
        try:
            out = self._cut(f, model, dead)
        except Exception as exc:  # one bad unit never stops the stream
            out = {"status": "dead", "reason": f"{type(exc).__name__}: {exc}"}
        entry["_dead"] = dead
        if "stack" not in out:
            entry.update(out)
            yield TaggedOutput(DONE, entry)
            return
        stack = out.pop("stack")
        entry.update(out)
        yield entry, (model.saved_model, stack)

    def _cut(self, f: StableInput, model: ModelRef, dead: list[dict[str, str]]) -> dict[str, Any]:
        from minewatch.scenes import group_files
        from minewatch.stac import read_stac, stac_document

        paths = [p for p, _, _ in f.files]
        doc = stac_document(paths[0]) if len(paths) == 1 else None
        if doc is not None:
            refs, rejected = read_stac(paths[0], dict(self._config.stac_bands) or None, doc)
            if len(refs) > 1:
                reason = f"a stream unit is one STAC Item; this file holds {len(refs)}"
                dead.append(dead_row(paths[0], reason, "input", stage="discover"))
                return {"status": "dead", "reason": reason}
        else:
            refs, rejected = group_files(paths)
        for r in rejected:
            dead.append(dead_row(r.input, r.reason, r.kind, stage="discover"))
        if not refs:
            return {"status": "dead", "reason": rejected[0].reason if rejected else "not a scene"}
        ref = refs[0]
        size = model.tile_size
        task = model.metadata.get("task", "tile")
        tiling = TileConfig(
            inputs=(f.source,),
            out=self._config.out,
            label_source="none",
            bands=model.bands or None if task != "frame" else None,
            tile_size=size,
            stride=self._config.stride or max(1, size // 2),
            stac_bands=self._config.stac_bands,
        )
        batches: list[TileBatch] = []
        cutter = CutTiles(tiling)
        cutter.setup()
        try:
            for task_or_tag in PlanScene(tiling).process((ref, None)):
                if isinstance(task_or_tag, TaggedOutput):
                    if task_or_tag.tag == DEAD:
                        dead.append(task_or_tag.value)
                    continue
                for out in cutter.process(task_or_tag):
                    if isinstance(out, TaggedOutput):
                        if out.tag == DEAD:
                            dead.append(out.value)
                    else:
                        batches.append(out)
        finally:
            cutter.teardown()
        make = ExampleMaker(model)
        infos: list[tuple[Any, ...]] = []
        stacks: list[np.ndarray] = []
        for batch in batches:
            example, refused = make(batch)
            dead.extend(refused)
            if example is not None:
                infos.extend(example[0])
                stacks.append(example[1])
        if not stacks:
            reason = dead[0]["reason"] if dead else "no tile to label"
            return {"status": "dead", "reason": reason, "scene_id": ref.scene_id}
        return {
            "scene_id": ref.scene_id,
            "kind": ref.kind,
            "infos": infos,
            "stack": np.concatenate(stacks),
        }


class WriteTables(beam.DoFn):  # type: ignore[misc]
    """Predictions of one unit -> its ``tile_labels`` file, raster and quicklook.

    Yields scenes with sites to ``areas`` keyed by area, frames to ``frames``,
    and everything else (finished) as the entry; with ``bigquery``, the unit's
    ``tile_labels`` and ``vessels`` rows to ``bigquery`` as ``(table, rows, [])``.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._config = config

    def setup(self) -> None:
        """Caches of models and per-version WriteSceneOutputs steps."""
        self._models: dict[str, ModelRef] = {}
        self._per_scene: dict[str, WriteSceneOutputs] = {}

    def process(self, item: tuple[dict[str, Any], PredictionResult]) -> Iterator[Any]:
        """Write the unit's files; yield what follows."""
        entry, result = item
        entry = dict(entry)
        try:
            model = model_of(str(result.model_id), self._models)
            entry.update(model_version=model.version, model=model.path)
            per_scene = self._per_scene.get(model.path)
            if per_scene is None:
                per_scene = WriteSceneOutputs(self._config.infer_config(model, entry["path"]))
                per_scene.setup()
                self._per_scene[model.path] = per_scene
            infos = entry.pop("infos")
            frame, area, found = None, None, None
            rows: dict[str, list[dict[str, Any]]] = {"tile_rows": [], "vessel_rows": []}
            for out in per_scene.process((entry["scene_id"], [(infos, result.inference)])):
                if isinstance(out, TaggedOutput):
                    if out.tag == "frames":
                        frame = out.value[1]
                    elif out.tag in rows:  # only with --bigquery
                        rows[out.tag].append(out.value)
                else:
                    area, found = out
        except Exception as exc:
            entry.pop("infos", None)
            entry.update(status="dead", reason=f"{type(exc).__name__}: {exc}", tiles=0)
            yield TaggedOutput(DONE, entry)
            return
        day = infos[0][5][:10] if infos[0][5] else "unknown"
        entry.update(
            status="labelled",
            tiles=len(infos),
            tile_labels=posixpath.join(
                "tile_labels",
                f"date={day}",
                f"{safe_id(entry['scene_id'])}__{safe_id(model.version)}.parquet",
            ),
        )
        if self._config.bigquery:
            yield TaggedOutput(BIGQUERY, ("tile_labels", rows["tile_rows"], []))
            if rows["vessel_rows"]:
                yield TaggedOutput(BIGQUERY, ("vessels", rows["vessel_rows"], []))
        if frame is not None:
            yield TaggedOutput(FRAMES, (entry, frame))
        elif found is not None:
            sites = {
                "scene_id": found.scene_id,
                "acquired": found.acquired,
                "crs": found.crs,
                "sites": [{**s, "wkb": s["wkb"].hex()} for s in found.sites],
            }
            yield TaggedOutput(AREAS, (area, (entry, sites)))
        else:
            yield TaggedOutput(DONE, entry)


def failed_inference(item: tuple[Sequence[Any], Exception]) -> Iterator[dict[str, Any]]:
    """A failed model call's ``(batch, error)`` -> a dead entry per unit in the batch."""
    batch, exc = item
    for entry, _ in batch:
        entry = dict(entry)
        entry.pop("infos", None)
        entry.update(status="dead", reason=f"inference failed: {type(exc).__name__}: {exc}")
        yield entry


def _area_record(out: str, area: str) -> str:
    digest = hashlib.sha1(area.encode()).hexdigest()[:20]
    return posixpath.join(out, LEDGER, "areas", f"{digest}.json")


class LinkArea(beam.DoFn):  # type: ignore[misc]
    """Link one area's sites over the scenes each model version labelled there.

    Keyed by area: Beam processes one key at a time, so no two workers rewrite
    an area's ``sites``/``stockpile_series`` files at once, and no in-process
    lock or memory is shared. The scenes of the area live in keyed state; the
    first scene of an area in a run reads them back from ``_ledger/areas/``,
    which is rewritten (temporary file, then rename) once each scene is linked.

    With ``bigquery``, also yields the area's ``sites``, ``site_observations``
    and ``stockpile_series`` rows to ``bigquery`` as ``(table, rows, stale)``:
    ``stale`` are the keys this area wrote before that the new linking no
    longer has (kept per model version in the same state and record), so
    BigQuery loses them as the area's Parquet files do.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._config = config

    def setup(self) -> None:
        """Cache of models by folder."""
        self._models: dict[str, ModelRef] = {}

    def process(
        self, item: tuple[str, tuple[dict[str, Any], dict[str, Any]]], area_state: Any = _AREA
    ) -> Iterator[Any]:
        """Add the scene to its area; rewrite the area's site files; yield the entry."""
        area, (entry, sites) = item
        record = _area_record(self._config.out, area)
        held: dict[str, Any] | None = area_state.read()
        if held is None:
            saved = read_json(record)
            held = saved if saved and saved.get("area") == area else {"area": area}
        scenes = held.setdefault("versions", {})
        version = entry["model_version"]
        scenes.setdefault(version, {})[sites["scene_id"]] = sites
        changes: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = []
        try:
            if entry["model"] not in self._models:
                self._models[entry["model"]] = resolve_model(entry["model"])
            model = self._models[entry["model"]]
            linked = [
                SceneSites(
                    s["scene_id"],
                    s["acquired"],
                    s["crs"],
                    [{**x, "wkb": bytes.fromhex(x["wkb"])} for x in s["sites"]],
                )
                for s in scenes[version].values()
            ]
            config = self._config.infer_config(model, entry["path"])
            rows: dict[str, list[dict[str, Any]]] = {t: [] for t in _LINKED_TABLES}
            for out in LinkSites(config).process((area, linked)):
                if not isinstance(out, TaggedOutput):
                    rows["stockpile_series"].append(out)
                elif out.tag in _LINKED_TAGS:  # only with --bigquery
                    rows[_LINKED_TAGS[out.tag]].append(out.value)
        except Exception as exc:  # the tile labels stand; the sites wait for the area's next scene
            log.warning("could not link area %s: %s", area, exc)
            entry["_dead"] = [
                *entry.get("_dead", []),
                dead_row(
                    entry["path"],
                    f"site linking failed: {exc}",
                    "input",
                    entry["scene_id"],
                    stage="link",
                ),
            ]
        else:
            if self._config.bigquery:
                changes = _bigquery_changes(held, version, rows)
        # Written once, after linking: a unit whose entry is not yet in the ledger
        # is labelled again after a restart, so a crash before this loses nothing.
        area_state.write(held)
        write_json(record, held, indent=1)
        for change in changes:
            yield TaggedOutput(BIGQUERY, change)
        entry["area"] = area
        yield entry


def _bigquery_changes(
    held: dict[str, Any], version: str, rows: dict[str, list[dict[str, Any]]]
) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The area's rows per table, with the keys it wrote before and no longer has.

    Records the keys written now in ``held`` (per model version), for the next scene.
    """
    from pipelines.bigquery import bigquery_keys

    written = held.setdefault("bigquery_keys", {}).setdefault(version, {})
    changes = []
    for table, table_rows in rows.items():
        keys = [bigquery_keys(table, r) for r in table_rows]
        now = {json.dumps(k, sort_keys=True) for k in keys}
        stale = [k for k in written.get(table, []) if json.dumps(k, sort_keys=True) not in now]
        written[table] = keys
        changes.append((table, table_rows, stale))
    return changes
