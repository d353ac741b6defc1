"""Finding scenes and camera frames among input paths.

A scene is a georeferenced raster: one multiband file (GeoTIFF, COG, JP2, ...)
or a folder of single-band files named ``<prefix>_<BAND>.<ext>`` (``s2_B02.jp2``,
``l8_B4.tif``), each band named by the part after the last underscore. A camera
frame is a ``.png``/``.jpg``/``.jpeg`` image without georeference; its camera id
and time come from its path (``<camera_id>/<YYYYmmddTHHMMSS>.png`` by default) or
from a labels CSV.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "DEFAULT_FRAME_PATTERN",
    "DEFAULT_MAX_PIXELS",
    "FRAME_EXTENSIONS",
    "RASTER_EXTENSIONS",
    "SIDECAR_SUFFIXES",
    "Rejection",
    "SceneRef",
    "group_files",
    "parse_time",
    "safe_id",
    "stem",
    "unique_ids",
]

RASTER_EXTENSIONS = frozenset({".tif", ".tiff", ".jp2", ".vrt", ".img"})
FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
#: Files that belong to a raster beside them (GDAL metadata, overviews, masks,
#: world files); never inputs of their own.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".tfw", ".jgw", ".pgw", ".wld", ".prj")

#: Camera id = the frame's folder; time = ``YYYYmmddTHHMMSS`` at the start of its name.
#: A raster declaring more pixels than this is refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 10_000_000_000

DEFAULT_FRAME_PATTERN = r"(?P<camera_id>[^/]+)/(?P<timestamp>\d{8}T\d{6})[^/]*$"

# A band token starts with a letter and has no punctuation, so that dated names
# such as scene_2024-01-15.tif are single scenes, not bands of a scene "scene".
_BAND_FILE = re.compile(r"^(?P<prefix>.+)_(?P<band>[A-Za-z][A-Za-z0-9]{0,11})$")
_TIME_PATTERNS = (
    (re.compile(r"(\d{8}T\d{6})"), "%Y%m%dT%H%M%S"),
    (re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})"), "%Y-%m-%dT%H:%M:%S"),
    (re.compile(r"(\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2})"), "%Y:%m:%d %H:%M:%S"),
    (re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)"), "%Y-%m-%d"),
    (re.compile(r"(?<!\d)(\d{8})(?!\d)"), "%Y%m%d"),
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SceneRef:
    """What one scene or camera frame is made of; cheap to pickle and shuffle.

    Attributes:
        scene_id: Unique id within the job (safe characters only).
        kind: ``scene`` or ``frame``.
        source: The path a user would recognise (the file, or the band folder).
        files: One multiband file, or one file per band.
        band_names: Band name per file for a band folder; empty for one file.
        camera_id: Camera id of a frame.
        acquired: Acquisition time as ISO 8601 UTC, empty if unknown.
    """

    scene_id: str
    kind: str
    source: str
    files: tuple[str, ...]
    band_names: tuple[str, ...] = ()
    camera_id: str = ""
    acquired: str = ""

    @property
    def acquired_time(self) -> datetime | None:
        """Acquisition time, or None."""
        return datetime.fromisoformat(self.acquired) if self.acquired else None


@dataclass(frozen=True)
class Rejection:
    """An input that is not tiled, with the reason (a dead-letter row)."""

    input: str
    reason: str
    kind: str = "input"


def parse_time(text: str) -> datetime | None:
    """Find an acquisition time in a file name or tag value.

    Args:
        text: A path, file name or tag value.

    Returns:
        The first time found, as an aware UTC datetime, or None.
    """
    for pattern, fmt in _TIME_PATTERNS:
        for match in pattern.finditer(text):
            try:
                return datetime.strptime(match.group(1), fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
    return None


def _ext(path: str) -> str:
    base = posixpath.basename(path.replace("\\", "/"))
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def _stem(path: str) -> str:
    base = posixpath.basename(path.replace("\\", "/"))
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def safe_id(name: str) -> str:
    """Return ``name`` with every run of characters outside ``A-Za-z0-9._-`` as ``_``."""
    return _UNSAFE.sub("_", name).strip("._") or "scene"


def stem(path: str) -> str:
    """File name without folder and last extension."""
    return _stem(path)


_safe = safe_id


def _iso(path: str) -> str:
    when = parse_time(path)
    return when.isoformat() if when else ""


def _frame_ref(path: str, pattern: re.Pattern[str]) -> SceneRef:
    norm = path.replace("\\", "/")
    match = pattern.search(norm)
    camera = match.groupdict().get("camera_id", "") if match else ""
    stamp = match.groupdict().get("timestamp", "") if match else ""
    when = parse_time(stamp) if stamp else None
    name = f"{camera}_{_stem(path)}" if camera else _stem(path)
    return SceneRef(
        scene_id=_safe(name),
        kind="frame",
        source=path,
        files=(path,),
        camera_id=camera,
        acquired=when.isoformat() if when else "",
    )


def group_files(
    files: Iterable[str], frame_pattern: str = DEFAULT_FRAME_PATTERN
) -> tuple[list[SceneRef], list[Rejection]]:
    """Group matched files into scenes and frames.

    Files of one folder named ``<prefix>_<BAND>.<ext>`` form one band-per-file
    scene when there are two or more of them; other rasters in that folder are
    rejected (a preview image beside the bands is not a scene). Any other raster
    is a multiband scene of its own, and images are camera frames. Scene ids are
    made unique by appending a short hash of the path when names collide.

    Args:
        files: Paths of files (local or ``gs://``), duplicates allowed.
        frame_pattern: Regular expression with groups ``camera_id`` and
            ``timestamp``, searched in the frame path with ``/`` separators.

    Returns:
        The scene references, and the files that are not tiled with the reason.
    """
    pattern = re.compile(frame_pattern)
    refs: list[SceneRef] = []
    rejected: list[Rejection] = []
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in sorted(set(files)):
        ext = _ext(path)
        if path.lower().endswith(SIDECAR_SUFFIXES):
            continue
        if ext in FRAME_EXTENSIONS:
            refs.append(_frame_ref(path, pattern))
        elif ext in RASTER_EXTENSIONS:
            by_folder[posixpath.dirname(path.replace("\\", "/"))].append(path)
        else:
            rejected.append(Rejection(path, f"not a raster or image file (extension {ext!r})"))
    for folder, paths in by_folder.items():
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for path in paths:
            match = _BAND_FILE.match(_stem(path))
            if match:
                groups[match["prefix"]].append((match["band"], path))
        band_groups = {p: members for p, members in groups.items() if len(members) >= 2}
        grouped = {path for members in band_groups.values() for _, path in members}
        folder_name = posixpath.basename(folder) or "scene"
        for prefix, members in sorted(band_groups.items()):
            members.sort()
            names = [b for b, _ in members]
            if len(set(names)) != len(names):
                rejected.append(Rejection(folder, f"band folder has duplicate band names {names}"))
                continue
            name = folder_name if len(band_groups) == 1 else f"{folder_name}_{prefix}"
            refs.append(
                SceneRef(
                    scene_id=_safe(name),
                    kind="scene",
                    source=folder,
                    files=tuple(p for _, p in members),
                    band_names=tuple(names),
                    acquired=_iso(folder),
                )
            )
        for path in paths:
            if path in grouped:
                continue
            if band_groups:
                owner = ", ".join(sorted(band_groups))
                rejected.append(
                    Rejection(path, f"ignored: not a band file of the scene(s) {owner}")
                )
            else:
                refs.append(
                    SceneRef(_safe(_stem(path)), "scene", path, (path,), acquired=_iso(_stem(path)))
                )
    return unique_ids(refs), rejected


def unique_ids(refs: Sequence[SceneRef]) -> list[SceneRef]:
    """``refs`` with colliding scene ids made unique by a short hash of the source."""
    counts: dict[str, int] = defaultdict(int)
    for ref in refs:
        counts[ref.scene_id] += 1
    out = []
    for ref in refs:
        if counts[ref.scene_id] > 1:
            digest = hashlib.sha1(ref.source.encode()).hexdigest()[:8]
            ref = SceneRef(**{**ref.__dict__, "scene_id": f"{ref.scene_id}-{digest}"})
        out.append(ref)
    return out
