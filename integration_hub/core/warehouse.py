"""The DuckDB attribute store: connections, the one-writer lock, schema and migrations.

Only Dagster runs write the warehouse. Besides the Dagster concurrency pool, every writer
takes an exclusive file lock next to the database, so a manual `integration-hub run` and a
scheduled run never fight over DuckDB's own lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource

from .catalog import Catalog, InboundIntegration
from .sql import DUCKDB_TYPES, ident, literal

MEMORY_LIMIT_ENV = "INTEGRATION_HUB_DUCKDB_MEMORY"
# DuckDB would take 80% of RAM; the warehouse shares the machine with Dagster and the API, and
# spills to disk (temp_directory) beyond this. $INTEGRATION_HUB_DUCKDB_MEMORY overrides it.
DEFAULT_MEMORY_LIMIT = "1GB"
LOCK_TIMEOUT_SECONDS = 600.0

BOOKKEEPING_TABLES: dict[str, dict[str, str]] = {
    "integration_runs": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "kind": "VARCHAR",
        "source": "VARCHAR",
        "started_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ",
        "status": "VARCHAR",
        "rows_read": "BIGINT",
        "rows_applied": "BIGINT",
        "rows_rejected": "BIGINT",
        "properties_imported": "INTEGER",
        "message": "VARCHAR",
        "dagster_run_id": "VARCHAR",
        "details": "JSON",
    },
    "rejected_rows": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "source": "VARCHAR",
        "row_number": "BIGINT",
        "user_id": "VARCHAR",
        "column_name": "VARCHAR",
        "value": "VARCHAR",
        "reason": "VARCHAR",
    },
    "processed_files": {
        "integration": "VARCHAR",
        "key": "VARCHAR",
        "sha256": "VARCHAR",
        "size_bytes": "BIGINT",
        "status": "VARCHAR",
        "run_id": "VARCHAR",
        "processed_at": "TIMESTAMPTZ",
        "moved_to": "VARCHAR",
    },
}


class WarehouseBusyError(RuntimeError):
    """Another process holds the warehouse for too long."""


def attributes_table(integration_name: str) -> str:
    return f"attributes_{integration_name}"


@contextmanager
def writer_lock(database: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the exclusive writer lock of a warehouse file (waits for the current writer)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.writer.lock", "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WarehouseBusyError(
                        f"the warehouse {database} has been busy for {timeout:.0f} s: another run is "
                        "writing it; wait for it to finish (see the Dagster UI) and try again"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _configure(con: duckdb.DuckDBPyConnection, database: Path | None) -> None:
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {literal(os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT)}")
    if database is not None:
        spill = database.parent / ".duckdb_tmp"
        con.execute(f"SET temp_directory = {literal(str(spill))}")


def _connect_with_retry(database: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return duckdb.connect(str(database), read_only=read_only, config={"custom_user_agent": "integration_hub"})
        except duckdb.IOException as exc:
            # DuckDB's own file lock: another process has the file open for writing.
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise WarehouseBusyError(
                    f"cannot open the warehouse {database}: another process holds it "
                    f"({str(exc).splitlines()[0]}); close other DuckDB sessions on it and try again"
                ) from None
            time.sleep(0.2)


@contextmanager
def open_writer(database: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection, holding the writer lock for its whole life."""
    with writer_lock(database, timeout):
        con = _connect_with_retry(database, read_only=False, timeout=timeout)
        try:
            _configure(con, database)
            yield con
        finally:
            con.close()


@contextmanager
def open_reader(database: Path, timeout: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection, or None when the warehouse has not been created yet."""
    if not database.exists():
        yield None
        return
    con = _connect_with_retry(database, read_only=True, timeout=timeout)
    try:
        _configure(con, None)
        yield con
    finally:
        con.close()


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource, with the one-writer lock and UTC sessions."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:  # type: ignore[override]
        with open_writer(Path(self.database)) as con:
            yield con


# ---------------------------------------------------------------------------- schema


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """A table's columns in order, name -> DuckDB type; empty if there is no such table."""
    # duckdb_columns() is information_schema.columns without the view's joins: ~3x faster,
    # which matters because every applied source (CSV file or API batch) checks its tables.
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
        "ORDER BY column_index",
        [table],
    ).fetchall()
    return {name: data_type for name, data_type in rows}


