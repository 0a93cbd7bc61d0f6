"""Inbound CSV benchmark: a 1 GB file merged into an 8M-user lake table by `integration-hub run`, against its floor.

    .venv/bin/python benchmarks/bench_csv.py                                # 8M rows (~1 GB) into 8M users
    .venv/bin/python benchmarks/bench_csv.py --rows 200000 --users 300000   # smoke run

Generates a CSV with DuckDB (`email` + 10 mapped properties of every type) and a lake (the real
`ensure_schema`) whose `attributes_bench` already holds `--users` users: every other user of the
file plus others, so the apply updates half of the file's rows and inserts the other half. The
file goes to a moto S3 server (in this process; its memory is not counted). Then, each in its
own process and starting from its own copy of the same prepared lake:

  ours      `integration-hub run bench`: the real CLI as a subprocess on an S3 (moto) connection
            (a Dagster run: download, stage and validate, apply, commit, move to success/, the
            asset's checks and metadata, user_profiles); its wall time and the peak RSS of its
            process tree
  transfer  the same bytes through the same server, from another process: one streamed GET to
            a local file, one CopyObject, one delete
  merge     DuckDB alone: a typed read_csv of the local file MERGEd into the lake table
  rewrite   DuckDB alone: the full outer join of the table and the file into a new lake table,
            then drop + rename, in one transaction
  plain     DuckDB alone: the same rewrite in a plain .duckdb file holding the same table
  apply     ours' engine alone: `core.ingest.apply_source` on the local file, as the run calls
            it (stage and validate, write the users' rows, swap, commit), without Dagster and
            S3; not part of the floor, it splits ours into the apply and the rest

The floor is transfer + the fastest of merge, rewrite and plain. Every variant must leave the
same table content (count and an order-independent hash of user_id and the 10 properties).
Targets: ours <= 1.3x the floor, ours' peak RSS <= 1.0 GB. Exits non-zero only if a variant
failed or the contents disagree: the targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak, so `python benchmarks/bench_csv.py` works
    GB,
    MB,
    MeasuredFailure,
    Measurement,
    cli_command,
    cli_env,
    copy_lake,
    fmt_mb,
    fmt_seconds,
    folder_bytes,
    lake_settings,
    measure,
    moto_server,
    peak_rss_self,
    print_table,
    target_line,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the spawned children import integration_hub from this checkout
INTEGRATION = "bench"
TABLE = f"attributes_{INTEGRATION}"
BUCKET = "bench-inbound"
PREFIX = "inbound"
FILE_NAME = "users.csv"
PENDING_KEY = f"{PREFIX}/{INTEGRATION}/{FILE_NAME}"
MEMORY_ENV = "INTEGRATION_HUB_DUCKDB_MEMORY"
PREPARE_MEMORY = "4GB"  # building the prepared lake is not measured: let it be quick
FLOOR_VARIANTS = ("merge", "rewrite", "plain")
# "apply" is ours' engine alone (no Dagster, no S3): it shows how much of ours is the apply itself.
VARIANTS = ("transfer", *FLOOR_VARIANTS, "apply", "ours")

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

# Targets.
MAX_RATIO_VS_FLOOR = 1.3
MAX_PEAK_RSS = 1.0e9  # bytes
# The same measurement on the single-DuckDB-file warehouse, quoted as the starting point.
BEFORE_THE_LAKE = "2.78x (53.5 s vs 19.2 s, before the lake)"


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


def existing_in_file(rows: int) -> int:
    """How many of the file's users the table already holds: every other one."""
    return (rows + 1) // 2


def existing_user_ids_sql(rows: int, users: int) -> str:
    """Users already in the table: every other user of the file, then others up to `users` in all."""
    others = users - existing_in_file(rows)
    return f"SELECT i FROM range(0, {rows}, 2) AS r(i) UNION ALL SELECT i FROM range({rows}, {rows + others}) AS r(i)"


def expected_rows(rows: int, users: int) -> int:
    """The table after the apply: its users plus the file's users it did not hold."""
    return users + rows - existing_in_file(rows)


