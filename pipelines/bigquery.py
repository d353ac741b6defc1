"""Write the inference tables to BigQuery (``minewatch infer --bigquery bq://project.dataset.prefix``).

:class:`WriteTablesToBigQuery` takes a dict of table name -> PCollection of
rows shaped as :mod:`minewatch.tables` defines them (``tile_labels``,
``frame_labels``, ``sites``, ``stockpile_series``, ``vessels``) and, per table::

    rows ─ ToJson ─ WriteToBigQuery (FILE_LOADS, WRITE_TRUNCATE) ─► <table>__staging_<run>
                                       │ load/copy job ids
                                       └─ Merge: wait for the jobs, create the target
                                          (day-partitioned, clustered) if missing,
                                          MERGE staging into it on the table's key,
                                          drop the staging table

**Rerun guarantee.** Each table has a natural key (:data:`KEYS`, always ending
in ``model_version``). ``MERGE`` updates the rows whose key exists and inserts
the others, so running a scene again with the same model replaces its rows
instead of adding copies, and another model version adds rows next to the old
ones, as the Parquet output does. Loads go to a staging table first because a
load job can only append or truncate a whole table or partition, and a
partition holds many scenes. Each table's ``MERGE`` is one atomic statement;
the tables are not updated together: a job that fails between two merges
leaves the earlier tables updated and the staging tables of the others in
place (``*__staging_<run_id>``, safe to drop), and running it again converges
to the same rows.

Schemas come from :func:`minewatch.tables.bigquery_schema`; WKB geometry in
WGS84 becomes ``GEOGRAPHY`` loaded from WKT. ``geometry_source`` (``sites``,
``vessels``) is in the scene's projected CRS (``source_crs``), which
``GEOGRAPHY`` cannot hold, so it is written as WKT in a ``STRING`` column.
Timestamps are ISO 8601 in UTC, other bytes base64, NaN and infinity null.

**Streaming.** ``minewatch stream --bigquery`` cannot wait for the end of a run
to load a table: each labelled unit hands :class:`UpsertRows` its rows as
``(table, rows, stale keys)``. One small load job puts them (and the keys of
rows that are gone, flagged ``_delete``) into a staging table of their own, one
``MERGE`` (:func:`upsert_sql`) updates, inserts and deletes in one atomic
statement, and the staging table is dropped. Stale keys exist because the
stream re-links an area's sites each time a scene of it is labelled: a site
that two later sightings merge into another disappears, in BigQuery as in the
area's Parquet files. Tables written this way are the Infer tables and the
stream's ``frame_summaries`` (:data:`BIGQUERY_TABLES`).

Example:
    >>> tables = {"tile_labels": tile_rows, "sites": site_rows}  # doctest: +SKIP
    >>> write = WriteTablesToBigQuery("bq://minewatch-prod.mining.nightly")
    >>> _ = tables | "BigQuery" >> write  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from minewatch.errors import ConfigError
from minewatch.tables import INFER_TABLES, bigquery_schema, frame_summaries_schema

__all__ = [
    "BIGQUERY_TABLES",
    "DELETE_FLAG",
    "KEYS",
    "PARTITION_FIELDS",
    "BigQueryTarget",
    "MergeStaging",
    "UpsertRows",
    "WriteTablesToBigQuery",
    "apply_statements",
    "bigquery_keys",
    "is_bigquery",
    "merge_sql",
    "parse_target",
    "run_suffix",
    "table_fields",
    "to_bigquery_row",
    "upsert_sql",
]

#: Tables a BigQuery target holds: the Infer tables and the stream's frame summaries.
BIGQUERY_TABLES = {**INFER_TABLES, "frame_summaries": frame_summaries_schema}

#: The staging column of :func:`upsert_sql` that marks a key to delete.
DELETE_FLAG = "_delete"

#: Columns that identify a row of each table (``MERGE ... ON``).
KEYS: dict[str, tuple[str, ...]] = {
    "tile_labels": ("tile_id", "model_version"),
    "frame_labels": ("frame_id", "model_version"),
    "sites": ("site_id", "model_version"),
    "site_observations": ("site_id", "scene_id", "model_version"),
    "stockpile_series": ("site_id", "scene_id", "model_version"),
    "vessels": ("vessel_id", "model_version"),
    "frame_summaries": ("camera_id", "window_start", "model_version"),
}

#: Timestamp column each target table is partitioned by (by day).
PARTITION_FIELDS: dict[str, str] = {
    "tile_labels": "acquired",
    "frame_labels": "acquired",
    "sites": "first_seen",
    "site_observations": "acquired",
    "stockpile_series": "acquired",
    "vessels": "acquired",
    "frame_summaries": "window_start",
}

_NS = "minewatch.bigquery"
_TARGET = re.compile(
    r"^bq://(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])\.(?P<dataset>[A-Za-z0-9_]{1,1024})"
    r"(?:\.(?P<prefix>[A-Za-z0-9_]{1,200}))?$"
)


def is_bigquery(out: str) -> bool:
    """Whether a target names BigQuery (``bq://...``)."""
    return out.startswith("bq://")


@dataclass(frozen=True)
class BigQueryTarget:
    """Where the tables go.

    Attributes:
        project: Google Cloud project id.
        dataset: BigQuery dataset (must exist).
        prefix: Table name prefix; ``""`` for none.
    """

    project: str
    dataset: str
    prefix: str = ""

    def table(self, name: str) -> str:
        """The table id ``project:dataset.[prefix_]name`` (Beam's form)."""
        table = f"{self.prefix}_{name}" if self.prefix else name
        return f"{self.project}:{self.dataset}.{table}"

    def sql(self, table_id: str) -> str:
        """A ``project:dataset.table`` id as a quoted SQL name."""
        project, rest = table_id.split(":", 1)
        return f"`{project}.{rest}`"


def parse_target(out: str) -> BigQueryTarget:
    """Parse ``bq://project.dataset`` or ``bq://project.dataset.prefix``.

    Args:
        out: The ``--bigquery`` value.

    Returns:
        The target.

    Raises:
        ConfigError: Not of that form; the message shows the expected one.
    """
    m = _TARGET.match(out)
    if not m:
        raise ConfigError(
            f"{out!r}: expected bq://PROJECT.DATASET[.PREFIX] (project id 6-30 "
            "characters a-z, 0-9, '-'; dataset and prefix letters, digits and '_')"
        )
    return BigQueryTarget(m["project"], m["dataset"], m["prefix"] or "")


def table_fields(table: str) -> list[dict[str, str]]:
    """BigQuery fields of an inference table (:func:`minewatch.tables.bigquery_schema`).

    Geometry columns without a fixed CRS (``geometry_source``) are ``STRING``
    (WKT): ``GEOGRAPHY`` holds only WGS84 longitudes and latitudes.

    Args:
        table: A key of :data:`BIGQUERY_TABLES`.

    Returns:
        ``[{"name", "type", "mode"}, ...]``.
    """
    return bigquery_schema(table, BIGQUERY_TABLES[table]())


def _wkt(value: bytes) -> str:
    import shapely

    return str(shapely.to_wkt(shapely.from_wkb(value), rounding_precision=-1))


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
    return str(value)


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if kind in ("GEOGRAPHY", "STRING") and isinstance(value, bytes | bytearray):
        return _wkt(bytes(value))
    if kind == "BYTES":
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "TIMESTAMP":
        return _timestamp(value)
    if kind == "FLOAT64":
        value = float(value)
        return value if math.isfinite(value) else None
    if kind == "INT64":
        return int(value)
    if kind == "BOOL":
        return bool(value)
    return value


def to_bigquery_row(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """One table row as a BigQuery JSON row (what a load job reads).

    Args:
        table: The table name.
        row: A row with the table's Arrow schema columns.

    Returns:
        A JSON-serialisable dict with exactly the table's columns: geometry as
        WKT, timestamps ISO 8601 UTC, bytes base64, NaN/inf as null, a null
        list as ``[]`` (BigQuery has no null REPEATED value).

    Raises:
        ValueError: The row misses a column of the table.
    """
    out: dict[str, Any] = {}
    for f in table_fields(table):
        name = f["name"]
        if name not in row:
            raise ValueError(f"{table} row has no column {name!r} (keys: {sorted(row)})")
        value = row[name]
        if f["mode"] == "REPEATED":
            out[name] = [_scalar(f["type"], v) for v in (value if value is not None else [])]
        else:
            out[name] = _scalar(f["type"], value)
    return out


def _create_sql(final: str, source: str, table: str, columns: Sequence[str]) -> str:
    keys = KEYS[table]
    return (
        f"CREATE TABLE IF NOT EXISTS {final} "
        f"PARTITION BY DATE({PARTITION_FIELDS[table]}) CLUSTER BY {', '.join(keys[:4])} "
        f"AS SELECT {', '.join(columns)} FROM {source} WHERE FALSE"
    )


def _merge_sql(final: str, staging: str, table: str, columns: Sequence[str], flag: str) -> str:
    keys = KEYS[table]
    on = " AND ".join(f"T.{k} IS NOT DISTINCT FROM S.{k}" for k in keys)
    update = ", ".join(f"{c} = S.{c}" for c in columns if c not in keys)
    names = ", ".join(columns)
    values = ", ".join(f"S.{c}" for c in columns)
    delete, keep = (
        (f"AND S.{flag} THEN DELETE WHEN MATCHED ", f"AND NOT S.{flag} ") if flag else ("", "")
    )
    return (
        f"MERGE {final} T USING {staging} S ON {on} "
        f"WHEN MATCHED {delete}THEN UPDATE SET {update} "
        f"WHEN NOT MATCHED {keep}THEN INSERT ({names}) VALUES ({values})"
    )


def merge_sql(
    target: BigQueryTarget, table: str, staging_id: str, delete_flag: str = ""
) -> list[str]:
    """The statements that fold a staging table into its target.

    Args:
        target: Where the tables go.
        table: The table name.
        staging_id: The staging table id (``project:dataset.table``).
        delete_flag: A staging column that marks keys to delete (a row with it
            set carries only a key); ``""`` (default) for none: every staging
            row is updated or inserted by key.

    Returns:
        ``[create target if missing, MERGE, drop staging]``.
    """
    final, staging = target.sql(target.table(table)), target.sql(staging_id)
    columns = [f["name"] for f in table_fields(table)]
    return [
        _create_sql(final, staging, table, columns),
        _merge_sql(final, staging, table, columns, delete_flag),
        f"DROP TABLE IF EXISTS {staging}",
    ]


def upsert_sql(target: BigQueryTarget, table: str, staging_id: str) -> list[str]:
    """:func:`merge_sql` for a staging table of rows and deletions (:data:`DELETE_FLAG`)."""
    return merge_sql(target, table, staging_id, DELETE_FLAG)


def apply_statements(client: Any, statements: Sequence[str]) -> int:
    """Run :func:`merge_sql`'s ``[create, MERGE, drop]`` in order; the rows the MERGE affected.

    Each statement waits for the one before; a failed one raises with BigQuery's error.
    """
    create, merge, drop = statements
    client.query(create).result()
    job = client.query(merge)
    job.result()
    affected = int(job.num_dml_affected_rows or 0)
    client.query(drop).result()
    return affected


def run_suffix(run_id: str) -> str:
    """A run id as part of a table name (letters, digits, ``_``); a random one when empty."""
    return re.sub(r"[^A-Za-z0-9_]", "_", run_id or uuid.uuid4().hex[:12])


class MergeStaging(beam.DoFn):  # type: ignore[misc]
    """Wait for a table's load (and copy) jobs, then MERGE its staging table.

    The input is one list of ``(destination, JobReference)`` pairs per table (all
    jobs of the staging write); an empty list means the table had no row, and
    nothing is merged. Yields ``(table, rows affected)``.

    Args:
        target: Where the tables go.
        table: The table name.
        staging_id: The staging table id.
    """

    def __init__(self, target: BigQueryTarget, table: str, staging_id: str) -> None:
        self._target = target
        self._table = table
        self._staging = staging_id
        self._merged = Metrics.counter(_NS, f"{table}_rows_merged")

    def setup(self) -> None:
        """Create the BigQuery client, once per worker."""
        from google.cloud import bigquery

        self._client = bigquery.Client(project=self._target.project)

    def teardown(self) -> None:
        """Close the client."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def process(self, jobs: Sequence[tuple[str, Any]]) -> Iterator[tuple[str, int]]:
        """Wait for ``jobs``, then run :func:`merge_sql`'s statements."""
        if not jobs:
            yield self._table, 0
            return
        for _, ref in jobs:
            # Raises with BigQuery's error when a load or copy failed.
            self._client.get_job(ref.jobId, project=ref.projectId, location=ref.location).result()
        affected = apply_statements(
            self._client, merge_sql(self._target, self._table, self._staging)
        )
        self._merged.inc(affected)
        yield self._table, affected


class WriteTablesToBigQuery(beam.PTransform):  # type: ignore[misc]
    """Load table rows into BigQuery and MERGE them into day-partitioned tables.

    Apply it to a dict of table name -> PCollection of rows (any subset of
    :data:`BIGQUERY_TABLES`). Needs ``--temp_location`` (or
    ``gcs_temp``) on GCS for the load files.

    Example:
        >>> write = WriteTablesToBigQuery("bq://minewatch-prod.mining.nightly", run_id="r1")
        >>> merged = {"tile_labels": rows} | write  # doctest: +SKIP

    Args:
        out: ``bq://project.dataset[.prefix]``.
        run_id: Names the staging tables (``<table>__staging_<run_id>``);
            default a random one.
        gcs_temp: GCS folder for the load files; default the pipeline's
            ``--temp_location``.

    Returns (from ``expand``):
        A dict of table name -> PCollection with one ``(table, rows affected)``.
    """

    def __init__(self, out: str, run_id: str = "", gcs_temp: str | None = None) -> None:
        super().__init__()
        self._target = parse_target(out)
        self._run_id = run_suffix(run_id)
        self._gcs_temp = gcs_temp

    def staging_id(self, table: str) -> str:
        """The staging table id of ``table`` for this run."""
        return self._target.table(f"{table}__staging_{self._run_id}")

    def expand(self, tables: Mapping[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        """Build the writes."""
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

        unknown = sorted(set(tables) - set(BIGQUERY_TABLES))
        if unknown:
            raise ValueError(f"no BigQuery mapping for table(s) {unknown}")
        out = {}
        for table, rows in sorted(tables.items()):
            staging = self.staging_id(table)
            written = (
                rows
                | f"{table}/ToJson" >> beam.Map(lambda r, t=table: to_bigquery_row(t, r))
                | f"{table}/Load"
                >> WriteToBigQuery(
                    staging,
                    schema={"fields": table_fields(table)},
                    method=WriteToBigQuery.Method.FILE_LOADS,
                    create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
                    # Staging is this run's own table: a retried load replaces it.
                    write_disposition=BigQueryDisposition.WRITE_TRUNCATE,
                    additional_bq_parameters={
                        "timePartitioning": {"type": "DAY", "field": PARTITION_FIELDS[table]}
                    },
                    custom_gcs_temp_location=self._gcs_temp,
                )
            )
            jobs = (
                written.destination_load_jobid_pairs,
                written.destination_copy_jobid_pairs,
            ) | f"{table}/Jobs" >> beam.Flatten()
            out[table] = (
                jobs
                | f"{table}/AllJobs" >> beam.combiners.ToList()
                | f"{table}/Merge" >> beam.ParDo(MergeStaging(self._target, table, staging))
            )
        return out


class UpsertRows(beam.DoFn):  # type: ignore[misc]
    """Apply one unit's rows of one table to BigQuery as they come (``minewatch stream``).

    Each element is ``(table, rows, stale)``: ``rows`` shaped as
    :mod:`minewatch.tables` defines the table, ``stale`` the keys (dicts of the
    :data:`KEYS` columns, in BigQuery JSON form) of rows to delete. The rows and
    keys are loaded into a staging table of their own, applied with
    :func:`upsert_sql`'s one ``MERGE``, and the staging table is dropped.
    Yields ``(table, rows affected)``. A failed load or statement raises, so the
    runner retries the element; a retry converges to the same rows.

    Example:
        >>> upsert = UpsertRows("bq://minewatch-prod.mining.live")
        >>> applied = changes | beam.ParDo(upsert)  # doctest: +SKIP

    Args:
        out: ``bq://project.dataset[.prefix]``.
        run_id: Part of the staging tables' names (``<table>__stream_<run>_<n>``).
        test_client: A client to use instead of ``google.cloud.bigquery.Client``
            (as Beam's ``WriteToBigQuery(test_client=...)``); None in production.
    """

    def __init__(self, out: str, run_id: str = "", test_client: Any = None) -> None:
        self._target = parse_target(out)
        self._run_id = run_suffix(run_id)
        self._test_client = test_client
        self._applied = Metrics.counter(_NS, "rows_upserted")

    def setup(self) -> None:
        """Create the BigQuery client, once per worker."""
        if self._test_client is not None:
            self._client = self._test_client
            return
        from google.cloud import bigquery

        self._client = bigquery.Client(project=self._target.project)

    def teardown(self) -> None:
        """Close the client."""
        client = getattr(self, "_client", None)
        if client is not None and client is not self._test_client:
            client.close()

    def process(
        self, item: tuple[str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
    ) -> Iterator[tuple[str, int]]:
        """Load, merge and drop one staging table; yield the rows affected."""
        from google.cloud.bigquery import LoadJobConfig, SchemaField

        table, rows, stale = item
        if not rows and not stale:
            return
        keys = KEYS[table]
        staged = [{**to_bigquery_row(table, r), DELETE_FLAG: False} for r in rows]
        staged += [{**{k: key[k] for k in keys}, DELETE_FLAG: True} for key in stale]
        fields = [*table_fields(table), {"name": DELETE_FLAG, "type": "BOOL", "mode": "NULLABLE"}]
        staging = self._target.table(f"{table}__stream_{self._run_id}_{uuid.uuid4().hex[:10]}")
        config = LoadJobConfig(
            schema=[SchemaField(f["name"], f["type"], mode=f["mode"]) for f in fields],
            write_disposition="WRITE_TRUNCATE",
        )
        # The client's table ids are 'project.dataset.table'; Beam's are 'project:dataset.table'.
        self._client.load_table_from_json(
            staged, staging.replace(":", ".", 1), job_config=config
        ).result()
        affected = apply_statements(self._client, upsert_sql(self._target, table, staging))
        self._applied.inc(affected)
        yield table, affected


def bigquery_keys(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's :data:`KEYS` columns in BigQuery JSON form, as :class:`UpsertRows` takes them."""
    converted = to_bigquery_row(table, row)
    return {k: converted[k] for k in KEYS[table]}