_TYPE_ALIASES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}


def same_type(actual: str, wanted: str) -> bool:
    """DuckDB reports TIMESTAMPTZ as TIMESTAMP WITH TIME ZONE: the same type, nothing to alter."""
    actual, wanted = actual.upper(), wanted.upper()
    return _TYPE_ALIASES.get(actual, actual) == _TYPE_ALIASES.get(wanted, wanted)


def ensure_table(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], primary_key: str | None = None) -> None:
    existing = table_columns(con, table)
    if not existing:
        body = ", ".join(
            f"{ident(name)} {sql_type}{' PRIMARY KEY' if name == primary_key else ''}"
            for name, sql_type in columns.items()
        )
        con.execute(f"CREATE TABLE IF NOT EXISTS {ident(table)} ({body})")
        return
    for name, sql_type in columns.items():
        if name not in existing:
            # A new property on an existing integration: add the column, keep the data.
            con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(name)} {sql_type}")
        elif not same_type(existing[name], sql_type) and sql_type != "JSON":
            try:
                con.execute(f"ALTER TABLE {ident(table)} ALTER COLUMN {ident(name)} TYPE {sql_type}")
            except duckdb.Error as exc:
                raise RuntimeError(
                    f"cannot change column {name!r} of {table} from {existing[name]} to {sql_type}: "
                    f"existing values do not convert ({str(exc).splitlines()[0]}); fix the values or "
                    "give the property a new name"
                ) from None


def attribute_columns(integration: InboundIntegration) -> dict[str, str]:
    columns = {"user_id": "VARCHAR"}
    columns.update({name: DUCKDB_TYPES[ptype] for _, name, ptype in integration.inbound_properties})
    columns.update({"_updated_at": "TIMESTAMPTZ", "_source": "VARCHAR"})
    return columns


def ensure_bookkeeping(con: duckdb.DuckDBPyConnection) -> None:
    for table, columns in BOOKKEEPING_TABLES.items():
        ensure_table(con, table, columns)


def ensure_attribute_table(con: duckdb.DuckDBPyConnection, integration: InboundIntegration) -> str:
    table = attributes_table(integration.name)
    ensure_table(con, table, attribute_columns(integration), primary_key="user_id")
    return table


def user_profiles_sql(catalog: Catalog) -> str:
    """One row per user known to any inbound integration, one column per property."""
    inbound = catalog.inbound
    if not inbound:
        return "SELECT CAST(NULL AS VARCHAR) AS user_id WHERE FALSE"
    ids = " UNION ".join(f"SELECT user_id FROM {ident(attributes_table(i.name))}" for i in inbound)
    columns = ["ids.user_id"]
    joins = []
    for n, integration in enumerate(inbound):
        alias = f"t{n}"
        columns += [f"{alias}.{ident(name)}" for _, name, _ in integration.inbound_properties]
        joins.append(f"LEFT JOIN {ident(attributes_table(integration.name))} AS {alias} ON {alias}.user_id = ids.user_id")
    updated = ", ".join(f"{f't{n}'}._updated_at" for n in range(len(inbound)))
    columns.append(f"greatest({updated}) AS last_updated_at" if len(inbound) > 1 else f"{updated} AS last_updated_at")
    return f"SELECT {', '.join(columns)} FROM ({ids}) AS ids {' '.join(joins)}"


def ensure_schema(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    """Create and migrate every table and view the catalog needs, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        ensure_bookkeeping(con)
        for integration in catalog.inbound:
            ensure_attribute_table(con, integration)
        con.execute(f"CREATE OR REPLACE VIEW user_profiles AS {user_profiles_sql(catalog)}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
