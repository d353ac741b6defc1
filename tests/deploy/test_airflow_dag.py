"""The nightly retrain DAG: loaded by Airflow's DagBag, and checked against the CronJob.

The DagBag test runs in a subprocess with its own AIRFLOW_HOME (Airflow reads
its config and creates files there at import) and needs the ``airflow``
dependency group; the structural checks read the file's syntax tree and run
everywhere.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "deploy" / "airflow" / "minewatch_retrain.py"
CRONJOB = ROOT / "deploy" / "k8s" / "retrain-cronjob.yaml"


def tree():
    return ast.parse(DAG_FILE.read_text())


def constants():
    out = {}
    for node in tree().body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            try:
                out[name] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def call(name):
    (found,) = [
        n
        for n in ast.walk(tree())
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == name
    ]
    return {k.arg: k.value for k in found.keywords}


def test_dag_structure():
    consts = constants()
    dag = call("DAG")
    assert ast.literal_eval(dag["max_active_runs"]) == 1
    assert ast.literal_eval(dag["catchup"]) is False
    assert dag["schedule"].id == "SCHEDULE" and consts["SCHEDULE"] == "0 2 * * *"
    args = {
        ast.literal_eval(k): v
        for k, v in zip(
            *(lambda d: (d.keys, d.values))(
                next(
                    n.value
                    for n in tree().body
                    if isinstance(n, ast.Assign) and n.targets[0].id == "default_args"
                )
            ),
            strict=True,
        )
    }
    assert ast.literal_eval(args["retries"]) >= 1
    assert args["retry_delay"].func.id == "timedelta"
    assert args["on_failure_callback"].id == "alert_on_failure"
    functions = {n.name for n in tree().body if isinstance(n, ast.FunctionDef)}
    assert "alert_on_failure" in functions
    pod = call("KubernetesPodOperator")
    assert consts["COMMAND"][:3] == ["minewatch", "retrain", "--config"]
    assert ast.unparse(pod["cmds"]) == "COMMAND[:1]"
    assert ast.unparse(pod["arguments"]) == "COMMAND[1:]"
    # no secret in the file: the webhook comes from an Airflow connection
    text = DAG_FILE.read_text()
    assert "hooks.slack.com" not in text and "password" not in text.lower()


def test_dag_and_cronjob_agree():
    consts = constants()
    doc = yaml.safe_load(CRONJOB.read_text())
    assert doc["spec"]["schedule"] == consts["SCHEDULE"]
    assert doc["spec"]["timeZone"] == "Etc/UTC"
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == consts["COMMAND"]
    assert container["image"] == consts["IMAGE"]
    pod = call("KubernetesPodOperator")
    mounts = {ast.literal_eval(m.keywords[1].value) for m in pod["volume_mounts"].elts}
    assert mounts == {m["mountPath"] for m in container["volumeMounts"]}
    assert os.path.dirname(consts["COMMAND"][-1]) in mounts


LOAD = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
dag = bag.dags.get("minewatch_retrain")
task = dag.tasks[0] if dag else None
print("RESULT " + json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "dags": sorted(bag.dags),
    "max_active_runs": dag and dag.max_active_runs,
    "catchup": dag and dag.catchup,
    "timetable": dag and type(dag.timetable).__name__,
    "cron": dag and (getattr(dag.timetable, "expression", None)
        or getattr(dag.timetable, "_expression", None)),
    "timezone": dag and str(getattr(dag.timetable, "timezone", "")),
    "retries": task and task.retries,
    "callback": task and [getattr(c, "__name__", str(c)) for c in
        (task.on_failure_callback if isinstance(task.on_failure_callback, list)
         else [task.on_failure_callback])],
    "command": task and [*task.cmds, *task.arguments],
}}))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("airflow") is None,
    reason="Airflow is not installed (pip install -e . --group airflow)",
)
def test_dagbag_loads_the_dag_without_import_errors(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    run = subprocess.run(
        [sys.executable, "-c", LOAD.format(folder=str(DAG_FILE.parent))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["errors"] == {}
    assert result["dags"] == ["minewatch_retrain"]
    assert result["max_active_runs"] == 1 and result["catchup"] is False
    assert result["cron"] == constants()["SCHEDULE"]
    assert "UTC" in result["timezone"]
    assert result["retries"] == 2
    assert "alert_on_failure" in result["callback"]
    assert result["command"] == constants()["COMMAND"]
