"""Labels for tiles: vector polygons, a CSV for camera frames, or weak spectral rules.

* :class:`VectorLabels` reads GeoJSON / GeoPackage (anything OGR reads) polygons
  with a class attribute, in any CRS, repairs invalid geometry where it can and
  rejects what it cannot, and rasterises the polygons onto any window of any
  scene grid (reprojected once per CRS).
* :class:`FrameLabels` reads a CSV ``path,camera_id,timestamp,label`` for camera
  frames; ``path`` is relative to the CSV's folder.
* :func:`weak_label_mask` classifies pixels with spectral index rules (NDWI,
  NDVI, a bare-soil index) when no labels are given; such labels are marked weak.

:func:`tile_label` turns a per-pixel class mask into the tile's class and
class fractions.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minewatch.errors import LabelError
from minewatch.paths import is_remote
from minewatch.spec import UNKNOWN_CLASS

__all__ = [
    "BACKGROUND",
    "WEAK_CLASSES",
    "FrameLabel",
    "FrameLabels",
    "VectorLabels",
    "band_roles",
    "tile_label",
    "weak_label_mask",
]

log = logging.getLogger(__name__)

BACKGROUND = "background"

#: Classes of weak spectral labels, in index order.
WEAK_CLASSES = ("other", "vegetation", "water", "bare_soil")

# Band names -> spectral role, for Sentinel-2, Landsat-8/9 and plain names.
_ROLES = {
    "blue": ("B02", "B2", "blue"),
    "green": ("B03", "B3", "green"),
    "red": ("B04", "B4", "red"),
    "nir": ("B08", "B8A", "B5", "nir"),
    "swir1": ("B11", "B6", "swir1"),
}


# -- vector labels ---------------------------------------------------------------


@dataclass
class _Projected:
    geoms: Any  # numpy array of shapely geometries in the target CRS
    values: np.ndarray
    tree: Any


@dataclass
class VectorLabels:
    """Polygon labels with a class attribute, ready to rasterise onto scene grids.

    Attributes:
        path: The label file.
        classes: Class names in index order; index 0 is ``background``.
        crs: CRS of the file (WKT).
        wkb: Polygon geometries (WKB) in the file's CRS, largest first, so that
            smaller objects are drawn over larger ones.
        values: Class index per geometry.
        refs: ``path#index`` of each kept geometry (same order as ``wkb``).
        rejected: ``(feature, reason)`` for features that cannot be used.
        repaired: Number of invalid geometries repaired with ``make_valid``.
        sparse: When True, pixels outside every polygon are unknown rather
            than background.
    """

    path: str
    classes: tuple[str, ...]
    crs: str
    wkb: list[bytes]
    values: np.ndarray
    refs: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    repaired: int = 0
    sparse: bool = False
    _cache: dict[str, _Projected] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        path: str,
        field_name: str = "class",
        classes: Sequence[str] | None = None,
        sparse: bool = False,
    ) -> VectorLabels:
        """Read and check a polygon label file.

        Args:
            path: GeoJSON, GeoPackage or any OGR vector file.
            field_name: Attribute holding the class name.
            classes: Class names in index order (``background`` is put first if
                missing); by default ``background`` plus the sorted classes found.
            sparse: Pixels outside every polygon are unknown, not background.

        Returns:
            The labels; unusable features are listed in :attr:`rejected`.

        Raises:
            LabelError: The file cannot be read, has no CRS, lacks the class
                attribute, or holds no usable polygon.
        """
        import pyogrio
        import shapely

        try:
            meta, _, geometry, field_data = pyogrio.raw.read(path, columns=[field_name])
        except Exception as exc:
            raise LabelError(f"cannot read labels {path}: {exc}") from exc
        if field_name not in list(meta["fields"]):
            raise LabelError(
                f"labels {path} have no attribute {field_name!r} "
                f"(has: {', '.join(meta['fields']) or 'none'}); use --label-field"
            )
        if not meta.get("crs"):
            raise LabelError(f"labels {path} have no CRS; write them with one (e.g. EPSG:4326)")
        out_of_range = _range_check(str(meta["crs"]))
        names = [None if v is None else str(v) for v in field_data[0]]
        if classes:
            order = [BACKGROUND, *[c for c in classes if c != BACKGROUND]]
        else:
            order = [BACKGROUND, *sorted({n for n in names if n and n != BACKGROUND})]
        index = {c: i for i, c in enumerate(order)}
        rejected: list[tuple[str, str]] = []
        repaired = 0
        kept: list[tuple[Any, str, str]] = []
        for i, (raw, name) in enumerate(zip(geometry, names, strict=True)):
            ref = f"{path}#{i}"
            if not name:
                rejected.append((ref, f"empty {field_name!r}"))
                continue
            if name not in index:
                rejected.append((ref, f"class {name!r} is not in --classes"))
                continue
            geom = shapely.from_wkb(raw) if raw is not None else None
            if geom is None or geom.is_empty:
                rejected.append((ref, "empty geometry"))
                continue
            if not geom.is_valid:
                reason = shapely.is_valid_reason(geom)
                geom = shapely.make_valid(geom)
                polys = _polygonal(geom)
                if polys is None:
                    rejected.append((ref, f"invalid geometry that cannot be repaired: {reason}"))
                    continue
                repaired += 1
                log.info("repaired %s: %s", ref, reason)
                geom = polys
            elif _polygonal(geom) is None:
                rejected.append((ref, f"not a polygon ({geom.geom_type})"))
                continue
            problem = out_of_range(geom)
            if problem:
                rejected.append((ref, problem))
                continue
            kept.append((_polygonal(geom), name, ref))
        if not kept:
            first = "; ".join(f"{r}: {why}" for r, why in rejected[:3])
            raise LabelError(
                f"labels {path} hold no usable polygon ({len(rejected)} rejected"
                + (f", e.g. {first})" if first else ")")
            )
        if not classes:
            # Classes of usable polygons only: a class seen on rejected features alone
            # would be a class no tile can have.
            order = [BACKGROUND, *sorted({n for _, n, _ in kept if n != BACKGROUND})]
            index = {c: i for i, c in enumerate(order)}
        kept.sort(key=lambda gv: -gv[0].area)
        return cls(
            path=path,
            classes=tuple(order),
            crs=str(meta["crs"]),
            wkb=[shapely.to_wkb(g) for g, _, _ in kept],
            values=np.array([index[n] for _, n, _ in kept], np.uint8),
            refs=[r for _, _, r in kept],
            rejected=rejected,
            repaired=repaired,
            sparse=sparse,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Projected geometries and trees are rebuilt per worker, never pickled.
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = {}

    def _projected(self, crs: str) -> _Projected:
        if crs not in self._cache:
            import shapely
            from pyproj import CRS, Transformer

            geoms = shapely.from_wkb(np.array(self.wkb, dtype=object))
            src, dst = CRS.from_user_input(self.crs), CRS.from_user_input(crs)
            if not src.equals(dst):
                t = Transformer.from_crs(src, dst, always_xy=True)

                def reproject(xy: np.ndarray) -> np.ndarray:
                    x, y = t.transform(xy[:, 0], xy[:, 1])
                    return np.column_stack([x, y])

                geoms = shapely.transform(geoms, reproject)
            self._cache[crs] = _Projected(geoms, self.values, shapely.STRtree(geoms))
        return self._cache[crs]

    def overlapping(self, crs: str, transform: Any, shape: tuple[int, int]) -> list[str]:
        """Return the refs of the polygons that overlap a window (see :meth:`rasterize`)."""
        hits = self._hits(self._projected(crs), transform, shape)
        return [self.refs[i] for i in hits] if self.refs else []

    @staticmethod
    def _hits(proj: _Projected, transform: Any, shape: tuple[int, int]) -> np.ndarray:
        import shapely

        rows, cols = shape
        x0, y0 = transform @ (0, 0)
        x1, y1 = transform @ (cols, rows)
        box = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        return np.sort(proj.tree.query(box, predicate="intersects"))

    def rasterize(self, crs: str, transform: Any, shape: tuple[int, int]) -> np.ndarray:
        """Return the class index of each pixel of a window.

        Args:
            crs: CRS of the window's grid.
            transform: Affine transform of the window.
            shape: ``(rows, cols)``.

        Returns:
            uint8 ``[rows, cols]``: class index, 0 for background, 255 for unknown
            (outside every polygon when the labels are sparse).
        """
        from rasterio.features import rasterize

        fill = UNKNOWN_CLASS if self.sparse else 0
        proj = self._projected(crs)
        hits = self._hits(proj, transform, shape)
        if hits.size == 0:
            return np.full(shape, fill, np.uint8)
        shapes = [(proj.geoms[i], int(proj.values[i])) for i in hits]
        return rasterize(shapes, out_shape=shape, transform=transform, fill=fill, dtype="uint8")


def _range_check(crs_text: str) -> Any:
    """Return ``check(geom) -> reason | None`` for coordinates a CRS cannot hold.

    A geographic CRS holds longitudes within [-180, 360] and latitudes within
    [-90, 90]; metres written into a file that says EPSG:4326 fall outside and
    would otherwise label nothing, silently. Projected coordinates must
    reproject to finite longitudes and latitudes.
    """
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(crs_text)
    name = crs.name
    if crs.is_geographic:

        def geographic(geom: Any) -> str | None:
            x0, y0, x1, y1 = geom.bounds
            if x0 < -180 or x1 > 360 or y0 < -90 or y1 > 90:
                return (
                    f"coordinates outside the valid range of {name} "
                    f"(x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}): is the file's CRS right?"
                )
            return None

        return geographic
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def projected(geom: Any) -> str | None:
        bounds = to_ll.transform_bounds(*geom.bounds)
        if not all(math.isfinite(v) for v in bounds):
            return f"coordinates outside the valid range of {name}: is the file's CRS right?"
        return None

    return projected


def _polygonal(geom: Any) -> Any:
    """Return the polygonal part of ``geom`` or None if there is none."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        if parts:
            return shapely.union_all(parts)
    return None


