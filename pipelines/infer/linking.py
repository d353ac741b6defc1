"""Linking the sites of one area across acquisitions: ``sites``, observations, stockpile series.

Sites are grouped by area (squares of ``area_cell_m``, keyed by
:func:`pipelines.infer.sites.area_key`); :class:`LinkSites` matches an area's
sites of one kind across its scenes by overlap into chains
(:func:`minewatch.sites.link_series`), one ``sites`` row per chain, one
``site_observations`` row per sighting, and the stockpiles' area and volume
over time in ``stockpile_series``.
"""

from __future__ import annotations

import collections
import hashlib
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from minewatch.geo import reproject
from minewatch.scenes import safe_id
from minewatch.tables import (
    site_observations_schema,
    sites_schema,
    stockpile_series_schema,
    write_geoparquet,
)
from pipelines.infer.options import InferConfig
from pipelines.infer.sites import SceneSites, acquired_at
from pipelines.tile.accounting import COUNTS

__all__ = ["LinkSites"]

#: ``stockpile_series`` volume columns of a site measured by nothing.
_NO_VOLUME: dict[str, Any] = {
    "volume_m3": None,
    "volume_method": None,
    "volume_uncertainty_m3": None,
    "volume_reason": None,
    "height_m": None,
}


def _remove_stale(folder: str, name: str, days: set[str]) -> None:
    """Delete ``folder/date=*/name`` files of days not in ``days``.

    An area's ``sites`` rows are split by first sighting: when an earlier scene
    arrives later, its sites move to an earlier day's file, and the file of the
    day they were in before would keep a second copy. The new files are written
    first, so a reader between the two steps sees a site twice for a moment,
    never not at all.
    """
    matched = FileSystems.match([posixpath.join(folder, "date=*", name)])[0].metadata_list
    stale = [
        m.path
        for m in matched
        if posixpath.basename(posixpath.dirname(m.path)).removeprefix("date=") not in days
    ]
    if stale:
        FileSystems.delete(stale)


class LinkSites(beam.DoFn):  # type: ignore[misc]
    """Link the sites of one area across acquisitions; write sites and stockpile series.

    Each ``(area, scenes)`` element rewrites the area's files for the model
    version (``sites/date=D/<area>__<version>.parquet``, D the first sighting;
    ``stockpile_series`` by acquisition day) and deletes the area's files of
    that version under days that no longer hold a row, so a rerun with more
    scenes leaves each site once.

    Args:
        config: The job's options.
    """

    def __init__(self, config: InferConfig) -> None:
        self._config = config
        self._version = config.model.version
        self._rules = config.rules

    def process(self, item: tuple[str, Iterable[SceneSites]]) -> Iterator[Any]:
        """Write the area's sites, site observations and stockpile series; yield series rows."""
        import shapely

        from minewatch.sites import link_series

        key, scenes = item
        ordered = sorted(scenes, key=lambda s: (s.acquired, s.scene_id))
        crs = ordered[0].crs
        site_rows: list[dict[str, Any]] = []
        observation_rows: list[dict[str, Any]] = []
        series_rows: list[dict[str, Any]] = []
        kinds = sorted({s["kind"] for sc in ordered for s in sc.sites})
        for kind in kinds:
            dated = [(sc, [s for s in sc.sites if s["kind"] == kind]) for sc in ordered]
            geoms = [
                (sc.scene_id, [shapely.from_wkb(s["wkb"]) for s in sites]) for sc, sites in dated
            ]
            by_scene = {sc.scene_id: (sc, sites) for sc, sites in dated}
            for chain in link_series(geoms):
                scene0, i0 = chain[0]
                digest = hashlib.sha1(f"{crs}|{kind}|{scene0}|{i0}".encode()).hexdigest()[:10]
                site_id = f"{kind}-{digest}"
                members = [(by_scene[sid][0], by_scene[sid][1][i]) for sid, i in chain]
                last_scene, last = members[-1]
                score = float(np.mean([m["score"] for _, m in members]))
                # A vessel site is one sighting of a moving ship at an unlicensed
                # berth: there is no second date to wait for.
                status = (
                    "confirmed"
                    if kind == "vessel"
                    else self._rules.status(kind, len(members), score)
                )
                for sc, m in members:
                    observation_rows.append(
                        {
                            "site_id": site_id,
                            "kind": kind,
                            "scene_id": sc.scene_id,
                            "acquired": acquired_at(sc.acquired),
                            "geometry": bytes(
                                shapely.to_wkb(
                                    reproject(shapely.from_wkb(m["wkb"]), crs, "EPSG:4326")
                                )
                            ),
                            "source_crs": crs,
                            "geometry_source": m["wkb"],
                            "area_m2": m["area_m2"],
                            "score": m["score"],
                            "flagged": bool(m["flagged"]),
                            "reason": m["reason"],
                            "licence_id": m["licence_id"],
                            "status": status,
                            "model_version": self._version,
                        }
                    )
                site_rows.append(
                    {
                        "site_id": site_id,
                        "kind": kind,
                        "commodity": None,
                        # the last sighting's outline, reprojected once above
                        "geometry": observation_rows[-1]["geometry"],
                        "source_crs": crs,
                        "geometry_source": last["wkb"],
                        "area_m2": last["area_m2"],
                        "score": score,
                        "first_seen": acquired_at(members[0][0].acquired),
                        "last_seen": acquired_at(last_scene.acquired),
                        "acquisitions": len(members),
                        "flagged": bool(last["flagged"]),
                        "reason": last["reason"],
                        "licence_id": last["licence_id"],
                        "model_version": self._version,
                        "scene_ids": [sc.scene_id for sc, _ in members],
                        "status": status,
                    }
                )
                if kind == "stockpile":
                    previous = None
                    for sc, m in members:
                        series_rows.append(
                            {
                                "site_id": site_id,
                                "acquired": acquired_at(sc.acquired),
                                "scene_id": sc.scene_id,
                                "area_m2": m["area_m2"],
                                "change_m2": None if previous is None else m["area_m2"] - previous,
                                "model_version": self._version,
                                **(m.get("volume") or _NO_VOLUME),
                            }
                        )
                        previous = m["area_m2"]
        name = f"{safe_id(key)}__{safe_id(self._version)}.parquet"
        for table, rows, when, schema in (
            ("sites", site_rows, "first_seen", sites_schema()),
            ("site_observations", observation_rows, "acquired", site_observations_schema()),
            ("stockpile_series", series_rows, "acquired", stockpile_series_schema()),
        ):
            parts: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            for row in rows:
                parts[row[when].date().isoformat() if row[when] else "unknown"].append(row)
            for day, part in parts.items():
                write_geoparquet(
                    posixpath.join(self._config.out, table, f"date={day}", name),
                    part,
                    table,
                    schema,
                )
            _remove_stale(posixpath.join(self._config.out, table), name, set(parts))
        yield TaggedOutput(
            COUNTS,
            (
                "",
                collections.Counter(
                    sites=len(site_rows),
                    sites_flagged=sum(r["flagged"] for r in site_rows),
                    sites_candidate=sum(r["status"] == "candidate" for r in site_rows),
                ),
            ),
        )
        if self._config.bigquery:
            for row in site_rows:
                yield TaggedOutput("site_rows", row)
            for row in observation_rows:
                yield TaggedOutput("observation_rows", row)
        yield from series_rows
