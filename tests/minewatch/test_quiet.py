"""Harmless third-party notices are dropped from stderr, everything else passes; progress lines."""

from __future__ import annotations

import logging
import subprocess
import sys

from minewatch.cli.main import verbose_given
from minewatch.quiet import PROGRESS_LOGGER, Progress

NOISE = (
    "I0000 00:00:1796 port.cc:153] oneDNN custom operations are on. You may see ...",
    "E0000 00:00:1796 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "WARNING root: Resource module is not available for current platform, memory usage ...",
)

CHILD = """
import os
os.write(2, b"child says hi\\n")
os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n")
"""

PARENT = """
import os, subprocess, sys
from minewatch.quiet import filter_stderr
filter_stderr()
os.write(2, sys.argv[1].encode())
print("from python", file=sys.stderr)
subprocess.run([sys.executable, sys.argv[2]], check=True)
sys.stderr.write("no newline at the end")
"""


def test_only_the_harmless_lines_are_dropped_in_order_children_included(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    written = "\n".join([NOISE[0], "real problem one", *NOISE[1:]]) + "\n"
    done = subprocess.run(
        [sys.executable, "-c", PARENT, written, str(child)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "real problem one\nfrom python\nchild says hi\nno newline at the end"


def test_v_before_the_command_turns_the_filter_off():
    assert verbose_given(["-v", "tile", "x"]) and verbose_given(["-vv", "infer"])
    assert verbose_given(["--verbose", "query"])
    assert not verbose_given(["tile", "-v"])  # a command's own option, not the group's
    assert not verbose_given(["--version"]) and not verbose_given([])


def test_progress_logs_counts_and_rates(caplog):
    progress = Progress("cut", seconds=0)
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        progress.add(tiles=512, blocks=1)
        progress.add(tiles=512, blocks=1, scenes=1)
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert len(lines) == 2 and lines[1].startswith("cut: 1,024 tiles (")
    assert "2 blocks" in lines[1] and "1 scenes in" in lines[1]
    slow = Progress("graph", seconds=3600)
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        slow.add(tiles=1)
    assert len([r for r in caplog.records if r.name == PROGRESS_LOGGER]) == 2
