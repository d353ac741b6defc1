"""Finding the sites of one scene: its probability mosaic, the cut, the judgement, vessels.

What :class:`~pipelines.infer.scene_outputs.WriteSceneOutputs` calls between reading a
scene's predictions and writing its files; nothing here writes a table.

Two resolutions, chosen by what the model serves (:func:`scene_raster`): a
model with the per-pixel head (``pixel_probabilities`` [N, H, W, K]) has its
tiles mosaicked onto the scene grid at pixel resolution (averaged where tiles
overlap), and sites are polygonized from that; a tile-only model
(``probabilities`` [N, K]) has its tile probabilities painted onto cells of
``gcd(tile, stride)`` pixels.

Besides the sites (:meth:`SiteFinder.find`): each stockpile site gets a volume
(:func:`minewatch.volumes.measure_volume`: DSMs from ``--dsm``, else the
shadow with the sun from ``--sun-azimuth/--sun-elevation`` or the scene's tags,
else ``method = none`` with the reason), carried into ``stockpile_series``;
with ``--licensed-ports``, vessels are found in the per-pixel class raster
(:meth:`SiteFinder.vessels`: :func:`minewatch.vessels.find_vessels`, water
from NDWI of the scene's B03/B08 or the model's ``water`` class) and, when
berthed at an unlicensed shore point, added to the sites as flagged ``vessel``
sites (linked across acquisitions like other sites: repeated use of one berth
is one site).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from affine import Affine

from minewatch.geo import reproject
from pipelines.infer.options import InferConfig
from pipelines.infer.serving import PROBABILITY_STEPS, ScenePredictions, TileInfo

__all__ = [
    "AreaPolygons",
    "SceneRaster",
    "SceneSites",
    "SiteFinder",
    "acquired_at",
    "area_key",
    "cell_size",
    "scene_raster",
]

log = logging.getLogger(__name__)


def acquired_at(iso: str) -> datetime | None:
    """An ISO acquisition time as a datetime; None for ``""`` (unknown)."""
    return datetime.fromisoformat(iso) if iso else None


@dataclass
class SceneSites:
    """The sites found in one scene, on their way to linking across acquisitions.

    Attributes:
        scene_id: The scene.
        acquired: Its acquisition time (ISO), or ``""``.
        crs: The CRS of the sites' outlines (the scene's).
        sites: One dict per site: ``kind``, ``wkb`` (outline in ``crs``),
            ``area_m2``, ``score``, ``flagged``, ``reason``, ``licence_id`` and
            ``volume`` (the ``stockpile_series`` volume columns, or None).
    """

    scene_id: str
    acquired: str
    crs: str
    sites: list[dict[str, Any]] = field(default_factory=list)


class AreaPolygons:
    """Concession or protected-area polygons, read on first use and reprojected once per CRS.

    Args:
        path: The polygon file, or None for none.
        id_fields: Properties naming a polygon, the first present wins (else its index).
    """

    def __init__(self, path: str | None, id_fields: Sequence[str]) -> None:
        self._path = path
        self._id_fields = id_fields
        self._raw: list[tuple[str, Any]] | None = None
        self._crs = ""
        self._by_crs: dict[str, list[tuple[str, Any]]] = {}

    def _load(self) -> None:
        import pyogrio
        import shapely

        meta, _, geometry, fields = pyogrio.raw.read(self._path)
        names = list(meta["fields"])
        key = next((f for f in self._id_fields if f in names), None)
        ids = fields[names.index(key)] if key else range(len(geometry))
        self._raw = [
            (str(i), shapely.make_valid(shapely.from_wkb(g)))
            for i, g in zip(ids, geometry, strict=True)
            if g is not None
        ]
        self._crs = str(meta["crs"] or "EPSG:4326")

    def in_crs(self, crs: str) -> list[tuple[str, Any]]:
        """``(id, polygon)`` pairs in ``crs`` (as they are for ``""``); none without a file."""
        if self._path is None:
            return []
        if self._raw is None:
            self._load()
        assert self._raw is not None
        if crs not in self._by_crs:
            # A scene without a CRS gets the polygons as they are.
            self._by_crs[crs] = [
                (i, reproject(g, self._crs, crs) if crs else g) for i, g in self._raw
            ]
        return self._by_crs[crs]


def cell_size(size: int, offsets: Iterable[int]) -> int:
    """Raster cell: gcd of the tile size and the regular tiling step."""
    distinct = sorted(set(offsets))
    steps = collections.Counter(b - a for a, b in itertools.pairwise(distinct))
    step = steps.most_common(1)[0][0] if steps else size
    return math.gcd(size, step)


@dataclass
class SceneRaster:
    """A scene's class probabilities on a grid, from which its sites are cut.

    Attributes:
        probs: ``[K, H, W]`` probabilities.
        count: ``[H, W]`` tiles covering each cell (0: not covered).
        grid: The cells' :class:`minewatch.sites.CellGrid` (transform, size).
        per_pixel: At pixel resolution (a model with the per-pixel head), not
            in cells of the tiling step.
    """

    probs: np.ndarray
    count: np.ndarray
    grid: Any
    per_pixel: bool


def scene_raster(preds: ScenePredictions, classes: int) -> SceneRaster:
    """Mosaic a scene's predictions onto its grid (pixels, else cells of the tiling step).

    Args:
        preds: The scene's predictions.
        classes: How many classes the model names (``K``).
    """
    from minewatch.sites import pixel_mosaic, probability_raster

    first = preds.first
    size = first.size
    transform = Affine(*first.transform[:6]) @ Affine.translation(-first.col_off, -first.row_off)
    height = int(preds.rows.max()) + size
    width = int(preds.cols.max()) + size
    if preds.pixels is not None:
        probs, count, grid = pixel_mosaic(
            preds.rows,
            preds.cols,
            preds.pixels,
            height,
            width,
            transform,
            classes,
            scale=1.0 / PROBABILITY_STEPS,
        )
        return SceneRaster(probs, count, grid, per_pixel=True)
    cell = cell_size(size, [*preds.rows.tolist(), *preds.cols.tolist()])
    probs, count, grid = probability_raster(
        zip(preds.rows.tolist(), preds.cols.tolist(), preds.probs, strict=True),
        height,
        width,
        transform,
        size,
        cell,
        classes,
    )
    return SceneRaster(probs, count, grid, per_pixel=False)


class SiteFinder:
    """Cut, judge and measure the sites of a scene; find its vessels.

    Call :meth:`setup` once (per worker) before the rest: it indexes the DSMs
    and reads the ports file.

    Args:
        config: The job's options.
    """

    def __init__(self, config: InferConfig) -> None:
        self._config = config
        self._version = config.model.version
        self._classes = config.model.classes
        self._rules = config.rules

    def setup(self) -> None:
        """Load the area polygons lazily; index the DSMs and read the ports."""
        self._concessions = AreaPolygons(self._config.concessions, ("licence_id", "id", "name"))
        self._protected = AreaPolygons(self._config.protected, ("name", "id"))
        self._dsm: Any = None
        self.ports: Any = None
        if self._config.dsm:
            from minewatch.volumes import DsmIndex

            self._dsm = DsmIndex.from_glob(self._config.dsm)
        if self._config.licensed_ports:
            from minewatch.vessels import PortRegistry

            self.ports = PortRegistry.from_file(self._config.licensed_ports)

    def find(
        self, scene_id: str, first: TileInfo, raster: SceneRaster
    ) -> tuple[SceneSites, collections.Counter[str]]:
        """The scene's sites, flagged and (stockpiles) measured; and their counts.

        Args:
            scene_id: The scene.
            first: What the scene's tiles share (source, CRS, acquisition).
            raster: Its probabilities (:func:`scene_raster`).

        Returns:
            ``(sites, counts)``: ``sites_found`` and ``volumes_<method>`` counts.
        """
        from minewatch.sites import polygonize

        rules = self._rules
        shapes = polygonize(
            raster.probs,
            raster.count,
            raster.grid,
            first.crs,
            self._classes,
            self._config.positive,
            rules.threshold,
            {k: rules.rule(k).min_area_m2 for k in self._config.positive},
            {k: rules.rule(k).min_score for k in self._config.positive},
            rules.smooth,
            rules.class_weights,
        )
        concessions = self._concessions.in_crs(first.crs)
        protected = self._protected.in_crs(first.crs)
        found = SceneSites(scene_id, first.acquired, first.crs)
        counts: collections.Counter[str] = collections.Counter(sites_found=len(shapes))
        with contextlib.ExitStack() as stack:
            # The scene is opened once for all its stockpiles' volumes, and its
            # sun angles read once, not once per pile.
            scene: Any = first.source
            sun = self._config.sun
            if self._config.volumes and any(s.kind == "stockpile" for s in shapes):
                scene = _open_scene(first.source, stack)
                if sun is None:
                    sun = _scene_sun(scene)
            self._judge(shapes, first, scene, sun, found, counts, concessions, protected)
        return found, counts

    def _judge(
        self,
        shapes: Sequence[Any],
        first: TileInfo,
        scene: Any,
        sun: tuple[float, float] | None,
        found: SceneSites,
        counts: collections.Counter[str],
        concessions: list[tuple[str, Any]],
        protected: list[tuple[str, Any]],
    ) -> None:
        """Flag each site, measure each stockpile's volume; append them to ``found``."""
        import shapely

        from minewatch.sites import assess_legality

        judged = bool(self._config.concessions or self._config.protected)
        for s in shapes:
            flagged, reason, licence = False, None, None
            if judged and s.kind in self._config.mining_classes:
                flagged, reason, licence = assess_legality(s.geometry, concessions, protected)
            volume = None
            if s.kind == "stockpile" and self._config.volumes:
                volume = self._volume(s.geometry, first, scene, sun)
                counts[f"volumes_{volume['volume_method']}"] += 1
            found.sites.append(
                {
                    "kind": s.kind,
                    "wkb": bytes(shapely.to_wkb(s.geometry)),
                    "area_m2": s.area_m2,
                    "score": s.score,
                    "flagged": flagged,
                    "reason": reason,
                    "licence_id": licence,
                    "volume": volume,
                }
            )

    def _volume(
        self, geometry: Any, first: TileInfo, scene: Any, sun: tuple[float, float] | None
    ) -> dict[str, Any]:
        """``stockpile_series`` volume columns of one stockpile site in this scene.

        ``scene`` is the scene open for reading (or its path when it could not be opened).
        """
        from minewatch.volumes import VolumeResult, measure_volume

        when = acquired_at(first.acquired)
        try:
            result = measure_volume(geometry, first.crs, scene, when, self._dsm, sun)
        except Exception as exc:  # measure_volume refuses bad data itself; this is a bug net
            log.warning("volume of a stockpile in %s failed: %s", first.scene_id, exc)
            result = VolumeResult.refused(f"volume failed: {type(exc).__name__}: {exc}")
        return result.row()

    def vessels(
        self,
        scene_id: str,
        first: TileInfo,
        raster: SceneRaster,
        found: SceneSites,
        counts: collections.Counter[str],
    ) -> list[dict[str, Any]]:
        """Find and judge the scene's vessels; add the flagged ones to ``found`` as sites.

        Needs the ports (:meth:`setup` with ``licensed_ports``) and a per-pixel raster.

        Returns:
            The scene's ``vessels`` rows (``vessels_found`` / ``vessels_flagged``
            are added to ``counts``).

        Raises:
            MinewatchError: The scene cannot be read or lacks B03/B08 for water.
            ValueError: The rasters cannot be used to look for vessels.
            OSError: The scene cannot be read.
        """
        from minewatch.vessels import find_vessels

        water = self._water(first, raster.grid)
        rows, _ = find_vessels(
            raster.probs,
            self._classes,
            raster.grid.transform,
            first.crs,
            scene_id=scene_id,
            acquired=first.acquired or None,
            model_version=self._version,
            water=water,
            valid=raster.count > 0,
            ports=self.ports,
        )
        counts["vessels_found"] += len(rows)
        counts["vessels_flagged"] += sum(r["flagged"] for r in rows)
        found.sites.extend(
            {
                "kind": "vessel",
                "wkb": row["geometry_source"],
                "area_m2": row["area_m2"],
                "score": row["score"],
                "flagged": True,
                "reason": row["reason"],
                "licence_id": None,
                "volume": None,
            }
            for row in rows
            if row["flagged"]
        )
        return list(rows)

    def _water(self, first: TileInfo, grid: Any) -> np.ndarray | None:
        """Water of the scene grid from NDWI of B03/B08; None when the model has a water class.

        Raises:
            SceneError: The scene cannot be read or lacks B03/B08.
        """
        from minewatch.errors import SceneError
        from minewatch.rasters import SceneReader
        from minewatch.scenes import group_files
        from minewatch.vessels import VesselConfig, ndwi_water
        from pipelines.options import list_inputs

        if any(c in self._classes for c in VesselConfig().water_classes):
            return None
        refs, _ = group_files(list_inputs(first.source))
        ref = next((r for r in refs if r.scene_id == first.scene_id), refs[0] if refs else None)
        if ref is None:
            raise SceneError(f"no scene at {first.source}")
        reader = SceneReader(ref, bands=["B03", "B08"]).open()
        try:
            assert reader.grid is not None
            if not reader.grid.transform.almost_equals(grid.transform):
                raise SceneError(
                    f"the B03/B08 grid {tuple(reader.grid.transform)[:6]} is not the grid the "
                    f"model saw {tuple(grid.transform)[:6]}"
                )
            data, valid = reader.read(0, 0, grid.height, grid.width)
        finally:
            reader.close()
        return np.asarray(ndwi_water(data[0], data[1]) & valid)

    def area(self, first: TileInfo, raster: SceneRaster) -> str:
        """The key of the area the scene's sites are linked in (:func:`area_key`)."""
        import shapely

        grid = raster.grid
        centre = shapely.box(*grid.transform @ (0, 0), *grid.transform @ (grid.width, grid.height))
        return area_key(first.crs, centre.centroid, self._config.area_cell_m)


def area_key(crs: str, centre: Any, cell: float) -> str:
    """``crs|column|row`` of the ``cell``-metre square that holds the point ``centre``."""
    return f"{crs}|{math.floor(centre.x / cell)}|{math.floor(centre.y / cell)}"


def _open_scene(source: str, stack: contextlib.ExitStack) -> Any:
    """The scene open for reading until ``stack`` closes; its path when it cannot be opened.

    Given the path, :func:`minewatch.volumes.measure_volume` tries again per site
    and gives each site the reason it could not read the scene.
    """
    import rasterio

    try:
        return stack.enter_context(rasterio.open(source))
    except Exception:
        return source


def _scene_sun(scene: Any) -> tuple[float, float] | None:
    """The sun angles of a scene's tags (an open scene, or a path); None when it has none.

    None also when the scene cannot be read: :func:`minewatch.volumes.measure_volume`
    then reads the tags itself and gives each site the reason.
    """
    import rasterio

    from minewatch.volumes import sun_from_tags

    if not isinstance(scene, str):
        return sun_from_tags(scene.tags())
    try:
        with rasterio.open(scene) as src:
            return sun_from_tags(src.tags())
    except Exception:
        return None
