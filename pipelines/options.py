"""Options of the Beam jobs, and the split between our flags and Beam's.

Our flags are parsed by the click commands in :mod:`minewatch.cli`; whatever
else is on the command line passes to Beam's ``PipelineOptions`` unchanged
(``--runner``, ``--direct_num_workers``, Dataflow / Flink options, ...).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from minewatch.rasters import DEFAULT_MAX_PIXELS, CloudMask
from minewatch.scenes import DEFAULT_FRAME_PATTERN

__all__ = ["TileConfig", "run_pipeline", "split_beam_args"]


@dataclass(frozen=True)
class TileConfig:
    """Everything ``minewatch tile`` needs besides Beam's own options.

    Attributes:
        inputs: Files, globs or folders (local or ``gs://``).
        out: Output folder.
        labels: GeoJSON/GeoPackage polygons for every scene, or a frames CSV; None
            for weak labels (or when ``scene_labels`` is given).
        scene_labels: ``(scene_id, polygon file)`` pairs: per-scene labels, from a
            folder or glob of label files matched to scenes by file stem.
        label_field: Class attribute of the polygons. Default ``class``.
        classes: Class names in index order; by default taken from the labels.
        label_source: ``vector``, ``csv``, ``weak`` or ``none`` (set by the CLI).
        sparse_labels: Pixels outside every polygon are unknown, not background.
        min_class_fraction: Fraction of a tile's valid pixels a class needs to
            label the tile. Default 0.05.
        bands: Band names to stack, in order; all of the scene's when None.
        tile_size: Tile side in pixels. Default 64.
        stride: Step between tiles; ``tile_size`` (no overlap) when None.
        edge: ``shift``, ``pad`` or ``drop`` for the last row/column of tiles.
        min_valid: Tiles with a smaller valid fraction are dropped. Default 0.5.
        resolution: Grid pixel size in CRS units; the finest band's when None.
        resampling: rasterio resampling for bands off the grid. Default bilinear.
        nodata: Nodata value overriding the files'.
        cloud: Optional quality-band cloud mask.
        frame_pattern: Regex with ``camera_id`` and ``timestamp`` groups for frames.
        block_tiles: Tiles per side of the block a worker reads at once. Default 8.
        max_scene_pixels: Scenes declaring more pixels are refused.
        records_per_shard: Most tiles per TFRecord shard. Default 4096.
        gdal_cache_mb: GDAL block cache per worker process, in MB. Default 128.
        csv_columns: Header of the frames CSV (set by the CLI after checking it).
    """

    inputs: tuple[str, ...]
    out: str
    labels: str | None = None
    scene_labels: tuple[tuple[str, str], ...] = ()
    label_field: str = "class"
    classes: tuple[str, ...] = ()
    label_source: str = "weak"
    sparse_labels: bool = False
    min_class_fraction: float = 0.05
    bands: tuple[str, ...] | None = None
    tile_size: int = 64
    stride: int | None = None
    edge: str = "shift"
    min_valid: float = 0.5
    resolution: float | None = None
    resampling: str = "bilinear"
    nodata: float | None = None
    cloud: CloudMask | None = None
    frame_pattern: str = DEFAULT_FRAME_PATTERN
    block_tiles: int = 8
    max_scene_pixels: int = DEFAULT_MAX_PIXELS
    records_per_shard: int = 4096
    gdal_cache_mb: int = 128
    csv_columns: tuple[str, ...] = ()

    @property
    def step(self) -> int:
        """The stride, defaulting to the tile size."""
        return self.stride or self.tile_size


@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    seen: set[type] = set()
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue  # an option two classes both declare; the first one stands
    return parser


def split_beam_args(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split leftover command-line tokens into positional inputs and Beam options.

    A token starting with ``--`` is a Beam option; it takes the next token as its
    value when Beam declares it with a value (``--runner DirectRunner``) unless
    written ``--name=value``.

    Args:
        tokens: What click left over after parsing our own options.

    Returns:
        ``(inputs, beam_args)``.
    """
    actions = _beam_parser()._option_string_actions
    inputs: list[str] = []
    beam: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            beam.append(token)
            action = actions.get(token.split("=", 1)[0])
            takes_value = action is not None and action.nargs != 0
            if takes_value and "=" not in token and i + 1 < len(tokens):
                beam.append(tokens[i + 1])
                i += 1
        else:
            inputs.append(token)
        i += 1
    return inputs, beam


def run_pipeline(
    transform: Any,
    beam_args: Sequence[str],
    save_main_session: bool,
    test_pipeline: Any,
    stats_path: str,
) -> tuple[dict[str, Any] | None, Any]:
    """Apply a job's composite transform to a pipeline, run it, read its stats file.

    Args:
        transform: The job's ``PTransform`` (applied to the pipeline's root).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.
        stats_path: The JSON file the job writes last.

    Returns:
        ``(stats, result)``: the stats file's contents and Beam's pipeline result;
        ``(None, None)`` when building on ``test_pipeline``, and ``(None, result)``
        for a ``--dry_run`` (nothing ran, so there are no stats).
    """
    import json

    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, TestOptions

    options = PipelineOptions(list(beam_args))
    options.view_as(SetupOptions).save_main_session = save_main_session
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    _ = pipeline | transform
    if test_pipeline is not None:
        return None, None
    result = pipeline.run()
    if options.view_as(TestOptions).dry_run:  # e.g. Dataflow --dry_run: built, not run
        return None, result
    result.wait_until_finish()
    with FileSystems.open(stats_path) as f:
        stats: dict[str, Any] = json.loads(f.read())
    return stats, result
