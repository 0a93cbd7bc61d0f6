"""Inbound CSV benchmark: one large file through the real S3 path vs DuckDB alone vs pandas.

    .venv/bin/python benchmarks/bench_csv.py                 # 8M rows, ~1 GB (several minutes)
    .venv/bin/python benchmarks/bench_csv.py --rows 200000   # smoke run

Generates a CSV with DuckDB (`email` + 10 mapped properties of every type), builds a warehouse
whose attribute table already holds users (half of the file's users plus others, so the MERGE
updates and inserts), uploads the file to a moto S3 server, then measures, each in its own
spawned process starting from a copy of the same warehouse:

  ours        landing_store -> list_pending -> process_file (download, sniff, stage/validate,
              MERGE, bookkeeping, move to success/), the steps the Dagster asset runs per file
  ours-local  the same on a local-folder connection (no download, the move is a rename)
  floor       DuckDB alone on the local file: typed read_csv + MERGE with the same semantics
  pandas      pd.read_csv + casts in pandas + register + the same MERGE (pandas for the file only)
  pandas-only the same read and casts, then the table read into pandas, the upsert done there
              (combine_first) and the table written back in one transaction

checks that they all leave the same table content, and prints the targets (ours/floor <= 1.3,
ours peak RSS < 1.5 GB, pandas/ours >= 3 against each pandas baseline) with where ours' time goes.
Exits non-zero only if a variant failed or the results disagree: the targets are reported, not
enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak, so `python benchmarks/bench_csv.py` works
    GB,
    MB,
    MeasuredFailure,
    fmt_mb,
    fmt_rate,
    fmt_seconds,
    measure,
    moto_server,
    peak_rss_self,
    print_table,
    target_line,
)

ROOT = Path(__file__).resolve().parent.parent
INTEGRATION = "bench"
TABLE = f"attributes_{INTEGRATION}"
BUCKET = "bench-inbound"
PREFIX = "inbound"
FILE_NAME = "users.csv"
MEMORY_ENV = "INTEGRATION_HUB_DUCKDB_MEMORY"
# ours: S3 (moto) landing; ours-local: the same code path on a local-folder connection (no
# download, the move is a rename), to tell the S3 transfers from the DuckDB work.
VARIANTS = ("floor", "ours", "ours-local", "pandas", "pandas-only")
OURS_PRELOAD = ("duckdb", "boto3", "dagster_aws.s3", "integration_hub.inbound_csv.processing")

# (CSV column, attribute name, type): the catalog mapping, one property of each kind and more.
PROPERTIES: list[tuple[str, str, str]] = [
    ("Plan Tier", "plan", "string"),
    ("Company", "company", "string"),
    ("Country", "country", "string"),
    ("Job Title", "job_title", "string"),
    ("tickets", "support_tickets", "number"),
    ("lifetime_value", "lifetime_value", "number"),
    ("is_active", "active", "boolean"),
    ("newsletter", "newsletter_opt_in", "boolean"),
    ("signup", "signup_date", "date"),
    ("last_login", "last_login_at", "datetime"),
]
DUCKDB_TYPES = {"string": "VARCHAR", "number": "DOUBLE", "boolean": "BOOLEAN", "date": "DATE", "datetime": "TIMESTAMPTZ"}

# Targets from the issue.
MAX_RATIO_VS_FLOOR = 1.3
MAX_PEAK_RSS = 1.5e9  # bytes
MIN_SPEEDUP_VS_PANDAS = 3.0


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- data


def _text_columns_sql(seed: int, job_title_blank_percent: int = 5) -> str:
    """The CSV cells of user `i` (a column of the enclosing query), as text; NULL = blank cell.

    Deterministic (DuckDB's hash); `seed` gives another set of values for the same users.
    """

    def h(k: int) -> str:
        return f"hash(i, {seed * 100 + k})"

    def pick(k: int, values: list[str]) -> str:
        return f"[{', '.join(lit(v) for v in values)}][1 + CAST({h(k)} % {len(values)} AS INTEGER)]"

    def blank_some(k: int, percent: int, expression: str) -> str:
        return f"CASE WHEN {h(k + 50)} % 100 < {percent} THEN NULL ELSE {expression} END"

    countries = ["Germany", "France", "United States", "United Kingdom", "Spain", "Italy", "Netherlands", "Brazil", "Japan", "India"]
    titles = ["Software Engineer", "Account Manager", "Head of Marketing", "Data Analyst", "CFO", "Customer Success Manager", "Sales Lead"]
    suffixes = ["GmbH", "Ltd", "Inc.", "SA", "LLC", "Group, Inc."]  # the last one is quoted in the file
    value = f"CAST(CAST({h(7)} % 10000000 AS DECIMAL(18, 0)) / 100 AS DECIMAL(10, 2))"
    last_login = f"strftime(TIMESTAMP '2023-01-01' + to_seconds(CAST({h(11)} % 60000000 AS BIGINT)), '%Y-%m-%dT%H:%M:%SZ')"
    return ", ".join(
        [
            "'user' || lpad(CAST(i AS VARCHAR), 9, '0') || '@example.com' AS email",
            f"{pick(1, ['free', 'starter', 'pro', 'business', 'enterprise'])} AS {q('Plan Tier')}",
            f"'Company ' || CAST({h(2)} % 500000 AS VARCHAR) || ' ' || {pick(3, suffixes)} AS {q('Company')}",
            f"{blank_some(4, 3, pick(4, countries))} AS {q('Country')}",
            f"{blank_some(5, job_title_blank_percent, pick(5, titles))} AS {q('Job Title')}",
            f"CAST({h(6)} % 100 AS VARCHAR) AS tickets",
            f"{blank_some(7, 3, value)} AS lifetime_value",
            f"{pick(8, ['yes', 'no', 'true', 'false', 'Yes', 'FALSE'])} AS is_active",
            f"{pick(9, ['true', 'false', 'yes', 'no'])} AS newsletter",
            f"CAST(DATE '2015-01-01' + CAST({h(10)} % 3650 AS INTEGER) AS VARCHAR) AS signup",
            f"{blank_some(11, 4, last_login)} AS last_login",
        ]
    )


def generate_csv(path: Path, rows: int, job_title_blank_percent: int = 5) -> None:
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        con.execute(
            f"COPY (SELECT {_text_columns_sql(1, job_title_blank_percent)} FROM range({int(rows)}) AS t(i) ORDER BY i) "
            f"TO {lit(str(path))} (HEADER, DELIMITER ',')"
        )


def existing_user_ids_sql(rows: int) -> str:
    """Users already in the table: every other user of the file, plus a quarter as many others."""
    return f"SELECT i FROM range(0, {rows}, 2) AS r(i) UNION ALL SELECT i FROM range({rows}, {rows + rows // 4}) AS r(i)"


def prepare_warehouse(catalog_path: Path, warehouse: Path, rows: int) -> int:
    """The real schema (ensure_schema), then the existing users inserted directly; returns their count."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import ensure_schema, open_writer

    catalog = load_catalog(catalog_path)
    typed = ", ".join(
        [
            "email AS user_id",
            *(f"CAST({q(column)} AS {DUCKDB_TYPES[ptype]}) AS {q(name)}" for column, name, ptype in PROPERTIES),
            "TIMESTAMPTZ '2024-01-01 00:00:00+00' AS _updated_at",
            "'seed' AS _source",
        ]
    )
    with open_writer(warehouse) as con:
        con.execute("SET enable_progress_bar = false")
        ensure_schema(con, catalog)
        con.execute(
            f"INSERT INTO {TABLE} SELECT {typed} FROM (SELECT {_text_columns_sql(seed=2)} "
            f"FROM ({existing_user_ids_sql(rows)}) AS t(i) ORDER BY i)"
        )
        con.execute("CHECKPOINT")
        return con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def s3_connection(endpoint_url: str) -> dict[str, Any]:
    return {
        "name": "landing",
        "type": "s3",
        "bucket": BUCKET,
        "prefix": PREFIX,
        "region": "us-east-1",
        "endpoint_url": endpoint_url,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }


def write_catalog(path: Path, warehouse: Path, connection: dict[str, Any], max_file_bytes: int | None) -> None:
    import yaml

    integration: dict[str, Any] = {
        "name": INTEGRATION,
        "type": "s3_csv",
        "connection": "landing",
        "folder": INTEGRATION,
        "user_id_column": "email",
        "properties": [{"column": c, "name": n, "type": t} for c, n, t in PROPERTIES],
    }
    if max_file_bytes:
        integration["max_file_bytes"] = max_file_bytes
    document = {
        "warehouse": str(warehouse),
        "landing": str(path.parent / "api_landing"),
        "connections": [connection],
        "integrations": [integration],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


# ---------------------------------------------------------------------------- the variants (children)


def _duckdb_settings(con: Any) -> dict[str, Any]:
    memory, threads = con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall()[0]
    return {"memory_limit": memory, "threads": threads}


def _configure_like_ours(con: Any, database: Path, memory_limit: str | None) -> None:
    """The session settings `integration_hub.core.warehouse.open_writer` applies."""
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = {lit(memory_limit)}")
    con.execute(f"SET temp_directory = {lit(str(database.parent / '.duckdb_tmp'))}")


def merge_sql(source_select: str, source_label: str) -> str:
    """MERGE with the integration's semantics (on_blank: keep -> a blank cell keeps the old value)."""
    names = [name for _, name, _ in PROPERTIES]
    stamp = "CAST(now() AS TIMESTAMPTZ)"
    updates = [f"{q(n)} = COALESCE(s.{q(n)}, t.{q(n)})" for n in names]
    updates += [f"_updated_at = {stamp}", f"_source = {lit(source_label)}"]
    columns = ", ".join(["user_id", *map(q, names), "_updated_at", "_source"])
    values = ", ".join(["s.user_id", *(f"s.{q(n)}" for n in names), stamp, lit(source_label)])
    return (
        f"MERGE INTO {TABLE} AS t USING ({source_select}) AS s ON t.user_id = s.user_id "
        f"WHEN MATCHED THEN UPDATE SET {', '.join(updates)} "
        f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    )


def run_floor(csv_path: str, warehouse: str, memory_limit: str | None) -> dict[str, Any]:
    """DuckDB alone: a typed read_csv straight into MERGE, one statement (autocommit)."""
    import duckdb

    database = Path(warehouse)
    con = duckdb.connect(str(database))
    _configure_like_ours(con, database, memory_limit)
    settings = _duckdb_settings(con)
    types = ", ".join(
        [f"{lit('email')}: 'VARCHAR'", *(f"{lit(column)}: {lit(DUCKDB_TYPES[ptype])}" for column, _, ptype in PROPERTIES)]
    )
    select = ", ".join(["email AS user_id", *(f"{q(column)} AS {q(name)}" for column, name, _ in PROPERTIES)])
    source = f"SELECT {select} FROM read_csv({lit(csv_path)}, header = true, columns = {{{types}}})"
    started = time.perf_counter()
    changed = con.execute(merge_sql(source, csv_path)).fetchone()[0]
    merged = time.perf_counter() - started
    con.close()  # includes the checkpoint, as ours does when its connection closes
    return {"rows_applied": changed, "phases": {"read_csv + MERGE": merged, "close (checkpoint)": time.perf_counter() - started - merged}, "settings": settings}


def _pandas_frame(csv_path: str, phases: dict[str, float]) -> Any:
    """pandas reads and casts the whole file: one typed column per property, `user_id` first."""
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(csv_path, dtype=str)  # blank cells -> NaN
    phases["pd.read_csv"] = time.perf_counter() - started

    mark = time.perf_counter()
    out = pd.DataFrame({"user_id": frame["email"].str.strip()})
    truthy = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    for column, name, ptype in PROPERTIES:
        cells = frame[column].str.strip()
        if ptype == "number":
            out[name] = pd.to_numeric(cells, errors="coerce")
        elif ptype == "boolean":
            out[name] = cells.str.lower().map(truthy).astype("boolean")
        elif ptype == "date":
            out[name] = pd.to_datetime(cells, format="%Y-%m-%d", errors="coerce")
        elif ptype == "datetime":
            out[name] = pd.to_datetime(cells, format="ISO8601", utc=True, errors="coerce")
        else:
            out[name] = cells
    del frame
    phases["casts (pandas)"] = time.perf_counter() - mark
    return out


def _typed_select(frame: str, extra: tuple[str, ...] = ()) -> str:
    """The DataFrame's columns as the table's types (pandas has no DATE: datetime64 -> DATE)."""
    typed = [f"CAST({q(name)} AS DATE) AS {q(name)}" if ptype == "date" else q(name) for _, name, ptype in PROPERTIES]
    return f"SELECT {', '.join(['user_id', *typed, *extra])} FROM {frame}"


def run_pandas(csv_path: str, warehouse: str, memory_limit: str | None) -> dict[str, Any]:
    """pandas reads and casts the whole file, DuckDB merges the DataFrame."""
    import duckdb

    phases: dict[str, float] = {}
    incoming = _pandas_frame(csv_path, phases)
    mark = time.perf_counter()
    database = Path(warehouse)
    con = duckdb.connect(str(database))
    _configure_like_ours(con, database, memory_limit)
    settings = _duckdb_settings(con)
    con.register("incoming", incoming)
    changed = con.execute(merge_sql(_typed_select("incoming"), csv_path)).fetchone()[0]
    con.close()
    phases["register + MERGE + close"] = time.perf_counter() - mark
    return {"rows_applied": changed, "phases": phases, "settings": settings}


def run_pandas_only(csv_path: str, warehouse: str, memory_limit: str | None) -> dict[str, Any]:
    """Everything in pandas: read and cast the file, read the table, upsert, write the table back.

    The upsert is `combine_first` on the user id (a blank cell keeps the old value); the result
    replaces the table in one transaction (a new table with the same primary key, swapped in).
    """
    import duckdb
    import pandas as pd

    phases: dict[str, float] = {}
    incoming = _pandas_frame(csv_path, phases)
    database = Path(warehouse)
    con = duckdb.connect(str(database))
    _configure_like_ours(con, database, memory_limit)
    settings = _duckdb_settings(con)

    mark = time.perf_counter()
    existing = con.execute(f"SELECT * FROM {TABLE}").df()
    phases["read the table into pandas"] = time.perf_counter() - mark

    mark = time.perf_counter()
    incoming = incoming.set_index("user_id")
    incoming["_updated_at"] = pd.Timestamp.now(tz="UTC")
    incoming["_source"] = csv_path
    existing = existing.set_index("user_id")
    merged = incoming.combine_first(existing)[existing.columns].reset_index()
    changed = len(incoming)
    del incoming, existing
    phases["upsert (combine_first)"] = time.perf_counter() - mark

    mark = time.perf_counter()
    columns = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [TABLE]
    ).fetchall()
    definition = ", ".join(f"{q(name)} {data_type}" for name, data_type in columns)
    con.register("merged", merged)
    con.execute("BEGIN TRANSACTION")
    con.execute(f"CREATE TABLE {TABLE}__new ({definition}, PRIMARY KEY (user_id))")
    con.execute(f"INSERT INTO {TABLE}__new {_typed_select('merged', ('_updated_at', '_source'))}")
    con.execute(f"DROP TABLE {TABLE}")
    con.execute(f"ALTER TABLE {TABLE}__new RENAME TO {TABLE}")
    con.execute("COMMIT")
    con.close()
    phases["write the table back + close"] = time.perf_counter() - mark
    return {"rows_applied": changed, "phases": phases, "settings": settings}


REBUILD_PHASE = "rebuild (join for old values, 3 inserts into a new table, key maintained)"
_STATEMENT_PHASES = [  # (prefix or fragment of the SQL, phase), first match wins
    ("DESCRIBE", "sniff header"),
    ("CREATE OR REPLACE TEMP TABLE _rebuild_joined", REBUILD_PHASE),
    ("CREATE OR REPLACE TEMP TABLE _stage", "stage (read_csv + casts)"),
    ("CREATE OR REPLACE TEMP TABLE _dups", "validate"),
    ("CREATE OR REPLACE TEMP TABLE _rejects", "validate"),
    ("SELECT count(", "validate"),
    ("INSERT INTO rejected_rows", "validate"),
    ("SELECT _row, user_id, column_name", "validate"),
    ("MERGE INTO", "MERGE"),
    (f'INSERT INTO "{TABLE}__rebuild"', REBUILD_PHASE),
    ("COMMIT", "commit"),
]


class _TimedConnection:
    """Passes every call to the DuckDB connection; times `execute` by the kind of statement."""

    def __init__(self, con: Any, phases: dict[str, float]) -> None:
        self._con = con
        self._phases = phases

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        stripped = sql.strip()
        phase = next((p for fragment, p in _STATEMENT_PHASES if stripped.startswith(fragment)), "bookkeeping + other SQL")
        started = time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            self._phases[phase] = self._phases.get(phase, 0.0) + time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _timed(function: Any, phases: dict[str, float], phase: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - started

    return wrapper


def run_ours(catalog_path: str, tmp_dir: str, memory_limit: str | None) -> dict[str, Any]:
    """The real code path, as the integration's Dagster asset runs it (without the metadata and
    asset checks it computes afterwards); timing wrappers only."""
    import tempfile

    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.landing import landing_store
    from integration_hub.core.warehouse import ensure_schema, open_writer
    from integration_hub.inbound_csv import processing

    tempfile.tempdir = tmp_dir  # the download lands in the benchmark's work dir
    if memory_limit:
        os.environ[MEMORY_ENV] = memory_limit
    phases: dict[str, float] = {}
    overlapped: dict[str, float] = {}
    started = time.perf_counter()
    catalog = load_catalog(catalog_path)
    integration = catalog.integration(INTEGRATION)
    store = landing_store(catalog, catalog.connection(integration.connection))
    store.fetch = _timed(store.fetch, phases, "fetch (S3: download; local: nothing)")
    store.move = _timed(store.move, phases, "move to success/ (S3: copy + delete; local: rename)")
    store.write_text = _timed(store.write_text, phases, "move to success/ (S3: copy + delete; local: rename)")
    # Module globals processing.py looks up at call time: timing only, behaviour unchanged.
    processing.digest_file = _timed(processing.digest_file, overlapped, "sha256 (in a thread, overlaps DuckDB)")
    processing.apply_source = _timed(processing.apply_source, overlapped, "apply_source (all of the transaction)")
    with open_writer(Path(catalog.warehouse_path)) as con:
        ensure_schema(con, catalog)
        files = store.list_pending(integration.folder)
        if len(files) != 1:
            raise RuntimeError(f"expected one pending file, found {files}")
        phases["setup (catalog, client, open, schema, list)"] = time.perf_counter() - started
        run = processing.process_file(_TimedConnection(con, phases), store, integration, files[0])
        settings = _duckdb_settings(con)
        mark = time.perf_counter()
    phases["close (checkpoint)"] = time.perf_counter() - mark
    if run is None:
        raise RuntimeError("process_file returned None: the file vanished")
    return {
        "status": run.status,
        "message": run.message,
        "rows_read": run.rows_read,
        "rows_applied": run.rows_applied,
        "rows_rejected": run.rows_rejected,
        "moved_to": run.details.get("moved_to"),
        "phases": phases,
        "overlapped": overlapped,
        "settings": settings,
    }


def run_transfer_reference(endpoint_url: str, key: str, work_dir: str) -> dict[str, Any]:
    """What moto alone costs for the transfers ours makes, and for single-request alternatives.

    moto reads the *whole* object for every request, even a ranged GET or one UploadPartCopy,
    so multipart transfers of a 1 GB object cost it (parts x 1 GB); real S3 does not.
    """
    import boto3
    from boto3.s3.transfer import TransferConfig

    from integration_hub.core.landing import CHUNK, COPY_OBJECT_LIMIT, LARGE_PART, download_config

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    phases: dict[str, float] = {}
    target = Path(work_dir) / "reference-download.csv"
    copy_key = key + ".reference-copy"

    def timed(label: str, action: Any) -> None:
        started = time.perf_counter()
        action()
        phases[label] = time.perf_counter() - started

    def streamed_get() -> None:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        with open(target, "wb") as handle:
            shutil.copyfileobj(body, handle, CHUNK)

    def copy_object() -> None:
        client.copy_object(Bucket=BUCKET, Key=copy_key, CopySource={"Bucket": BUCKET, "Key": key})
        client.delete_object(Bucket=BUCKET, Key=copy_key)

    def managed_copy(config: Any) -> None:
        client.copy({"Bucket": BUCKET, "Key": key}, BUCKET, copy_key, Config=config)
        client.delete_object(Bucket=BUCKET, Key=copy_key)

    def download(config: Any) -> None:
        client.download_file(BUCKET, key, str(target), Config=config)
        target.unlink()

    size = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    fetch_config = download_config(size)
    parts = -(-size // fetch_config.multipart_chunksize)
    how = f"{parts} ranged GETs of {fetch_config.multipart_chunksize // MB} MiB, one wave" if size >= LARGE_PART else "one GET"
    fetch_label = f"download_file as S3LandingStore.fetch ({how})"
    timed(fetch_label, lambda: download(fetch_config))
    timed("download_file, 128 MiB ranged GETs, 4 at a time", lambda: download(TransferConfig(multipart_chunksize=LARGE_PART, max_concurrency=4)))
    timed("get_object, one streamed GET", streamed_get)
    target.unlink()
    move_config = TransferConfig(multipart_threshold=COPY_OBJECT_LIMIT)
    timed("managed copy + delete, as S3LandingStore.move (one CopyObject)", lambda: managed_copy(move_config))
    timed("managed copy + delete, 128 MiB UploadPartCopy", lambda: managed_copy(TransferConfig(multipart_chunksize=LARGE_PART)))
    timed("copy_object (one request) + delete", copy_object)
    return {"phases": phases}


# ---------------------------------------------------------------------------- the parent


def table_checksum(warehouse: Path) -> tuple[int, int]:
    """(rows, a hash of every attribute value): the same for every variant when they agree."""
    import duckdb

    columns = ", ".join(["user_id", *(q(name) for _, name, _ in PROPERTIES)])
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows, digest = con.execute(f"SELECT count(*), sum(hash({columns})) FROM {TABLE}").fetchone()
    return int(rows), int(digest)


def _phase_table(name: str, total: float, phases: dict[str, float], overlapped: dict[str, float] | None = None) -> None:
    rows = [(phase, fmt_seconds(seconds), f"{seconds / total:.0%}") for phase, seconds in phases.items()]
    rest = total - sum(phases.values())
    rows.append(("(rest: Python between the timed steps)", fmt_seconds(rest), f"{rest / total:.0%}"))
    rows.append(("total", fmt_seconds(total), "100%"))
    for phase, seconds in (overlapped or {}).items():
        rows.append((f"  info: {phase}", fmt_seconds(seconds), "-"))
    print_table(["phase", "seconds", "share"], rows, title=f"{name}: where the time goes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000, help="rows in the CSV file (default 8,000,000, ~1 GB)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work", help="scratch space (default benchmarks/.work)")
    parser.add_argument(
        "--memory-limit",
        default=os.environ.get(MEMORY_ENV),
        help=f"DuckDB memory_limit for every variant (ours through ${MEMORY_ENV}); default: ${MEMORY_ENV}, else DuckDB's default",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)"
    )
    parser.add_argument("--transfer-reference", action="store_true", help="also time moto alone for the same download and copy")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every variant N times, interleaved; report the fastest (and the highest RSS)"
    )
    parser.add_argument(
        "--job-title-blank-percent",
        type=int,
        default=5,
        help="share of rows whose 'Job Title' cell is blank (default 5; 100 makes every row keep an old value)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (file, warehouses) afterwards")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    work = args.work_dir.resolve() / "csv"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    csv_path = work / FILE_NAME
    base = work / "base" / "warehouse.duckdb"
    catalog_path = work / "ours" / "integrations.yaml"
    print(f"Inbound CSV benchmark: {args.rows:,} rows, work dir {work}", flush=True)
    try:
        return _run(args, variants, work, csv_path, base, catalog_path)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, variants: list[str], work: Path, csv_path: Path, base: Path, catalog_path: Path) -> int:
    from integration_hub.core.catalog import DEFAULT_MAX_FILE_BYTES

    started = time.perf_counter()
    generate_csv(csv_path, args.rows, args.job_title_blank_percent)
    size = csv_path.stat().st_size
    print(
        f"  generated {csv_path.name}: {size / MB:,.0f} MiB ({size:,} bytes), 'Job Title' blank in "
        f"{args.job_title_blank_percent}% of rows, in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    max_file_bytes = None if size <= DEFAULT_MAX_FILE_BYTES else size  # keep the default limit when the file fits

    results: dict[str, Any] = {}
    with moto_server() as moto:
        catalog_path.parent.mkdir(parents=True)
        write_catalog(catalog_path, catalog_path.parent / "warehouse.duckdb", s3_connection(moto.endpoint_url), max_file_bytes)
        local_catalog = work / "ours-local" / "integrations.yaml"
        local_catalog.parent.mkdir(parents=True)
        local_root = work / "landing"
        write_catalog(
            local_catalog,
            local_catalog.parent / "warehouse.duckdb",
            {"name": "landing", "type": "local", "path": str(local_root)},
            max_file_bytes,
        )
        if max_file_bytes:
            print(f"  note: the file is over the default max_file_bytes ({DEFAULT_MAX_FILE_BYTES:,}); the catalog raises it")

        mark = time.perf_counter()
        existing = prepare_warehouse(catalog_path, base, args.rows)
        print(
            f"  prepared the warehouse: {TABLE} holds {existing:,} users ({args.rows // 2:,} of them in the file) "
            f"in {time.perf_counter() - mark:.1f} s; {base.stat().st_size / MB:,.0f} MiB",
            flush=True,
        )

        client = moto.client()
        client.create_bucket(Bucket=BUCKET)
        key = f"{PREFIX}/{INTEGRATION}/{FILE_NAME}"

        def land(variant: str) -> None:
            """Put the file back in the pending folder (not measured)."""
            if variant == "ours-local":
                shutil.rmtree(local_root / INTEGRATION, ignore_errors=True)
                (local_root / INTEGRATION).mkdir(parents=True)
                os.link(csv_path, local_root / INTEGRATION / FILE_NAME)  # the same bytes, no copy
            elif variant == "ours":
                from boto3.s3.transfer import TransferConfig

                listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{INTEGRATION}/")
                if key in {o["Key"] for o in listed.get("Contents", [])}:
                    return
                for item in listed.get("Contents", []):
                    client.delete_object(Bucket=BUCKET, Key=item["Key"])
                mark = time.perf_counter()
                client.upload_file(str(csv_path), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 * MB))
                print(f"  (uploaded {FILE_NAME} to moto at {moto.endpoint_url} in {time.perf_counter() - mark:.1f} s)", flush=True)

        if args.transfer_reference:
            land("ours")
            print("  running the S3 transfer reference ...", flush=True)
            results["transfer reference"] = measure(
                run_transfer_reference, moto.endpoint_url, key, str(work / "tmp"), preload=("boto3",)
            )

        runs: dict[str, list[Any]] = {v: [] for v in variants}
        for round_ in range(1, args.repeat + 1):
            for variant in variants:
                land(variant)
                warehouse = work / variant / "warehouse.duckdb"
                warehouse.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base, warehouse)
                print(f"  running {variant}{f' (round {round_})' if args.repeat > 1 else ''} ...", flush=True)
                try:
                    if variant == "floor":
                        measured = measure(run_floor, str(csv_path), str(warehouse), args.memory_limit, preload=("duckdb",))
                    elif variant in ("pandas", "pandas-only"):
                        run = run_pandas if variant == "pandas" else run_pandas_only
                        measured = measure(run, str(csv_path), str(warehouse), args.memory_limit, preload=("duckdb", "pandas"))
                    else:
                        catalog = catalog_path if variant == "ours" else local_catalog
                        measured = measure(
                            run_ours, str(catalog), str(work / "tmp"), args.memory_limit, preload=OURS_PRELOAD
                        )
                except MeasuredFailure as exc:
                    print(f"    FAILED: {exc}", flush=True)
                    runs[variant].append(_last_error_line(str(exc)))
                else:
                    measured.result["checksum"] = table_checksum(warehouse)
                    measured.result["load"] = os.getloadavg()[0]
                    runs[variant].append(measured)
                    print(
                        f"    {measured.seconds:.1f} s (CPU {measured.cpu_seconds:.1f} s), peak RSS {measured.peak_rss_mb:,.0f} MiB "
                        f"(1-min load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
                        flush=True,
                    )
                for leftover in warehouse.parent.glob("warehouse.duckdb*"):
                    leftover.unlink()
        for variant, measurements in runs.items():
            results[variant] = _best(measurements)
        parent_rss = peak_rss_self()

    return _report(args, variants, results, existing, size, parent_rss)


