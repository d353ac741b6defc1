"""The stream's options: declared once, parsed by ``run(argv)`` and the CLI, checked here.

:data:`STREAM_ARGS` declares the options of ``minewatch stream``. What a
scene's predictions become (:data:`~pipelines.infer.options.CLASS_ARGS`,
:data:`~pipelines.infer.options.SITE_ARGS`,
:data:`~pipelines.infer.options.VOLUMES_ARG`,
:data:`~pipelines.infer.options.OUTPUT_ARGS`) is declared and checked
(:func:`~pipelines.infer.options.output_options`) once, for both jobs.
:func:`stream_config` checks a parsed set and builds the :class:`StreamConfig`
the job runs on, raising :class:`ConfigError` naming the option that cannot
work. Nothing heavy is imported here, so the CLI can show the options at once.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minewatch.arguments import Float, Int, Switch, Text
from minewatch.errors import ConfigError
from minewatch.paths import abs_path, is_remote
from pipelines.infer.options import (
    CLASS_ARGS,
    OUTPUT_ARGS,
    SITE_ARGS,
    VOLUMES_ARG,
    InferConfig,
    SiteOptions,
    check_model_and_areas,
    output_options,
)
from pipelines.options import PROFILE, stac_band_map, with_profile

if TYPE_CHECKING:
    from minewatch.registry import ModelRef

__all__ = ["SHARED_WITH_INFER", "STREAM_ARGS", "StreamConfig", "stream_config"]

#: The options of ``minewatch stream`` / ``pipelines.stream.run``, in ``--help`` order.
STREAM_ARGS = (
    Text("--watch", required=True, metavar="GLOB", help="Folder or glob of scenes to watch."),
    Text(
        "--model",
        required=True,
        metavar="REGISTRY_OR_MODEL_DIR",
        help="A registry (its current model, followed while streaming) or a model folder.",
    ),
    Text("--out", required=True, metavar="TABLES_DIR", help="Tables folder."),
    Float(
        "--poll-seconds",
        low=0.1,
        default=10.0,
        show_default=True,
        help="Seconds between two listings; a file must hold still this long.",
    ),
    Int("--max-polls", low=1, help="Stop after this many polls."),
    Float("--duration", low=0, low_open=True, help="Stop after SECONDS."),
    Text("--concessions", metavar="FILE", help="Licensed areas (polygons, licence_id)."),
    Text("--protected", metavar="FILE", help="Protected areas (polygons, name)."),
    Int("--stride", low=1, help="Tiling step [default: half the model's tile size]."),
    Text(
        "--stac-bands",
        metavar="BAND=ASSET,...",
        help="For STAC Item files: the model's band names from asset keys or common names.",
    ),
    Int("--batch-size", low=1, high=4096, default=64, show_default=True, help="Tiles/call."),
    *CLASS_ARGS,
    *SITE_ARGS,
    VOLUMES_ARG,
    Switch(
        "--pictures/--no-pictures",
        default=True,
        show_default=True,
        help="Quicklook PNG per scene.",
    ),
    *OUTPUT_ARGS,
    Float(
        "--frame-window",
        low=0,
        low_open=True,
        default=60.0,
        show_default=True,
        metavar="SECONDS",
        help="Event-time window of the per-camera frame summaries.",
    ),
    Float(
        "--allowed-lateness",
        low=0,
        default=600.0,
        show_default=True,
        metavar="SECONDS",
        help="A frame arriving later than this after its window closed is dead-lettered.",
    ),
    Float(
        "--band-wait",
        low=0,
        default=600.0,
        show_default=True,
        metavar="SECONDS",
        help="A band folder lacking some of the model's bands is labelled as it is after this.",
    ),
    Text(
        "--subscription",
        metavar="projects/P/subscriptions/S",
        help="Read GCS object notifications from Pub/Sub instead of listing --watch "
        "(which then filters the objects, e.g. 'gs://bucket/incoming/**').",
    ),
    PROFILE,
)


@dataclass(frozen=True)
class StreamConfig:
    """Options of ``minewatch stream`` besides Beam's.

    Attributes:
        watch: Glob (or folder) of scenes to watch, local or remote; with
            ``subscription``, the pattern notified objects must match.
        registry: A registry (its ``current.json`` is followed) or a model folder.
        out: Tables folder (the ledger lives in ``out/_ledger``).
        poll_seconds: Seconds between two listings. Default 10.
        max_polls: Stop after this many polls; None for no limit.
        duration: Stop after this many seconds; None for no limit.
        stride: Tiling step; half the model's tile size when None.
        stac_bands: ``(band, asset key or common name)`` pairs for STAC Item files.
        batch_size: Most tiles per model call. Default 64.
        concessions: Polygons of licensed areas, or None.
        protected: Polygons of protected areas, or None.
        site_classes: Classes that make sites; all but background/other when empty.
        mining_classes: Site classes judged for legality. Default ``mining_scar``.
        sites: How sites are cut (:class:`~pipelines.infer.options.SiteOptions`);
            default the served model's operating points.
        volumes: Measure each stockpile sighting's volume. Default True.
        pictures: Draw a quicklook PNG per scene. Default True.
        dsm: Glob of DSM GeoTIFFs for stockpile volumes; default none.
        sun: ``(azimuth, elevation)`` in degrees for shadow volumes; default the
            scenes' tags.
        licensed_ports: Licensed ports/jetties file: vessels are found and
            judged (``vessels`` table). Default None.
        bigquery: ``bq://PROJECT.DATASET[.PREFIX]``: also upsert every table's
            new rows into BigQuery as each unit is labelled; default ``""``.
        frame_window: Seconds of the event-time windows frames are summarised
            over, per camera. Default 60.
        allowed_lateness: Seconds after its window's end that a frame is still
            counted in the window's summary. Default 600.
        band_wait: Seconds a band folder that lacks some of the model's bands
            waits (after its last change) before it is labelled as it is. Default 600.
        compact_every: Merge the ledger's loose files every this many polls.
            Default 100.
        subscription: Pub/Sub subscription of GCS object notifications to read
            instead of listing ``watch`` (production). Default None.
    """

    watch: str
    registry: str
    out: str
    poll_seconds: float = 10.0
    max_polls: int | None = None
    duration: float | None = None
    stride: int | None = None
    stac_bands: tuple[tuple[str, str], ...] = ()
    batch_size: int = 64
    concessions: str | None = None
    protected: str | None = None
    site_classes: tuple[str, ...] = ()
    mining_classes: tuple[str, ...] = ("mining_scar",)
    sites: SiteOptions = dataclasses.field(default_factory=SiteOptions)
    volumes: bool = True
    pictures: bool = True
    dsm: str | None = None
    sun: tuple[float, float] | None = None
    licensed_ports: str | None = None
    bigquery: str = ""
    frame_window: float = 60.0
    allowed_lateness: float = 600.0
    band_wait: float = 600.0
    compact_every: int = 100
    subscription: str | None = None

    @property
    def pattern(self) -> str:
        """The glob to match: a folder means every file and folder in it."""
        if not is_remote(self.watch) and os.path.isdir(self.watch):
            return posixpath.join(self.watch, "*")
        return self.watch

    def infer_config(self, model: ModelRef, source: str) -> InferConfig:
        """The batch job's options for one scene labelled by ``model``.

        Every option the two jobs share (:data:`SHARED_WITH_INFER`) is passed on by name.
        """
        shared = {name: getattr(self, name) for name in SHARED_WITH_INFER}
        return InferConfig(inputs=(source,), model=model, **shared)


#: The :class:`~pipelines.infer.options.InferConfig` fields a stream sets from its own.
SHARED_WITH_INFER = tuple(
    f.name
    for f in dataclasses.fields(InferConfig)
    if f.name in {g.name for g in dataclasses.fields(StreamConfig)}
)


def stream_config(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[StreamConfig, list[str]]:
    """Check parsed options and turn them into a :class:`StreamConfig`.

    Args:
        params: The options by name (:data:`STREAM_ARGS`' ``dest``).
        extra: Tokens the parser did not know: Beam options.

    Returns:
        ``(config, beam_args)``.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    # The registry's current model stands for the ones it will serve (same classes).
    served = check_model_and_areas(params)
    beam_args = with_profile(params.get("profile"), "infer", list(extra))
    model = abs_path(params["model"])  # the registry itself: followed while streaming
    local = not any(a.startswith("--runner") for a in beam_args) or any(
        "Direct" in a for a in beam_args
    )
    if params["subscription"] and local:
        raise ConfigError(
            "reading Pub/Sub notifications needs a streaming runner such as "
            "--runner DataflowRunner (the local runner cannot read Pub/Sub here)",
            option="--subscription",
        )
    if local and params["max_polls"] is None and params["duration"] is None:
        raise ConfigError(
            "a local stream never stops by itself: give --max-polls or --duration "
            "(or stop it with Ctrl-C)",
            option="--max-polls",
        )
    config = StreamConfig(
        watch=abs_path(params["watch"]),
        registry=model,
        out=abs_path(params["out"]),
        poll_seconds=params["poll_seconds"],
        max_polls=params["max_polls"],
        duration=params["duration"],
        stride=params["stride"],
        stac_bands=stac_band_map(params.get("stac_bands")),
        batch_size=params["batch_size"],
        **output_options(params, served),
        frame_window=params["frame_window"],
        allowed_lateness=params["allowed_lateness"],
        band_wait=params["band_wait"],
        subscription=params["subscription"],
    )
    return config, beam_args
