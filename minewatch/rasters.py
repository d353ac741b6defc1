"""Windowed reading of scenes onto one pixel grid, and the tiling geometry.

:class:`SceneReader` opens a scene's files (header only), checks them, and reads
any rectangle of the scene grid: every selected band resampled onto the grid
of the finest band (or a chosen resolution), plus a validity mask that is False
for nodata, non-finite values, pixels outside a band's extent, padding, and
cloud pixels flagged by a quality band. Nothing ever reads a whole scene.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window, from_bounds

from minewatch.errors import SceneError
from minewatch.paths import is_remote
from minewatch.scenes import DEFAULT_MAX_PIXELS, SceneRef, parse_time

__all__ = [
    "EDGE_MODES",
    "Block",
    "CloudMask",
    "Grid",
    "SceneReader",
    "plan_blocks",
    "tile_starts",
]

log = logging.getLogger(__name__)

EDGE_MODES = ("shift", "pad", "drop")


_FRAME_BANDS = {1: ("gray",), 2: ("gray", "alpha"), 3: ("red", "green", "blue")}
_FRAME_BANDS[4] = (*_FRAME_BANDS[3], "alpha")


@dataclass(frozen=True)
class CloudMask:
    """Pixels to treat as invalid according to a quality / classification band.

    Attributes:
        band: Name of the band that holds the flags (read with nearest resampling,
            whether or not it is among the tile bands).
        values: Class values that are invalid (e.g. Sentinel-2 SCL 3, 8, 9, 10).
        bits: Bit positions that mark invalid pixels when set (e.g. 4 for cloud
            in Landsat-8 Collection-1 BQA).
    """

    band: str
    values: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()

    def invalid(self, flags: np.ndarray) -> np.ndarray:
        """Return True where ``flags`` marks a pixel invalid."""
        flags = flags.astype(np.int64, copy=False)
        out = np.isin(flags, self.values) if self.values else np.zeros(flags.shape, bool)
        for bit in self.bits:
            out |= (flags >> bit) & 1 == 1
        return out


@dataclass(frozen=True)
class Grid:
    """The pixel grid tiles are cut from.

    Attributes:
        crs: ``EPSG:n`` or WKT; empty for camera frames.
        transform: Affine transform of pixel (0, 0).
        width: Columns.
        height: Rows.
    """

    crs: str
    transform: Affine
    width: int
    height: int

    def window_transform(self, row: int, col: int) -> Affine:
        """Return the transform of the window whose top-left pixel is (row, col)."""
        return self.transform @ Affine.translation(col, row)

    def window_bounds(self, row: int, col: int, height: int, width: int) -> tuple[float, ...]:
        """Return ``left, bottom, right, top`` of a window."""
        t = self.window_transform(row, col)
        xs = (t.c, t.c + t.a * width)
        ys = (t.f, t.f + t.e * height)
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Block:
    """A rectangle of the grid holding whole tiles; the unit a worker reads at once.

    Attributes:
        row_starts: Top rows of the tiles in the block.
        col_starts: Left columns of the tiles in the block.
        tile: Tile size in pixels.
    """

    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    tile: int

    @property
    def row(self) -> int:
        """Top row of the block."""
        return self.row_starts[0]

    @property
    def col(self) -> int:
        """Left column of the block."""
        return self.col_starts[0]

    @property
    def height(self) -> int:
        """Rows spanned by the block's tiles."""
        return self.row_starts[-1] + self.tile - self.row_starts[0]

    @property
    def width(self) -> int:
        """Columns spanned by the block's tiles."""
        return self.col_starts[-1] + self.tile - self.col_starts[0]

    @property
    def num_tiles(self) -> int:
        """Tiles in the block."""
        return len(self.row_starts) * len(self.col_starts)


def tile_starts(length: int, tile: int, stride: int, edge: str = "shift") -> list[int]:
    """Offsets of tiles along one axis.

    Tiles start every ``stride`` pixels. Where the last regular tile stops short
    of the edge, ``edge`` decides: ``shift`` adds a tile flush with the edge
    (more overlap, no padding), ``pad`` adds one that runs past the edge (its
    outside pixels are invalid), ``drop`` leaves the remainder uncovered. An axis
    shorter than a tile gets one padded tile unless ``edge`` is ``drop``.

    Args:
        length: Pixels along the axis.
        tile: Tile size.
        stride: Step between tile starts.
        edge: ``shift``, ``pad`` or ``drop``.

    Returns:
        Sorted tile offsets.

    Raises:
        ValueError: Non-positive sizes or an unknown edge mode.
    """
    if tile <= 0 or stride <= 0 or length < 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}, not {edge!r}")
    if length < tile:
        return [0] if edge != "drop" and length > 0 else []
    starts = list(range(0, length - tile + 1, stride))
    end = starts[-1] + tile
    if end < length:
        if edge == "shift":
            starts.append(length - tile)
        elif edge == "pad" and starts[-1] + stride < length:
            starts.append(starts[-1] + stride)
    return starts


