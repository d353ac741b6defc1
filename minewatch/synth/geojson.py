"""Truth files: label rasters to map polygons, written as GeoJSON in the scene CRS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from pyproj import CRS as ProjCRS
from shapely import affinity
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

__all__ = ["label_polygons", "pixel_to_map", "write_geojson"]


def _crs_member(crs: rasterio.crs.CRS) -> dict[str, Any] | None:
    auth = ProjCRS.from_user_input(crs.to_wkt()).to_authority()
    if auth is None:
        return None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{auth[0]}::{auth[1]}"}}


def _rounded(geom: BaseGeometry) -> dict[str, Any]:
    def fix(obj: Any) -> Any:
        if isinstance(obj, float):
            return round(obj, 3)
        if isinstance(obj, list | tuple):
            return [fix(o) for o in obj]
        return obj

    gj = mapping(geom)
    return {"type": gj["type"], "coordinates": fix(gj["coordinates"])}


def write_geojson(
    path: Path, features: list[tuple[BaseGeometry, dict[str, Any]]], crs: rasterio.crs.CRS
) -> None:
    """Write a FeatureCollection in the scene CRS (GDAL's named-CRS member).

    Args:
        path: Output file.
        features: ``(geometry, properties)`` pairs.
        crs: Scene CRS, recorded as ``urn:ogc:def:crs:EPSG::<code>``.
    """
    doc: dict[str, Any] = {"type": "FeatureCollection"}
    member = _crs_member(crs)
    if member is not None:
        doc["crs"] = member
    doc["features"] = [
        {"type": "Feature", "properties": props, "geometry": _rounded(geom)}
        for geom, props in features
    ]
    path.write_text(json.dumps(doc, indent=1) + "\n")


def label_polygons(labels: np.ndarray, transform: Affine) -> dict[int, BaseGeometry]:
    """The outline of each non-zero label's pixels (4-connected), in the CRS of ``transform``."""
    parts: dict[int, list[BaseGeometry]] = {}
    for geom, value in rasterio.features.shapes(
        labels, mask=labels > 0, transform=transform, connectivity=4
    ):
        parts.setdefault(int(value), []).append(shape(geom))
    return {k: unary_union(v) if len(v) > 1 else v[0] for k, v in parts.items()}


def pixel_to_map(geom: BaseGeometry, transform: Affine) -> BaseGeometry:
    """``geom`` from crop pixel coordinates (column, row) to the scene CRS of ``transform``."""
    return affinity.affine_transform(
        geom, [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    )
