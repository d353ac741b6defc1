"""Beam's portable API on one machine: a job service and a pool of SDK workers.

This is how Flink and Spark run Python pipelines: the job goes to a job service
(Flink's or Spark's job server in production, Beam's Python
``local_job_service_main`` here) and each stage runs in SDK worker processes that
the service asks a worker pool for (``--environment_type=EXTERNAL``, the way
Flink on Kubernetes runs Python workers beside each task manager). Nothing of
the job runs in the launching process.

Beam's pool (``apache_beam.runners.worker.worker_pool_main``) starts each worker
as ``python -c ...``, the first ``python`` on ``PATH``. Started from a virtual
environment that is not activated, that is another interpreter: every worker
dies on ``No module named 'apache_beam'`` and the job waits for them forever.
:func:`start_worker_pool` and ``python -m pipelines.portable worker-pool`` put
this interpreter first on the pool's ``PATH`` and check, before serving, that the
``python`` found there imports Beam and minewatch; the launching side checks that
the job service and the pool answer before it submits (:func:`check_endpoints`).

Example (what ``--profile portable`` expects)::

    python -m pipelines.portable job-service --port 8099 &
    python -m pipelines.portable worker-pool --port 50000 &
    export MINEWATCH_JOB_ENDPOINT=localhost:8099 MINEWATCH_WORKER_POOL=localhost:50000
    minewatch tile SCENES --out tiles --profile portable
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from minewatch.arguments import last_value
from minewatch.errors import ConfigError

__all__ = [
    "ENDPOINT_TIMEOUT",
    "WORKER_MODULES",
    "LocalPortable",
    "check_endpoints",
    "check_worker_python",
    "free_port",
    "local_portable",
    "portable_args",
    "serve_jobs",
    "start_job_service",
    "start_worker_pool",
    "wait_for_port",
    "worker_env",
]

#: Seconds :func:`check_endpoints` waits for a job service or pool to answer.
ENDPOINT_TIMEOUT = 10.0

#: What a worker must import to run minewatch's jobs.
WORKER_MODULES = ("apache_beam", "minewatch", "pipelines")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(python: str = sys.executable, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``python``'s folder first on ``PATH``."""
    out = dict(os.environ if env is None else env)
    folder = os.path.dirname(os.path.abspath(python))
    out["PATH"] = os.pathsep.join(
        [folder, *[p for p in out.get("PATH", "").split(os.pathsep) if p]]
    )
    return out


def check_worker_python(env: dict[str, str]) -> str:
    """The ``python`` a worker pool started with ``env`` would run; fail if it lacks our modules.

    Raises:
        ConfigError: No ``python`` on ``env``'s ``PATH``, or one that cannot
            import :data:`WORKER_MODULES` (names the interpreter and the error).
    """
    python = shutil.which("python", path=env.get("PATH", ""))
    if python is None:
        raise ConfigError(
            "the Beam worker pool starts workers as `python`, and there is none on PATH: "
            "put the project's environment (its bin folder) first on PATH"
        )
    code = "import " + ", ".join(WORKER_MODULES)
    done = subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigError(
            f"the Beam worker pool would start workers with {python}, which cannot run "
            f"minewatch ({last}); every worker would die and the job would wait forever. "
            "Start the pool from the project's environment: python -m pipelines.portable "
            "worker-pool --port PORT"
        )
    return python


