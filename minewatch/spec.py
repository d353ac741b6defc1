"""The tile record: one place that defines what a tile is and how it is stored.

Every stage reads and writes tiles through this module. A tile is stored as a
``tf.train.Example`` with these features (``docs/tiles.md`` has the same table):

===================== ======= ===================================================
feature               type    meaning
===================== ======= ===================================================
``tile/id``           bytes   ``{scene_id}:{row_off}:{col_off}``, unique per job
``scene/id``          bytes   scene (or camera frame) id
``scene/kind``        bytes   ``scene`` (georeferenced raster) or ``frame``
``scene/acquired``    int64   acquisition time, Unix seconds UTC; -1 if unknown
``camera/id``         bytes   camera id for frames, empty for scenes
``image/raw``         bytes   pixels, row-major ``[H, W, C]``, little-endian
``image/dtype``       bytes   numpy dtype name of ``image/raw`` (``uint16``, ...)
``image/shape``       int64   ``[H, W, C]``
``image/bands``       bytes   C band names, in channel order
``mask/valid``        bytes   ``[H, W]`` uint8, 1 where the pixel is valid data
``valid/fraction``    float   mean of ``mask/valid``
``geo/crs``           bytes   CRS as ``EPSG:n`` or WKT; empty for frames
``geo/transform``     bytes   affine ``a, b, c, d, e, f`` as 6 little-endian float64
``geo/bounds``        bytes   ``left, bottom, right, top`` in the CRS, 4 float64
``geo/bounds_wgs84``  bytes   ``west, south, east, north`` in EPSG:4326, 4 float64
``window/row``        int64   pixel row offset of the tile in the scene grid
``window/col``        int64   pixel column offset of the tile in the scene grid
``label/class``       int64   class index into the job's class list; -1 unlabelled
``label/name``        bytes   class name; empty when unlabelled
``label/source``      bytes   ``vector``, ``csv``, ``weak`` or ``none``
``label/weak``        int64   1 when the label comes from spectral index rules
``label/fractions``   float   fraction of valid pixels per class (job class order)
``label/mask``        bytes   ``[H, W]`` uint8 class index per pixel, 255 unknown;
                              empty when the label has no pixel extent (csv, none)
===================== ======= ===================================================

Georeference is stored as float64 bytes because ``float_list`` is float32,
which cannot hold UTM coordinates to the centimetre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "CAMERA_ID",
    "FEATURES",
    "GEO_BOUNDS",
    "GEO_BOUNDS_WGS84",
    "GEO_CRS",
    "GEO_TRANSFORM",
    "IMAGE_BANDS",
    "IMAGE_DTYPE",
    "IMAGE_RAW",
    "IMAGE_SHAPE",
    "LABEL_CLASS",
    "LABEL_FRACTIONS",
    "LABEL_MASK",
    "LABEL_NAME",
    "LABEL_SOURCE",
    "LABEL_WEAK",
    "SCENE_ACQUIRED",
    "SCENE_ID",
    "SCENE_KIND",
    "TILE_ID",
    "UNKNOWN_CLASS",
    "VALID_FRACTION",
    "VALID_MASK",
    "WINDOW_COL",
    "WINDOW_ROW",
    "Tile",
    "decode_tiles",
    "encode_tiles",
]

#: Value of ``label/mask`` pixels whose class is unknown.
UNKNOWN_CLASS = 255

#: The names of a tile record's features; the tile job writes them, the trainer and
#: the graph job read them.
TILE_ID = "tile/id"
SCENE_ID = "scene/id"
SCENE_KIND = "scene/kind"
SCENE_ACQUIRED = "scene/acquired"
CAMERA_ID = "camera/id"
IMAGE_RAW = "image/raw"
IMAGE_DTYPE = "image/dtype"
IMAGE_SHAPE = "image/shape"
IMAGE_BANDS = "image/bands"
VALID_MASK = "mask/valid"
VALID_FRACTION = "valid/fraction"
GEO_CRS = "geo/crs"
GEO_TRANSFORM = "geo/transform"
GEO_BOUNDS = "geo/bounds"
GEO_BOUNDS_WGS84 = "geo/bounds_wgs84"
WINDOW_ROW = "window/row"
WINDOW_COL = "window/col"
LABEL_CLASS = "label/class"
LABEL_NAME = "label/name"
LABEL_SOURCE = "label/source"
LABEL_WEAK = "label/weak"
LABEL_FRACTIONS = "label/fractions"
LABEL_MASK = "label/mask"

#: Feature name -> tf.train.Feature kind (``bytes``, ``int64`` or ``float``).
FEATURES: dict[str, str] = {
    TILE_ID: "bytes",
    SCENE_ID: "bytes",
    SCENE_KIND: "bytes",
    SCENE_ACQUIRED: "int64",
    CAMERA_ID: "bytes",
    IMAGE_RAW: "bytes",
    IMAGE_DTYPE: "bytes",
    IMAGE_SHAPE: "int64",
    IMAGE_BANDS: "bytes",
    VALID_MASK: "bytes",
    VALID_FRACTION: "float",
    GEO_CRS: "bytes",
    GEO_TRANSFORM: "bytes",
    GEO_BOUNDS: "bytes",
    GEO_BOUNDS_WGS84: "bytes",
    WINDOW_ROW: "int64",
    WINDOW_COL: "int64",
    LABEL_CLASS: "int64",
    LABEL_NAME: "bytes",
    LABEL_SOURCE: "bytes",
    LABEL_WEAK: "int64",
    LABEL_FRACTIONS: "float",
    LABEL_MASK: "bytes",
}

_ARROW = {
    "bytes": pa.large_list(pa.large_binary()),
    "int64": pa.large_list(pa.int64()),
    "float": pa.large_list(pa.float32()),
}


@dataclass
class Tile:
    """One tile of a scene or camera frame, with its georeference and label.

    Attributes:
        scene_id: Id of the scene or frame the tile was cut from.
        kind: ``scene`` or ``frame``.
        row_off: Row of the tile's top-left pixel in the scene grid.
        col_off: Column of the tile's top-left pixel in the scene grid.
        image: Pixels, ``[H, W, C]``, the scene's dtype.
        valid: ``[H, W]`` bool, True where the pixel holds valid data.
        bands: Band names in channel order.
        crs: ``EPSG:n`` or WKT; empty for frames.
        transform: Affine coefficients ``a, b, c, d, e, f`` of the tile.
        bounds: ``left, bottom, right, top`` in ``crs``.
        bounds_wgs84: ``west, south, east, north``; NaN for frames.
        acquired: Acquisition time (UTC), if known.
        camera_id: Camera id for frames.
        label: Class index into the job's class list; -1 when unlabelled.
        label_name: Class name; empty when unlabelled.
        label_source: ``vector``, ``csv``, ``weak`` or ``none``.
        class_fractions: Fraction of valid pixels per class.
        label_mask: ``[H, W]`` uint8 class per pixel (255 unknown), or None.
    """

    scene_id: str
    kind: str
    row_off: int
    col_off: int
    image: np.ndarray
    valid: np.ndarray
    bands: tuple[str, ...]
    crs: str = ""
    transform: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    bounds: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    bounds_wgs84: tuple[float, ...] = (float("nan"),) * 4
    acquired: datetime | None = None
    camera_id: str = ""
    label: int = -1
    label_name: str = ""
    label_source: str = "none"
    class_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    label_mask: np.ndarray | None = None

    @property
    def tile_id(self) -> str:
        """``{scene_id}:{row_off}:{col_off}``."""
        return f"{self.scene_id}:{self.row_off}:{self.col_off}"

    @property
    def valid_fraction(self) -> float:
        """Fraction of valid pixels."""
        return float(self.valid.mean()) if self.valid.size else 0.0

    @property
    def weak(self) -> bool:
        """Whether the label comes from spectral index rules."""
        return self.label_source == "weak"

    def in_band_order(self, bands: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """The pixels with their channels in the order of ``bands``, and the bands it lacks.

        When it lacks any of ``bands`` the pixels come back as they are.
        """
        missing = [b for b in bands if b not in self.bands]
        if missing or tuple(bands) == tuple(self.bands):
            return self.image, missing
        return self.image[..., [self.bands.index(b) for b in bands]], []

    @property
    def acquired_unix(self) -> int:
        """Acquisition time as Unix seconds, -1 when unknown."""
        return int(self.acquired.timestamp()) if self.acquired else -1


def _f64(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def _row(tile: Tile) -> dict[str, list[Any]]:
    image = np.ascontiguousarray(tile.image)
    mask = (
        b""
        if tile.label_mask is None
        else np.ascontiguousarray(tile.label_mask, np.uint8).tobytes()
    )
    return {
        TILE_ID: [tile.tile_id.encode()],
        SCENE_ID: [tile.scene_id.encode()],
        SCENE_KIND: [tile.kind.encode()],
        SCENE_ACQUIRED: [tile.acquired_unix],
        CAMERA_ID: [tile.camera_id.encode()],
        IMAGE_RAW: [image.astype(image.dtype.newbyteorder("<"), copy=False).tobytes()],
        IMAGE_DTYPE: [image.dtype.name.encode()],
        IMAGE_SHAPE: list(image.shape),
        IMAGE_BANDS: [b.encode() for b in tile.bands],
        VALID_MASK: [np.ascontiguousarray(tile.valid, np.uint8).tobytes()],
        VALID_FRACTION: [tile.valid_fraction],
        GEO_CRS: [tile.crs.encode()],
        GEO_TRANSFORM: [_f64(tile.transform)],
        GEO_BOUNDS: [_f64(tile.bounds)],
        GEO_BOUNDS_WGS84: [_f64(tile.bounds_wgs84)],
        WINDOW_ROW: [tile.row_off],
        WINDOW_COL: [tile.col_off],
        LABEL_CLASS: [tile.label],
        LABEL_NAME: [tile.label_name.encode()],
        LABEL_SOURCE: [tile.label_source.encode()],
        LABEL_WEAK: [int(tile.weak)],
        LABEL_FRACTIONS: [float(x) for x in tile.class_fractions],
        LABEL_MASK: [mask],
    }


def encode_tiles(tiles: Sequence[Tile]) -> list[bytes]:
    """Serialize tiles to ``tf.train.Example`` bytes, in order.

    Uses tfx-bsl's C++ Arrow-to-Example encoder, so TensorFlow is not imported.

    Args:
        tiles: Tiles to encode.

    Returns:
        One serialized ``tf.train.Example`` per tile.
    """
    from tfx_bsl.coders import example_coder

    if not tiles:
        return []
    rows = [_row(t) for t in tiles]
    arrays = [pa.array([r[name] for r in rows], _ARROW[kind]) for name, kind in FEATURES.items()]
    batch = pa.RecordBatch.from_arrays(arrays, list(FEATURES))
    encoded: list[bytes] = example_coder.RecordBatchToExamplesEncoder().encode(batch)
    return encoded


def _f64_tuple(raw: bytes) -> tuple[float, ...]:
    return tuple(float(x) for x in np.frombuffer(raw, dtype="<f8"))


def decode_tiles(records: Sequence[bytes]) -> list[Tile]:
    """Parse serialized tile Examples back into :class:`Tile` objects.

    Args:
        records: Serialized ``tf.train.Example`` bytes written by :func:`encode_tiles`.

    Returns:
        The tiles, in order.

    Raises:
        ValueError: A record lacks a feature of the spec or its image bytes do not
            match its declared shape and dtype.
    """
    from tfx_bsl.coders import example_coder

    if not records:
        return []
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(list(records))
    missing = set(FEATURES) - set(batch.schema.names)
    if missing:
        raise ValueError(f"not a minewatch tile record: missing features {sorted(missing)}")
    cols = {name: batch.column(name).to_pylist() for name in FEATURES}
    tiles = []
    for i in range(batch.num_rows):
        v = {name: cols[name][i] or [] for name in FEATURES}
        h, w, c = v[IMAGE_SHAPE]
        dtype = np.dtype(v[IMAGE_DTYPE][0].decode()).newbyteorder("<")
        raw = v[IMAGE_RAW][0]
        if len(raw) != h * w * c * dtype.itemsize:
            raise ValueError(f"tile {v['tile/id'][0]!r}: image bytes do not match shape/dtype")
        mask_raw = v[LABEL_MASK][0]
        acquired = v[SCENE_ACQUIRED][0]
        tiles.append(
            Tile(
                scene_id=v[SCENE_ID][0].decode(),
                kind=v[SCENE_KIND][0].decode(),
                row_off=v[WINDOW_ROW][0],
                col_off=v[WINDOW_COL][0],
                image=np.frombuffer(raw, dtype).reshape(h, w, c).astype(dtype.newbyteorder("=")),
                valid=np.frombuffer(v[VALID_MASK][0], np.uint8).reshape(h, w).astype(bool),
                bands=tuple(b.decode() for b in v[IMAGE_BANDS]),
                crs=v[GEO_CRS][0].decode(),
                transform=_f64_tuple(v[GEO_TRANSFORM][0]),
                bounds=_f64_tuple(v[GEO_BOUNDS][0]),
                bounds_wgs84=_f64_tuple(v[GEO_BOUNDS_WGS84][0]),
                acquired=datetime.fromtimestamp(acquired, UTC) if acquired >= 0 else None,
                camera_id=v[CAMERA_ID][0].decode(),
                label=v[LABEL_CLASS][0],
                label_name=v[LABEL_NAME][0].decode(),
                label_source=v[LABEL_SOURCE][0].decode(),
                class_fractions=np.asarray(v[LABEL_FRACTIONS], np.float32),
                label_mask=np.frombuffer(mask_raw, np.uint8).reshape(h, w) if mask_raw else None,
            )
        )
    return tiles
