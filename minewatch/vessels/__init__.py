"""Vessels from a per-pixel class raster: footprints, berths, licences, scores.

Issue 11. Ships of 60-300 m are 6-30 Sentinel-2 pixels long, too small for tile
classes but plain in a per-pixel ``vessel`` class. For one scene this package
turns that class into rows of the ``vessels`` table
(:func:`minewatch.tables.vessels_schema`) and flagged ``sites`` rows:

1. **Footprints** (:func:`detect_vessels`): 8-connected components of pixels
   whose vessel probability reaches ``grow_threshold`` (0.25) and that hold at
   least one pixel at ``threshold`` (0.5), hysteresis thresholding that keeps
   a barge one or two pixels wide in one piece; components under
   ``min_pixels`` are dropped (boats under about 3 pixels are not resolved).
   The minimum rotated rectangle of a component's pixel outline gives the
   centre, the length (long side), the width and the heading (direction of the
   long side, degrees from north, clockwise, 0-180: a footprint does not tell
   bow from stern).
2. **Shore** (same function): water is the water mask (a ``water`` class or
   NDWI, :func:`ndwi_water`) joined with the vessel pixels themselves (a hull
   is on water, and its NDWI is negative), with enclosed non-water specks under
   ``max_island_m2`` (the mixed pixels around a hull) filled in; land is the
   rest. Within ``shore_search_m`` of each vessel a distance transform gives
   the **gap**: the water between the hull and land, ``max(0, d - pixel)`` for
   the least centre-to-centre distance ``d`` from a hull pixel to a land pixel.
   **Rule: a vessel is berthed when the gap is at most** ``berth_gap_m``
   **(20 m, two pixels at 10 m); otherwise it is moving** (or at anchor: the
   footprint alone cannot tell). The nearest shore point is the point of the
   land pixel nearest the hull centre that is closest to that centre.
3. **Licences** (:class:`PortRegistry`, :func:`judge_vessels`): a berthed
   vessel is licensed when its shore point lies within a licensed port's
   ``radius_m`` (default ``licence_radius_m``, 500 m) of the port's geometry
   (point, line or polygon, any CRS, reprojected); a berthed vessel that is
   not is flagged, with the reason.
4. **Scores** (:func:`match_vessels`): detections against known vessels, one
   to one within a centre distance (default 50 m): recall, precision, length
   and heading errors, and whether the flagged sets agree.

The package, by concept: :mod:`.detect` (footprints and shore),
:mod:`.ports` (the licensed-port registry, judging berths, and
:func:`find_vessels`, one scene end to end) and :mod:`.score` (against truth).

Distances are in metres, so the scene CRS must be projected in metres
(Sentinel-2 tiles are UTM). Memory: the label image of the vessel mask plus one
window of ``2 * shore_search_m`` around each vessel at a time.

Example::

    ports = PortRegistry.from_file("licensed_ports.geojson")
    vessels, sites = find_vessels(
        probs, classes, transform, "EPSG:32618", water=ndwi_water(green, nir),
        scene_id="S2A_...", acquired="2024-01-15T10:30:00Z", model_version="v3",
        ports=ports,
    )
"""

from minewatch.vessels.detect import (
    Detection,
    VesselConfig,
    detect_vessels,
    ndwi_water,
    water_from_classes,
)
from minewatch.vessels.ports import (
    Port,
    PortRegistry,
    find_vessels,
    flagged_site_rows,
    judge_vessels,
)
from minewatch.vessels.score import VesselScore, match_vessels

__all__ = [
    "Detection",
    "Port",
    "PortRegistry",
    "VesselConfig",
    "VesselScore",
    "detect_vessels",
    "find_vessels",
    "flagged_site_rows",
    "judge_vessels",
    "match_vessels",
    "ndwi_water",
    "water_from_classes",
]
