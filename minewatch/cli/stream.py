"""``minewatch stream``: watch a folder (or GCS notifications), label each new scene once."""

from __future__ import annotations

import statistics
from typing import Any

import click

from minewatch.cli.options import click_error, click_options
from minewatch.errors import ConfigError
from pipelines.stream.options import STREAM_ARGS


@click.command(
    short_help="Watch a folder; label new scenes into the tables (Beam streaming job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click_options(STREAM_ARGS)
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
    from pipelines.stream import run_stream, stream_config

    try:
        config, beam_args = stream_config(params, ctx.args)
        result = run_stream(config, beam_args)
    except ConfigError as exc:
        raise click_error(exc) from exc
    assert result is not None
    click.echo(summary(result))


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
