"""``minewatch stream``: watch a folder and label each new scene once (Beam streaming)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import click

from minewatch.cli.options import abs_path, check_model_and_areas, profile_opt, with_profile


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
@click.option(
    "--pictures/--no-pictures", default=True, show_default=True, help="Quicklook PNG per scene."
)
@profile_opt
@click.pass_context
def stream(ctx: click.Context, /, **params: Any) -> None:
    """Watch GLOB and label every new scene once into TABLES_DIR (same tables as 'infer').

    A file is labelled when its size and modification time held still for one
    poll interval; the ledger in TABLES_DIR/_ledger makes a restarted stream
    skip what is done. A model promoted into the registry is picked up at the
    next poll. '--streaming' is implied; other Beam options pass through.

    \b
    Examples:
      minewatch stream --watch 'incoming/*.tif' --model registry/ --out tables/ \\
          --poll-seconds 30 --duration 3600
      minewatch query "select scene_id, model_version, count(*) from tile_labels group by 1, 2" \\
          --tables tables/
    """
    click.echo(summary(execute(params, ctx.args)))


def build(params: dict[str, Any], extra: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """Check the options; return ``(StreamConfig, beam_args)``.

    Raises:
        click.BadParameter: An option cannot work; the message names it.
    """
    from pipelines.streaming import StreamConfig

    check_model_and_areas(params)
    model = abs_path(params["model"])  # the registry itself: followed while streaming
    beam_args = with_profile(params.get("profile"), "infer", list(extra))
    local = not any(a.startswith("--runner") for a in beam_args) or any(
        "Direct" in a for a in beam_args
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
        pictures=params["pictures"],
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
        f"{e['status']:<9} {e['path']}  model {e['model_version']}  "
        f"{e.get('tiles', 0)} tiles  {e['done'] - e['mtime']:.1f} s"
        for e in result["entries"]
    ]
    latency = result["latency_s"]
    lines += [
        f"run {result['run_id']}: {result['polls']} polls",
        f"  labelled       {result['labelled']:>6}",
        f"  dead-lettered  {result['dead_lettered']:>6}",
        f"  skipped (done) {result['skipped']:>6}",
        f"  models         {', '.join(result['model_versions']) or '-'}",
    ]
    if latency:
        lines.append(
            f"  latency s      median {statistics.median(latency):.1f}, max {max(latency):.1f}"
        )
    return "\n".join(lines)
