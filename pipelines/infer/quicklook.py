"""Pictures people would rather look at than read: scene quicklooks and area plots."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.rasters import SceneReader
from minewatch.scenes import SceneRef

__all__ = ["plot_stockpile_series", "plot_stockpile_volumes", "scene_quicklook"]

_TRUE_COLOUR = (("B04", "B03", "B02"), ("B4", "B3", "B2"), ("red", "green", "blue"))
_FLAGGED = (230, 25, 25)
_SITE = (255, 210, 0)


def _rgb_bands(names: Sequence[str]) -> list[str]:
    for triple in _TRUE_COLOUR:
        if all(b in names for b in triple):
            return list(triple)
    return [names[0]] * 3 if len(names) < 3 else list(names[:3])


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    values = band[valid]
    if values.size == 0:
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(values, (2, 98))
    scaled = (band.astype(np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def scene_quicklook(
    ref: SceneRef, sites: Sequence[tuple[Any, bool]], path: str, max_side: int = 1024
) -> None:
    """Write a true-colour PNG of a scene with sites outlined, flagged ones in red.

    The scene is read once at a resolution whose longest side is at most
    ``max_side`` pixels (GDAL averages the pixels), never at full resolution.

    Args:
        ref: The scene.
        sites: ``(polygon in the scene CRS, flagged)`` pairs.
        path: PNG to write.
        max_side: Longest side of the picture.
    """
    import rasterio
    from rasterio.features import rasterize

    with SceneReader(ref) as probe:
        assert probe.grid is not None
        names = probe.band_names
        grid = probe.grid
    factor = max(1.0, max(grid.width, grid.height) / max_side)
    resolution = abs(grid.transform.a) * factor
    with SceneReader(
        ref, bands=_rgb_bands(names), resolution=resolution, resampling="average"
    ) as reader:
        assert reader.grid is not None
        g = reader.grid
        data, valid = reader.read(0, 0, g.height, g.width)
    rgb = np.stack([_stretch(b, valid) for b in data])
    for flagged in (False, True):
        outlines = [geom.boundary for geom, f in sites if f == flagged and not geom.is_empty]
        if not outlines:
            continue
        mask = rasterize(
            outlines,
            out_shape=(g.height, g.width),
            transform=g.transform,
            all_touched=True,
            dtype="uint8",
        ).astype(bool)
        colour = _FLAGGED if flagged else _SITE
        for k in range(3):
            rgb[k][mask] = colour[k]
    with warnings.catch_warnings():
        # a picture has no georeference, and needs none
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="PNG",
            width=g.width,
            height=g.height,
            count=3,
            dtype="uint8",
            zlevel=3,  # a quicklook: writing fast matters more than the last bytes
        ) as dst:
            dst.write(rgb)


def _save_over_time(fig: Any, ax: Any, ylabel: str, title: str, sites: int, path: str) -> None:
    """Label a per-site time plot, add a legend when it stays readable, save and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("acquisition")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if 0 < sites <= 12:
        ax.legend(fontsize="small", ncol=math.ceil(sites / 6))
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_stockpile_series(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Plot stockpile area over time, one line per site, to a PNG.

    Args:
        rows: ``stockpile_series`` rows (``site_id``, ``acquired``, ``area_m2``).
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[Any, float]]] = defaultdict(list)
    for row in rows:
        series[row["site_id"]].append((row["acquired"], row["area_m2"]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for site_id, points in sorted(series.items()):
        points.sort(key=lambda p: (p[0] is None, p[0]))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=site_id)
    _save_over_time(
        fig, ax, "stockpile area (m²)", "Stockpile footprint area over time", len(series), path
    )


_METHOD_MARKERS = {"dsm": "o", "shadow": "^"}


def plot_stockpile_volumes(rows: Sequence[dict[str, Any]], path: str) -> int:
    """Plot stockpile volume over time, one line per site, to a PNG.

    Error bars are one standard uncertainty; circles are DSM volumes,
    triangles shadow volumes. Rows without a volume (``volume_method`` =
    ``none`` or null) are left out; a site with none at all is not drawn, and
    with no volume anywhere the picture says so.

    Args:
        rows: ``stockpile_series`` rows (``site_id``, ``acquired``,
            ``volume_m3``, ``volume_uncertainty_m3``, ``volume_method``).
        path: PNG to write.

    Returns:
        The number of points drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[Any, float, float, str]]] = defaultdict(list)
    for row in rows:
        volume = row.get("volume_m3")
        if volume is None or row.get("volume_method") in (None, "none"):
            continue
        sigma = row.get("volume_uncertainty_m3") or 0.0
        series[row["site_id"]].append((row["acquired"], volume, sigma, row["volume_method"]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    drawn = 0
    for site_id, points in sorted(series.items()):
        points.sort(key=lambda p: (p[0] is None, p[0]))
        line = ax.errorbar(
            [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
            capsize=3, label=site_id,
        )  # fmt: skip
        colour = line.lines[0].get_color()
        for method, marker in _METHOD_MARKERS.items():
            chosen = [p for p in points if p[3] == method]
            if chosen:
                ax.plot([p[0] for p in chosen], [p[1] for p in chosen], marker, color=colour)
        drawn += len(points)
    if not drawn:
        ax.text(0.5, 0.5, "no stockpile volumes measured", ha="center", transform=ax.transAxes)
    title = "Stockpile volume over time (o DSM, ^ shadow; bars: 1 sigma)"
    _save_over_time(fig, ax, "stockpile volume (m³)", title, len(series), path)
    return drawn
