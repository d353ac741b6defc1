"""``minewatch graph`` on the corpus tile folder: bad records and shards dead-lettered."""

from __future__ import annotations

import os

import pytest

from pipelines.graph import run as graph_job
from tests.factories import read_table
from tests.reliability.corpus import cases_of


@pytest.fixture(scope="module")
def job(corpus, tmp_path_factory):
    root, cases = corpus
    out = tmp_path_factory.mktemp("graph") / "out"
    stats = graph_job([str(root / "tiles"), "--out", str(out), "--k", "2"])
    return out, stats, cases


def test_each_bad_record_and_shard_has_a_row_naming_the_problem(job):
    out, _, cases = job
    dead = read_table(out, "dead_letter")
    for case in cases_of(cases, "tiles", "dead"):
        if case.name.startswith("record-"):
            # a record that cannot be parsed has no trustworthy tile id: the reason
            # names it (wrong shape) or the problem (missing features, not an Example)
            rows = [r for r in dead if r["stage"] == "parse" and case.reason in r["reason"]]
        else:
            rows = [r for r in dead if r["input"] == case.path]
        assert rows, case.name
        assert all(case.reason in r["reason"] for r in rows), (case.name, rows)
    assert len([r for r in dead if r["stage"] == "parse"]) == 5


def test_records_read_equal_embedded_plus_dead_letter(job):
    out, stats, _ = job
    tiles = stats["tiles"]
    dead = read_table(out, "dead_letter")
    assert tiles["read"] == tiles["embedded"] + sum(tiles["dead_lettered"].values())
    assert sum(tiles["dead_lettered"].values()) == sum(r["stage"] != "read" for r in dead)
    # shards that break part-way: one row each, and the job says how many
    assert stats["files_corrupt"] == sum(r["stage"] == "read" for r in dead) == 2
    # 8 good tiles, plus the first record of the shard cut short
    assert tiles["embedded"] == 9 == stats["packed"]


def test_zero_byte_shard_is_read_as_empty(job):
    out, _, cases = job
    (zero,) = [c for c in cases if c.name == "shard-zero"]
    assert os.path.getsize(zero.path) == 0
    assert not any(r["input"] == zero.path for r in read_table(out, "dead_letter"))
