"""``minewatch infer`` on the corpus: scenes, frames and tile records, each accounted for."""

from __future__ import annotations

import os
import shutil

import pytest

from minewatch.query import open_tables, run_query
from pipelines.infer import run
from tests.reliability.corpus import cases_of


def _query(out, sql):
    con, _ = open_tables(str(out))
    return run_query(con, sql).to_pylist()


@pytest.fixture(scope="module")
def scenes_job(corpus, oracle, tmp_path_factory):
    root, cases = corpus
    out = tmp_path_factory.mktemp("infer") / "tables"
    args = [str(root / "scenes"), str(root / "frames"), "--model", oracle, "--out", str(out)]
    stats = run([*args, "--no-pictures"])
    return out, stats, cases


def test_each_bad_scene_and_frame_has_one_input_row_naming_the_problem(scenes_job):
    out, _, cases = scenes_job
    dead = _query(out, "select input, kind, reason from dead_letter where kind = 'input'")
    for case in cases_of(cases, "scenes", "dead") + cases_of(cases, "frames", "dead"):
        rows = [r for r in dead if r["input"] == case.path]
        assert len(rows) == 1, (case.name, rows)
        assert case.reason in rows[0]["reason"], (case.name, rows[0]["reason"])


def test_every_input_is_labelled_or_dead_lettered_never_both_never_neither(scenes_job):
    out, stats, cases = scenes_job
    inputs = {
        c.path for c in cases if c.group in ("scenes", "frames") and c.expect not in ("ignored",)
    }
    labelled = {r["source"] for r in _query(out, "select distinct source from tile_labels")}
    dead = {r["input"] for r in _query(out, "select distinct input from dead_letter")}
    assert labelled | dead == inputs
    # a scene that is labelled may also lose some tiles (NaN pixels), never the reverse
    only_dead = inputs - labelled
    assert {os.path.basename(p) for p in only_dead} >= {"dead-all-nan.tif", "dead-zero.tif"}
    assert labelled == {
        c.path for c in cases if c.group == "scenes" and c.expect == "ok"
    }  # the frame is refused by a tile model, tile by tile, then as an input
    # infer_stats.json accounts for every input: labelled + dead-lettered = total,
    # and each dead-lettered one has exactly one row of kind input saying why
    assert stats["inputs"] == {
        "total": len(inputs),
        "labelled": len(labelled),
        "dead_lettered": len(inputs - labelled),
    }
    rows = _query(out, "select input, reason from dead_letter where kind = 'input'")
    assert sorted(r["input"] for r in rows) == sorted(inputs - labelled)
    (frame,) = [r for r in rows if r["input"].endswith("20240101T000000.png")]
    assert (
        frame["reason"].startswith("no tile kept (") and "cannot label a frame" in frame["reason"]
    )
    counts = stats["counts"]
    assert counts["tiles_in"] == counts["tiles_labelled"] + counts["tiles_dead_lettered"]
    assert counts["scenes_labelled"] == len(labelled)
    n = _query(out, "select count(*) n from tile_labels")[0]["n"]
    assert n == counts["tiles_labelled"]


@pytest.fixture
def tile_dir(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "tiles"
    shutil.copytree(root / "tiles", copy)
    return copy


def test_bad_records_are_dead_lettered_and_counted(tile_dir, oracle, tmp_path, corpus):
    _, cases = corpus
    for name in ("tiles-truncated.tfrecord", "tiles-crc.tfrecord"):
        os.remove(tile_dir / "tiles" / name)
    out = tmp_path / "tables"
    stats = run([str(tile_dir), "--model", oracle, "--out", str(out), "--no-pictures"])
    counts = stats["counts"]
    assert counts["tiles_in"] == counts["tiles_labelled"] + counts["tiles_dead_lettered"]
    assert counts["tiles_labelled"] == 8 and counts["tiles_dead_lettered"] == 5
    reasons = [r["reason"] for r in _query(out, "select reason from dead_letter")]
    for case in cases_of(cases, "tiles", "dead"):
        if case.name.startswith("record-"):
            assert sum(case.reason.lower() in r.lower() for r in reasons) >= 1, case.name


@pytest.mark.parametrize("shard", ["tiles-truncated.tfrecord", "tiles-crc.tfrecord"])
def test_a_corrupt_shard_is_dead_lettered_not_fatal(tile_dir, oracle, tmp_path, shard):
    keep = {"tiles-good.tfrecord", shard}
    for name in os.listdir(tile_dir / "tiles"):
        if name not in keep:
            os.remove(tile_dir / "tiles" / name)
    out = tmp_path / "tables"
    stats = run([str(tile_dir), "--model", oracle, "--out", str(out), "--no-pictures"])
    assert stats["counts"]["tiles_labelled"] >= 8
    rows = _query(out, "select input from dead_letter")
    assert [os.path.basename(r["input"]) for r in rows] == [shard]
