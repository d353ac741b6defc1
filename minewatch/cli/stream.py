"""``minewatch stream``: watch a folder (or GCS notifications), label each new scene once."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import click

from minewatch.cli.options import click_error, click_options
from minewatch.errors import ConfigError
from minewatch.paths import abs_path
from pipelines.infer.options import SITE_ARGS
from pipelines.options import PROFILE


@click.command(
    short_help="Watch a folder; label new scenes into the tables (Beam streaming job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--watch", required=True, metavar="GLOB", help="Folder or glob of scenes to watch.")
@click.option(
    "--model",
    required=True,
    metavar="REGISTRY_OR_MODEL_DIR",
    help="A registry (its current model, followed while streaming) or a model folder.",
)
@click.option("--out", required=True, metavar="TABLES_DIR", help="Tables folder.")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds between two listings; a file must hold still this long.",
)
@click.option(
    "--max-polls", type=click.IntRange(1), default=None, help="Stop after this many polls."
)
@click.option(
    "--duration", type=click.FloatRange(0, min_open=True), default=None, help="Stop after SECONDS."
)
@click.option("--concessions", metavar="FILE", help="Licensed areas (polygons, licence_id).")
@click.option("--protected", metavar="FILE", help="Protected areas (polygons, name).")
@click.option(
    "--stride",
    type=click.IntRange(1),
    default=None,
    help="Tiling step [default: half the model's tile size].",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True, help="Tiles/call."
)
@click_options(SITE_ARGS)
@click.option(
    "--pictures/--no-pictures", default=True, show_default=True, help="Quicklook PNG per scene."
)
@click.option(
    "--frame-window",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Event-time window of the per-camera frame summaries.",
)
@click.option(
    "--allowed-lateness",
    type=click.FloatRange(0),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="A frame arriving later than this after its window closed is dead-lettered.",
)
@click.option(
    "--band-wait",
    type=click.FloatRange(0),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="A band folder lacking some of the model's bands is labelled as it is after this.",
)
@click.option(
    "--subscription",
    metavar="projects/P/subscriptions/S",
    default=None,
    help="Read GCS object notifications from Pub/Sub instead of listing --watch "
    "(which then filters the objects, e.g. 'gs://bucket/incoming/**').",
)
@click_options((PROFILE,))
@click.pass_context
def stream(ctx: click.Context, /, **params: Any) -> None:
    """Watch GLOB and label every new scene once into TABLES_DIR (same tables as 'infer').

    A file, or a folder of band files, is labelled when the size and
    modification time of its files held still for one poll interval (a band
    folder also waits for every band the model reads); the ledger in
    TABLES_DIR/_ledger makes a restarted stream skip what is done. Camera
    frames also get per-camera summaries per --frame-window (frame_summaries).
    A model promoted into the registry labels the units found after the next
    poll. '--streaming' is implied; other Beam options pass through.

    \b
    Examples:
      minewatch stream --watch incoming/ --model registry/ --out tables/ \\
          --poll-seconds 30 --duration 3600
      minewatch stream --watch 'gs://bkt/incoming/**' --model gs://bkt/registry \\
          --out gs://bkt/tables --subscription projects/p/subscriptions/incoming \\
          --runner DataflowRunner --project p --region europe-west1
      minewatch query "select camera_id, window_start, grade, frames from frame_summaries" \\
          --tables tables/
    """
    click.echo(summary(execute(params, ctx.args)))


def build(params: dict[str, Any], extra: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """Check the options; return ``(StreamConfig, beam_args)``.

    Raises:
        click.BadParameter: An option cannot work; the message names it.
    """
    from pipelines.infer.options import check_model_and_areas, site_options
    from pipelines.options import with_profile
    from pipelines.streaming import StreamConfig

    try:
        check_model_and_areas(params)
        beam_args = with_profile(params.get("profile"), "infer", list(extra))
    except ConfigError as exc:
        raise click_error(exc) from exc
    model = abs_path(params["model"])  # the registry itself: followed while streaming
    local = not any(a.startswith("--runner") for a in beam_args) or any(
        "Direct" in a for a in beam_args
    )
    if params["subscription"] and local:
        raise click.BadParameter(
            "reading Pub/Sub notifications needs a streaming runner such as "
            "--runner DataflowRunner (the local runner cannot read Pub/Sub here)",
            param_hint="--subscription",
        )
    if local and params["max_polls"] is None and params["duration"] is None:
        raise click.BadParameter(
            "a local stream never stops by itself: give --max-polls or --duration "
            "(or stop it with Ctrl-C)",
            param_hint="--max-polls",
        )
    config = StreamConfig(
        watch=abs_path(params["watch"]),
        registry=model,
        out=abs_path(params["out"]),
        poll_seconds=params["poll_seconds"],
        max_polls=params["max_polls"],
        duration=params["duration"],
        stride=params["stride"],
        batch_size=params["batch_size"],
        concessions=abs_path(params["concessions"]) if params["concessions"] else None,
        protected=abs_path(params["protected"]) if params["protected"] else None,
        **dataclasses.asdict(site_options(params)),
        pictures=params["pictures"],
        frame_window=params["frame_window"],
        allowed_lateness=params["allowed_lateness"],
        band_wait=params["band_wait"],
        subscription=params["subscription"],
    )
    return config, beam_args


def execute(
    params: dict[str, Any], extra: Sequence[str] = (), save_main_session: bool = True
) -> dict[str, Any]:
    """Check the options, then run the stream until it stops."""
    from pipelines.streaming import run_stream

    config, beam_args = build(params, extra)
    result = run_stream(config, beam_args, save_main_session)
    assert result is not None
    return result


def summary(result: dict[str, Any]) -> str:
    """What the run did: one line per file, then the counts."""
    lines = [
        f"{e['status']:<9} {e['path']}  model {e.get('model_version', '-')}  "
        f"{e.get('tiles', 0)} tiles  {e['done'] - e['mtime']:.1f} s"
        for e in result["entries"]
    ]
    latency = result["latency_s"]
    lines += [
        f"run {result['run_id']}: {result['polls']} polls",
        f"  labelled       {result['labelled']:>6}",
        f"  dead-lettered  {result['dead_lettered']:>6}",
        f"  frames late    {result['late']:>6}",
        f"  skipped (done) {result['skipped']:>6}",
        f"  models         {', '.join(result['model_versions']) or '-'}",
    ]
    if latency:
        lines.append(
            f"  latency s      median {statistics.median(latency):.1f}, max {max(latency):.1f}"
        )
    return "\n".join(lines)
