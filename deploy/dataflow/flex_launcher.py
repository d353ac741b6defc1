"""Flex Template entry point for ``minewatch tile``, ``graph`` and ``infer``.

Dataflow's Python template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE``
in ``Dockerfile.launcher``) with one ``--name=value`` per template parameter
plus the Beam options it adds itself (``--runner``, ``--project``, ``--region``,
``--temp_location``, ``--staging_location``, ``--template_location``...). The job
is the image's ``MINEWATCH_JOB``. Parameters named after the command's options
become those options (``tile_size`` -> ``--tile-size``), its positional argument
(``inputs``, ``tiles_dir``) takes a comma-separated list, flags take
``true``/``false``; everything else passes to Beam unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

#: Job -> (its click command, whose options name the template parameters; its stage package).
_JOBS = {
    "tile": ("minewatch.cli.tile", "tile", "pipelines.tile"),
    "graph": ("minewatch.cli.graph", "graph", "pipelines.graph"),
    "infer": ("minewatch.cli.infer", "infer", "pipelines.infer"),
}


def command(job: str) -> Any:
    """The click command of a job and the stage's ``run(argv)`` that runs it."""
    from importlib import import_module

    if job not in _JOBS:
        raise SystemExit(f"MINEWATCH_JOB={job!r}: expected tile, graph or infer")
    cli_module, name, stage = _JOBS[job]
    return getattr(import_module(cli_module), name), import_module(stage).run


def to_argv(cmd: Any, args: Sequence[str]) -> list[str]:
    """Map the launcher's ``--name=value`` arguments onto the command's command line."""
    params = {p.name: p for p in cmd.params}
    positional: list[str] = []
    options: list[str] = []
    beam: list[str] = []
    for arg in args:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        param = params.get(name)
        if not sep or param is None:
            beam.append(arg)
        elif param.param_type_name == "argument":
            positional.extend(v.strip() for v in value.split(",") if v.strip())
        elif getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None):
            if value.lower() == "true":
                options.append(param.opts[0])
        elif getattr(param, "is_flag", False):
            options.append(param.opts[0] if value.lower() == "true" else param.secondary_opts[0])
        else:
            options.extend([param.opts[0], value])
    return [*positional, *options, *beam]


def main() -> None:
    """Run the image's job with the launcher's arguments."""
    cmd, run = command(os.environ.get("MINEWATCH_JOB", ""))
    # The launcher process only builds and submits the job; workers run the
    # minewatch image, so the main session need not be pickled.
    run(to_argv(cmd, sys.argv[1:]), save_main_session=False)


if __name__ == "__main__":
    main()
