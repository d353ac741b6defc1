"""The bad-input corpus: every kind of broken input the stages must refuse clearly.

:func:`write_corpus` writes small, seeded files into a folder and returns one
:class:`Case` per file (or folder), named with its expected outcome:

* ``ok``: processed; the case may still lose pixels or features (NaN pixels are
  invalid, a bowtie polygon is repaired);
* ``dead``: a dead-letter row whose ``reason`` contains :attr:`Case.reason`;
* ``error``: refused before any work starts, with :attr:`Case.reason` in the message;
* ``ignored``: a hidden file (name starting with ``.``) in a listed folder: skipped
  on purpose, as writers use hidden names for files that are still being written.

Layout::

    scenes/      rasters (tile, infer, stream)
    frames/cam1/ camera frames (tile, infer)
    labels/      polygon files and a frames CSV (tile)
    tiles/       a tile-job folder whose shards hold bad records (graph, infer, trainer)
    records/     single TFRecord files of one bad kind each (trainer's data reader)

Run ``python -m tests.reliability.corpus DIR`` to look at it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from tests.factories import ORIGIN, box_geometry, feature, gradient, write_geojson, write_raster

BANDS = ("B02", "B03", "B04")
SIZE = 48  # scene side in pixels: 3 x 3 tiles of 16 px
TILE = 16
#: Odd but legal file names: the scene ids made from them must stay inside their folders.
ODD_NAME = "odd name;$(reboot) ü"
DOTS_NAME = "ok-..-dots"
#: Names starting with "." are skipped when a folder is listed (editors' and the
#: stream's write-then-rename temporary files); named explicitly they are inputs.
HIDDEN_NAME = ".hidden.tif"


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    Attributes:
        name: Short id of the case.
        path: File or folder written.
        group: ``scenes``, ``frames``, ``labels``, ``tiles`` or ``records``.
        expect: ``ok``, ``dead`` or ``error``.
        reason: Substring of the dead-letter reason or error message.
    """

    name: str
    path: str
    group: str
    expect: str
    reason: str = ""


def _scene(path: Path, data: np.ndarray | None = None, **kw: Any) -> str:
    if data is None:
        data = gradient(SIZE, SIZE, 3) * 10 % 4000 + 500
        data = data.astype(np.uint16)
    kw.setdefault("descriptions", BANDS[: data.shape[0]])
    return write_raster(path, data, **kw)


