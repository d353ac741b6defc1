"""What every Beam job shares: its common options, its inputs, the split from Beam's options.

Each job declares its own options (:mod:`minewatch.arguments`) and parses them
in its ``run(argv)``; whatever else is on the command line passes to Beam's
``PipelineOptions`` unchanged (``--runner``, ``--direct_num_workers``, Dataflow
/ Flink options, ...). The click commands of :mod:`minewatch.cli` show the same
declarations.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from typing import Any

from minewatch.arguments import Flag, Text, last_value
from minewatch.errors import ConfigError
from minewatch.paths import abs_path, is_remote

__all__ = [
    "OUT",
    "OVERWRITE",
    "PROFILE",
    "abs_path",
    "job_inputs",
    "list_inputs",
    "run_pipeline",
    "split_beam_args",
    "stac_band_map",
    "with_profile",
]

#: ``--out DIR``, required.
OUT = Text("--out", required=True, metavar="DIR", help="Output folder (local or gs://).")
#: ``--overwrite``: replace an earlier job's outputs in ``--out``.
OVERWRITE = Flag("--overwrite", help="Replace outputs of an earlier run in --out.")
#: ``--profile NAME``: Beam options from a runner profile (``deploy/runners/NAME.yaml``).
PROFILE = Text(
    "--profile",
    metavar="NAME",
    help="Runner profile (dataflow, flink, flink-k8s, spark, portable, dask, or a YAML path) "
    "whose Beam options come first; options on the command line override them.",
)


def _list_local(pattern: str) -> list[str]:
    import glob

    if os.path.isdir(pattern):
        found: list[str] = []
        for root, dirs, files in os.walk(pattern):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, f) for f in files if not f.startswith("."))
        return found
    if any(ch in pattern for ch in "*?["):
        return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    return [pattern] if os.path.exists(pattern) else []


def list_inputs(pattern: str) -> list[str]:
    """Return the files an input names: a file, a glob, or a folder (recursively).

    Local paths are made absolute; remote ones (``gs://``) are matched with Beam's
    FileSystems, a trailing ``/`` meaning a folder.
    """
    if not is_remote(pattern):
        return sorted(os.path.abspath(p) for p in _list_local(pattern))
    from apache_beam.io.filesystems import FileSystems

    if pattern.endswith("/"):
        pattern += "**"
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import PipelineOptions

    try:  # DaskOptions (--dask_client_address ...) exist only once their module is loaded
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:
        pass
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


def job_inputs(tokens: Sequence[str], what: str) -> tuple[list[str], list[str]]:
    """Split a job's leftover tokens into inputs and Beam options, and check the inputs.

    Args:
        tokens: The command's positional tokens plus what its parser did not know.
        what: What an INPUT may be, for the message when there is none.

    Returns:
        ``(inputs, beam_args)``.

    Raises:
        ConfigError: No input, or a local input that matches no file.
    """
    inputs, beam_args = split_beam_args(list(tokens))
    if not inputs:
        raise ConfigError(f"give at least one INPUT ({what})")
    for pattern in inputs:
        if not is_remote(pattern) and not list_inputs(pattern):
            raise ConfigError(f"{pattern!r} matches no file", option="INPUT")
    return inputs, beam_args


def stac_band_map(text: str | None) -> tuple[tuple[str, str], ...]:
    """``--stac-bands B02=blue,B03=green`` as ``(("B02", "blue"), ("B03", "green"))``.

    Raises:
        ConfigError: An item that is not BAND=ASSET, or a band named twice
            (names ``--stac-bands``).
    """
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        band, sep, asset = (part.strip() for part in item.partition("="))
        if not (sep and band and asset):
            raise ConfigError(f"{item!r} is not BAND=ASSET", option="--stac-bands")
        pairs.append((band, asset))
    bands = [b for b, _ in pairs]
    if len(set(bands)) != len(bands):
        raise ConfigError(f"a band is named twice in {text!r}", option="--stac-bands")
    return tuple(pairs)


def with_profile(profile: str | None, job: str, beam_args: Sequence[str]) -> list[str]:
    """Prepend a runner profile's Beam options for ``job`` to ``beam_args``; check the runner.

    Raises:
        ConfigError: Unknown profile, or one that cannot be loaded (names
            ``--profile``); a runner Beam does not know or cannot load (names
            ``--runner``, see :func:`check_runner`); a portable job whose job
            service or worker pool does not answer (:func:`pipelines.portable.check_endpoints`).
    """
    args = list(beam_args)
    if profile:
        from minewatch.profiles import load_profile

        try:
            args = [*load_profile(profile, job), *args]
        except ConfigError as exc:
            raise ConfigError(str(exc), option="--profile") from exc
    check_runner(args)
    from pipelines.portable import check_endpoints

    check_endpoints(args)
    return args


#: Runners Beam ships without a short name, by the name users try first.
FULL_RUNNER_NAMES = {"DaskRunner": "pipelines.dask_runner.DaskRunner"}

#: Runners that run minewatch's jobs wrongly, and what to use instead.
REFUSED_RUNNERS = {
    "apache_beam.runners.dask.dask_runner.DaskRunner": (
        "Beam's own Dask runner mis-routes tagged outputs, drops finish_bundle outputs and "
        "runs only the last sink; use --runner pipelines.dask_runner.DaskRunner "
        "(or --profile dask)"
    ),
}


def runner_name(beam_args: Sequence[str]) -> str | None:
    """The runner ``beam_args`` name (the last ``--runner``), or None for Beam's default."""
    return last_value(beam_args, "--runner")


def check_runner(beam_args: Sequence[str]) -> None:
    """Fail before the pipeline is built when Beam cannot make the named runner.

    Beam resolves ``--runner`` only when the pipeline runs, and then a name it
    does not know, or a runner whose package is missing, ends in a traceback.

    Raises:
        ConfigError: Naming ``--runner``, with the runners Beam knows or the
            package to install.
    """
    name = runner_name(beam_args)
    if not name:
        return
    if name in REFUSED_RUNNERS:
        raise ConfigError(REFUSED_RUNNERS[name], option="--runner")
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except ValueError as exc:
        full = FULL_RUNNER_NAMES.get(name)
        hint = (
            f"Beam registers it only by its full name: --runner {full}"
            if full
            else "give one of Beam's runners (DirectRunner, DataflowRunner, FlinkRunner, "
            "SparkRunner, PortableRunner, PrismRunner) or a runner class as "
            "package.module.ClassName"
        )
        raise ConfigError(f"Beam has no runner named {name!r}: {hint}", option="--runner") from exc
    except ImportError as exc:
        raise ConfigError(
            f"the runner {name!r} cannot be loaded ({exc}); install the packages it needs "
            "into this environment",
            option="--runner",
        ) from exc
