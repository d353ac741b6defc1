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


def pure_and_mixed_records(tmp_path, n_pure=40, n_mixed=8, numbered=False, dim=()):
    """``n_pure`` all-background 2 x 2 tiles (class 0), then ``n_mixed`` with a class-1 pixel.

    Tile ``i`` has ``tile/id`` ``s:0:{2 i}`` and every pixel 7, or ``i`` with
    ``numbered``; a tile in ``dim`` has pixel (0, 0) invalid and 1000 there (a pixel
    the losses and the hard-negative miner must ignore). Returns ``(path, spec)``.
    """
    import numpy as np

    from minewatch.spec import Tile, encode_tiles
    from minewatch.tfrecord import write_record
    from nsl_models import data as datalib

    tiles = []
    for i in range(n_pure + n_mixed):
        image = np.full((2, 2, 1), i if numbered else 7, np.uint16)
        valid = np.ones((2, 2), bool)
        if i in dim:
            image[0, 0, 0], valid[0, 0] = 1000, False
        tiles.append(
            Tile(
                "s",
                "scene",
                0,
                2 * i,
                image,
                valid,
                ("b",),
                label=0,
                label_source="vector",
                label_mask=np.array([[0, 0], [0, 1 if i >= n_pure else 0]], np.uint8),
            )
        )
    path = tmp_path / "pm.tfrecord"
    with open(path, "wb") as f:
        for record in encode_tiles(tiles):
            write_record(f, record)
    spec = datalib.TileSpec(2, 2, 1, "uint16", ("b",), ("bg", "a"), (0.0,), (1.0,))
    return str(path), spec


def assert_iterator_resumes(ds, folder, key: str) -> None:
    """A checkpoint of ``ds``'s iterator, restored, gives the same next 3 batches of ``key``."""
    import numpy as np
    import tensorflow as tf

    it = iter(ds)
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    saved = ckpt.write(str(folder / "it"))
    after = [next(it)[key].numpy() for _ in range(3)]
    ckpt.read(saved).assert_consumed()
    np.testing.assert_array_equal([next(it)[key].numpy() for _ in range(3)], after)