def wait_for_port(
    address: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections at ``host:port``.

    Raises:
        ConfigError: Nothing answered within ``timeout`` seconds, or ``process``
            (the server being waited for) exited first.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ConfigError(f"the server for {address} exited with status {process.returncode}")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(f"nothing answers at {address} after {timeout:.0f} s") from None
            time.sleep(0.2)


def check_endpoints(beam_args: Sequence[str], timeout: float | None = None) -> None:
    """Before a portable job is submitted: its job service and worker pool must answer.

    Only for ``--runner PortableRunner`` (Flink's and Spark's runners start their
    own job server); the pool only with ``--environment_type EXTERNAL``.

    Raises:
        ConfigError: A missing ``--job_endpoint``/``--environment_config``, or
            one where nothing answers (names the option).
    """
    timeout = ENDPOINT_TIMEOUT if timeout is None else timeout
    if (last_value(beam_args, "--runner") or "").rsplit(".", 1)[-1] != "PortableRunner":
        return
    checks = [("--job_endpoint", "the Beam job service", "job-service")]
    if (last_value(beam_args, "--environment_type") or "").upper() == "EXTERNAL":
        checks.append(("--environment_config", "the Beam worker pool", "worker-pool"))
    for option, what, command in checks:
        address = last_value(beam_args, option)
        if not address or address == "embed":
            if option == "--job_endpoint" and address == "embed":
                continue
            raise ConfigError(f"PortableRunner needs {option} HOST:PORT ({what})", option=option)
        try:
            wait_for_port(address, timeout=timeout)
        except ConfigError as exc:
            raise ConfigError(
                f"{what} does not answer at {address} ({exc}); start it with "
                f"python -m pipelines.portable {command} --port {address.rpartition(':')[2]}",
                option=option,
            ) from exc


def _parallel_job_type() -> type:
    """Beam's local ``BeamJob``, running each job on ``--sdk_worker_parallelism`` workers.

    Beam's Python job service runs every job on one SDK worker whatever the job
    asks for: its ``FnApiRunner`` reads the worker count from the options only in
    ``run_pipeline``, which the service does not call. Flink and Spark honour
    the option themselves; here it is set on the runner before the job runs.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class ParallelBeamJob(local_job_service.BeamJob):  # type: ignore[misc]
        def _invoke_runner(self) -> Any:
            self.set_state(local_job_service.beam_job_api_pb2.JobState.RUNNING)
            options = self.pipeline_options()
            # Options arrive as the job's JSON struct: numbers may come as text.
            workers = max(
                int(options.view_as(PortableOptions).sdk_worker_parallelism or 1),
                int(options.view_as(DirectOptions).direct_num_workers or 1),
            )
            runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
            runner._num_workers = workers  # what run_pipeline would set from the options
            return runner.run_via_runner_api(self._pipeline_proto, options)

    return ParallelBeamJob


def serve_jobs(port: int, staging_dir: str | None = None) -> None:
    """Serve Beam's job API on ``port`` until interrupted (``job-service`` below)."""
    from apache_beam.runners.portability import local_job_service

    servicer = local_job_service.LocalJobServicer(staging_dir, beam_job_type=_parallel_job_type())
    bound = servicer.start_grpc_server(port)
    print(f"Beam job service listening on localhost:{bound}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        servicer.stop()


def _output(log_file: str | None) -> Any:
    """An append-mode file for a server's output, or None (it inherits ours)."""
    return open(log_file, "ab") if log_file else contextlib.nullcontext(None)


def start_job_service(port: int, log_file: str | None = None) -> subprocess.Popen[bytes]:
    """Start the job service (:func:`serve_jobs`) on ``port`` in its own process.

    Its output goes to ``log_file`` (default: this process's).
    """
    with _output(log_file) as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.portable", "job-service", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_worker_pool(
    port: int, python: str = sys.executable, log_file: str | None = None
) -> subprocess.Popen[bytes]:
    """Start Beam's worker pool on ``port``; its workers run ``python`` (checked first).

    Raises:
        ConfigError: ``python`` cannot run minewatch (see :func:`check_worker_python`).
    """
    env = worker_env(python)
    check_worker_python(env)
    with _output(log_file) as out:
        return subprocess.Popen(
            [
                python,
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                "--service_port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def portable_args(job_endpoint: str, worker_pool: str, parallelism: int = 2) -> list[str]:
    """Beam options that send a job to ``job_endpoint`` with workers from ``worker_pool``."""
    return [
        "--runner=PortableRunner",
        f"--job_endpoint={job_endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool}",
        f"--sdk_worker_parallelism={parallelism}",
    ]


@dataclass
class LocalPortable:
    """A running job service and worker pool (see :func:`local_portable`)."""

    job_endpoint: str
    worker_pool: str
    parallelism: int = 2

    def args(self) -> list[str]:
        """The Beam options for jobs sent here."""
        return portable_args(self.job_endpoint, self.worker_pool, self.parallelism)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def local_portable(parallelism: int = 2, log_dir: str | None = None) -> Iterator[LocalPortable]:
    """Run a job service and a worker pool on 127.0.0.1 for the ``with`` block.

    Raises:
        ConfigError: This interpreter cannot serve as the workers' ``python``, or
            a server did not come up.
    """
    job_port, pool_port = free_port(), free_port()
    logs = {
        name: os.devnull if log_dir is None else os.path.join(log_dir, f"{name}.log")
        for name in ("job_service", "worker_pool")
    }
    pool = start_worker_pool(pool_port, log_file=logs["worker_pool"])
    job = None
    try:
        job = start_job_service(job_port, log_file=logs["job_service"])
        wait_for_port(f"localhost:{pool_port}", process=pool)
        wait_for_port(f"localhost:{job_port}", process=job)
        yield LocalPortable(f"localhost:{job_port}", f"localhost:{pool_port}", parallelism)
    finally:
        for process in (job, pool):
            if process is not None:
                _stop(process)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.portable job-service|worker-pool --port PORT``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.portable", description=__doc__)
    parser.add_argument("server", choices=("job-service", "worker-pool"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="Interpreter the workers run (default: this one); it must import minewatch.",
    )
    args = parser.parse_args(argv)
    if args.server == "job-service":
        try:
            serve_jobs(args.port)
        except KeyboardInterrupt:
            pass
        return 0
    try:
        process = start_worker_pool(args.port, python=args.python)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        return 0


if __name__ == "__main__":
    sys.exit(main())