def _best(measurements: list[Any]) -> Any:
    """Of repeated runs: the fastest, with the highest peak RSS of all; a failure if any failed."""
    failures = [m for m in measurements if isinstance(m, str)]
    if failures:
        return failures[0]
    best = min(measurements, key=lambda m: m.seconds)
    best.peak_rss_bytes = max(m.peak_rss_bytes for m in measurements)
    best.result["all_seconds"] = [round(m.seconds, 1) for m in measurements]
    return best


def _last_error_line(text: str) -> str:
    """The exception line of a child's traceback (e.g. DuckDB's Out of Memory Error)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors or lines or ["failed"])[-1].strip()


def _report(args: argparse.Namespace, variants: list[str], results: dict[str, Any], existing: int, size: int, parent_rss: int) -> int:
    rows = args.rows
    done = {v: m for v, m in results.items() if v in variants and not isinstance(m, str)}
    failed = {v: m for v, m in results.items() if v in variants and isinstance(m, str)}
    floor = done.get("floor")
    table = []
    for variant in variants:
        m = results[variant]
        if isinstance(m, str):
            table.append([variant, "FAILED", "-", "-", "-", m[:100], *(["-"] if args.repeat > 1 else [])])
            continue
        ratio = f"{m.seconds / floor.seconds:.2f}x" if floor else "-"
        cpu = fmt_seconds(m.cpu_seconds) if m.cpu_seconds is not None else "-"
        row = [variant, fmt_seconds(m.seconds), cpu, fmt_rate(rows, m.seconds), fmt_mb(m.peak_rss_bytes), ratio]
        if args.repeat > 1:
            row.append(" / ".join(f"{x:.1f}" for x in m.result["all_seconds"]))
        table.append(row)
    settings = next((m.result["settings"] for m in done.values()), {"memory_limit": args.memory_limit or "default", "threads": "?"})
    headers = ["variant", "seconds", "CPU s", "rows/s", "peak RSS MiB", "vs floor"]
    if args.repeat > 1:
        headers.append(f"every run (s; best of {args.repeat} shown)")
    print_table(
        headers,
        table,
        title=(
            f"Inbound CSV: {rows:,} rows x {len(PROPERTIES)} properties, {size / MB:,.0f} MiB, into a table of "
            f"{existing:,} users ({rows // 2:,} updated, {rows - rows // 2:,} inserted); "
            f"DuckDB memory_limit={settings['memory_limit']}, threads={settings['threads']}; {date.today().isoformat()}"
        ),
    )

    ok = not failed
    checksums = {v: m.result["checksum"] for v, m in done.items()}
    expected_rows = existing + rows - rows // 2
    same = len(set(checksums.values())) <= 1 and all(c[0] == expected_rows for c in checksums.values())
    print(f"\nsame table content in every variant ({expected_rows:,} rows): {'yes' if same else 'NO: ' + json.dumps(checksums)}")
    ok &= same
    for variant in ("ours", "ours-local"):
        if variant in done:
            r = done[variant].result
            print(
                f"{variant}: status {r['status']}, {r['rows_read']:,} read, {r['rows_applied']:,} applied, "
                f"{r['rows_rejected']:,} rejected, moved to {r['moved_to']}{' - ' + r['message'] if r['message'] else ''}"
            )
            ok &= r["status"] == "success" and r["rows_applied"] == rows

    print()
    ours = done.get("ours")
    if ours is None:
        print("FAIL  ours did not finish: no target can pass" if "ours" in variants else "(ours not run: no targets)")
    else:
        if floor:
            ratio = ours.seconds / floor.seconds
            print(target_line(f"ours/floor <= {MAX_RATIO_VS_FLOOR}", f"{ratio:.2f}x", ratio <= MAX_RATIO_VS_FLOOR))
        ok_rss = ours.peak_rss_bytes < MAX_PEAK_RSS
        print(target_line(f"ours peak RSS < {MAX_PEAK_RSS / 1e9:.1f} GB", f"{ours.peak_rss_bytes / 1e9:.2f} GB", ok_rss))
        for baseline in ("pandas", "pandas-only"):
            if baseline in done:
                speedup = done[baseline].seconds / ours.seconds
                label = f"{baseline}/ours >= {MIN_SPEEDUP_VS_PANDAS:.0f}"
                print(target_line(label, f"{speedup:.2f}x", speedup >= MIN_SPEEDUP_VS_PANDAS))
        if floor:
            transfer = sum(s for p, s in ours.result["phases"].items() if p.startswith(("fetch", "move")))
            print(f"info  ours minus its S3 transfers (fetch + move: {transfer:.1f} s) / floor: {(ours.seconds - transfer) / floor.seconds:.2f}x")
    local = done.get("ours-local")
    if local and floor:
        print(f"info  ours-local (same path, local folder) / floor: {local.seconds / floor.seconds:.2f}x, peak RSS {local.peak_rss_bytes / 1e9:.2f} GB")
        for baseline in ("pandas", "pandas-only"):
            if baseline in done:
                print(f"info  {baseline} / ours-local: {done[baseline].seconds / local.seconds:.2f}x")

    for variant, m in done.items():
        _phase_table(variant, m.seconds, m.result["phases"], m.result.get("overlapped"))
    if "transfer reference" in results:
        ref = results["transfer reference"]
        print_table(
            ["moto alone (client in its own process)", "seconds"],
            [(p, fmt_seconds(s)) for p, s in ref.result["phases"].items()],
            title=f"S3 transfer reference (client peak RSS {ref.peak_rss_mb:,.0f} MiB)",
        )
    print(f"\n(benchmark parent incl. the moto server: peak RSS {parent_rss / GB:.1f} GiB, not counted above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