def existing_rows_sql(rows: int, users: int) -> str:
    """The existing users' rows, typed as the table's columns (other values than the file's)."""
    typed = ", ".join(
        [
            "email AS user_id",
            *(f"CAST({q(column)} AS {DUCKDB_TYPES[ptype]}) AS {q(name)}" for column, name, ptype in PROPERTIES),
            "TIMESTAMPTZ '2024-01-01 00:00:00+00' AS _updated_at",
            "'seed' AS _source",
        ]
    )
    # No ORDER BY: the ranges come in order and the insert keeps it (preserve_insertion_order).
    return f"SELECT {typed} FROM (SELECT {_text_columns_sql(seed=2)} FROM ({existing_user_ids_sql(rows, users)}) AS t(i))"


def prepare_lake(catalog_path: str, rows: int, users: int, plain_path: str | None = None) -> dict[str, Any]:
    """(A child.) The real schema (ensure_schema), then the existing users inserted in one transaction.

    With `plain_path`, also a plain DuckDB file holding the same table (no index, as in the lake).
    """
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import ensure_schema, open_writer, transaction

    os.environ.setdefault(MEMORY_ENV, PREPARE_MEMORY)
    catalog = load_catalog(catalog_path)
    with open_writer(catalog) as con:
        con.execute("SET enable_progress_bar = false")
        ensure_schema(con, catalog)
        with transaction(con):
            con.execute(f"INSERT INTO {TABLE} {existing_rows_sql(rows, users)}")
        count = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        if plain_path:
            con.execute(f"ATTACH {lit(plain_path)} AS plain")
            con.execute(f"CREATE TABLE plain.{TABLE} AS SELECT * FROM lake.{TABLE}")
            con.execute("DETACH plain")
    return {"users": count, "lake_bytes": folder_bytes(catalog.warehouse_data_path)}


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


def csv_integration(max_file_bytes: int | None) -> dict[str, Any]:
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
    return integration


