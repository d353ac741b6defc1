"""The stream takes STAC Item files dropped in the watched folder, one scene each."""

from __future__ import annotations

import json

from click.testing import CliRunner

from minewatch.cli.stream import stream as stream_cmd
from pipelines.stream import ledger_entries
from tests.pipelines.infer.test_stac import stac_item
from tests.pipelines.stream.test_job import _promote, _query, _scene


def test_stac_items_are_units_and_collections_are_refused(tmp_path):
    registry, watch, data, out = (tmp_path / n for n in ("registry", "watch", "data", "tables"))
    for folder in (registry, watch, data):
        folder.mkdir()
    _promote(registry, "v1")
    _scene(data / "s.tif", True)
    item = stac_item("S_20240201", str(data / "s.tif"), "2024-02-01T10:00:00Z")
    (watch / "item.json").write_text(json.dumps(item))
    (watch / "two.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": [item, item]})
    )
    args = ["--watch", str(watch), "--model", str(registry), "--out", str(out)]
    args += ["--poll-seconds", "0.5", "--max-polls", "6", "--no-pictures"]
    result = CliRunner().invoke(stream_cmd, [*args, "--direct_num_workers=1"])
    assert result.exit_code == 0, result.output
    rows = _query(out, "select scene_id, count(*) n from tile_labels group by 1")
    assert rows == [{"scene_id": "S_20240201", "n": 25}]
    dead = _query(out, "select input, reason from dead_letter")
    assert len(dead) == 1 and dead[0]["input"].endswith("two.json")
    assert "one STAC Item" in dead[0]["reason"]
    assert {e["status"] for e in ledger_entries(str(out))} == {"labelled", "dead"}
