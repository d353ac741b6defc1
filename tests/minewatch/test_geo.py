"""Coordinate reference systems: which measure in metres."""

import pytest

from minewatch.geo import is_metric


@pytest.mark.parametrize(
    "crs, metric",
    [("EPSG:32618", True), ("EPSG:3857", True), ("EPSG:4326", False), ("EPSG:2263", False)],
)
def test_is_metric_only_for_projected_crs_in_metres(crs, metric):
    from pyproj import CRS

    assert is_metric(crs) is metric
    assert is_metric(CRS.from_user_input(crs)) is metric  # a pyproj CRS as it is
