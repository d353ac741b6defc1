"""Synthetic mining scenes on a real Sentinel-2 background, with their truth.

Objects are planned once (:func:`plan_layout`) in pixel coordinates of the
crop, then rendered per acquisition: stockpiles grow or shrink, pits appear
and widen, sun, season, illumination gain and clouds change. Every object is
drawn with a soft edge (alpha ramp of :data:`EDGE_PX` pixels); its truth
polygon is the outline of the pixels where it is the top-most object with
alpha >= 0.5, so rasterising the polygon (pixel-centre rule) gives back exactly
``area_m2 / pixel_area`` pixels.

Radiometric model, in digital numbers (reflectance x 10000), per band ``b``::

    ground  = path_b + season_b * (background - path_b)          # vegetation phenology
    object  = path_b + 10000 * rho_b(material) * texture * shade  # alpha-blended over ground
    shadow  = path_b + (1 - 0.55 * shadow_alpha) * (ground - path_b)
    scene   = gain * ground  then  (1 - c) * scene + c * 10000 * rho_b(cloud)

``path_b`` is the scene's dark-object value (0.5th percentile of the band),
standing in for atmospheric path radiance, so that surface reflectances from
:mod:`minewatch.synth.materials` sit plausibly in a top-of-atmosphere scene.
``manifest.json`` records ``path_b``, ``gain`` and ``season_b`` so tests can
invert the model.

Two worlds share this code (:data:`WORLDS`). ``"flat"`` is the model above.
``"realistic"`` keeps the files and the truth schema but draws windrows and
kidney piles besides cones (:class:`~minewatch.synth.relief.Ridge`), benched
pits, surfaces cut from the scene's own bare ground
(:mod:`minewatch.synth.surfaces`: ``rho_b`` becomes a per-pixel, per-band
field), a curved road from every pit to a pile, and feathered clouds whose
softened shadows take 65 % of the light.

Pit legality in the truth is by construction: each pit is placed with a
status (inside one concession, clear of all concessions and protected areas,
or inside a protected area) in a disc that covers its widest outline of all
dates, and the truth's ``illegal``, ``reason`` and ``licence_id`` say that
status. The inference job's legality rule is neither imported nor called
here; ``tests/minewatch/test_synth_legality.py`` checks that it agrees.

This module plans a ground-truth set and writes its files; the parts live in
:mod:`~minewatch.synth.layout` (placement and legality),
:mod:`~minewatch.synth.render` (drawing and compositing one acquisition) and
:mod:`~minewatch.synth.geojson` (truth files); the names of theirs this
module has always exported (:data:`__all__`) are re-exported here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from minewatch.synth.background import Background
from minewatch.synth.geojson import label_polygons, pixel_to_map, write_geojson
from minewatch.synth.layout import CLASSES, EDGE_PX, LEGALITY, WORLDS, Layout, plan_layout
from minewatch.synth.materials import QUANTIFICATION
from minewatch.synth.relief import DSM_MARGIN_M, REPOSE_DEG, Terrain, write_dsm
from minewatch.synth.render import Acquisition, compose_block, render_acquisition, water_any_date
from minewatch.synth.sizes import SizeSpec
from minewatch.synth.surfaces import Swatches, find_swatches
from minewatch.synth.vessels import (
    Berth,
    occlusion,
    place_vessels,
    plan_berths,
    write_licensed_ports,
)

__all__ = [
    "CLASSES",
    "EDGE_PX",
    "WORLDS",
    "Acquisition",
    "Layout",
    "ScenePlan",
    "plan_layout",
    "plan_scenes",
    "render_acquisition",
    "write_scenes",
]

log = logging.getLogger(__name__)


@dataclass
class SceneOutput:
    """Paths written for one acquisition."""

    date: dt.date
    scene: Path
    truth: Path
    clouds: Path
    illegal: Path
    dsm: Path
    meta: dict[str, Any]


@dataclass
class ScenePlan:
    """What is decided once for every acquisition of one ground-truth set.

    Attributes:
        layout: The objects, in crop pixels.
        transform: Crop transform.
        factor: Decimation of ``overview``.
        overview: Decimated read of the crop, ``(bands, rows, cols)``.
        path: Dark-object value per band.
        latlon: Crop centre, degrees.
        terrain: Terrain model of the DSMs.
        date_seeds: Seed of each acquisition's rendering stream.
        dsm_rngs: Noise generator of each acquisition's DSM.
        swatches: Real bare ground the realistic world paints with; ``None``
            in the flat world.
    """

    layout: Layout
    transform: Affine
    factor: int
    overview: np.ndarray
    path: np.ndarray
    latlon: tuple[float, float]
    terrain: Terrain
    date_seeds: list[np.random.SeedSequence]
    dsm_rngs: list[np.random.Generator]
    swatches: Swatches | None = None


def plan_scenes(
    background: Background, spec: SizeSpec, seed: int, world: str = "flat"
) -> ScenePlan:
    """Crop the background and plan the layout, terrain and rendering streams.

    Args:
        background: The background scene.
        spec: Size specification.
        seed: Random seed.
        world: ``"flat"`` or ``"realistic"``; default ``"flat"``.

    Returns:
        The :class:`ScenePlan`; :func:`render_acquisition` with
        ``np.random.default_rng(plan.date_seeds[t])`` draws date ``t`` as
        :func:`write_scenes` does.
    """
    # The crop keeps its size where the background allows and moves inwards
    # (a user scene smaller than the default offsets is used from its corner).
    width = min(spec.width or background.width, background.width)
    height = min(spec.height or background.height, background.height)
    col_off = min(spec.col_off, background.width - width)
    row_off = min(spec.row_off, background.height - height)
    transform = background.transform @ Affine.translation(col_off, row_off)
    bands = background.band_names

    # Decimated read: dark-object values and a land mask for placement.
    factor = max(1, math.ceil(max(width, height) / 512))
    dshape = (math.ceil(height / factor), math.ceil(width / factor))
    overview = background.read(transform @ Affine.scale(factor), dshape)
    path = np.percentile(overview.reshape(len(bands), -1), 0.5, axis=1).astype(np.float32)
    green, nir = overview[bands.index("B03")], overview[bands.index("B08")]
    ndwi = (green - nir) / np.maximum(green + nir, 1.0)
    land = ndimage.binary_erosion(ndwi < 0.0, iterations=1)

    seq = np.random.SeedSequence([seed, 1])
    layout_seed, *date_seeds = seq.spawn(1 + spec.n_dates)
    layout_rng = np.random.default_rng(layout_seed)
    layout = plan_layout(spec, width, height, transform, land, factor, layout_rng, world)

    cx, cy = transform @ (width / 2, height / 2)
    to_geo = Transformer.from_crs(
        ProjCRS.from_wkt(background.crs.to_wkt()), "EPSG:4326", always_xy=True
    )
    lon, lat = to_geo.transform(cx, cy)

    # Heights come from their own stream so that they leave the layout as it was.
    relief_rng, *dsm_rngs = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2]).spawn(1 + spec.n_dates)
    )
    terrain = Terrain.random(relief_rng, cx, cy)
    swatches = None
    if world == "realistic":
        swatches = find_swatches(background, transform, overview, factor, path)
    return ScenePlan(
        layout, transform, factor, overview, path, (lat, lon), terrain, date_seeds, dsm_rngs,
        swatches,
    )  # fmt: skip


def write_scenes(
    out_dir: Path,
    background: Background,
    spec: SizeSpec,
    seed: int,
    sun: tuple[float, float] | None = None,
    dsm_crs: str | None = None,
    world: str = "flat",
) -> tuple[list[SceneOutput], dict[str, Any]]:
    """Plan, render and write every acquisition of one size.

    Writes ``scenes/scene_<date>.tif``, ``truth/scene_<date>.geojson``,
    ``truth/clouds_<date>.geojson``, ``truth/illegal_<date>.geojson``,
    ``dsm/dsm_<date>.tif``, ``concessions.geojson``,
    ``protected_areas.geojson`` and ``licensed_ports.geojson`` under
    ``out_dir``.

    Args:
        out_dir: Output root.
        background: The background scene.
        spec: Size specification.
        seed: Random seed.
        sun: ``(azimuth, elevation)`` in degrees for every date instead of the
            sun at the overpass; default ``None``.
        dsm_crs: CRS of the DSM files (anything pyproj reads); default the
            scene CRS.
        world: ``"flat"`` or ``"realistic"`` (:func:`plan_layout`,
            :mod:`minewatch.synth.surfaces`); default ``"flat"``.

    Returns:
        Per-acquisition outputs and the scene part of the manifest.
    """
    plan = plan_scenes(background, spec, seed, world)
    layout, transform, terrain = plan.layout, plan.transform, plan.terrain
    width, height = layout.width, layout.height
    overview, path, factor = plan.overview, plan.path, plan.factor
    lat, lon = plan.latlon
    bands = background.band_names
    pixel_area = abs(transform.a * transform.e)
    dsm_out_crs = rasterio.crs.CRS.from_user_input(dsm_crs) if dsm_crs else background.crs

    # Vessels too: berths are planned once on the background's water (NDWI >= 0 on
    # some date, the decimated read), ships placed per date; their own stream again.
    vessel_rng, *vessel_seeds = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 3]).spawn(1 + spec.n_dates)
    )
    water = water_any_date(overview, path, bands, layout.dates)
    water_tf = transform @ Affine.scale(factor)
    berths: list[Berth] = plan_berths(water, water_tf, background.crs, vessel_rng)

    (out_dir / "scenes").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    (out_dir / "dsm").mkdir(parents=True, exist_ok=True)
    write_licensed_ports(out_dir / "licensed_ports.geojson", berths)
    conc_map = [(lid, pixel_to_map(p, transform)) for lid, p in layout.concessions]
    survey = unary_union([p for _, p in conc_map]).buffer(DSM_MARGIN_M)
    if survey.is_empty:
        survey = box(*(transform @ (0, height)), *(transform @ (width, 0)))
    prot_map = [(name, pixel_to_map(p, transform)) for name, p in layout.protected]
    write_geojson(
        out_dir / "concessions.geojson",
        [
            (poly, {"licence_id": lid, "holder": f"Synthetic Mining Co. {i + 1}",
                    "area_m2": round(poly.area, 1)})
            for i, (lid, poly) in enumerate(conc_map)
        ],
        background.crs,
    )  # fmt: skip
    write_geojson(
        out_dir / "protected_areas.geojson",
        [(poly, {"name": name, "designation": "nature_reserve", "area_m2": round(poly.area, 1)})
         for name, poly in prot_map],
        background.crs,
    )  # fmt: skip

    outputs: list[SceneOutput] = []
    blobs_by_id = {b.oid: b for b in layout.blobs}
    previous_area: dict[str, float] = {}
    previous_volume: dict[str, float] = {}
    first_seen: dict[str, str] = {}
    px = background.pixel_size
    for t, (date_seed, dsm_rng) in enumerate(zip(plan.date_seeds, plan.dsm_rngs, strict=True)):
        date_rng = np.random.default_rng(date_seed)
        acq = render_acquisition(
            layout, t, (lat, lon), px, bands, date_rng, sun, terrain, plan.swatches
        )
        acq.transform = transform
        acq.vessels, _ = place_vessels(water, water_tf, background.crs, vessel_seeds[t], t, berths)
        if acq.cloud is not None:
            acq.vessels = occlusion(acq.vessels, acq.cloud, transform)
        stem = f"scene_{acq.date.isoformat()}"
        scene_path = out_dir / "scenes" / f"{stem}.tif"
        _write_scene(scene_path, background, transform, width, height, spec, acq, path)
        dsm_path = out_dir / "dsm" / f"dsm_{acq.date.isoformat()}.tif"
        write_dsm(
            dsm_path, acq.date, background.crs, transform, survey, list(acq.cones.values()),
            terrain, spec.dsm_res_m, dsm_rng, dsm_out_crs,
        )  # fmt: skip

        # Truth polygons.
        assert acq.labels is not None
        polys = label_polygons(acq.labels, transform)
        cloud_mask = acq.cloud >= 0.5 if acq.cloud is not None else None
        features: list[tuple[BaseGeometry, dict[str, Any]]] = []
        illegal: list[tuple[BaseGeometry, dict[str, Any]]] = []
        for i, sp in enumerate(acq.sprites, start=1):
            geom = polys.get(i)
            if geom is None:
                continue
            npix = int((acq.labels == i).sum())
            area = npix * pixel_area
            occluded = (
                float((cloud_mask & (acq.labels == i)).sum()) / npix
                if cloud_mask is not None
                else 0.0
            )
            first_seen.setdefault(sp.oid, acq.date.isoformat())
            props: dict[str, Any] = {
                "id": sp.oid,
                "class": sp.cls,
                "commodity": sp.commodity,
                "material": sp.material,
                "area_m2": round(area, 1),
                "acquisition": acq.date.isoformat(),
                "first_seen": first_seen[sp.oid],
                "area_change_m2": (
                    round(area - previous_area[sp.oid], 1)
                    if sp.cls == "stockpile" and sp.oid in previous_area
                    else None
                ),
                "occluded": round(occluded, 4),
                "parent": sp.parent,
                "illegal": False,
                "reason": None,
                "licence_id": None,
            }
            previous_area[sp.oid] = area
            cone = acq.cones.get(sp.oid)
            if cone is not None:
                volume = cone.volume_m3(px)
                apex = Point(*(transform @ (cone.col, cone.row)))
                props.update(
                    shape=cone.form,
                    height_m=round(cone.height_m, 3),
                    side_slope_deg=REPOSE_DEG.get(sp.material, 37.0),
                    volume_m3=round(volume, 1),
                    volume_change_m3=(
                        round(volume - previous_volume[sp.oid], 1)
                        if sp.oid in previous_volume
                        else None
                    ),
                    apex_x=round(apex.x, 3),
                    apex_y=round(apex.y, 3),
                    dsm_covered=bool(survey.contains(apex.buffer((cone.reach + 3) * px))),
                )
                previous_volume[sp.oid] = volume
            if sp.cls == "mining_scar":
                # By construction, not by the inference job's rule: placement put
                # the pit (at its widest) inside a concession, clear of all, or in a
                # protected area.
                pit = blobs_by_id[sp.oid]
                bad, reason = LEGALITY[str(pit.status)]
                props.update(illegal=bad, reason=reason, licence_id=pit.licence_id)
                if bad:
                    illegal.append((geom, props))
            else:
                props["licence_id"] = next(
                    (lid for lid, p in conc_map if p.contains(geom.representative_point())), None
                )
            features.append((geom, props))
        for v in acq.vessels:
            # The hull outline itself (not a pixel outline: hulls are anti-aliased).
            vessel_props = v.properties() | {
                "acquisition": acq.date.isoformat(),
                "area_m2": round(v.polygon.area, 1),
            }
            features.append((v.polygon, vessel_props))
        truth_path = out_dir / "truth" / f"{stem}.geojson"
        write_geojson(truth_path, features, background.crs)
        illegal_path = out_dir / "truth" / f"illegal_{acq.date.isoformat()}.geojson"
        write_geojson(illegal_path, illegal, background.crs)
        clouds: list[tuple[BaseGeometry, dict[str, Any]]] = []
        if cloud_mask is not None:
            cloud_labels = ndimage.label(cloud_mask)[0].astype(np.int32)
            for k, geom in sorted(label_polygons(cloud_labels, transform).items()):
                clouds.append(
                    (geom, {"id": f"cloud-{k:03d}", "class": "cloud",
                            "area_m2": round(geom.area, 1), "acquisition": acq.date.isoformat()})
                )  # fmt: skip
        clouds_path = out_dir / "truth" / f"clouds_{acq.date.isoformat()}.geojson"
        write_geojson(clouds_path, clouds, background.crs)
        meta = {
            "date": acq.date.isoformat(),
            "scene": str(scene_path.relative_to(out_dir)),
            "truth": str(truth_path.relative_to(out_dir)),
            "clouds": str(clouds_path.relative_to(out_dir)),
            "illegal": str(illegal_path.relative_to(out_dir)),
            "dsm": str(dsm_path.relative_to(out_dir)),
            "sun_azimuth_deg": round(acq.sun_azimuth, 3),
            "sun_elevation_deg": round(acq.sun_elevation, 3),
            "gain": acq.gain,
            "season": {b: round(v, 6) for b, v in acq.season.items()},
            "cloud_fraction": round(float(cloud_mask.mean()), 4) if cloud_mask is not None else 0.0,
            "objects": len(features),
            "illegal_sites": len(illegal),
            "vessels": len(acq.vessels),
            "vessels_flagged": sum(v.flagged for v in acq.vessels),
        }
        outputs.append(
            SceneOutput(acq.date, scene_path, truth_path, clouds_path, illegal_path, dsm_path, meta)
        )
    manifest = {
        "crs": background.crs.to_string(),
        "transform": list(transform)[:6],
        "width": width,
        "height": height,
        "bands": list(bands),
        "quantification": QUANTIFICATION,
        "path_radiance": [round(float(v), 3) for v in path],
        "dsm_crs": dsm_out_crs.to_string(),
        "dsm_resolution_m": spec.dsm_res_m,
        "terrain": {
            "z0": round(terrain.z0, 3),
            "gx": round(terrain.gx, 6),
            "gy": round(terrain.gy, 6),
        },
        "background": os.path.basename(os.path.normpath(background.source)),
        "berths": [
            {"id": b.id, "licensed": b.licensed, "x": round(b.x, 3), "y": round(b.y, 3)}
            for b in berths
        ],
        "acquisitions": [o.meta for o in outputs],
    }
    if plan.swatches is not None:
        side = int(plan.swatches.patches.shape[-1])
        manifest["swatches"] = [
            {"row": r, "col": c, "side": side, "bare_fraction": f}
            for (r, c), f in zip(plan.swatches.origins, plan.swatches.bare_fraction, strict=True)
        ]
    return outputs, manifest


def _write_scene(
    path: Path,
    background: Background,
    transform: Affine,
    width: int,
    height: int,
    spec: SizeSpec,
    acq: Acquisition,
    path_radiance: np.ndarray,
) -> None:
    bands = background.band_names
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": "uint16",
        "crs": background.crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
    }
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(
            TIFFTAG_DATETIME=acq.date.strftime("%Y:%m:%d") + " 10:30:00",
            ACQUISITION=acq.date.isoformat(),
            SYNTHETIC="minewatch synth",
            SUN_AZIMUTH=f"{acq.sun_azimuth:.3f}",
            SUN_ELEVATION=f"{acq.sun_elevation:.3f}",
        )
        for row_lo in range(0, height, spec.block_rows):
            rows = min(spec.block_rows, height - row_lo)
            block_tf = transform @ Affine.translation(0, row_lo)
            ground = background.read(block_tf, (rows, width))
            block = compose_block(ground, row_lo, acq, bands, path_radiance)
            dst.write(block, window=rasterio.windows.Window(0, row_lo, width, rows))
    # Cloud-optimised layout (overviews, ordered IFDs) from the tiled file.
    try:
        rasterio.shutil.copy(
            tmp, path, driver="COG", compress="DEFLATE", predictor="2", blocksize=256,
            overview_resampling="average",
        )  # fmt: skip
        tmp.unlink()
    except rasterio.errors.RasterioError:
        log.warning("COG driver unavailable; writing a tiled GeoTIFF instead")
