"""Infer on STAC inputs: an ItemCollection of two dated scenes (one multiband COG asset
each) labels them as the files themselves are labelled; a broken item is dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from minewatch.query import open_tables, run_query
from pipelines.infer import run as infer
from tests.factories import save_oracle, squares_scene

DATES = ("2024-01-01", "2024-02-01")


def stac_item(item_id, href, when):
    bands = [{"name": b} for b in ("B02", "B03", "B04")]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": when},
        "links": [],
        "assets": {
            "image": {
                "href": href,
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
                "eo:bands": bands,
            },
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        },
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_stac")
    scenes = root / "scenes"
    scenes.mkdir()
    squares_scene(scenes, [(16, 16, 32), (64, 64, 16)], DATES[0])
    squares_scene(scenes, [(16, 16, 48), (64, 64, 16)], DATES[1])
    items = [stac_item(f"scene_{d}", f"scenes/scene_{d}.tif", f"{d}T10:00:00Z") for d in DATES]
    items.append(stac_item("gone", "scenes/nowhere.tif", "2024-03-01T10:00:00Z"))
    collection = root / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    model = save_oracle(root / "model")
    args = ["--model", model, "--site-classes", "stockpile", "--stride", "8"]
    stac_stats = infer([str(collection), "--out", str(root / "stac"), *args])
    infer([str(scenes), "--out", str(root / "files"), *args])
    return root, collection, stac_stats


def test_the_items_label_like_their_files(runs):
    root, _, stats = runs
    assert stats["inputs"] == {"total": 3, "labelled": 2, "dead_lettered": 1}
    query = (
        "select scene_id, count(*) n, sum(label) s, round(sum(score), 4) score "
        "from tile_labels group by 1 order by 1"
    )
    a = run_query(open_tables(str(root / "stac"))[0], query).to_pylist()
    b = run_query(open_tables(str(root / "files"))[0], query).to_pylist()
    assert a == b and len(a) == 2
    sites = "select kind, round(area_m2) a, acquisitions from sites order by a"
    assert (
        run_query(open_tables(str(root / "stac"))[0], sites).to_pylist()
        == run_query(open_tables(str(root / "files"))[0], sites).to_pylist()
    )
    acquired = run_query(
        open_tables(str(root / "stac"))[0], "select distinct acquired from tile_labels order by 1"
    ).to_pylist()
    assert [r["acquired"] for r in acquired] == [
        datetime.fromisoformat(f"{d}T10:00:00+00:00").astimezone(UTC) for d in DATES
    ]


def test_an_item_whose_asset_is_missing_is_dead_lettered(runs):
    root, collection, _ = runs
    con, _ = open_tables(str(root / "stac"))
    rows = run_query(con, "select input, reason from dead_letter").to_pylist()
    assert rows == [
        {
            "input": f"{collection}#gone",
            "reason": f"STAC asset 'image' (all bands) is missing: {root}/scenes/nowhere.tif",
        }
    ]
