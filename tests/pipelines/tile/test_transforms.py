"""The Tile job's transforms one at a time, on a TestPipeline with Beam's assert_that."""

import collections

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from minewatch.rasters import plan_blocks
from minewatch.scenes import SceneRef
from pipelines.tile.accounting import COUNTS, DEAD, AccountScenes
from pipelines.tile.discover import DiscoverScenes
from pipelines.tile.options import TileConfig
from pipelines.tile.plan import BlockTask, GroupBlocksIntoShards, PlanScene
from tests.factories import gradient, write_raster


def reasons(expected):
    """assert_that matcher: the dead-letter rows' (input basename, stage, reason start)."""

    def check(rows):
        got = sorted((r["input"].rsplit("/", 1)[-1], r["stage"], r["reason"]) for r in rows)
        want = sorted(expected)
        assert len(got) == len(want), got
        for (name, stage, reason), (w_name, w_stage, w_reason) in zip(got, want, strict=True):
            assert (name, stage) == (w_name, w_stage) and reason.startswith(w_reason), got

    return check


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_raster(folder / "a.tif", gradient(40, 40))
    write_raster(folder / "b.tif", gradient(24, 40))
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return folder


def test_discover_groups_files_into_scenes_and_dead_letters_a_pattern_matching_nothing(scenes):
    with BeamTestPipeline() as p:
        out = (
            p
            | beam.Create([[str(scenes), str(scenes / "nothing-*.tif")]])
            | beam.ParDo(DiscoverScenes(r"(?P<camera_id>x)(?P<timestamp>y)")).with_outputs(
                DEAD, COUNTS, main="refs"
            )
        )
        ids = out.refs | beam.Map(lambda r: r.scene_id)
        assert_that(ids, equal_to(["a", "b", "broken"]), label="refs")
        assert_that(
            out[DEAD], reasons([("nothing-*.tif", "discover", "matched no file")]), label="dead"
        )
        totals = out[COUNTS] | beam.Values() | beam.CombineGlobally(sum, collections.Counter())
        assert_that(
            totals,
            equal_to([collections.Counter(inputs_discovered=3, inputs_rejected=1)]),
            label="counts",
        )


def test_plan_splits_a_scene_into_blocks_and_dead_letters_one_it_cannot_open(scenes):
    config = TileConfig(inputs=(str(scenes),), out="unused", tile_size=8, block_tiles=2)
    refs = [
        SceneRef(n, "scene", str(scenes / f"{n}.tif"), (str(scenes / f"{n}.tif"),)) for n in "ab"
    ]
    broken = SceneRef("broken", "scene", str(scenes / "broken.tif"), (str(scenes / "broken.tif"),))
    with BeamTestPipeline() as p:
        out = (
            p
            | beam.Create([(r, None) for r in [*refs, broken]])
            | beam.ParDo(PlanScene(config)).with_outputs(DEAD, COUNTS, main="tasks")
        )
        # a: 5 x 5 tiles in blocks of 2 x 2 -> 3 x 3 blocks; b: 3 x 5 tiles -> 2 x 3 blocks
        per_scene = out.tasks | beam.Map(lambda t: (t.ref.scene_id, t.block.num_tiles))
        blocks = per_scene | "Blocks" >> beam.combiners.Count.PerKey()
        tiles = per_scene | "Tiles" >> beam.CombinePerKey(sum)
        assert_that(blocks, equal_to([("a", 9), ("b", 6)]), label="blocks")
        assert_that(tiles, equal_to([("a", 25), ("b", 15)]), label="tiles")
        assert_that(out[DEAD], reasons([("broken.tif", "open", "")]), label="dead")


def tasks(scene_id, height, width, tile=8, block_tiles=2):
    ref = SceneRef(scene_id, "scene", f"/{scene_id}.tif", (f"/{scene_id}.tif",))
    return [
        BlockTask(ref, None, b)
        for b in plan_blocks(height, width, tile, tile, "shift", block_tiles)
    ]


def test_blocks_are_dealt_into_shards_by_planned_tiles_and_come_out_in_order():
    items = tasks("a", 64, 64) + tasks("b", 40, 64)  # 64 + 40 tiles
    with BeamTestPipeline() as p:
        out = p | beam.Create(items) | GroupBlocksIntoShards(records_per_shard=20)

        def check(got):
            # 104 planned tiles at 80% of 20 per shard -> 7 shards, named alike
            assert len(got) == len(items)
            names = {t.shard for t in got}
            assert names <= {f"tiles-{i:05d}-of-00007" for i in range(7)} and len(names) > 1
            keys = [(t.ref.scene_id, t.block.row, t.block.col) for t in got]
            assert sorted(keys) == sorted((t.ref.scene_id, t.block.row, t.block.col) for t in items)

        assert_that(out, check)
        by_shard = out | beam.Map(lambda t: (t.shard, (t.ref.scene_id, t.block.row, t.block.col)))
        assert_that(by_shard | beam.GroupByKey(), is_not_empty(), label="grouped")


def test_the_same_blocks_land_in_the_same_shards_whatever_their_order():
    items = tasks("a", 64, 64) + tasks("b", 40, 64)

    def shards(pcoll, label):
        return pcoll | label >> beam.Map(
            lambda t: ((t.ref.scene_id, t.block.row, t.block.col), t.shard)
        )

    with BeamTestPipeline() as p:
        forward = shards(
            p | "Forward" >> beam.Create(items) | "F" >> GroupBlocksIntoShards(20), "KeyF"
        )
        backward = shards(
            p | "Backward" >> beam.Create(items[::-1]) | "B" >> GroupBlocksIntoShards(20), "KeyB"
        )
        joined = {"f": forward, "b": backward} | beam.CoGroupByKey()
        differ = joined | beam.Filter(lambda kv: list(kv[1]["f"]) != list(kv[1]["b"]))
        assert_that(differ, equal_to([]), label="same")
        assert_that(joined | beam.combiners.Count.Globally(), equal_to([len(items)]), label="all")


def test_accounting_tiles_a_scene_with_tiles_and_dead_letters_one_that_kept_none():
    counts = [
        ("", collections.Counter(inputs_discovered=3, inputs_rejected=1)),
        ("a", collections.Counter(planned=4, written=3, **{"dropped.below_min_valid": 1})),
        ("b", collections.Counter(planned=2)),
        ("b", collections.Counter({"dropped.below_min_valid": 2})),
        ("c", collections.Counter(failed=1)),
    ]
    with BeamTestPipeline() as p:
        totals, dead = p | beam.Create(counts) | AccountScenes()
        assert_that(
            totals,
            equal_to(
                [
                    {
                        "inputs_discovered": 3,
                        "inputs_rejected": 1,
                        "planned": 6,
                        "written": 3,
                        "dropped.below_min_valid": 3,
                        "inputs_tiled": 1,
                        "inputs_dead_lettered": 2,
                    }
                ]
            ),
            label="totals",
        )
        assert_that(
            dead, reasons([("b", "account", "no tile kept (2 below_min_valid)")]), label="dead"
        )
