"""Soak and large-scene memory runs (issue 10, load): RSS over time and every arrival counted.

Two runs, each a child process whose whole process tree is sampled with psutil
(RSS summed, so pages shared between processes count twice):

1. ``stream`` (default 10 min): ``minewatch stream`` on the DirectRunner watches
   a folder while this script drops a new 3-band 256 px scene into it every
   ``--every`` seconds (written under a hidden name, then renamed, as the docs
   ask). One arrival in ``--corrupt-every`` is a corrupt file and one in
   ``--touch-every`` re-touches an earlier scene (a duplicate). After the
   arrivals stop, the stream drains for ``--drain`` seconds. At the end the
   ledger must hold one entry per distinct arrival (labelled + dead-lettered =
   arrivals), ``tile_labels`` one copy of each good scene, and the touched
   duplicates none.
2. ``large-scene``: ``minewatch tile`` on one ``--size`` squared, 3-band uint16
   GeoTIFF written strip by strip, RSS sampled over the run.
3. ``bare-impulse``: nothing of minewatch, a bare ``PeriodicImpulse | Map`` on
   the DirectRunner for ``--minutes``, twice: as Beam runs it, then with
   :func:`pipelines.stream.bound_local_metrics` (what ``minewatch stream``
   does); shows that the runner itself grows without the fix.

Memory growth is the least-squares slope of RSS over the second half of the run
(MB per minute); the first half holds the imports, the model load and warm-up.

Usage::

    .venv/bin/python bench/soak.py stream --minutes 10
    .venv/bin/python bench/soak.py large-scene --size 8000
    .venv/bin/python bench/soak.py bare-impulse --minutes 1
    .venv/bin/python bench/soak.py stream --minutes 1 --every 2   # a quick look

Writes ``bench/out/soak/<run>.json`` (samples and summary) and prints the summary.
MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "soak"


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        p = psutil.Process(proc.pid)
        for q in [p, *p.children(recursive=True)]:
            try:
                total += q.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return 0
    return total


class Sampler(threading.Thread):
    """Sample a process tree's RSS every ``interval`` seconds until it exits."""

    def __init__(self, proc, interval: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval, self.samples, self.t0 = proc, interval, [], time.time()

    def run(self) -> None:
        while self.proc.poll() is None:
            rss = _tree_rss(self.proc)
            if rss:
                self.samples.append((round(time.time() - self.t0, 2), round(rss / 1e6, 1)))
            time.sleep(self.interval)


def summarise(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Peak, quartile values and the second half's slope (MB/min) of RSS samples."""
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 60, mb[half], 1)[0]) if half.sum() > 2 else float("nan")
    q = lambda f: float(mb[min(len(mb) - 1, int(f * len(mb)))])  # noqa: E731
    return {
        "seconds": float(t[-1]),
        "samples": len(samples),
        "peak_mb": float(mb.max()),
        "rss_at_25pct_mb": q(0.25),
        "rss_at_50pct_mb": q(0.5),
        "rss_at_75pct_mb": q(0.75),
        "rss_at_end_mb": float(mb[-1]),
        "second_half_slope_mb_per_min": round(slope, 2),
    }


def _scene(path: Path, seed: int, size: int = 256, spread: bool = False) -> None:
    from affine import Affine

    from tests.factories import ORIGIN, write_raster

    rng = np.random.default_rng(seed)
    data = np.full((3, size, size), 100, np.uint16)
    r, c = rng.integers(0, size - 64, 2)
    data[:, r : r + 48, c : c + 48] = 1000  # one "stockpile" per scene
    # --spread: each scene in its own 20 km site-linking area (30 km apart, northwards), so no
    # area's history grows with the run; by default all scenes share one area.
    shift = Affine.translation(0, 30_000 * seed) if spread else Affine.identity()
    write_raster(
        path,
        data + rng.integers(0, 20, data.shape, dtype=np.uint16),
        transform=shift @ ORIGIN,
        descriptions=("B02", "B03", "B04"),
    )


