"""``minewatch stream`` on the corpus scenes: killed, restarted again and again, each file once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minewatch.query import open_tables, run_query
from pipelines.stream import StreamConfig, ledger_entries, run_stream
from tests.reliability.corpus import cases_of

# A stream process killed, then three to five stream runs: ~50 s on 2 busy cores.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.5


def _query(out, sql):
    con, _ = open_tables(str(out))
    return run_query(con, sql).to_pylist()


@pytest.fixture(scope="module")
def restarts(corpus, oracle, tmp_path_factory):
    _, cases = corpus
    base = tmp_path_factory.mktemp("stream")
    watch, out = base / "watch", base / "tables"
    watch.mkdir()
    files = [c for c in cases_of(cases, "scenes") if os.path.isfile(c.path)]
    for case in files:
        shutil.copy(case.path, watch / os.path.basename(case.path))
    late = next(c for c in files if c.expect == "ok")
    # 1. a stream process killed with SIGKILL once it has labelled something
    args = ["stream", "--watch", str(watch), "--model", oracle, "--out", str(out)]
    args += ["--poll-seconds", str(POLL), "--max-polls", "200", "--no-pictures"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minewatch.cli.main", *args, "--direct_num_workers=1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.time() + 240
    while not ledger_entries(str(out)):
        assert proc.poll() is None and time.time() < end, "the stream never labelled a file"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_with = len(ledger_entries(str(out)))
    # 2. restarted until every file is done (the first restart usually is enough;
    #    on a busy machine polls can bunch up before a file has held still)
    config = StreamConfig(
        watch=str(watch),
        registry=oracle,
        out=str(out),
        poll_seconds=POLL,
        max_polls=12,
        pictures=False,
    )
    runs = []
    while len(ledger_entries(str(out))) < len(files) - 1 and len(runs) < 3:
        runs.append(run_stream(config, ["--direct_num_workers=1"], save_main_session=False))
    # 3. restarted again with nothing new: nothing is labelled twice
    runs.append(run_stream(config, ["--direct_num_workers=1"], save_main_session=False))
    # 4. a new scene lands; restarted until it is done
    shutil.copy(late.path, watch / "late_arrival.tif")
    late_runs = []
    while not any(e["path"].endswith("late_arrival.tif") for e in ledger_entries(str(out))):
        assert len(late_runs) < 3, "the late arrival was never labelled"
        late_runs.append(run_stream(config, ["--direct_num_workers=1"], save_main_session=False))
    return {
        "watch": watch,
        "out": out,
        "files": files,
        "runs": runs,
        "late_runs": late_runs,
        "killed": killed_with,
    }


def test_every_file_is_labelled_or_dead_lettered_exactly_once(restarts):
    watch, out = restarts["watch"], restarts["out"]
    entries = ledger_entries(str(out))
    visible = sorted(n for n in os.listdir(watch) if not n.startswith("."))
    assert len(visible) == len(
        restarts["files"]
    )  # the hidden copy is left out, the late arrival added
    assert sorted(os.path.basename(e["path"]) for e in entries) == visible
    labelled = [e for e in entries if e["status"] == "labelled"]
    dead = [e for e in entries if e["status"] == "dead"]
    assert len(labelled) + len(dead) == len(visible)  # arrivals = labelled + dead-lettered
    ok = {os.path.basename(c.path) for c in restarts["files"] if c.expect == "ok"}
    assert {os.path.basename(e["path"]) for e in labelled} == ok | {"late_arrival.tif"}


def test_no_row_twice_after_a_kill_and_three_restarts(restarts):
    out = restarts["out"]
    rows = _query(
        out, "select scene_id, count(*) n, count(distinct tile_id) d from tile_labels group by 1"
    )
    assert rows and all(r["n"] == r["d"] == 25 for r in rows), rows  # 5 x 5 tiles each
    dead = _query(out, "select input, count(*) n from dead_letter where kind = 'input' group by 1")
    assert all(r["n"] == 1 for r in dead), dead


def test_each_dead_file_says_why(restarts):
    out = restarts["out"]
    dead = {
        os.path.basename(r["input"]): r["reason"]
        for r in _query(out, "select input, reason from dead_letter where kind = 'input'")
    }
    for case in restarts["files"]:
        if case.expect == "dead":
            reason = dead[os.path.basename(case.path)]
            expected = "no tile to label" if case.reason == "no tile kept" else case.reason
            assert expected in reason or "valid fraction" in reason, (case.name, reason)


def test_restarts_skip_what_is_done_and_label_what_is_new(restarts):
    assert restarts["killed"] >= 1  # the SIGKILL came after some work was recorded
    idle = restarts["runs"][-1]
    assert idle["labelled"] == idle["dead_lettered"] == 0
    late = restarts["late_runs"]
    assert sum(r["labelled"] for r in late) == 1
    assert sum(r["dead_lettered"] for r in late) == 0
    assert late[-1]["entries"][0]["path"].endswith("late_arrival.tif")


def test_hidden_files_are_not_arrivals(restarts):
    hidden = [c for c in restarts["files"] if c.expect == "ignored"]
    assert hidden
    paths = [e["path"] for e in ledger_entries(str(restarts["out"]))]
    assert not any(p.endswith(os.path.basename(hidden[0].path)) for p in paths)
