"""Synthetic conveyor-belt camera frames of ore in known grade classes.

A frame shows a rock bed on a dark rubber belt. The bed mixes two materials
whose share sets the grade: ore (dark red-brown hematite, ``gravel`` texture)
and gangue (pale grey-beige rock, ``grass`` texture read as fine granular
rock), both textures from ``skimage.data`` (shipped in the wheel, no download).
The ore share is drawn around a grade centre: ``high`` 0.85, ``medium`` 0.60,
``low`` 0.35, ``waste`` 0.10 (+-0.05), so classes are separable by colour
and texture but neighbouring grades overlap a little under corruption.

Layout written by :func:`write_frames`::

    frames/labels.csv                      path,camera_id,timestamp,label
    frames/<camera_id>/<YYYYmmddTHHMMSS>.png
    frames_corrupted/<corruption>/<severity>/labels.csv
    frames_corrupted/<corruption>/<severity>/<camera_id>/<YYYYmmddTHHMMSS>.png

``path`` is relative to the folder of its ``labels.csv``; ``timestamp`` is ISO
8601 (``2024-01-15T08:00:00``).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from minewatch.corruptions import CORRUPTIONS, FRAME_CORRUPTIONS, SEVERITIES
from minewatch.synth.sizes import SizeSpec

__all__ = [
    "GRADES",
    "LABELS_HEADER",
    "ORE_SHARE",
    "CameraLook",
    "camera_look",
    "make_frame",
    "write_belt_set",
    "write_frames",
]

#: Grade classes, best first.
GRADES: tuple[str, ...] = ("high", "medium", "low", "waste")
#: Mean ore share of the rock bed per grade.
ORE_SHARE: dict[str, float] = {"high": 0.85, "medium": 0.60, "low": 0.35, "waste": 0.10}
#: Header of every ``labels.csv``.
LABELS_HEADER: tuple[str, ...] = ("path", "camera_id", "timestamp", "label")

_ORE_RGB = np.array([105.0, 52.0, 40.0])
_GANGUE_RGB = np.array([176.0, 168.0, 150.0])
_BELT_RGB = np.array([38.0, 38.0, 41.0])
_START = dt.datetime(2024, 1, 15, 8, 0, 0)
_INTERVAL = dt.timedelta(seconds=30)


@dataclass(frozen=True)
class CameraLook:
    """How one installed camera sees the belt: lamp, lens and mount, fixed per camera.

    Two cameras of a site differ in these small ways; a model that learned one
    camera's look and is tested on another's meets them as an unseen installation.

    Attributes:
        gain: Lamp brightness relative to the reference camera.
        tint: Per-channel (R, G, B) gain of the lamp's colour.
        falloff: Brightness lost at the frame corners (lamp and lens vignetting).
        margin: Range of the rubber margin at each side, as a fraction of the width
            (where the camera is mounted over the belt).
    """

    gain: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    falloff: float = 0.25
    margin: tuple[float, float] = (0.08, 0.14)


def camera_look(rng: np.random.Generator) -> CameraLook:
    """Draw one camera's look.

    Gain 1 +- 6 %, tint 1 +- 3 % per channel, falloff 0.15-0.35, rubber margin
    centred at 8-14 % of the width.

    Args:
        rng: Random generator.

    Returns:
        A :class:`CameraLook`.
    """
    gain = float(rng.uniform(0.94, 1.06))
    tint = tuple(float(t) for t in rng.uniform(0.97, 1.03, size=3))
    falloff = float(rng.uniform(0.15, 0.35))
    centre = float(rng.uniform(0.08, 0.14))
    return CameraLook(gain, tint, falloff, (centre - 0.02, centre + 0.02))  # type: ignore[arg-type]


def _textures() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    def norm(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float64)
        return 1.0 + 0.3 * (x - x.mean()) / x.std()

    return norm(data.gravel()), norm(data.grass())


def _crop(tex: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    r = int(rng.integers(0, tex.shape[0] - size + 1))
    c = int(rng.integers(0, tex.shape[1] - size + 1))
    patch = np.rot90(tex[r : r + size, c : c + size], int(rng.integers(4)))
    return patch[:, ::-1] if rng.integers(2) else patch


def make_frame(
    grade: str,
    size: int,
    rng: np.random.Generator,
    textures: tuple[np.ndarray, np.ndarray] | None = None,
    look: CameraLook | None = None,
) -> np.ndarray:
    """Draw one belt frame of a grade.

    Args:
        grade: One of :data:`GRADES`.
        size: Frame side in pixels (at most 512).
        rng: Random generator.
        textures: ``(ore, gangue)`` normalised textures; loaded from
            ``skimage.data`` when ``None``.
        look: The camera's look (:func:`camera_look`); ``None`` is the
            reference camera (:class:`CameraLook` defaults).

    Returns:
        ``(size, size, 3)`` uint8 RGB frame.

    Raises:
        KeyError: Unknown grade.
    """
    ore_tex, gangue_tex = textures if textures is not None else _textures()
    share = float(np.clip(ORE_SHARE[grade] + rng.uniform(-0.05, 0.05), 0.0, 1.0))
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 20.0, mode="wrap")
    threshold = np.quantile(field, 1.0 - share)
    ore = ndimage.gaussian_filter((field > threshold).astype(np.float64), 1.0)[..., None]
    rock = ore * _ORE_RGB * _crop(ore_tex, size, rng)[..., None]
    rock += (1.0 - ore) * _GANGUE_RGB * _crop(gangue_tex, size, rng)[..., None]
    # The rock bed covers the belt's middle; rubber shows at both sides.
    cols = np.arange(size)
    look = look or CameraLook()
    margin = size * rng.uniform(*look.margin)
    bed = ((cols > margin) & (cols < size - margin)).astype(np.float64)
    bed = ndimage.gaussian_filter1d(bed, 1.5)[None, :, None]
    belt = _BELT_RGB * (1.0 + 0.05 * rng.normal(size=(size, size, 1)))
    img = bed * rock + (1.0 - bed) * belt
    # Lamp fall-off towards the frame corners.
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    img *= (1.0 - look.falloff * (xx**2 + yy**2))[..., None]
    if look != CameraLook():
        img *= look.gain * np.asarray(look.tint)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, format="PNG", compress_level=6)


def _write_labels(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        writer.writerows(rows)


def _camera_frames(
    folder: Path,
    camera: str,
    n: int,
    size: int,
    rng: np.random.Generator,
    textures: tuple[np.ndarray, np.ndarray],
    look: CameraLook | None = None,
) -> Iterator[tuple[tuple[str, str, str, str], np.ndarray]]:
    """Draw and save one camera's ``n`` frames, 30 s apart, grades balanced and shuffled.

    Yields:
        ``((path, camera_id, timestamp, label), image)`` per frame, in time order.
    """
    grades = [GRADES[i % len(GRADES)] for i in range(n)]
    order = rng.permutation(n)
    for i in range(n):
        grade = grades[int(order[i])]
        when = _START + i * _INTERVAL
        rel = f"{camera}/{when.strftime('%Y%m%dT%H%M%S')}.png"
        image = make_frame(grade, size, rng, textures, look)
        _save_png(folder / rel, image)
        yield (rel, camera, when.isoformat(), grade), image


def write_frames(out_dir: Path, spec: SizeSpec, seed: int) -> dict[str, object]:
    """Write clean frames, their labels, and the corrupted evaluation set.

    Every camera gets ``spec.frames_per_camera`` frames, 30 s apart from
    2024-01-15T08:00:00, with grades balanced and shuffled. The first
    ``spec.corrupted_per_camera`` frames of each camera are corrupted with
    every corruption in :data:`~minewatch.corruptions.FRAME_CORRUPTIONS` at
    every severity in :data:`~minewatch.corruptions.SEVERITIES`.

    Args:
        out_dir: Output root; ``frames/`` and ``frames_corrupted/`` go under it.
        spec: Size specification.
        seed: Random seed.

    Returns:
        The frames part of the manifest.
    """
    textures = _textures()
    seq = np.random.SeedSequence([seed, 2])
    frame_rng = np.random.default_rng(seq.spawn(1)[0])
    frames_dir = out_dir / "frames"
    rows: list[tuple[str, str, str, str]] = []
    images: list[np.ndarray] = []
    selected: list[int] = []
    for cam in range(spec.n_cameras):
        made = _camera_frames(
            frames_dir, f"belt{cam + 1}", spec.frames_per_camera, spec.frame_size, frame_rng,
            textures,
        )  # fmt: skip
        for i, (row, image) in enumerate(made):
            if i < spec.corrupted_per_camera:
                selected.append(len(rows))
                images.append(image)
            rows.append(row)
    _write_labels(frames_dir / "labels.csv", rows)

    corrupted_dir = out_dir / "frames_corrupted"
    for ci, name in enumerate(FRAME_CORRUPTIONS):
        fn = CORRUPTIONS[name]
        for severity in SEVERITIES:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 3, ci, severity]))
            folder = corrupted_dir / name / str(severity)
            sub_rows = []
            for idx, image in zip(selected, images, strict=True):
                _save_png(folder / rows[idx][0], fn(image, severity, rng))
                sub_rows.append(rows[idx])
            _write_labels(folder / "labels.csv", sub_rows)
    return {
        "cameras": [f"belt{c + 1}" for c in range(spec.n_cameras)],
        "frame_size": spec.frame_size,
        "frames": len(rows),
        "grades": list(GRADES),
        "corruptions": list(FRAME_CORRUPTIONS),
        "severities": list(SEVERITIES),
        "corrupted_frames_per_severity": len(selected),
    }


def write_belt_set(
    out_dir: Path | str,
    *,
    frames: int,
    cameras: int,
    seed: int,
    frame_size: int = 128,
) -> dict[str, object]:
    """Write a set of belt frames from cameras of their own (for training or a hold-out).

    Camera ids carry the seed (``s<seed>-belt<i>``), so sets of different seeds
    share no camera; each camera has its own :func:`camera_look`. Frames are
    spread evenly over the cameras, 30 s apart, grades balanced per camera and
    shuffled. Layout as ``frames/`` of :func:`write_frames` (no corrupted copies:
    faults are applied when evaluating, ``minewatch evaluate``)::

        out_dir/labels.csv
        out_dir/<camera_id>/<YYYYmmddTHHMMSS>.png

    Args:
        out_dir: Output folder (created).
        frames: Number of frames (at least ``cameras``).
        cameras: Number of cameras.
        seed: Random seed (layout, looks, frames).
        frame_size: Frame side in pixels.

    Returns:
        A manifest: cameras, frames, per-grade counts, frame size, seed.

    Raises:
        ValueError: ``frames < cameras`` or ``cameras < 1``.
    """
    if cameras < 1 or frames < cameras:
        raise ValueError(f"need cameras >= 1 and frames >= cameras, got {frames=} {cameras=}")
    out = Path(out_dir)
    textures = _textures()
    seq = np.random.SeedSequence([seed, 5])
    look_seq, frame_seq = seq.spawn(2)
    look_rng = np.random.default_rng(look_seq)
    frame_rng = np.random.default_rng(frame_seq)
    rows: list[tuple[str, str, str, str]] = []
    counts = dict.fromkeys(GRADES, 0)
    ids = []
    for cam in range(cameras):
        camera = f"s{seed}-belt{cam + 1}"
        ids.append(camera)
        look = camera_look(look_rng)
        n = frames // cameras + (1 if cam < frames % cameras else 0)
        for row, _ in _camera_frames(out, camera, n, frame_size, frame_rng, textures, look):
            rows.append(row)
            counts[row[3]] += 1
    _write_labels(out / "labels.csv", rows)
    return {
        "cameras": ids,
        "frames": len(rows),
        "grades": counts,
        "frame_size": frame_size,
        "seed": seed,
    }