def _scenes(root: Path, rng: np.random.Generator) -> list[Case]:
    d = root / "scenes"
    d.mkdir(parents=True)
    cases = []

    def add(name: str, expect: str, reason: str = "", path: Path | None = None) -> None:
        cases.append(Case(name, str(path or d / name), "scenes", expect, reason))

    _scene(d / "ok-good.tif")
    add("ok-good.tif", "ok")
    f32 = (gradient(SIZE, SIZE, 3) * 10 % 4000 + 500).astype(np.float32)
    f32[:, :8, :8] = np.nan
    f32[:, 8:12, :8] = np.inf
    f32[:, 12:16, :8] = -np.inf
    _scene(d / "ok-nan-inf.tif", f32)
    add("ok-nan-inf.tif", "ok")
    _scene(d / f"ok-{ODD_NAME}.tif")
    add(f"ok-{ODD_NAME}.tif", "ok")
    _scene(d / f"{DOTS_NAME}.tif")
    add(f"{DOTS_NAME}.tif", "ok")
    _scene(d / HIDDEN_NAME)
    add(HIDDEN_NAME, "ignored")

    (d / "dead-zero.tif").write_bytes(b"")
    add("dead-zero.tif", "dead", "empty file (0 bytes)")
    (d / "dead-garbage.tif").write_bytes(b"II*\x00" + rng.bytes(2000))
    add("dead-garbage.tif", "dead", "not a readable raster")
    (d / "dead-text.tif").write_text("this is not a GeoTIFF\n")
    add("dead-text.tif", "dead", "not a readable raster")
    big = root / "big.tif"
    write_raster(big, (gradient(256, 256, 3) % 60000).astype(np.uint16), driver="COG")
    full = big.read_bytes()
    big.unlink()
    (d / "dead-truncated.tif").write_bytes(full[: len(full) // 2])
    add("dead-truncated.tif", "dead", "truncated file")
    _scene(d / "dead-nocrs.tif", crs=None)
    add("dead-nocrs.tif", "dead", "no CRS")
    rotated = ORIGIN @ Affine.rotation(30)
    _scene(d / "dead-rotated.tif", transform=rotated)
    add("dead-rotated.tif", "dead", "rotated or sheared")
    _scene(d / "dead-all-nodata.tif", np.zeros((3, SIZE, SIZE), np.uint16), nodata=0)
    add("dead-all-nodata.tif", "dead", "no tile kept")
    _scene(d / "dead-all-nan.tif", np.full((3, SIZE, SIZE), np.nan, np.float32))
    add("dead-all-nan.tif", "dead", "no tile kept")
    with rasterio.open(
        d / "dead-bomb.tif",
        "w",
        driver="GTiff",
        width=1_000_000,
        height=1_000_000,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=ORIGIN,
        tiled=True,
        sparse_ok=True,
    ) as dst:
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
    add("dead-bomb.tif", "dead", "exceeds the limit")
    _scene(d / "dead-two-bands.tif", gradient(SIZE, SIZE, 2))
    add("dead-two-bands.tif", "dead", "B04")
    (d / "dead-notes.txt").write_text("field notes\n")
    add("dead-notes.txt", "dead", "not a raster or image file")
    folder = d / "dead-missing-band"
    folder.mkdir()
    data = gradient(SIZE, SIZE, 2)
    write_raster(folder / "x_B02.tif", data[0])
    write_raster(folder / "x_B03.tif", data[1])
    cases.append(Case("dead-missing-band", str(folder), "scenes", "dead", "missing band(s) B04"))
    return cases


def _frames(root: Path, rng: np.random.Generator) -> list[Case]:
    d = root / "frames" / "cam1"
    d.mkdir(parents=True)
    rgb = rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)
    write_raster(d / "20240101T000000.png", rgb, crs=None, driver="PNG")
    png = (d / "20240101T000000.png").read_bytes()
    (d / "20240101T000100.png").write_text("not an image at all")
    (d / "20240101T000200.jpg").write_bytes(b"")
    (d / "20240101T000300.png").write_bytes(png[: len(png) // 3])
    (d / "20240101T000400.png").write_bytes(rng.bytes(1500))
    return [
        Case("frame-ok", str(d / "20240101T000000.png"), "frames", "ok"),
        Case("frame-text", str(d / "20240101T000100.png"), "frames", "dead", "not a readable"),
        Case("frame-zero", str(d / "20240101T000200.jpg"), "frames", "dead", "empty file"),
        # A cut PNG opens and decodes without an error: only its missing end marker tells.
        Case("frame-truncated", str(d / "20240101T000300.png"), "frames", "dead", "truncated"),
        Case("frame-random", str(d / "20240101T000400.png"), "frames", "dead", "not a readable"),
    ]


def _labels(root: Path) -> list[Case]:
    from pyproj import Transformer

    d = root / "labels"
    d.mkdir(parents=True)
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    left, top = ORIGIN.c, ORIGIN.f
    good = to_ll.transform_bounds(left, top - 160, left + 160, top)
    bow = to_ll.transform_bounds(left + 160, top - 160, left + 320, top)
    far = to_ll.transform_bounds(left + 50_000, top - 50_000, left + 50_160, top - 49_840)
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [
                [bow[0], bow[1]],
                [bow[2], bow[3]],
                [bow[2], bow[1]],
                [bow[0], bow[3]],
                [bow[0], bow[1]],
            ]
        ],
    }
    path = d / "labels.geojson"
    write_geojson(
        path,
        [
            feature(box_geometry(*good), **{"class": "stockpile"}),
            feature(bowtie, **{"class": "mining_scar"}),
            feature(None, **{"class": "stockpile"}),
            feature({"type": "Point", "coordinates": [good[0], good[1]]}, **{"class": "pile"}),
            feature(box_geometry(*good), **{"class": ""}),
            feature(box_geometry(*far), **{"class": "stockpile"}),
            # UTM metres written into a file that says EPSG:4326: a wrong CRS.
            feature(box_geometry(left, top - 160, left + 160, top), **{"class": "stockpile"}),
        ],
    )
    cases = [
        Case("label-good", f"{path}#0", "labels", "ok"),
        Case("label-bowtie", f"{path}#1", "labels", "ok"),  # repaired
        Case("label-empty-geometry", f"{path}#2", "labels", "dead", "empty geometry"),
        Case("label-point", f"{path}#3", "labels", "dead", "not a polygon (Point)"),
        Case("label-no-class", f"{path}#4", "labels", "dead", "empty 'class'"),
        Case("label-outside-scene", f"{path}#5", "labels", "dead", "outside every scene"),
        Case("label-wrong-crs", f"{path}#6", "labels", "dead", "outside the valid range"),
    ]
    write_geojson(d / "error-no-features.geojson", [])
    cases.append(
        Case("labels-empty", str(d / "error-no-features.geojson"), "labels", "error", "--labels")
    )
    (d / "error-not-json.geojson").write_text("{ this is not json")
    cases.append(
        Case("labels-garbage", str(d / "error-not-json.geojson"), "labels", "error", "cannot read")
    )
    write_geojson(
        d / "error-all-wrong-crs.geojson",
        [feature(box_geometry(left, top - 160, left + 160, top), **{"class": "stockpile"})],
    )
    cases.append(
        Case(
            "labels-all-wrong-crs",
            str(d / "error-all-wrong-crs.geojson"),
            "labels",
            "error",
            "outside the valid range",
        )
    )
    return cases


# -- tile records --------------------------------------------------------------------


def good_tiles(n: int, scene_id: str = "rec") -> list[Any]:
    """``n`` valid 16 px tiles of a 3-band uint16 scene (label 0 or 1)."""
    from minewatch.spec import Tile

    tiles = []
    for i in range(n):
        image = np.full((TILE, TILE, 3), 100 + 50 * i, np.uint16)
        t = Tile(
            scene_id=scene_id,
            kind="scene",
            row_off=(i // 4) * TILE,
            col_off=(i % 4) * TILE,
            image=image,
            valid=np.ones((TILE, TILE), bool),
            bands=BANDS,
            crs="EPSG:32633",
        )
        t.transform = tuple(ORIGIN @ Affine.translation(t.col_off, t.row_off))[:6]
        left, top = t.transform[2], t.transform[5]
        t.bounds = (left, top - 10 * TILE, left + 10 * TILE, top)
        t.bounds_wgs84 = (15.0, 36.1, 15.01, 36.11)
        t.label = i % 2
        t.label_name = ("background", "stockpile")[i % 2]
        t.label_source = "vector"
        t.class_fractions = np.eye(2, dtype=np.float32)[i % 2]
        tiles.append(t)
    return tiles


def _encode_rows(rows: list[dict[str, list[Any]]]) -> list[bytes]:
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    from minewatch.spec import _ARROW, FEATURES

    names = [n for n in FEATURES if n in rows[0]]
    arrays = [pa.array([r[n] for r in rows], _ARROW[FEATURES[n]]) for n in names]
    batch = pa.RecordBatch.from_arrays(arrays, names)
    return list(example_coder.RecordBatchToExamplesEncoder().encode(batch))


def bad_records() -> dict[str, tuple[bytes, str]]:
    """One bad record of each kind: ``name -> (record, reason substring)``."""
    from minewatch.spec import _row

    base = good_tiles(1, "bad")[0]

    def variant(name: str, **change: Any) -> bytes:
        row = _row(base)
        row["tile/id"] = [f"bad:{name}".encode()]
        for key, value in change.items():
            key = key.replace("__", "/")
            if value is None:
                del row[key]
            else:
                row[key] = value
        (record,) = _encode_rows([row])
        return record

    return {
        "missing-image": (variant("missing-image", image__raw=None), "missing features"),
        "missing-shape": (variant("missing-shape", image__shape=None), "missing features"),
        "short-pixels": (variant("short-pixels", image__raw=[b"\0" * 100]), "do not match"),
        "wrong-shape": (variant("wrong-shape", image__shape=[8, 8, 3]), "do not match"),
        "not-an-example": (b"\x08\x96\x01 definitely not a tf.train.Example", "Unable to parse"),
    }


def _write_shard(path: Path, records: list[bytes]) -> None:
    from minewatch.tfrecord import write_record

    with open(path, "wb") as f:
        for r in records:
            write_record(f, r)


def _tile_dir(root: Path) -> list[Case]:
    """A tile-job folder: 8 good tiles, a shard of bad records, a corrupt and a cut shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from minewatch.spec import encode_tiles
    from minewatch.tables import manifest_schema

    d = root / "tiles"
    (d / "tiles").mkdir(parents=True)
    (d / "manifest").mkdir()
    (d / "dead_letter").mkdir()
    good = good_tiles(8)
    _write_shard(d / "tiles" / "tiles-good.tfrecord", encode_tiles(good))
    bad = bad_records()
    _write_shard(d / "tiles" / "tiles-bad.tfrecord", [r for r, _ in bad.values()])
    whole = d / "tiles" / "tiles-whole.tfrecord"
    _write_shard(whole, encode_tiles(good_tiles(2, "cut")))
    raw = whole.read_bytes()
    whole.unlink()
    (d / "tiles" / "tiles-truncated.tfrecord").write_bytes(raw[: len(raw) - 40])
    flipped = bytearray(raw)
    flipped[30] ^= 0xFF  # inside the first record's payload: its data checksum fails
    (d / "tiles" / "tiles-crc.tfrecord").write_bytes(bytes(flipped))
    (d / "tiles" / "tiles-zero.tfrecord").write_bytes(b"")
    pq.write_table(pa.Table.from_pylist([], schema=manifest_schema()), d / "manifest" / "p.parquet")
    stats = {
        "classes": ["background", "stockpile"],
        "label_source": "vector",
        "bands": {
            b: {"count": 1, "mean": 300.0, "std": 100.0, "min": 0, "max": 1000} for b in BANDS
        },
        "inputs": {"total": 0, "tiled": 0, "dead_lettered": 0},
        "tiles": {"planned": 0, "written": 0, "dropped": {}},
    }
    (d / "stats.json").write_text(json.dumps(stats))
    cases = [Case("records-good", str(d / "tiles" / "tiles-good.tfrecord"), "tiles", "ok")]
    for name, (_, reason) in bad.items():
        cases.append(Case(f"record-{name}", f"bad:{name}", "tiles", "dead", reason))
    cases += [
        Case(
            "shard-truncated",
            str(d / "tiles" / "tiles-truncated.tfrecord"),
            "tiles",
            "dead",
            "truncated",
        ),
        Case("shard-crc", str(d / "tiles" / "tiles-crc.tfrecord"), "tiles", "dead", "checksum"),
        Case("shard-zero", str(d / "tiles" / "tiles-zero.tfrecord"), "tiles", "ok"),  # no record
    ]
    return cases


def _records(root: Path) -> list[Case]:
    """Single-file TFRecords for the trainer's reader: good ones, and one per bad kind."""
    from minewatch.spec import encode_tiles

    d = root / "records"
    d.mkdir(parents=True)
    cases = []
    _write_shard(d / "good.tfrecord", encode_tiles(good_tiles(8)))
    cases.append(Case("train-good", str(d / "good.tfrecord"), "records", "ok"))
    for name, (record, reason) in bad_records().items():
        path = d / f"bad-{name}.tfrecord"
        _write_shard(path, [*encode_tiles(good_tiles(4)), record])
        cases.append(Case(f"train-{name}", str(path), "records", "error", reason))
    return cases


def write_corpus(root: str | os.PathLike[str], seed: int = 0) -> list[Case]:
    """Write the whole bad-input corpus under ``root``; return its cases.

    Args:
        root: An empty or missing folder.
        seed: Seed of the random bytes.

    Returns:
        Every case, in a fixed order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    return [
        *_scenes(root, rng),
        *_frames(root, rng),
        *_labels(root),
        *_tile_dir(root),
        *_records(root),
    ]


def cases_of(cases: list[Case], group: str, expect: str | None = None) -> list[Case]:
    """The cases of one group (and outcome)."""
    return [c for c in cases if c.group == group and (expect is None or c.expect == expect)]


if __name__ == "__main__":  # python -m tests.reliability.corpus DIR
    for case in write_corpus(sys.argv[1]):
        print(f"{case.group:<8} {case.expect:<6} {case.name:<28} {case.reason}")
