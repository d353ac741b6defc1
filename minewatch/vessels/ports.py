"""Licensed ports and the licence check of berthed vessels.

:class:`PortRegistry` holds the licensed loading points; :func:`judge_vessels`
turns detections into ``vessels`` rows, flagging a berthed vessel whose shore
point lies within no port's radius; :func:`flagged_site_rows` makes ``sites``
rows of the flagged ones; :func:`find_vessels` runs detection and judging on one
scene.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from affine import Affine

from minewatch.errors import ConfigError, InputError
from minewatch.geo import reproject
from minewatch.vessels.detect import (
    Detection,
    VesselConfig,
    check_crs,
    detect_vessels,
    water_from_classes,
)

__all__ = ["Port", "PortRegistry", "find_vessels", "flagged_site_rows", "judge_vessels"]


@dataclass(frozen=True)
class Port:
    """A licensed loading point.

    Attributes:
        port_id: Identifier (``port_id``, else ``id``, else ``name`` field).
        name: Name, or ``None``.
        licence_id: Export licence, or ``None``.
        radius_m: How far from ``geometry`` a berth belongs to the port, or
            ``None`` for the configured default.
        geometry: Point, line or polygon (shapely), in the registry's CRS.
    """

    port_id: str
    name: str | None
    licence_id: str | None
    radius_m: float | None
    geometry: Any


class PortRegistry:
    """Licensed ports and jetties, reprojected once per scene CRS.

    Example::

        ports = PortRegistry.from_file("licensed_ports.geojson")
        near = ports.in_crs("EPSG:32618")

    Args:
        ports: The ports.
        crs: CRS of their geometries; default EPSG:4326 (GeoJSON's).
    """

    def __init__(self, ports: Sequence[Port], crs: str = "EPSG:4326") -> None:
        self.ports = list(ports)
        self.crs = crs
        self._by_crs: dict[str, list[Port]] = {}

    def __len__(self) -> int:
        return len(self.ports)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PortRegistry:
        """Read a registry from any vector file OGR reads (GeoJSON, GeoPackage, ...).

        Fields: ``port_id`` (else ``id``, else ``name``; else the feature
        number), ``name``, ``licence_id`` and ``radius_m`` (metres, > 0), all
        optional. GeoJSON without a ``crs`` member is EPSG:4326.

        Args:
            path: The file.

        Returns:
            The registry (possibly empty: then every berth is unlicensed).

        Raises:
            InputError: The file cannot be read, a feature has no geometry, or
                a ``radius_m`` is not a positive number.
        """
        import pyogrio
        import shapely

        try:
            meta, _, geometry, fields = pyogrio.raw.read(os.fspath(path))
        except Exception as exc:
            raise InputError(f"cannot read the licensed-ports file {path}: {exc}") from exc
        names = list(meta["fields"])

        def column(*keys: str) -> Any:
            key = next((k for k in keys if k in names), None)
            return fields[names.index(key)] if key else None

        ids, port_names = column("port_id", "id", "name"), column("name")
        licences, radii = column("licence_id"), column("radius_m")
        ports = []
        for i, wkb in enumerate(geometry):
            if wkb is None:
                raise InputError(f"{path}: feature {i} has no geometry; give each port a point")
            radius = None
            if radii is not None and radii[i] is not None:
                try:
                    radius = float(radii[i])
                except (TypeError, ValueError):
                    radius = math.nan
                if not radius > 0:
                    raise InputError(
                        f"{path}: feature {i} has radius_m={radii[i]}; "
                        "give a positive number of metres or leave it out"
                    )
            ports.append(
                Port(
                    port_id=str(ids[i]) if ids is not None and ids[i] is not None else str(i),
                    name=str(port_names[i]) if port_names is not None and port_names[i] else None,
                    licence_id=str(licences[i])
                    if licences is not None and licences[i] is not None
                    else None,
                    radius_m=radius,
                    geometry=shapely.make_valid(shapely.from_wkb(wkb)),
                )
            )
        return cls(ports, str(meta["crs"] or "EPSG:4326"))

    def in_crs(self, crs: str) -> list[Port]:
        """The ports with geometries in ``crs`` (cached per CRS)."""
        if crs not in self._by_crs:
            self._by_crs[crs] = [
                Port(
                    p.port_id,
                    p.name,
                    p.licence_id,
                    p.radius_m,
                    reproject(p.geometry, self.crs, crs),
                )
                for p in self.ports
            ]
        return self._by_crs[crs]


def _timestamp(when: str | datetime | None) -> datetime | None:
    if when is None or isinstance(when, datetime):
        return when
    try:
        ts = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"cannot read the acquisition time {when!r}: {exc}") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def judge_vessels(
    detections: Sequence[Detection],
    crs: str,
    *,
    scene_id: str,
    acquired: str | datetime | None,
    model_version: str,
    ports: PortRegistry | None = None,
    config: VesselConfig | None = None,
) -> list[dict[str, Any]]:
    """Rows of the ``vessels`` table, with the licence check.

    Without ``ports`` nothing is judged: ``licensed``, ``port_id`` and
    ``port_distance_m`` are null and nothing is flagged. With ports, the
    nearest port to the shore point (to the centre for a vessel with no shore
    in reach) is reported; a berthed vessel is licensed when its shore point is
    within some port's radius, else flagged with the reason.

    Args:
        detections: From :func:`detect_vessels`.
        crs: Scene CRS.
        scene_id: Scene identifier.
        acquired: Acquisition time (ISO 8601 string or datetime), or ``None``.
        model_version: Version of the model that made the raster.
        ports: Licensed ports, or ``None``.
        config: Radii; default :class:`VesselConfig`.

    Returns:
        One dict per detection with the columns of
        :func:`minewatch.tables.vessels_schema`.

    Raises:
        InputError: The CRS is not projected in metres, or ``acquired`` is not
            ISO 8601.
    """
    import shapely
    from pyproj import Transformer
    from shapely.geometry import Point

    config = config or VesselConfig()
    check_crs(crs)
    when = _timestamp(acquired)
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    near = ports.in_crs(crs) if ports is not None else []
    rows = []
    for d in detections:
        lon, lat = to_geo.transform(d.x, d.y)
        shore_lon = shore_lat = None
        if d.shore_x is not None and d.shore_y is not None:
            shore_lon, shore_lat = to_geo.transform(d.shore_x, d.shore_y)
        anchor = Point(d.shore_x, d.shore_y) if d.shore_x is not None else Point(d.x, d.y)
        port_id = port_distance = licensed = reason = None
        flagged = False
        if ports is not None:
            dists = [float(p.geometry.distance(anchor)) for p in near]
            if dists:
                i = int(np.argmin(dists))
                port_id, port_distance = near[i].port_id, dists[i]
            if d.berthed:
                licensed = any(
                    dist <= (p.radius_m if p.radius_m is not None else config.licence_radius_m)
                    for p, dist in zip(near, dists, strict=True)
                )
                if not licensed:
                    flagged = True
                    reason = (
                        f"berthed at an unlicensed shore point {port_distance / 1000:.1f} km "
                        f"from the nearest licensed port {port_id}"
                        if port_distance is not None
                        else "berthed at a shore point; the registry holds no licensed port"
                    )
        digest = hashlib.sha1(f"{scene_id}|{d.x:.1f}|{d.y:.1f}".encode()).hexdigest()[:12]
        rect_wgs84 = reproject(d.rectangle, crs, "EPSG:4326")
        rows.append(
            {
                "vessel_id": f"vessel-{digest}",
                "scene_id": scene_id,
                "acquired": when,
                "lon": float(lon),
                "lat": float(lat),
                "x": d.x,
                "y": d.y,
                "source_crs": crs,
                "geometry": bytes(shapely.to_wkb(rect_wgs84)),
                "geometry_source": bytes(shapely.to_wkb(d.rectangle)),
                "length_m": d.length_m,
                "width_m": d.width_m,
                "heading_deg": d.heading_deg,
                "area_m2": d.area_m2,
                "pixels": d.pixels,
                "score": d.score,
                "berthed": d.berthed,
                "shore_gap_m": d.gap_m,
                "shore_lon": None if shore_lon is None else float(shore_lon),
                "shore_lat": None if shore_lat is None else float(shore_lat),
                "shore_distance_m": d.shore_distance_m,
                "port_id": port_id,
                "port_distance_m": port_distance,
                "licensed": licensed,
                "flagged": flagged,
                "reason": reason,
                "model_version": model_version,
            }
        )
    return rows


def flagged_site_rows(vessel_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``sites`` rows (kind ``vessel``) for the flagged vessels, one per sighting.

    Vessels move, so a sighting is not linked across acquisitions: each row has
    ``acquisitions = 1``, ``first_seen = last_seen = acquired``, the hull
    rectangle as geometry and the vessel's id as ``site_id``.

    Args:
        vessel_rows: From :func:`judge_vessels`.

    Returns:
        Rows with the columns of :func:`minewatch.tables.sites_schema`.
    """
    return [
        {
            "site_id": r["vessel_id"],
            "kind": "vessel",
            "commodity": None,
            "geometry": r["geometry"],
            "source_crs": r["source_crs"],
            "geometry_source": r["geometry_source"],
            "area_m2": r["area_m2"],
            "score": r["score"],
            "first_seen": r["acquired"],
            "last_seen": r["acquired"],
            "acquisitions": 1,
            "flagged": True,
            "reason": r["reason"],
            "licence_id": None,
            "model_version": r["model_version"],
            "scene_ids": [r["scene_id"]],
            "status": "confirmed",
        }
        for r in vessel_rows
        if r["flagged"]
    ]


def find_vessels(
    probs: np.ndarray,
    classes: Sequence[str],
    transform: Affine,
    crs: str,
    *,
    scene_id: str,
    acquired: str | datetime | None,
    model_version: str,
    water: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    ports: PortRegistry | None = None,
    config: VesselConfig | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``vessels`` rows and flagged ``sites`` rows of one scene's class raster.

    Args:
        probs: Class probabilities ``[K, H, W]`` (e.g. from
            :func:`minewatch.sites.pixel_raster`).
        classes: Class names, index order; must hold ``config.vessel_class``.
        transform: Grid transform.
        crs: Scene CRS, projected in metres.
        scene_id: Scene identifier.
        acquired: Acquisition time, or ``None``.
        model_version: Model version.
        water: Boolean water mask ``[H, W]``; default the water classes of
            ``probs`` (:func:`water_from_classes`).
        valid: Boolean ``[H, W]``, False where no prediction exists.
        ports: Licensed ports, or ``None`` (nothing is judged).
        config: Thresholds; default :class:`VesselConfig`.

    Returns:
        ``(vessel_rows, flagged_site_rows)``.

    Raises:
        ConfigError: No vessel class, or no water mask and no water class.
        InputError: The CRS is not projected in metres.
    """
    config = config or VesselConfig()
    if config.vessel_class not in classes:
        raise ConfigError(
            f"the model has no {config.vessel_class!r} class ({list(classes)}); "
            "train with vessel truth (docs/vessels.md)"
        )
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"probs must be [K={len(classes)}, H, W], got {probs.shape}")
    if water is None:
        water = water_from_classes(probs, classes, config.water_classes)
    prob = probs[list(classes).index(config.vessel_class)]
    found = detect_vessels(prob, water, transform, crs, config, valid)
    rows = judge_vessels(
        found,
        crs,
        scene_id=scene_id,
        acquired=acquired,
        model_version=model_version,
        ports=ports,
        config=config,
    )
    return rows, flagged_site_rows(rows)
