"""Stream benchmark: latency from landing to queryable, scenes/minute, frames/second.

Files are copied into a watched folder while ``minewatch stream`` runs on the
DirectRunner (1 s poll, the test oracle SavedModel): first a few one at a time,
each after the previous one is in the ledger, then a burst landing at once.
Latency is a file's mtime to its ledger entry (written after its rows).

    .venv/bin/python bench/stream.py            # scenes, then frames (~3 min)
    .venv/bin/python bench/stream.py frames
"""

import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pipelines.stream import StreamConfig, ledger_entries, run_stream  # noqa: E402
from tests.factories import save_oracle, write_raster  # noqa: E402

POLL = 1.0
root = Path(tempfile.mkdtemp(prefix="benchstream-"))


def registry(name, **kw):
    reg = root / name
    reg.mkdir()
    model = save_oracle(reg / "versions" / "v1", **kw)
    (reg / "current.json").write_text(json.dumps({"version": "v1", "path": model}))
    return str(reg)


def wait(out, n, timeout=300):
    end = time.time() + timeout
    while len(ledger_entries(out)) < n and time.time() < end:
        time.sleep(0.05)


def scenes():
    src, watch, out = root / "src", root / "watch", str(root / "tables")
    src.mkdir()
    watch.mkdir()
    rng = np.random.default_rng(0)
    for i in range(36):
        data = rng.integers(50, 1500, (3, 256, 256), dtype=np.uint16)
        write_raster(
            src / f"scene_202401{i:02d}.tif" if i else src / "scene_20240100.tif",
            data,
            descriptions=("B02", "B03", "B04"),
        )
    names = sorted(os.listdir(src))
    reg = registry("reg_scenes")

    def drop():
        time.sleep(4)
        for n in names[:6]:  # one at a time
            shutil.copy(src / n, watch)
            wait(out, names[:6].index(n) + 1)
            time.sleep(0.5)
        t0 = time.time()
        for n in names[6:]:  # a burst
            shutil.copy(src / n, watch)
        wait(out, 36)
        res["burst"] = (t0, time.time())

    res = {}
    th = threading.Thread(target=drop, daemon=True)
    th.start()
    cfg = StreamConfig(
        watch=str(watch), registry=reg, out=out, poll_seconds=POLL, duration=70, pictures=False
    )
    r = run_stream(cfg, ["--direct_num_workers=1"], save_main_session=False)
    th.join(5)
    e = sorted(r["entries"], key=lambda e: e["mtime"])
    single = [round(x["done"] - x["mtime"], 2) for x in e[:6]]
    burst = e[6:]
    first = min(x["mtime"] for x in burst)
    last = max(x["done"] for x in burst)
    done = sorted(x["done"] for x in burst)
    gaps = sorted(b - a for a, b in itertools.pairwise(done))
    return {
        "labelled": r["labelled"],
        "single_latency_s": single,
        "burst_scenes": len(burst),
        "burst_first_landed_to_last_queryable_s": round(last - first, 2),
        "scenes_per_minute": round(60 * len(burst) / (last - first), 1),
        "burst_median_latency_s": round(
            statistics.median(x["done"] - x["mtime"] for x in burst), 2
        ),
        "median_gap_between_entries_s": round(statistics.median(gaps), 3),
        "tiles_per_scene": burst[0]["tiles"],
    }


def frames(n=240):
    cams, out = root / "cams", str(root / "ftables")
    reg = registry(
        "reg_frames",
        bands=("red", "green", "blue"),
        task="frame",
        classes=("low", "high"),
        threshold=128.0,
    )
    rng = np.random.default_rng(1)
    stage = root / "fstage"
    stage.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    made = []
    for cam in ("belt1", "belt2"):
        (stage / cam).mkdir()
        (cams / cam).mkdir(parents=True)
    for i in range(n):
        cam = ("belt1", "belt2")[i % 2]
        when = now + timedelta(seconds=i // 2)
        p = stage / cam / f"{when:%Y%m%dT%H%M%S}.png"
        write_raster(p, rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), crs=None, driver="PNG")
        made.append(p)
    res = {}

    def drop():
        time.sleep(4)
        for p in made[:4]:
            shutil.copy(p, cams / p.parent.name)
            wait(out, made.index(p) + 1)
            time.sleep(0.3)
        t0 = time.time()
        for p in made[4:]:
            shutil.copy(p, cams / p.parent.name)
        wait(out, n)
        res["t"] = (t0, time.time())

    th = threading.Thread(target=drop, daemon=True)
    th.start()
    cfg = StreamConfig(
        watch=str(cams),
        registry=reg,
        out=out,
        poll_seconds=POLL,
        duration=90,
        pictures=False,
        allowed_lateness=3600,
    )
    r = run_stream(cfg, ["--direct_num_workers=1"], save_main_session=False)
    th.join(5)
    e = sorted(r["entries"], key=lambda e: e["mtime"])
    burst = e[4:]
    first = min(x["mtime"] for x in burst)
    last = max(x["done"] for x in burst)
    return {
        "labelled": r["labelled"],
        "late": r["late"],
        "single_latency_s": [round(x["done"] - x["mtime"], 2) for x in e[:4]],
        "burst_frames": len(burst),
        "burst_first_landed_to_last_queryable_s": round(last - first, 2),
        "frames_per_second": round(len(burst) / (last - first), 1),
        "burst_median_latency_s": round(
            statistics.median(x["done"] - x["mtime"] for x in burst), 2
        ),
    }


def main() -> None:
    which = sys.argv[1:] or ["scenes", "frames"]
    out = {"load_before": os.getloadavg()}
    for w in which:
        out[w] = {"scenes": scenes, "frames": frames}[w]()
    out["load_after"] = os.getloadavg()
    print("RESULT", json.dumps(out))


if __name__ == "__main__":
    main()
