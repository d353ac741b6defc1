"""Pictures people would rather look at than read: scene quicklooks and area plots."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.rasters import SceneReader
from minewatch.scenes import SceneRef

__all__ = [
    "LABELLED_SITES",
    "clear_sky",
    "plot_stockpile_series",
    "plot_stockpile_volumes",
    "scene_quicklook",
    "short_site",
    "stretch",
]

_TRUE_COLOUR = (("B04", "B03", "B02"), ("B4", "B3", "B2"), ("red", "green", "blue"))
_FLAGGED = "#e61919"
#: Outline colour per site kind (any other kind: the last).
_KIND_COLOURS = {
    "stockpile": "#ffd200",
    "mining_scar": "#ff8c00",
    "haul_road": "#00e5ff",
    "vessel": "#ff4dff",
    "": "#7cfc00",
}


def _rgb_bands(names: Sequence[str]) -> list[str]:
    for triple in _TRUE_COLOUR:
        if all(b in names for b in triple):
            return list(triple)
    return [names[0]] * 3 if len(names) < 3 else list(names[:3])


def clear_sky(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels that are not far brighter than the scene's typical ground (clouds, glare).

    A pixel is left out when its mean over the bands lies more than 6 robust standard
    deviations (1.4826 x the median absolute deviation) above the scene's median.
    """
    bright = data.astype(np.float32).mean(axis=0)
    values = bright[valid]
    if values.size == 0:
        return valid
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * 1.4826
    return valid & (bright <= med + 6 * max(mad, 1e-6))


