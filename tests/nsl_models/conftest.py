"""Tiny real training data: synthetic ground truth through the real tile job."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tile_data(tmp_path_factory) -> str:
    """Tile-job output of the tiny synthetic scenes (16 px, 5 bands), packed with neighbours."""
    from minewatch.synth import make_ground_truth
    from pipelines.graph import run as graph
    from pipelines.tile import run as tile_job

    root = tmp_path_factory.mktemp("nsl_data")
    gt = root / "gt"
    make_ground_truth(gt, size="tiny", seed=0)
    out = str(root / "tiles")
    tile_job(
        [
            str(gt / "scenes"),
            "--out",
            out,
            "--labels",
            str(gt / "truth" / "scene_*.geojson"),
            "--tile-size",
            "16",
            "--bands",
            "B02,B03,B04,B08,B11",
        ]
    )
    # neighbours from the real graph job (k=2), next to the tiles: see tiny_config
    graph([out, "--out", out + "_graph", "--k", "2"])
    frames = str(root / "frames")
    tile_job(
        [
            str(gt / "frames"),
            "--out",
            frames,
            "--labels",
            str(gt / "frames" / "labels.csv"),
            "--tile-size",
            "32",
        ]
    )
    return out


@pytest.fixture(scope="session")
def frame_data(tile_data) -> str:
    """Tile-job output of the tiny belt frames (32 px RGB, ore grades)."""
    import os

    return os.path.join(os.path.dirname(tile_data), "frames")


def tiny_config(tiles: str, **sections):
    """A config whose model and run are small enough for a unit test.

    Trains on the graph job's packed records when they sit beside the tiles.
    """
    import os

    from nsl_models.configs import make_trainer_config

    graph = tiles + "_graph"
    base = {
        "data": {
            "tiles": tiles,
            "graph": graph if os.path.isdir(graph) else "",
            "batch_size": 16,
            "shuffle_buffer": 256,
        },
        "model": {"width": 8, "depth": 1, "embedding_dim": 16, "dropout": 0.0},
        "train": {"epochs": 1, "steps_per_epoch": 6, "checkpoint_every": 3, "seed": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return make_trainer_config(**base)
