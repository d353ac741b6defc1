"""Airflow DAG: nightly ``minewatch retrain`` in a Kubernetes pod.

Copy this file into the scheduler's DAG folder (Cloud Composer: the
environment's ``dags/`` bucket folder). It needs
``apache-airflow-providers-cncf-kubernetes`` and nothing of minewatch: the
work runs in the minewatch worker image, so TensorFlow and Beam never have to
share an environment with Airflow, and the pod gets its own CPU/memory
requests (or a GPU node pool) instead of an Airflow worker slot.

Settings, none of them secret, come from Airflow Variables (defaults in
brackets): ``minewatch_image`` [the 0.1.0 worker image],
``minewatch_namespace`` [minewatch], ``minewatch_alert_conn`` [minewatch_alerts].
The alert webhook URL (Slack or any service taking ``{"text": ...}``) is the
*host* of that HTTP connection, stored in Airflow's connection backend (or a
secrets backend), never here; without the connection the alert is only logged.

Runs: 02:00 UTC daily, one at a time (``max_active_runs=1``) and no catch-up,
so a slow night never overlaps the next; 2 retries 15 minutes apart, then the
failure callback posts the alert. ``minewatch retrain`` itself refuses to
overlap (exit code 75) and is safe to run twice (the second run records a
no-op), so a retry after a half-finished run resumes rather than repeats.
The Kubernetes CronJob ``deploy/k8s/retrain-cronjob.yaml`` is the same job
without Airflow: deploy one or the other, not both.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

try:  # Airflow 3
    from airflow.sdk import DAG, BaseHook, Variable
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.hooks.base import BaseHook
    from airflow.models import Variable

log = logging.getLogger(__name__)

SCHEDULE = "0 2 * * *"
IMAGE = "europe-docker.pkg.dev/minewatch-prod/minewatch/worker:0.1.0"
COMMAND = ["minewatch", "retrain", "--config", "/etc/minewatch/retrain.yaml"]


def alert_on_failure(context: dict[str, Any]) -> None:
    """Post a failed task to the webhook of the ``minewatch_alert_conn`` connection."""
    ti = context["task_instance"]
    text = (
        f":red_circle: minewatch retrain failed: {ti.dag_id}.{ti.task_id} "
        f"run {context.get('run_id')} try {ti.try_number}; log: {getattr(ti, 'log_url', '')}"
    )
    conn_id = Variable.get("minewatch_alert_conn", default="minewatch_alerts")
    try:
        url = BaseHook.get_connection(conn_id).host
    except Exception:  # no such connection: log only, never fail the callback
        log.error("%s (no connection %r to alert through)", text, conn_id)
        return
    request = urllib.request.Request(
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        log.info("alert sent (%s)", response.status)


default_args = {
    "owner": "minewatch",
    "retries": 2,
    "retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(hours=6),
    "on_failure_callback": alert_on_failure,
}

with DAG(
    dag_id="minewatch_retrain",
    description="Tile new scenes, rebuild the graph, retrain, promote if better.",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args=default_args,
    tags=["minewatch"],
) as dag:
    KubernetesPodOperator(
        task_id="retrain",
        name="minewatch-retrain",
        namespace="{{ var.value.get('minewatch_namespace', 'minewatch') }}",
        image="{{ var.value.get('minewatch_image', '" + IMAGE + "') }}",
        cmds=COMMAND[:1],
        arguments=COMMAND[1:],
        env_vars={"TF_USE_LEGACY_KERAS": "1"},
        service_account_name="minewatch-trainer",
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "4", "memory": "16Gi"}, limits={"cpu": "8", "memory": "32Gi"}
        ),
        volumes=[
            k8s.V1Volume(
                name="config",
                config_map=k8s.V1ConfigMapVolumeSource(name="minewatch-retrain-config"),
            ),
            k8s.V1Volume(
                name="work",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name="minewatch-work"
                ),
            ),
        ],
        volume_mounts=[
            k8s.V1VolumeMount(name="config", mount_path="/etc/minewatch", read_only=True),
            k8s.V1VolumeMount(name="work", mount_path="/var/lib/minewatch"),
        ],
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