def write_catalog(path: Path, connection: dict[str, Any], integrations: list[dict[str, Any]]) -> Path:
    """A catalog in `path`'s folder, its lake beside it (see common.lake_settings)."""
    import yaml

    document = {
        "warehouse": lake_settings(path.parent),
        "landing": str(path.parent / "api_landing"),
        "connections": [connection],
        "integrations": integrations,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def size_note(size: int) -> int | None:
    """The catalog's max_file_bytes for a file of `size`: the default when it fits."""
    from integration_hub.core.catalog import DEFAULT_MAX_FILE_BYTES

    return None if size <= DEFAULT_MAX_FILE_BYTES else size


def land_file(client: Any, csv_path: Path) -> None:
    """Put the file in the pending folder (upload it unless it is there); remove what runs moved elsewhere.

    Not a copy back from success/: moto gives a copy of a multipart upload a checksum its
    content does not match, and the next download fails its check (FlexibleChecksumError).
    """
    from boto3.s3.transfer import TransferConfig

    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{INTEGRATION}/").get("Contents", [])
    keys = {o["Key"] for o in listed}
    if PENDING_KEY not in keys:
        client.upload_file(str(csv_path), BUCKET, PENDING_KEY, Config=TransferConfig(multipart_chunksize=64 * MB))
    for key in keys - {PENDING_KEY}:
        client.delete_object(Bucket=BUCKET, Key=key)


# ---------------------------------------------------------------------------- DuckDB alone (children)


def duckdb_alone(database: str, memory_limit: str | None, temp_directory: Path, lake: bool = True) -> Any:
    """DuckDB with its own defaults (memory_limit: 80% of RAM, unless given); `lake`: its extensions loaded."""
    import duckdb

    from integration_hub.core.warehouse import extension_directory

    folder = extension_directory()
    con = duckdb.connect(database, config={"extension_directory": folder} if folder else {})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if memory_limit:
        con.execute(f"SET memory_limit = {lit(memory_limit)}")
    con.execute(f"SET temp_directory = {lit(str(temp_directory))}")
    # The fastest DuckDB: row order in the written table does not matter.
    con.execute("SET preserve_insertion_order = false")
    if lake:
        con.execute("LOAD ducklake")
        con.execute("LOAD sqlite")
    return con


def _settings(con: Any) -> dict[str, Any]:
    memory, threads = con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()
    return {"memory_limit": memory, "threads": threads}


def source_sql(csv_path: str) -> str:
    """The file as the table's columns: a typed read_csv (DuckDB parses the values itself)."""
    types = ", ".join(
        [f"{lit('email')}: 'VARCHAR'", *(f"{lit(column)}: {lit(DUCKDB_TYPES[ptype])}" for column, _, ptype in PROPERTIES)]
    )
    select = ", ".join(["email AS user_id", *(f"{q(column)} AS {q(name)}" for column, name, _ in PROPERTIES)])
    return f"SELECT {select} FROM read_csv({lit(csv_path)}, header = true, columns = {{{types}}})"


def merge_sql(csv_path: str) -> str:
    """MERGE with the integration's semantics (on_blank: keep -> a blank cell keeps the old value)."""
    names = [name for _, name, _ in PROPERTIES]
    stamp = "CAST(now() AS TIMESTAMPTZ)"
    updates = [f"{q(n)} = COALESCE(s.{q(n)}, t.{q(n)})" for n in names]
    updates += [f"_updated_at = {stamp}", f"_source = {lit(csv_path)}"]
    columns = ", ".join(["user_id", *map(q, names), "_updated_at", "_source"])
    values = ", ".join(["s.user_id", *(f"s.{q(n)}" for n in names), stamp, lit(csv_path)])
    return (
        f"MERGE INTO {TABLE} AS t USING ({source_sql(csv_path)}) AS s ON t.user_id = s.user_id "
        f"WHEN MATCHED THEN UPDATE SET {', '.join(updates)} "
        f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    )


def rewrite_sql(csv_path: str, new_table: str) -> str:
    """The merged table written anew: every user once, the file's values over the old ones."""
    merged = ["COALESCE(s.user_id, t.user_id) AS user_id"]
    merged += [f"COALESCE(s.{q(n)}, t.{q(n)}) AS {q(n)}" for _, n, _ in PROPERTIES]
    merged += [
        "CASE WHEN s.user_id IS NULL THEN t._updated_at ELSE CAST(now() AS TIMESTAMPTZ) END AS _updated_at",
        f"CASE WHEN s.user_id IS NULL THEN t._source ELSE {lit(csv_path)} END AS _source",
    ]
    return (
        f"CREATE TABLE {q(new_table)} AS SELECT {', '.join(merged)} "
        f"FROM {TABLE} AS t FULL OUTER JOIN ({source_sql(csv_path)}) AS s ON t.user_id = s.user_id"
    )


def _swap_statements(csv_path: str) -> list[str]:
    new = f"{TABLE}__new"
    return ["BEGIN TRANSACTION", rewrite_sql(csv_path, new), f"DROP TABLE {TABLE}",
            f"ALTER TABLE {q(new)} RENAME TO {TABLE}", "COMMIT"]


def _timed_statements(con: Any, statements: list[tuple[str, str]]) -> dict[str, float]:
    phases: dict[str, float] = {}
    for phase, sql in statements:
        started = time.perf_counter()
        con.execute(sql)
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - started
    return phases


def run_lake_variant(variant: str, lake_folder: str, csv_path: str, memory_limit: str | None) -> dict[str, Any]:
    """merge or rewrite on the lake copy in `lake_folder` (attached as the integration would)."""
    from integration_hub.core.warehouse import LAKE, Lake

    folder = Path(lake_folder)
    started = time.perf_counter()
    con = duckdb_alone(":memory:", memory_limit, folder / ".duckdb_tmp")
    con.execute(Lake(folder / "catalog.sqlite", folder / "lake").attach_sql())
    con.execute(f"USE {LAKE}")
    phases = {"connect + attach": time.perf_counter() - started}
    if variant == "merge":
        phases |= _timed_statements(con, [("read_csv + MERGE (autocommit)", merge_sql(csv_path))])
    else:
        statements = _swap_statements(csv_path)
        phases |= _timed_statements(
            con, [("full outer join into a new table" if "CREATE" in s else "begin, drop + rename, commit", s) for s in statements]
        )
    settings = _settings(con)
    mark = time.perf_counter()
    con.close()
    phases["close"] = time.perf_counter() - mark
    return {"phases": phases, "settings": settings}


def run_apply(catalog_path: str, csv_path: str, memory_limit: str | None) -> dict[str, Any]:
    """(A child.) apply_source on the local file, as `integration-hub run` calls it; its progress lines timed."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.ingest import RunRecord, apply_source, new_run_id, now_utc
    from integration_hub.core.warehouse import open_writer
    from integration_hub.inbound_csv.reader import csv_source_sql, inspect_file_head

    if memory_limit:
        os.environ[MEMORY_ENV] = memory_limit
    else:
        os.environ.pop(MEMORY_ENV, None)  # ours' own default

    started = time.perf_counter()
    catalog = load_catalog(catalog_path)
    integration = catalog.integration(INTEGRATION)
    path = Path(csv_path)
    lines: list[tuple[float, str]] = []
    with open_writer(catalog) as con:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
        shape = inspect_file_head(con, head, path.stat().st_size, False, integration, FILE_NAME, path.parent)
        run = RunRecord(run_id=new_run_id(), integration=INTEGRATION, kind="csv", source=FILE_NAME, started_at=now_utc())
        lines.append((time.perf_counter() - started, "opened the lake and read the file's header"))
        apply_source(
            con, integration, csv_source_sql(path, integration, shape, None), run,
            max_rejected_ratio=integration.max_rejected_ratio,
            progress=lambda line: lines.append((time.perf_counter() - started, line)),
        )  # fmt: skip
        settings = _settings(con)
    lines.append((time.perf_counter() - started, "closed the lake"))
    return {"timeline": lines, "settings": settings, "status": run.status, "rows_applied": run.rows_applied}


def run_plain(database: str, csv_path: str, memory_limit: str | None) -> dict[str, Any]:
    """The rewrite in a plain DuckDB file, swapped in within one transaction; closing checkpoints it."""
    started = time.perf_counter()
    con = duckdb_alone(database, memory_limit, Path(database).parent / ".duckdb_tmp", lake=False)
    phases = {"connect": time.perf_counter() - started}
    statements = _swap_statements(csv_path)
    phases |= _timed_statements(
        con, [("full outer join into a new table" if "CREATE" in s else "begin, drop + rename, commit", s) for s in statements]
    )
    settings = _settings(con)
    mark = time.perf_counter()
    con.close()
    phases["close (checkpoint)"] = time.perf_counter() - mark
    return {"phases": phases, "settings": settings}


def run_transfer(endpoint_url: str, key: str, target: str) -> dict[str, Any]:
    """The bytes ours moves, moved alone: one streamed GET to a local file, one CopyObject, one delete."""
    import boto3

    from integration_hub.core.landing import CHUNK

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    phases: dict[str, float] = {}
    started = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    with open(target, "wb") as handle:
        shutil.copyfileobj(body, handle, CHUNK)
    phases["GET, streamed to a local file"] = time.perf_counter() - started
    mark = time.perf_counter()
    copy_key = key.rsplit("/", 1)[0] + "/transfer-reference/" + key.rsplit("/", 1)[1]
    client.copy_object(Bucket=BUCKET, Key=copy_key, CopySource={"Bucket": BUCKET, "Key": key})
    phases["CopyObject"] = time.perf_counter() - mark
    mark = time.perf_counter()
    client.delete_object(Bucket=BUCKET, Key=copy_key)
    phases["delete"] = time.perf_counter() - mark
    os.unlink(target)
    return {"phases": phases}


# ---------------------------------------------------------------------------- ours


def run_ours(catalog_path: Path, work: Path, memory_limit: str | None) -> Measurement:
    """`integration-hub run bench` as a subprocess; its output and Dagster run timeline in `result`."""
    log = work / f"ours-{uuid.uuid4().hex[:8]}.log"
    extra = {"DAGSTER_HOME": str(work / "dagster_home"), "TMPDIR": str(work / "tmp")}
    if memory_limit:
        extra[MEMORY_ENV] = memory_limit
    env = cli_env(**extra)
    if not memory_limit:
        env.pop(MEMORY_ENV, None)  # ours' own default
    started_at = time.time()
    m = measure(cli_command("--catalog", str(catalog_path), "run", INTEGRATION), env=env, stdout=log)
    output = log.read_text(encoding="utf-8", errors="replace")
    found = re.search(r"^dagster run (\S+)$", output, re.MULTILINE)
    timeline = measure(run_timeline, extra["DAGSTER_HOME"], found.group(1), started_at).result if found else []
    m.result = {"output": output.strip(), "timeline": timeline}
    return m


def run_timeline(dagster_home: str, run_id: str, started_at: float) -> list[tuple[float, str]]:
    """(A child.) The Dagster run's events and log lines: (seconds since the CLI started, what)."""
    os.environ["DAGSTER_HOME"] = dagster_home
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        entries = instance.all_logs(run_id)
    timeline = []
    for entry in entries:
        event = entry.dagster_event
        if event is not None and event.event_type.name not in (
            "RUN_START", "RUN_SUCCESS", "RUN_FAILURE", "STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "ASSET_MATERIALIZATION"
        ):
            continue
        what = f"{event.event_type.name} {event.step_key or ''}".strip() if event is not None else entry.user_message
        timeline.append((entry.timestamp - started_at, what.splitlines()[0][:110]))
    return timeline


# ---------------------------------------------------------------------------- checks


CHECKSUM_COLUMNS = ", ".join(["user_id", *(q(name) for _, name, _ in PROPERTIES)])


def lake_checksum(lake_folder: Path, table: str = TABLE) -> tuple[int, int]:
    """(rows, the sum of a hash of user_id and every property): order-independent; not _updated_at/_source."""
    from integration_hub.core.warehouse import Lake, open_reader

    with open_reader(Lake(lake_folder / "catalog.sqlite", lake_folder / "lake")) as con:
        assert con is not None, f"no lake in {lake_folder}"
        rows, digest = con.execute(f"SELECT count(*), sum(hash({CHECKSUM_COLUMNS})) FROM {q(table)}").fetchone()
    return int(rows), int(digest or 0)


def plain_checksum(database: Path, table: str = TABLE) -> tuple[int, int]:
    import duckdb

    with duckdb.connect(str(database), read_only=True) as con:
        rows, digest = con.execute(f"SELECT count(*), sum(hash({CHECKSUM_COLUMNS})) FROM {q(table)}").fetchone()
    return int(rows), int(digest or 0)


def ours_run_row(lake_folder: Path) -> dict[str, Any]:
    """The integration_runs row ours' apply recorded."""
    from integration_hub.core.warehouse import Lake, open_reader

    with open_reader(Lake(lake_folder / "catalog.sqlite", lake_folder / "lake")) as con:
        assert con is not None
        result = con.execute(
            "SELECT status, rows_read, rows_applied, rows_rejected, message, started_at, finished_at "
            "FROM integration_runs WHERE integration = ? ORDER BY started_at DESC LIMIT 1",
            [INTEGRATION],
        )
        row = result.fetchone()
        return dict(zip([d[0] for d in result.description], row, strict=True)) if row else {}


# ---------------------------------------------------------------------------- the parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every variant, interleaved; the fastest counts")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (file, lakes) afterwards")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every benchmark the same arguments
    check_sizes(parser, args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - set(VARIANTS) or args.repeat < 1:
        parser.error(f"--variants is a subset of {','.join(VARIANTS)}; --repeat at least 1")

    work = args.work_dir.resolve() / "csv"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    print(f"Inbound CSV benchmark: {args.rows:,} rows into {args.users:,} users, work dir {work}", flush=True)
    try:
        return _run(args, variants, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=8_000_000, help="rows in the CSV file (default 8,000,000, ~1 GB)")
    parser.add_argument(
        "--users", type=int, default=8_000_000,
        help="users in the table before the apply, half of the file's among them (default 8,000,000)",
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work", help="scratch space (default benchmarks/.work)")
    parser.add_argument(
        "--memory-limit",
        default=os.environ.get(MEMORY_ENV),
        help=f"DuckDB memory_limit for every variant (ours through ${MEMORY_ENV}); default: ours its own (1GB), "
        "DuckDB alone DuckDB's (80%% of RAM)",
    )


def check_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rows < 2 or args.users < existing_in_file(args.rows):
        parser.error(f"--users must be at least half of --rows ({existing_in_file(args.rows):,}): the table holds "
                     "every other user of the file")


def generate(args: argparse.Namespace, work: Path) -> tuple[Path, int]:
    """The CSV file: (path, size)."""
    csv_path = work / FILE_NAME
    started = time.perf_counter()
    generate_csv(csv_path, args.rows)
    size = csv_path.stat().st_size
    print(f"  generated {csv_path.name}: {size / MB:,.0f} MiB ({size:,} bytes) in {time.perf_counter() - started:.1f} s", flush=True)
    return csv_path, size


def prepare(args: argparse.Namespace, catalog_path: Path, plain: Path | None) -> int:
    """The prepared lake (and plain file) of the catalog: the users in the table."""
    started = time.perf_counter()
    built = measure(prepare_lake, str(catalog_path), args.rows, args.users, str(plain) if plain else None).result
    print(
        f"  prepared the lake: {TABLE} holds {built['users']:,} users ({existing_in_file(args.rows):,} of them in the "
        f"file), {built['lake_bytes'] / MB:,.0f} MiB of Parquet, in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return int(built["users"])


def _run(args: argparse.Namespace, variants: list[str], work: Path) -> int:
    base = work / "base"
    plain_base = work / "plain-base.duckdb"
    results: dict[str, list[Measurement | str]] = {v: [] for v in variants}
    checksums: dict[str, tuple[int, int]] = {}
    with moto_server() as moto:
        client = moto.client()
        client.create_bucket(Bucket=BUCKET)
        connection = s3_connection(moto.endpoint_url)
        csv_path, size = generate(args, work)
        integrations = [csv_integration(size_note(size))]
        base_catalog = write_catalog(base / "integrations.yaml", connection, integrations)
        existing = prepare(args, base_catalog, plain_base if "plain" in variants else None)
        mark = time.perf_counter()
        land_file(client, csv_path)
        print(f"  uploaded {FILE_NAME} to moto at {moto.endpoint_url} in {time.perf_counter() - mark:.1f} s", flush=True)

        for round_ in range(1, args.repeat + 1):
            for variant in variants:
                print(f"  running {variant}{f' (round {round_})' if args.repeat > 1 else ''} ...", flush=True)
                folder = work / variant
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    measured = _measure_variant(variant, args, work, folder, csv_path, base, plain_base, client, moto, integrations)
                except MeasuredFailure as exc:
                    print(f"    FAILED: {exc}", flush=True)
                    results[variant].append(_last_error_line(str(exc)))
                    continue
                if variant != "transfer":
                    checksums[variant] = (
                        plain_checksum(folder / "plain.duckdb") if variant == "plain" else lake_checksum(folder)
                    )
                if variant == "ours":
                    measured.result["run"] = ours_run_row(folder)
                results[variant].append(measured)
                print(
                    f"    {measured.seconds:.1f} s (CPU {measured.cpu_seconds or 0:.1f} s), peak RSS "
                    f"{measured.peak_rss_mb:,.0f} MiB (1-min load average now {os.getloadavg()[0]:.1f} on "
                    f"{os.cpu_count()} cores)",
                    flush=True,
                )
        parent_rss = peak_rss_self()
    best = {v: _best(ms) for v, ms in results.items()}
    return _report(args, variants, best, checksums, existing, size, parent_rss)


def _measure_variant(
    variant: str, args: argparse.Namespace, work: Path, folder: Path, csv_path: Path, base: Path,
    plain_base: Path, client: Any, moto: Any, integrations: list[dict[str, Any]],
) -> Measurement:
    if variant == "transfer":
        land_file(client, csv_path)
        m = measure(run_transfer, moto.endpoint_url, PENDING_KEY, str(work / "tmp" / "transfer.csv"), preload=("boto3",))
        m.seconds = sum(m.result["phases"].values())  # the three requests, not the client's start-up
        return m
    if variant == "plain":
        folder.mkdir(parents=True)
        shutil.copyfile(plain_base, folder / "plain.duckdb")
        return measure(run_plain, str(folder / "plain.duckdb"), str(csv_path), args.memory_limit, preload=("duckdb",))
    copy_lake(base, folder)
    if variant == "apply":
        catalog = write_catalog(folder / "integrations.yaml", s3_connection(moto.endpoint_url), integrations)
        return measure(
            run_apply, str(catalog), str(csv_path), args.memory_limit,
            preload=("duckdb", "integration_hub.core.ingest", "integration_hub.inbound_csv.reader"),
        )  # fmt: skip
    if variant in ("merge", "rewrite"):
        return measure(
            run_lake_variant, variant, str(folder), str(csv_path), args.memory_limit,
            preload=("duckdb", "integration_hub.core.warehouse"),
        )
    land_file(client, csv_path)
    catalog = write_catalog(folder / "integrations.yaml", s3_connection(moto.endpoint_url), integrations)
    return run_ours(catalog, work, args.memory_limit)


def _best(measurements: list[Measurement | str]) -> Measurement | str | None:
    """Of repeated runs: the fastest, with the highest peak RSS of all; a failure if any failed."""
    failures = [m for m in measurements if isinstance(m, str)]
    if failures:
        return failures[0]
    done = [m for m in measurements if isinstance(m, Measurement)]
    if not done:
        return None
    best = min(done, key=lambda m: m.seconds)
    best.peak_rss_bytes = max(m.peak_rss_bytes for m in done)
    best.result = {**(best.result or {}), "all_seconds": [round(m.seconds, 1) for m in done]}
    return best


def _last_error_line(text: str) -> str:
    """The exception line of a child's traceback (e.g. DuckDB's Out of Memory Error)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (errors or lines or ["failed"])[-1].strip()


def _report(
    args: argparse.Namespace,
    variants: list[str],
    best: dict[str, Measurement | str | None],
    checksums: dict[str, tuple[int, int]],
    existing: int,
    size: int,
    parent_rss: int,
) -> int:
    done = {v: m for v, m in best.items() if isinstance(m, Measurement)}
    failed = {v: m for v, m in best.items() if isinstance(m, str)}
    transfer = done.get("transfer")
    fastest = min((done[v] for v in FLOOR_VARIANTS if v in done), key=lambda m: m.seconds, default=None)
    fastest_name = next((v for v in FLOOR_VARIANTS if done.get(v) is fastest), "-")
    floor = transfer.seconds + fastest.seconds if transfer and fastest else None
    ours = done.get("ours")
    settings = next((m.result["settings"] for v, m in done.items() if v in FLOOR_VARIANTS), None)
    descriptions = {
        "transfer": "transfer: streamed GET + CopyObject + delete (moto; the requests only)",
        "merge": "(a) DuckDB alone: read_csv + MERGE into the lake table",
        "rewrite": "(b) DuckDB alone: rewrite of the lake table, swapped in",
        "plain": "(c) DuckDB alone: rewrite in a plain .duckdb file",
        "apply": "ours' apply alone: apply_source on the local file (no Dagster, no S3)",
        "ours": "ours: `integration-hub run bench` (S3 on moto)",
    }
    rows = []
    for variant in variants:
        m = best[variant]
        if not isinstance(m, Measurement):
            rows.append([descriptions[variant], "FAILED" if m else "-", "-", "-", "-", (m or "")[:90]])
            continue
        ratio = f"{m.seconds / floor:.2f}x" if floor else "-"
        every = " / ".join(f"{s:.1f}" for s in m.result.get("all_seconds", [])) if args.repeat > 1 else ""
        rows.append([descriptions[variant], fmt_seconds(m.seconds), fmt_seconds(m.cpu_seconds or 0),
                     fmt_mb(m.peak_rss_bytes), ratio, every])
    if floor:  # after the floor's variants
        rows.insert(max(i for i, v in enumerate(variants) if v in ("transfer", *FLOOR_VARIANTS)) + 1,
                    [f"floor = transfer + fastest DuckDB alone ({fastest_name})", fmt_seconds(floor), "-", "-", "1.00x", ""])
    limits = f"DuckDB alone: memory_limit {settings['memory_limit']}, threads {settings['threads']}; " if settings else ""
    print_table(
        ["variant", "seconds", "CPU s", "peak RSS MiB", "vs floor", "every run (s)" if args.repeat > 1 else ""],
        rows,
        title=(
            f"Inbound CSV into the lake: {args.rows:,} rows x {len(PROPERTIES)} properties, {size / MB:,.0f} MiB, into a "
            f"table of {existing:,} users ({existing_in_file(args.rows):,} updated, "
            f"{args.rows - existing_in_file(args.rows):,} inserted); {limits}ours: memory_limit "
            f"{args.memory_limit or '1GB (its default)'}; {os.cpu_count()} CPUs; {date.today().isoformat()}"
        ),
    )

    ok = not failed
    expected = expected_rows(args.rows, existing)
    same = len(set(checksums.values())) <= 1 and all(c[0] == expected for c in checksums.values())
    print(
        f"\nsame table content in every variant ({expected:,} rows; count + hash of user_id and the 10 properties): "
        f"{'yes' if same else 'NO: ' + json.dumps(checksums)}"
    )
    ok &= same
    if ours:
        run = ours.result.get("run", {})
        print(f"ours recorded: status {run.get('status')}, {run.get('rows_read')} read, {run.get('rows_applied')} applied, "
              f"{run.get('rows_rejected')} rejected{' - ' + run['message'] if run.get('message') else ''}")
        ok &= run.get("status") == "success" and run.get("rows_applied") == args.rows

    applied = done.get("apply")
    if applied:
        print(f"ours' apply alone recorded: status {applied.result['status']}, {applied.result['rows_applied']} applied")
        ok &= applied.result["status"] == "success" and applied.result["rows_applied"] == args.rows

    print()
    summary = []
    if ours and floor:
        ratio = ours.seconds / floor
        summary.append(("ours wall time", f"{ours.seconds:.1f} s", f"{floor:.1f} s", f"{ratio:.2f}x",
                        f"<= {MAX_RATIO_VS_FLOOR}x", ratio <= MAX_RATIO_VS_FLOOR))
    if ours:
        ratio = ours.peak_rss_bytes / MAX_PEAK_RSS
        summary.append(("ours peak RSS (process tree)", f"{ours.peak_rss_bytes / 1e9:.2f} GB", "-", f"{ratio:.2f}x of target",
                        f"<= {MAX_PEAK_RSS / 1e9:.1f} GB", ours.peak_rss_bytes <= MAX_PEAK_RSS))
    if summary:
        print_table(
            ["figure", "value", "floor", "ratio", "target", "result"],
            [(*row[:5], "PASS" if row[5] else "FAIL") for row in summary],
            title="Summary",
        )
        for row in summary:
            print(target_line(f"{row[0]} {row[4]}", row[3] if row[2] != "-" else row[1], row[5]))
    elif "ours" in variants:
        print("FAIL  ours did not finish: no target can pass")
    print(f"info  the starting point: {BEFORE_THE_LAKE}")
    if applied and fastest:
        print(f"info  ours' apply alone: {applied.seconds:.1f} s, {applied.seconds / fastest.seconds:.2f}x the fastest "
              f"DuckDB alone ({fastest_name}, {fastest.seconds:.1f} s)")
    if applied and ours:
        print(f"info  ours beyond its apply alone (Dagster, the S3 download and move, checks): "
              f"{ours.seconds - applied.seconds:.1f} s, against the transfer's {transfer.seconds if transfer else float('nan'):.1f} s")
    for variant, m in done.items():
        if variant == "apply":
            print_table(["s since the child started", "step"], [(f"{t:.1f}", what) for t, what in m.result["timeline"]],
                        title=f"{descriptions[variant]}: {m.seconds:.2f} s")
        elif variant not in ("ours", "transfer"):
            _phase_table(descriptions[variant], m.seconds, m.result["phases"])
    if transfer:
        print_table(["request", "seconds"], [(k, fmt_seconds(v)) for k, v in transfer.result["phases"].items()],
                    title=f"{descriptions['transfer']}: {transfer.seconds:.2f} s")
    if ours and ours.result.get("timeline"):
        print_table(
            ["s since the CLI started", "event or log line of the Dagster run"],
            [(f"{t:.1f}", what) for t, what in [*ours.result["timeline"], (ours.seconds, "the CLI process exited")]],
            title="ours: where the time goes (the Dagster run's events and log lines)",
        )
    print(f"\n(benchmark parent incl. the moto server: peak RSS {parent_rss / GB:.1f} GiB, not counted above)")
    return 0 if ok else 1


def _phase_table(name: str, total: float, phases: dict[str, float]) -> None:
    rows = [(phase, fmt_seconds(seconds), f"{seconds / total:.0%}") for phase, seconds in phases.items()]
    rest = total - sum(phases.values())
    rows.append(("(rest: Python around the timed steps)", fmt_seconds(rest), f"{rest / total:.0%}"))
    print_table(["phase", "seconds", "share"], rows, title=f"{name}: {total:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