# -- camera frame labels ---------------------------------------------------------


@dataclass(frozen=True)
class FrameLabel:
    """One row of a frames CSV."""

    path: str
    camera_id: str
    timestamp: str
    label: str


class FrameLabels:
    """Parse the frames CSV ``path,camera_id,timestamp,label``.

    ``path`` is relative to the CSV's folder (or absolute); ``camera_id``,
    ``timestamp`` and ``label`` may be empty.
    """

    REQUIRED = ("path",)
    COLUMNS = ("path", "camera_id", "timestamp", "label")

    @staticmethod
    def check_header(header: str, source: str) -> list[str]:
        """Return the column names, or raise LabelError naming the missing ones."""
        cols = [c.strip() for c in next(csv.reader([header]), [])]
        missing = [c for c in FrameLabels.REQUIRED if c not in cols]
        if missing:
            raise LabelError(
                f"frame labels {source} lack column(s) {missing}; expected a header "
                f"{','.join(FrameLabels.COLUMNS)}"
            )
        return cols

    @staticmethod
    def parse_line(line: str, columns: Sequence[str], base: str) -> FrameLabel:
        """Parse one data line.

        Args:
            line: A CSV line (no header).
            columns: The header's column names.
            base: Folder that relative paths are resolved against.

        Returns:
            The row, with ``path`` made absolute and normalised.

        Raises:
            LabelError: Wrong number of fields, or an empty path.
        """
        values = next(csv.reader(io.StringIO(line)), [])
        if len(values) != len(columns):
            raise LabelError(f"expected {len(columns)} fields, got {len(values)}: {line!r}")
        row = dict(zip(columns, (v.strip() for v in values), strict=True))
        if not row.get("path"):
            raise LabelError(f"empty path: {line!r}")
        return FrameLabel(
            path=resolve_path(base, row["path"]),
            camera_id=row.get("camera_id", ""),
            timestamp=row.get("timestamp", ""),
            label=row.get("label", ""),
        )


