"""Local and remote paths; JSON files written whole."""

import json
import math
import os

import pytest

from minewatch.paths import abs_path, is_remote, replace_file, write_json


def test_remote_paths_stay_as_they_are_and_local_ones_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_remote("gs://b/x") and not is_remote("/data/x") and not is_remote("x")
    assert abs_path("gs://b/x") == "gs://b/x"
    assert abs_path("x/y") == str(tmp_path / "x" / "y")


def test_write_json_creates_the_folder_replaces_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "a" / "stats.json")
    write_json(path, {"n": 1})
    write_json(path, {"n": 2, "when": tmp_path})  # other objects as str
    assert json.loads(open(path).read())["n"] == 2
    assert os.listdir(tmp_path / "a") == ["stats.json"]


def test_write_json_refuses_nan_when_strict_and_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "metadata.json")
    write_json(path, {"ok": True})
    with pytest.raises(ValueError):
        write_json(path, {"score": math.nan}, allow_nan=False)
    assert json.loads(open(path).read()) == {"ok": True}


def test_replace_file_moves_a_finished_file_over_the_old_one(tmp_path):
    old, new = tmp_path / "t.txt", tmp_path / ".tmp-1"
    old.write_text("old")
    new.write_text("new")
    replace_file(str(new), str(old))
    assert old.read_text() == "new" and not new.exists()
