"""Linking sites across acquisitions (LinkSites), on real files."""

from __future__ import annotations

import shapely

from minewatch.query import open_tables, run_query
from tests.factories import ORIGIN, save_oracle


def test_link_sites_moves_a_site_to_its_earlier_first_sighting_without_a_stale_copy(tmp_path):
    from minewatch.registry import resolve_model
    from pipelines.infer.linking import LinkSites
    from pipelines.infer.options import InferConfig
    from pipelines.infer.sites import SceneSites

    model = resolve_model(save_oracle(tmp_path / "model"))
    config = InferConfig(inputs=(), out=str(tmp_path), model=model, pictures=False)
    x, y = ORIGIN.c, ORIGIN.f
    pile = {
        "kind": "stockpile",
        "wkb": bytes(shapely.to_wkb(shapely.box(x + 100, y - 300, x + 300, y - 100))),
        "area_m2": 40_000.0,
        "score": 0.9,
        "flagged": False,
        "reason": None,
        "licence_id": None,
        "volume": None,
    }

    def sighting(day):
        return SceneSites(f"scene_{day}", f"{day}T10:00:00+00:00", "EPSG:32633", [dict(pile)])

    def files(table):
        return sorted(str(p.relative_to(tmp_path / table)) for p in (tmp_path / table).rglob("*"))

    link = LinkSites(config)
    list(link.process(("other-area", [sighting("2024-02-01")])))
    list(link.process(("area", [sighting("2024-02-01"), sighting("2024-03-01")])))
    assert "date=2024-02-01/area__v1.parquet" in files("sites")
    # an earlier acquisition arrives later: the site is first seen in January now
    list(link.process(("area", [sighting("2024-01-01"), sighting("2024-02-01")])))
    assert files("sites") == [
        "date=2024-01-01",
        "date=2024-01-01/area__v1.parquet",
        "date=2024-02-01",
        "date=2024-02-01/other-area__v1.parquet",  # another area is left alone
    ]
    assert "date=2024-03-01/area__v1.parquet" not in files("stockpile_series")
    con, _ = open_tables(str(tmp_path))
    sites = run_query(con, "select first_seen, acquisitions from sites").to_pylist()
    assert len(sites) == 2 and sorted(s["acquisitions"] for s in sites) == [1, 2]
    series = run_query(con, "select count(*) n from stockpile_series").to_pylist()
    assert series == [{"n": 3}]  # other-area's one + area's two, none left from March