def run_stream(args: argparse.Namespace) -> dict:
    from pipelines.stream import ledger_entries
    from tests.factories import save_oracle

    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.tmp))
    watch, out = work / "watch", work / "tables"
    watch.mkdir()
    model = save_oracle(work / "model")
    arrive_s = args.minutes * 60
    cmd = [
        sys.executable,
        "-m",
        "minewatch.cli.main",
        "stream",
        "--watch",
        str(watch),
        "--model",
        model,
        "--out",
        str(out),
        "--poll-seconds",
        str(args.poll),
        "--duration",
        str(arrive_s + args.drain),
        "--no-pictures",
        "--direct_num_workers=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(work / "stream.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(proc, args.sample)
    sampler.start()
    good, corrupt, touched = [], [], 0
    i, start = 0, time.time()
    while time.time() - start < arrive_s and proc.poll() is None:
        i += 1
        if args.touch_every and i % args.touch_every == 0 and good:
            os.utime(watch / good[len(good) // 2])  # a duplicate: same bytes, new mtime
            touched += 1
        elif args.corrupt_every and i % args.corrupt_every == 0:
            name = f"corrupt_{i:05d}.tif"
            (watch / f".{name}").write_bytes(b"II*\x00" + os.urandom(5000))
            os.replace(watch / f".{name}", watch / name)
            corrupt.append(name)
        else:
            name = f"scene_{i:05d}.tif"
            _scene(watch / f".{name}", i, spread=args.spread)
            os.replace(watch / f".{name}", watch / name)
            good.append(name)
        time.sleep(max(0.0, start + i * args.every - time.time()))
    proc.wait()
    sampler.join()
    log.close()
    entries = ledger_entries(str(out))
    by_name: dict[str, list] = {}
    for e in entries:
        by_name.setdefault(os.path.basename(e["path"]), []).append(e["status"])
    from minewatch.query import open_tables, run_query

    con, _ = open_tables(str(out))
    rows = run_query(
        con, "select scene_id, count(*) n, count(distinct tile_id) d from tile_labels group by 1"
    ).to_pylist()
    arrivals = len(good) + len(corrupt)
    accounting = {
        "arrivals": arrivals,
        "good": len(good),
        "corrupt": len(corrupt),
        "touched_duplicates": touched,
        "ledger_entries": len(entries),
        "labelled": sum(s == ["labelled"] for s in by_name.values()),
        "dead_lettered": sum(s == ["dead"] for s in by_name.values()),
        "files_with_two_entries": sum(len(s) > 1 for s in by_name.values()),
        "missing": sorted(set(good + corrupt) - set(by_name)),
        "good_labelled": sum(by_name.get(n) == ["labelled"] for n in good),
        "corrupt_dead": sum(by_name.get(n) == ["dead"] for n in corrupt),
        "scenes_in_tile_labels": len(rows),
        "scenes_with_duplicate_rows": sum(r["n"] != r["d"] for r in rows),
        "stream_exit_code": proc.returncode,
    }
    accounting["every_arrival_accounted_for"] = (
        accounting["labelled"] + accounting["dead_lettered"] == arrivals
        and not accounting["missing"]
        and accounting["files_with_two_entries"] == 0
        and accounting["scenes_with_duplicate_rows"] == 0
    )
    result = {
        "run": "stream",
        "command": " ".join(cmd),
        "options": vars(args),
        "load_average": os.getloadavg(),
        "memory": summarise(sampler.samples),
        "accounting": accounting,
        "samples": sampler.samples,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _big_scene(path: Path, size: int) -> None:
    import rasterio

    from tests.factories import ORIGIN, UTM

    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint16",
        crs=UTM,
        transform=ORIGIN,
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    rows = np.arange(size, dtype=np.uint32)
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(("B02", "B03", "B04"), start=1):
            dst.set_band_description(i, name)
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            strip = (rows[None, :] * 7 + (r0 + np.arange(h))[:, None] * 3) % 3000 + 200
            for b in range(3):
                dst.write(
                    (strip + 50 * b).astype(np.uint16),
                    b + 1,
                    window=rasterio.windows.Window(0, r0, size, h),
                )


def run_large_scene(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="soak-big-", dir=args.tmp))
    src = work / "big.tif"
    _big_scene(src, args.size)
    cmd = [
        sys.executable,
        "-m",
        "minewatch.cli.main",
        "tile",
        str(src),
        "--out",
        str(work / "out"),
        "--tile-size",
        "64",
        "--no-weak-labels",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = Sampler(proc, args.sample)
    sampler.start()
    output, _ = proc.communicate()
    sampler.join()
    stats = json.loads((work / "out" / "stats.json").read_text()) if proc.returncode == 0 else {}
    result = {
        "run": "large-scene",
        "command": " ".join(cmd),
        "options": vars(args),
        "scene": {"size_px": args.size, "bands": 3, "mb": round(src.stat().st_size / 1e6, 1)},
        "load_average": os.getloadavg(),
        "exit_code": proc.returncode,
        "tiles": stats.get("tiles"),
        "memory": summarise(sampler.samples),
        "samples": sampler.samples,
        "output_tail": output[-1500:],
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _bare_child(seconds: float, interval: float, bound: bool) -> None:
    """The bare pipeline (run in a child process by ``bare-impulse``)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    if bound:
        from pipelines.stream import bound_local_metrics

        bound_local_metrics()
    start = time.time() + 1.0
    options = PipelineOptions(["--streaming", "--direct_num_workers=1"])
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | PeriodicImpulse(
                start_timestamp=start, stop_timestamp=start + seconds, fire_interval=interval
            )
            | beam.Map(lambda t: t)
        )


def run_bare_impulse(args: argparse.Namespace) -> dict:
    runs = {}
    for name, extra in (("beam_as_is", []), ("bound_local_metrics", ["--bound"])):
        cmd = [
            sys.executable,
            __file__,
            "--child-bare",
            str(args.minutes * 60),
            str(args.poll),
            *extra,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        sampler = Sampler(proc, args.sample)
        sampler.start()
        proc.wait()
        sampler.join()
        runs[name] = {
            "exit_code": proc.returncode,
            "memory": summarise(sampler.samples),
            "samples": sampler.samples,
        }
    return {
        "run": "bare-impulse",
        "command": f"PeriodicImpulse(fire_interval={args.poll}) | Map, {args.minutes} min",
        "options": vars(args),
        "load_average": os.getloadavg(),
        "memory": {k: v["memory"] for k, v in runs.items()},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-bare":
        _bare_child(float(argv[1]), float(argv[2]), "--bound" in argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=["stream", "large-scene", "bare-impulse"])
    parser.add_argument("--minutes", type=float, default=10.0, help="arrivals for this long")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between arrivals")
    parser.add_argument("--poll", type=float, default=2.0, help="stream poll interval (s)")
    parser.add_argument("--drain", type=float, default=60.0, help="stream time after arrivals")
    parser.add_argument("--corrupt-every", type=int, default=10)
    parser.add_argument("--touch-every", type=int, default=15)
    parser.add_argument("--spread", action="store_true", help="one site area per scene")
    parser.add_argument("--size", type=int, default=8000, help="large scene side (px)")
    parser.add_argument("--sample", type=float, default=2.0, help="RSS sample interval (s)")
    parser.add_argument("--tmp", default=None, help="work folder parent (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    runs = {"stream": run_stream, "large-scene": run_large_scene, "bare-impulse": run_bare_impulse}
    result = runs[args.run](args)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.run}{'-spread' if args.spread else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    hidden = ("samples", "options", "output_tail", "runs")
    shown = {k: v for k, v in result.items() if k not in hidden}
    print(json.dumps(shown, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
