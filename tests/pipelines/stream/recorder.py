"""A BigQuery client that records, for streams run with ``--bigquery`` and no network.

It stands for ``google.cloud.bigquery.Client`` as Beam's ``test_client`` does
for ``WriteToBigQuery``: each load and statement goes to a file in a folder
(the DoFn holding it is pickled, so memory would not survive), and
:func:`replay` applies the loads by key as the ``MERGE`` would.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from pipelines.bigquery import DELETE_FLAG, KEYS

#: The target the stream tests write to (its prefix ``live`` names the tables).
TARGET = "bq://minewatch-test.mining.live"


class _Done:
    num_dml_affected_rows = 1

    def result(self):
        return self


class RecordingClient:
    """Stands for ``google.cloud.bigquery.Client``: writes each call to a file in ``folder``."""

    def __init__(self, folder):
        self.folder = str(folder)

    def _write(self, record):
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.json"
        with open(os.path.join(self.folder, name), "w") as f:
            json.dump(record, f)

    def load_table_from_json(self, rows, destination, job_config=None):
        fields = [f.name for f in job_config.schema]
        self._write({"load": destination, "rows": list(rows), "fields": fields})
        return _Done()

    def query(self, sql):
        self._write({"query": sql})
        return _Done()

    def close(self):
        pass


def recorded_calls(folder):
    """Every recorded call, in the order made."""
    return [json.load(open(os.path.join(folder, n))) for n in sorted(os.listdir(folder))]


def replay(calls):
    """What BigQuery would hold: each load applied by key in order (flagged keys deleted)."""
    tables, deleted = {}, {}
    for call in calls:
        if "load" not in call:
            continue
        table = call["load"].rsplit(".", 1)[1].split("__stream_")[0].removeprefix("live_")
        held = tables.setdefault(table, {})
        for row in call["rows"]:
            key = tuple(row[k] for k in KEYS[table])
            if row[DELETE_FLAG]:
                deleted.setdefault(table, []).append(key)
                held.pop(key, None)
            else:
                held[key] = row
    return tables, deleted