def resolve_path(base: str, path: str) -> str:
    """Join ``path`` to ``base`` unless it is absolute or a URL, and normalise it."""
    if is_remote(path) or path.startswith("/"):
        return path if is_remote(path) else posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(base, path))


# -- weak spectral labels -------------------------------------------------------


def band_roles(bands: Sequence[str]) -> dict[str, int]:
    """Map spectral roles (blue, green, red, nir, swir1) to channel indices."""
    roles: dict[str, int] = {}
    for role, names in _ROLES.items():
        for name in names:
            if name in bands:
                roles[role] = list(bands).index(name)
                break
    return roles


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def weak_label_mask(image: np.ndarray, bands: Sequence[str]) -> np.ndarray | None:
    """Classify pixels with spectral index rules.

    Rules, first match wins: water where NDWI = (green - nir) / (green + nir) > 0.1;
    vegetation where NDVI = (nir - red) / (nir + red) > 0.35; bare soil where the
    bare-soil index ((swir1 + red) - (nir + blue)) / ((swir1 + red) + (nir + blue))
    > 0.05 and NDVI < 0.2 (needs blue and swir1); other elsewhere. Classes are
    :data:`WEAK_CLASSES`.

    Args:
        image: ``[C, H, W]`` reflectance or digital numbers.
        bands: Band name per channel.

    Returns:
        uint8 ``[H, W]`` class indices, or None when the bands lack green, red or nir.
    """
    roles = band_roles(bands)
    if not {"green", "red", "nir"} <= roles.keys():
        return None
    x = image.astype(np.float32, copy=False)
    green, red, nir = x[roles["green"]], x[roles["red"]], x[roles["nir"]]
    ndvi = _index(nir, red)
    ndwi = _index(green, nir)
    out = np.zeros(ndvi.shape, np.uint8)
    if {"blue", "swir1"} <= roles.keys():
        bsi = _index(x[roles["swir1"]] + red, nir + x[roles["blue"]])
        out[(bsi > 0.05) & (ndvi < 0.2)] = WEAK_CLASSES.index("bare_soil")
    out[ndvi > 0.35] = WEAK_CLASSES.index("vegetation")
    out[ndwi > 0.1] = WEAK_CLASSES.index("water")
    return out


