"""Keep harmless third-party noise off a user's terminal; say how far a long job is.

TensorFlow and XLA write start-up notices straight to file descriptor 2 before
their logging is set up (``WARNING: All log messages before
absl::InitializeLog() ...``, oneDNN and CUDA-driver notices, a ``cuInit`` error
on machines without a GPU), so neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python's
logging reaches them; Beam's RunInference warns on every run that it cannot
read memory usage. :func:`filter_stderr` passes everything written to the
process's stderr (its own, its libraries', and its child processes') through a
filter that drops only the lines matching :data:`HARMLESS`; every other line
goes through unchanged and in order. ``minewatch`` turns it on unless ``-v`` is
given.

:class:`Progress` logs a job's progress on the ``minewatch.progress`` logger at
most every ``MINEWATCH_PROGRESS_SECONDS`` (default 15) per worker process.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
from typing import TextIO

__all__ = ["HARMLESS", "PROGRESS_LOGGER", "Progress", "filter_stderr", "show_progress"]

#: Lines dropped from stderr: start-up notices that do not concern a user.
HARMLESS = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\) is called",
            r"oneDNN custom operations are on",
            r"Could not find cuda drivers on your machine",
            r"failed call to cuInit",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"Resource module is not available for current platform",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
        ]
    )
)

#: The logger :class:`Progress` writes to.
PROGRESS_LOGGER = "minewatch.progress"

_installed = False


def filter_stderr(pattern: re.Pattern[str] = HARMLESS) -> None:
    """From now on, drop stderr lines matching ``pattern`` (once per process).

    File descriptor 2 becomes a pipe read by a thread that writes the other
    lines to the original stderr; at exit the pipe is drained first.
    """
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not pattern.search(line.decode("utf-8", "replace")):
                        os.write(original, line + b"\n")
            if pending and not pattern.search(pending.decode("utf-8", "replace")):
                os.write(original, pending)

    thread = threading.Thread(target=pump, name="minewatch-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes our write end; the pump sees EOF once children exit
        thread.join(timeout=5)

    atexit.register(restore)


def show_progress(stream: TextIO | None = None) -> None:
    """Print :class:`Progress` lines (INFO on ``minewatch.progress``) on ``stream`` (stderr)."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if any(getattr(h, "_minewatch", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._minewatch = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class Progress:
    """Counts of a job's work in one worker process, logged now and then with the rate.

    Args:
        job: The job's name, first on each line (``tile``, ``graph``, ``infer``).
        seconds: Least seconds between two lines; default ``MINEWATCH_PROGRESS_SECONDS``
            or 15.
    """

    def __init__(self, job: str, seconds: float | None = None) -> None:
        self._job = job
        self._every = (
            float(os.environ.get("MINEWATCH_PROGRESS_SECONDS", "15"))
            if seconds is None
            else seconds
        )
        self._start = self._last = time.monotonic()
        self._counts: dict[str, int] = {}

    def add(self, **counts: int) -> None:
        """Add to the counts (``tiles=512``, ``scenes=1``); log when it is time."""
        for name, n in counts.items():
            self._counts[name] = self._counts.get(name, 0) + int(n)
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self.log()

    def log(self) -> None:
        """Log the counts so far and the rate of each."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        parts = [
            f"{n:,} {name} ({n / elapsed:,.0f}/s)" if name != "scenes" else f"{n:,} {name}"
            for name, n in self._counts.items()
        ]
        logging.getLogger(PROGRESS_LOGGER).info(
            "%s: %s in %.1f s (pid %d)", self._job, ", ".join(parts), elapsed, os.getpid()
        )