def plan_blocks(
    height: int, width: int, tile: int, stride: int, edge: str = "shift", block_tiles: int = 8
) -> Iterator[Block]:
    """Group the tiles of a grid into blocks of at most ``block_tiles`` squared tiles.

    Args:
        height: Grid rows.
        width: Grid columns.
        tile: Tile size.
        stride: Step between tiles.
        edge: Edge mode, see :func:`tile_starts`.
        block_tiles: Tiles per block side.

    Yields:
        Blocks, row-major.
    """
    rows = tile_starts(height, tile, stride, edge)
    cols = tile_starts(width, tile, stride, edge)
    for i in range(0, len(rows), block_tiles):
        for j in range(0, len(cols), block_tiles):
            yield Block(tuple(rows[i : i + block_tiles]), tuple(cols[j : j + block_tiles]), tile)


@dataclass
class _Band:
    dataset: Any
    index: int
    name: str
    nodata: float | None
    same_grid: bool
    # Rows/cols of the scene grid whose pixel centres fall inside this band's extent.
    cover: tuple[int, int, int, int]
    use_mask: bool


def _crs_string(crs: Any) -> str:
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


class SceneReader:
    """Read rectangles of a scene's common grid, band-stacked and masked.

    Example:
        >>> reader = SceneReader(ref, bands=["B02", "B03", "B04", "B08"])  # doctest: +SKIP
        >>> reader.open()  # checks the headers, raises SceneError  # doctest: +SKIP
        >>> data, valid = reader.read(0, 0, 256, 256)  # [C, 256, 256], [256, 256]  # doctest: +SKIP

    Args:
        ref: The scene or frame.
        bands: Band names to stack, in order; all bands when None. Ignored for frames.
        resolution: Pixel size of the grid in CRS units; the finest band's when None.
        resampling: Resampling for bands not on the grid (rasterio name).
        nodata: Value that marks invalid pixels, overriding the files' nodata.
        cloud: Optional quality-band mask.
        max_pixels: Refuse scenes whose grid declares more pixels than this.
    """

    def __init__(
        self,
        ref: SceneRef,
        bands: Sequence[str] | None = None,
        resolution: float | None = None,
        resampling: str = "bilinear",
        nodata: float | None = None,
        cloud: CloudMask | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.ref = ref
        self._wanted = tuple(bands) if bands else None
        self._resolution = resolution
        self._resampling = Resampling[resampling]
        self._nodata = nodata
        self._cloud = cloud
        self._max_pixels = max_pixels
        self._datasets: list[Any] = []
        self._bands: list[_Band] = []
        self._cloud_band: _Band | None = None
        self.grid: Grid | None = None
        self.band_names: tuple[str, ...] = ()
        self.dtype: np.dtype[Any] = np.dtype("uint8")
        self.acquired = ref.acquired_time

    # -- opening and checking -------------------------------------------------

    def _open(self, path: str) -> Any:
        if not is_remote(path):
            try:
                size = os.path.getsize(path)
            except OSError as exc:
                raise SceneError(f"cannot read {path}: {exc.strerror}") from exc
            if size == 0:
                raise SceneError(f"empty file (0 bytes): {path}")
        try:
            ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise SceneError(f"not a readable raster: {path}: {exc}") from exc
        self._datasets.append(ds)
        return ds

    def _check_header(self, ds: Any) -> None:
        path = ds.name
        if ds.width * ds.height > self._max_pixels:
            raise SceneError(
                f"declared size {ds.width}x{ds.height} px exceeds the limit of "
                f"{self._max_pixels} px (--max-scene-pixels): {path}"
            )
        if self.ref.kind == "scene":
            if ds.crs is None:
                raise SceneError(f"no CRS: a scene must be georeferenced: {path}")
            t = ds.transform
            if t.b != 0 or t.d != 0:
                raise SceneError(f"rotated or sheared transform is not supported: {path}")
        if ds.driver == "GTiff" and not is_remote(path):
            _check_not_truncated(ds)
        if ds.driver in _END_MARKERS and not is_remote(path):
            _check_end_marker(path, ds.driver)

    def open(self) -> SceneReader:
        """Open and check the files; set :attr:`grid`, :attr:`band_names` and :attr:`dtype`.

        Returns:
            self.

        Raises:
            SceneError: The scene cannot be tiled; the message says why.
        """
        try:
            self._open_checked()
        except Exception:
            self.close()
            raise
        return self

    def _open_checked(self) -> None:
        available: dict[str, tuple[Any, int]] = {}
        if self.ref.band_names:
            for name, path in zip(self.ref.band_names, self.ref.files, strict=True):
                ds = self._open(path)
                self._check_header(ds)
                available[name] = (ds, 1)
        else:
            ds = self._open(self.ref.files[0])
            self._check_header(ds)
            for i, name in enumerate(_band_names(ds, self.ref.kind), start=1):
                available[name] = (ds, i)
            if self.acquired is None:
                tag = ds.tags().get("TIFFTAG_DATETIME", "")
                self.acquired = parse_time(tag) if tag else None
        if self.ref.kind == "frame":
            wanted = tuple(n for n in available if n != "alpha")
        else:
            wanted = self._wanted or tuple(available)
        missing = [b for b in wanted if b not in available]
        if missing:
            raise SceneError(
                f"missing band(s) {', '.join(missing)} (has: {', '.join(available)}): "
                f"{self.ref.source}"
            )
        if self._cloud and self._cloud.band not in available:
            raise SceneError(
                f"missing cloud-mask band {self._cloud.band} (has: {', '.join(available)}): "
                f"{self.ref.source}"
            )
        chosen = [available[b] for b in wanted]
        crss = {ds.crs for ds, _ in chosen}
        if len(crss) > 1:
            raise SceneError(f"bands are in different CRSs ({len(crss)}): {self.ref.source}")
        self.grid = self._make_grid([ds for ds, _ in chosen])
        self._bands = [self._band(ds, i, n) for n, (ds, i) in zip(wanted, chosen, strict=True)]
        if self._cloud:
            ds, i = available[self._cloud.band]
            self._cloud_band = self._band(ds, i, self._cloud.band)
        self.band_names = tuple(wanted)
        self.dtype = np.result_type(*[ds.dtypes[i - 1] for ds, i in chosen])
        if "alpha" in available and self.ref.kind == "frame":
            ds, i = available["alpha"]
            self._alpha: _Band | None = self._band(ds, i, "alpha")
        else:
            self._alpha = None

    def _make_grid(self, datasets: Sequence[Any]) -> Grid:
        finest = min(datasets, key=lambda d: abs(d.transform.a))
        if self._resolution is None:
            return Grid(_crs_string(finest.crs), finest.transform, finest.width, finest.height)
        left = min(d.bounds.left for d in datasets)
        top = max(d.bounds.top for d in datasets)
        right = max(d.bounds.right for d in datasets)
        bottom = min(d.bounds.bottom for d in datasets)
        res = self._resolution
        width = max(1, math.ceil((right - left) / res - 1e-9))
        height = max(1, math.ceil((top - bottom) / res - 1e-9))
        if width * height > self._max_pixels:
            raise SceneError(f"--resolution {res} makes a {width}x{height} px grid: too large")
        transform = Affine(res, 0, left, 0, -res, top)
        return Grid(_crs_string(finest.crs), transform, width, height)

    def _band(self, ds: Any, index: int, name: str) -> _Band:
        assert self.grid is not None
        g = self.grid
        same = ds.transform.almost_equals(g.transform) and (ds.width, ds.height) == (
            g.width,
            g.height,
        )
        if same:
            cover = (0, g.height, 0, g.width)
        else:
            inv = ~g.transform
            left, bottom, right, top = ds.bounds
            c0, r0 = inv @ (left, top)
            c1, r1 = inv @ (right, bottom)
            # Pixels whose centres fall inside the band's extent.
            rows = sorted((r0, r1))
            cols = sorted((c0, c1))
            cover = (
                max(0, math.ceil(rows[0] - 0.5)),
                min(g.height, math.floor(rows[1] - 0.5) + 1),
                max(0, math.ceil(cols[0] - 0.5)),
                min(g.width, math.floor(cols[1] - 0.5) + 1),
            )
        flags = ds.mask_flag_enums[index - 1]
        use_mask = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        nodata = self._nodata if self._nodata is not None else ds.nodatavals[index - 1]
        return _Band(ds, index, name, nodata, same, cover, use_mask)

    # -- reading ---------------------------------------------------------------

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a rectangle of the grid; parts outside the grid come back invalid.

        Args:
            row: Top row in the grid (may run past the bottom edge).
            col: Left column in the grid (may run past the right edge).
            height: Rows to read.
            width: Columns to read.

        Returns:
            ``data`` ``[C, height, width]`` in :attr:`dtype` (0 where invalid) and
            ``valid`` ``[height, width]`` bool.
        """
        if self.grid is None:
            raise RuntimeError("SceneReader.open() must be called before read()")
        data = np.zeros((len(self._bands), height, width), self.dtype)
        valid = np.ones((height, width), bool)
        for k, band in enumerate(self._bands):
            ok = self._read_band(band, row, col, height, width, data[k], self._resampling)
            valid &= ok
        for extra in (self._cloud_band, self._alpha):
            if extra is None:
                continue
            flags = np.zeros((height, width), extra.dataset.dtypes[extra.index - 1])
            ok = self._read_band(extra, row, col, height, width, flags, Resampling.nearest)
            if extra.name == "alpha":
                valid &= ok & (flags > 0)
            else:
                assert self._cloud is not None
                valid &= ~(ok & self._cloud.invalid(flags))
        data[:, ~valid] = 0
        return data, valid

    def _read_band(
        self,
        band: _Band,
        row: int,
        col: int,
        height: int,
        width: int,
        out: np.ndarray,
        resampling: Resampling,
    ) -> np.ndarray:
        """Read one band into ``out``; return its validity."""
        assert self.grid is not None
        ok = np.zeros((height, width), bool)
        r0, r1, c0, c1 = band.cover
        r0, r1 = max(r0, row), min(r1, row + height)
        c0, c1 = max(c0, col), min(c1, col + width)
        if r0 >= r1 or c0 >= c1:
            return ok
        h, w = r1 - r0, c1 - c0
        if band.same_grid:
            window = Window(c0, r0, w, h)
            kwargs: dict[str, Any] = {}
        else:
            bounds = self.grid.window_bounds(r0, c0, h, w)
            window = from_bounds(*bounds, transform=band.dataset.transform)
            kwargs = {"out_shape": (h, w), "resampling": resampling}
        sub = band.dataset.read(band.index, window=window, **kwargs)
        dst = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        out[dst] = sub
        good = np.ones((h, w), bool)
        if band.nodata is not None and not (
            isinstance(band.nodata, float) and math.isnan(band.nodata)
        ):
            good &= sub != band.nodata
        if sub.dtype.kind == "f":
            good &= np.isfinite(sub)
        if band.use_mask:
            mask = band.dataset.read_masks(band.index, window=window, **kwargs)
            good &= mask > 0
        ok[dst] = good
        return ok

    def close(self) -> None:
        """Close every file this reader opened."""
        for ds in self._datasets:
            ds.close()
        self._datasets.clear()

    def __enter__(self) -> SceneReader:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _band_names(ds: Any, kind: str) -> tuple[str, ...]:
    if kind == "frame":
        return _FRAME_BANDS.get(ds.count, tuple(f"b{i}" for i in range(1, ds.count + 1)))
    names = tuple(ds.descriptions)
    if all(names) and len(set(names)) == len(names):
        return tuple(str(n) for n in names)
    return tuple(f"b{i}" for i in range(1, ds.count + 1))


#: Bytes a complete PNG / JPEG file ends with (the IEND chunk, the EOI marker).
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


def _check_end_marker(path: str, driver: str) -> None:
    """Refuse a PNG or JPEG that stops before its end marker.

    GDAL decodes a cut PNG without raising: the missing rows come back as
    whatever the decoder had, so a frame cut in transfer would be labelled.
    Trailing bytes after the marker (some cameras pad files) are allowed.
    """
    marker = _END_MARKERS[driver]
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read()
    if marker not in tail:
        raise SceneError(f"truncated file: no {driver} end marker: {path}")


def _check_not_truncated(ds: Any) -> None:
    """Refuse a GeoTIFF whose last data block lies past the end of the file."""
    size = os.path.getsize(ds.name)
    bh, bw = ds.block_shapes[0]
    last_row = (ds.height - 1) // bh
    last_col = (ds.width - 1) // bw
    bands = range(1, ds.count + 1) if ds.interleaving and ds.interleaving.name == "BAND" else [1]
    for b in bands:
        offset = ds.get_tag_item(f"BLOCK_OFFSET_{last_col}_{last_row}", "TIFF", bidx=b)
        nbytes = ds.get_tag_item(f"BLOCK_SIZE_{last_col}_{last_row}", "TIFF", bidx=b)
        if offset and nbytes and int(offset) + int(nbytes) > size:
            raise SceneError(
                f"truncated file: band {b}'s last block ends at byte "
                f"{int(offset) + int(nbytes)} but the file has {size} bytes: {ds.name}"
            )