# -- from pixels to a tile label ------------------------------------------------


def tile_label(
    mask: np.ndarray, valid: np.ndarray, num_classes: int, min_fraction: float
) -> tuple[int, np.ndarray]:
    """Decide a tile's class from its per-pixel classes.

    The tile takes the non-background class (index >= 1) that covers the largest
    fraction of its valid pixels if that fraction reaches ``min_fraction``; else
    background (index 0) when at least half its valid pixels have a known class;
    else it is unlabelled (-1).

    Args:
        mask: uint8 ``[H, W]`` class per pixel, 255 unknown.
        valid: bool ``[H, W]``.
        num_classes: Length of the class list.
        min_fraction: Fraction of valid pixels a non-background class needs.

    Returns:
        The class index (-1 unlabelled) and float32 fractions per class.
    """
    n_valid = int(valid.sum())
    if n_valid == 0:
        return -1, np.zeros(num_classes, np.float32)
    counts = np.bincount(mask[valid], minlength=256)[:num_classes]
    fractions = (counts / n_valid).astype(np.float32)
    if num_classes > 1:
        best = 1 + int(np.argmax(fractions[1:]))
        if fractions[best] >= min_fraction and fractions[best] > 0:
            return best, fractions
    if fractions.sum() >= 0.5:
        return 0, fractions
    return -1, fractions
