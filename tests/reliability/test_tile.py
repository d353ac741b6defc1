"""``minewatch tile`` over the whole bad-input corpus: each case refused clearly, counts add up."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from minewatch.cli.tile import tile
from pipelines.tile import run as tile_job
from tests.factories import assert_accounting, read_table, read_tiles
from tests.reliability.corpus import cases_of

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@pytest.fixture(scope="module")
def job(corpus, tmp_path_factory):
    root, cases = corpus
    out = tmp_path_factory.mktemp("tile") / "out"
    stats = tile_job(
        [
            str(root / "scenes"),
            str(root / "frames"),
            "--out",
            str(out),
            "--bands",
            "B02,B03,B04",
            "--labels",
            str(root / "labels" / "labels.geojson"),
            "--tile-size",
            "16",
        ]
    )
    return out, stats, cases


def _rows_for(dead, case):
    return [
        r
        for r in dead
        if r["kind"] in ("input", "label")
        and (r["input"] == case.path or r["scene_id"] == os.path.basename(case.path)[:-4])
    ]


@pytest.mark.parametrize("group", ["scenes", "frames", "labels"])
def test_every_dead_case_has_one_row_naming_the_problem(job, group):
    out, _, cases = job
    dead = read_table(out, "dead_letter")
    checked = 0
    for case in cases_of(cases, group, "dead"):
        rows = _rows_for(dead, case)
        assert len(rows) == 1, (case.name, rows)
        assert case.reason in rows[0]["reason"], (case.name, rows[0]["reason"])
        checked += 1
    assert checked >= 3


def test_ok_cases_are_tiled_and_no_dead_case_is(job):
    out, _, cases = job
    tiled = {r["source"] for r in read_table(out, "manifest")}
    ok = {c.path for c in cases if c.group in ("scenes", "frames") and c.expect == "ok"}
    assert tiled == ok


def test_inputs_equal_outputs_plus_dead_letter(job):
    out, stats, cases = job
    assert_accounting(stats)
    inputs = [c for c in cases if c.group in ("scenes", "frames") and c.expect != "ignored"]
    assert stats["inputs"]["total"] == len(inputs)
    assert stats["inputs"]["tiled"] == sum(c.expect == "ok" for c in inputs)
    dead = read_table(out, "dead_letter")
    assert stats["inputs"]["dead_lettered"] == sum(r["kind"] == "input" for r in dead)
    tile_rows = sum(r["kind"] == "tile" for r in dead)
    assert tile_rows == sum(stats["tiles"]["dropped"].values())
    assert stats["tiles"]["written"] == len(read_table(out, "manifest")) == len(read_tiles(out))
    # 'pile' is only on a rejected feature (a point): not a class of the job
    assert stats["classes"] == ["background", "mining_scar", "stockpile"]
    labels = cases_of(cases, "labels")
    features = [c for c in labels if "#" in c.path]
    # every feature is used or dead-lettered: kept + rejected, and each kept one
    # that overlaps no scene is dead-lettered too
    kept = stats["labels"]["features"]
    assert kept + stats["labels"]["features_rejected"] == len(features)
    outside = [r for r in dead if "outside every scene" in r["reason"]]
    assert kept - len(outside) == sum(c.expect == "ok" for c in features)


def test_hidden_files_are_skipped_not_counted(job):
    out, _, cases = job
    (hidden,) = [c for c in cases if c.expect == "ignored"]
    assert not any(r["input"] == hidden.path for r in read_table(out, "dead_letter"))
    assert not any(r["source"] == hidden.path for r in read_table(out, "manifest"))


def test_nan_and_inf_pixels_are_invalid_never_written_as_data(job):
    out, _, _ = job
    tiles = [t for t in read_tiles(out).values() if t.scene_id == "ok-nan-inf"]
    assert tiles and any(t.valid_fraction < 1 for t in tiles)
    for t in tiles:
        assert np.isfinite(t.image).all()
        assert (t.image[~t.valid] == 0).all()


def test_odd_names_give_safe_ids_and_nothing_escapes_the_output(job):
    out, _, _ = job
    ids = {r["scene_id"] for r in read_table(out, "manifest")}
    assert any("odd" in i for i in ids) and any("dots" in i for i in ids)
    for i in ids:
        assert set(i) <= SAFE and not i.startswith("."), i
    real = os.path.realpath(out)
    for folder, dirs, files in os.walk(out):
        for name in files + dirs:
            assert os.path.realpath(os.path.join(folder, name)).startswith(real + os.sep)
            assert set(name) <= SAFE | {"="}, name
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]  # temp folder removed


@pytest.mark.parametrize("name", ["labels-empty", "labels-garbage", "labels-all-wrong-crs"])
def test_unusable_label_files_are_refused_before_work_starts(corpus, tmp_path, name):
    root, cases = corpus
    (case,) = [c for c in cases if c.name == name]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        tile, [str(root / "scenes" / "ok-good.tif"), "--out", str(out), "--labels", case.path]
    )
    assert result.exit_code == 2, result.output
    assert "--labels" in result.output and case.reason in result.output
    assert not out.exists() or not os.listdir(out)


def test_dotdot_and_relative_input_paths_resolve_to_the_same_scene(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    monkeypatch.chdir(root / "frames")
    stats = tile_job(["../scenes/../scenes/ok-good.tif", "--out", str(tmp_path / "o")])
    assert stats["inputs"] == {"total": 1, "tiled": 1, "dead_lettered": 0}
    (source,) = {r["source"] for r in read_table(tmp_path / "o", "manifest")}
    assert source == str(root / "scenes" / "ok-good.tif")