def stretch(data: np.ndarray, valid: np.ndarray, gamma: float = 0.8) -> np.ndarray:
    """``[3, H, W]`` bands to bytes, stretched on the clear-sky pixels.

    Each band's 2nd-98th percentile of the clear-sky pixels (:func:`clear_sky`)
    maps to 0-255, then a gamma lifts the dark ground. Clouds then saturate white
    instead of setting the scale, which left the ground of a cloudy scene nearly black.
    """
    clear = clear_sky(data, valid)
    if not clear.any():
        clear = valid
    out = np.zeros(data.shape, np.uint8)
    for k, band in enumerate(data):
        values = band[clear]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, (2, 98))
        scaled = np.clip((band.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 1)
        out[k] = (scaled**gamma * 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def _scale_length(width_m: float) -> float:
    """A round length (1, 2 or 5 x 10^n m) of about a fifth of the picture's width."""
    target = width_m / 5
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def scene_quicklook(
    ref: SceneRef,
    sites: Sequence[tuple[Any, ...]],
    path: str,
    max_side: int = 1024,
    model_version: str = "",
) -> None:
    """Write a PNG of a scene in true colour with its sites, a legend, a scale bar and a title.

    The scene is read once at a resolution whose longest side is at most
    ``max_side`` pixels (GDAL averages the pixels), never at full resolution, and
    stretched per scene (:func:`stretch`). Sites are outlined in their kind's
    colour, flagged ones in red; the title gives the scene, its acquisition date
    and the model version.

    Args:
        ref: The scene.
        sites: ``(polygon in the scene CRS, flagged, kind)`` (``kind`` may be left out).
        path: PNG to write.
        max_side: Longest side of the picture.
        model_version: Shown in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

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
    rgb = stretch(data, valid)
    t = g.transform
    left, top = t.c, t.f
    right, bottom = left + t.a * g.width, top + t.e * g.height
    dpi = 100
    fig_w, fig_h = g.width / dpi + 0.2, g.height / dpi + 0.7  # inches: margins, a title band
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.1 / fig_w, 0.1 / fig_h, g.width / dpi / fig_w, g.height / dpi / fig_h))
    ax.imshow(np.moveaxis(rgb, 0, -1), extent=(left, right, bottom, top), interpolation="nearest")
    kinds_drawn: set[str] = set()
    any_flagged = False
    width = max(1.0, g.width / 700)
    for site in sites:
        geom, flagged = site[0], bool(site[1])
        kind = str(site[2]) if len(site) > 2 else ""
        if geom.is_empty:
            continue
        colour = _FLAGGED if flagged else _KIND_COLOURS.get(kind, _KIND_COLOURS[""])
        polygons = getattr(geom, "geoms", [geom])
        for poly in polygons:
            boundary = poly.exterior if hasattr(poly, "exterior") else poly
            xs, ys = boundary.xy
            ax.plot(xs, ys, color=colour, linewidth=width * (1.6 if flagged else 1.0))
        any_flagged |= flagged
        kinds_drawn.add(kind)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_axis_off()
    handles = [
        Line2D([], [], color=_KIND_COLOURS.get(k, _KIND_COLOURS[""]), lw=2, label=k or "site")
        for k in sorted(kinds_drawn)
    ]
    if any_flagged:
        handles.append(Line2D([], [], color=_FLAGGED, lw=2.5, label="flagged"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
    # scale bar, bottom left, in the scene's metres
    span = abs(right - left)
    if span > 0:
        length = _scale_length(span)
        x0, y0 = left + span * 0.04, bottom + abs(top - bottom) * 0.04
        bar_h = abs(top - bottom) * 0.008
        ax.add_patch(Rectangle((x0, y0), length, bar_h, color="white", ec="black", lw=0.5))
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
        ax.text(x0 + length / 2, y0 + bar_h * 2, label, color="white", ha="center",
                va="bottom", fontsize="small", fontweight="bold")  # fmt: skip
    when = ref.acquired[:10] if ref.acquired else "date unknown"
    title = f"{ref.scene_id}  ·  {when}"
    if model_version:
        title += f"  ·  model {model_version}"
    fig.text(0.5, 1 - 0.35 / fig_h, title, ha="center", va="center",
             fontsize="medium")  # fmt: skip
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


#: Most sites a plot names at the end of their line (the largest ones).
LABELLED_SITES = 12


def short_site(site_id: str) -> str:
    """``stockpile-3fa9c1d2e0`` as ``stockpile-3fa9``: enough to find it in the tables."""
    kind, _, digest = site_id.rpartition("-")
    return f"{kind}-{digest[:4]}" if kind and len(digest) > 4 else site_id


def _label_sites(ax: Any, lines: Sequence[tuple[str, Any, float, Any]]) -> int:
    """Write each of the largest sites' short id beside its last point; return how many."""
    dated = [item for item in lines if item[1] is not None and item[2] is not None]
    chosen = sorted(dated, key=lambda item: -item[2])[:LABELLED_SITES]
    for site_id, when, value, colour in chosen:
        ax.annotate(
            short_site(site_id), (when, value), xytext=(4, 2), textcoords="offset points",
            fontsize="x-small", color=colour,
        )  # fmt: skip
    return len(chosen)


def _save_over_time(fig: Any, ax: Any, ylabel: str, title: str, sites: int, path: str) -> None:
    """Label a per-site time plot, save and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("acquisition")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
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
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    ends = []
    for site_id, points in sorted(series.items()):
        points.sort(key=lambda p: (p[0] is None, p[0]))
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ends.append((site_id, points[-1][0], points[-1][1], line.get_color()))
    named = _label_sites(ax, ends)
    title = f"Stockpile footprint area over time ({len(series)} sites"
    title += f"; the {named} largest named)" if named < len(series) else ")"
    _save_over_time(fig, ax, "stockpile area (m²)", title, len(series), path)


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
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    drawn = 0
    ends = []
    for site_id, points in sorted(series.items()):
        points.sort(key=lambda p: (p[0] is None, p[0]))
        line = ax.errorbar(
            [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
            capsize=3, label=site_id,
        )  # fmt: skip
        colour = line.lines[0].get_color()
        ends.append((site_id, points[-1][0], points[-1][1], colour))
        for method, marker in _METHOD_MARKERS.items():
            chosen = [p for p in points if p[3] == method]
            if chosen:
                ax.plot([p[0] for p in chosen], [p[1] for p in chosen], marker, color=colour)
        drawn += len(points)
    if not drawn:
        ax.text(0.5, 0.5, "no stockpile volumes measured", ha="center", transform=ax.transAxes)
    _label_sites(ax, ends)
    title = "Stockpile volume over time (o DSM, ^ shadow; bars: 1 sigma)"
    _save_over_time(fig, ax, "stockpile volume (m³)", title, len(series), path)
    return drawn
