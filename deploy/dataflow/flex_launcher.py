"""Flex Template entry point for ``minewatch tile``, ``graph`` and ``infer``.

Dataflow's Python template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE``
in ``Dockerfile.launcher``) with one ``--name=value`` per template parameter
plus the Beam options it adds itself (``--runner``, ``--project``, ``--region``,
``--temp_location``, ``--staging_location``, ``--template_location``...). The job
is the image's ``MINEWATCH_JOB``. Parameters named after the job's declared
options (``pipelines.<job>.options``, which ``run(argv)`` parses) become those
options (``tile_size`` -> ``--tile-size``), its positional parameter
(``inputs``, ``tiles_dir``) takes a comma-separated list, flags and switches
take ``true``/``false``; everything else passes to Beam unchanged. It calls the
stage's ``run(argv)``, never the CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

#: Job -> (its options module, the declarations there, its positional parameter).
_JOBS = {
    "tile": ("pipelines.tile.options", "TILE_ARGS", "inputs"),
    "graph": ("pipelines.graph.options", "GRAPH_ARGS", "tiles_dir"),
    "infer": ("pipelines.infer.options", "INFER_ARGS", "inputs"),
}


def declared(job: str) -> tuple[Sequence[Any], str]:
    """A job's declared options (``minewatch.arguments.Arg``) and its positional parameter."""
    from importlib import import_module

    if job not in _JOBS:
        raise SystemExit(f"MINEWATCH_JOB={job!r}: expected tile, graph or infer")
    module, name, positional = _JOBS[job]
    return getattr(import_module(module), name), positional


def to_argv(args: Sequence[Any], positional: str, given: Sequence[str]) -> list[str]:
    """Map the launcher's ``--name=value`` arguments onto the job's command line.

    Args:
        args: The job's declared options.
        positional: The template parameter that holds the positional inputs.
        given: The launcher's arguments.

    Returns:
        Inputs, the job's options, then everything else (Beam's).
    """
    by_name = {a.dest: a for a in args}
    inputs: list[str] = []
    options: list[str] = []
    beam: list[str] = []
    for token in given:
        name, sep, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        arg = by_name.get(name)
        if sep and name == positional:
            inputs.extend(v.strip() for v in value.split(",") if v.strip())
        elif not sep or arg is None:
            beam.append(token)
        elif arg.kind == "flag":
            if value.lower() == "true":
                options.append(arg.on)
        elif arg.kind == "switch":
            options.append(arg.flags.split("/")[0 if value.lower() == "true" else 1])
        else:
            options.extend([arg.on, value])
    return [*inputs, *options, *beam]


def main() -> None:
    """Run the image's job with the launcher's arguments."""
    from importlib import import_module

    job = os.environ.get("MINEWATCH_JOB", "")
    args, positional = declared(job)
    run = import_module(f"pipelines.{job}").run
    # The launcher process only builds and submits the job; workers run the
    # minewatch image, so the main session need not be pickled.
    run(to_argv(args, positional, sys.argv[1:]), save_main_session=False)


if __name__ == "__main__":
    main()
