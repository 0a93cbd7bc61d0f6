"""Copying a pre-lake warehouse (one DuckDB database file) into the lake, verified table by table.

The old file is attached READ_ONLY: it is never changed, and stays the fallback until the
lake is trusted. Every base table of its `main` schema (attribute tables, bookkeeping,
reports, Salesforce logs) is created in the lake with the same columns and types, minus
constraints (a DuckLake has no PRIMARY KEY; the attribute tables' `user_id` stays unique by
construction) and copied in ONE lake transaction. Before it commits, each table is compared
with its original: row count and an order-independent content hash (the sum of the hashes of
all rows). A mismatch rolls everything back. Views are not copied: `ensure_schema` creates
them from the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .catalog import Catalog
from .sql import ident, literal
from .warehouse import LAKE, Lake, WarehouseError, ensure_schema, open_writer, transaction

OLD = "old_warehouse"  # the alias the old file is attached under
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file

Progress = Callable[[str], None]


class MigrationError(WarehouseError):
    """The migration cannot start or did not verify; nothing was changed. One line, with the fix."""


@dataclass
class TableCopy:
    """One migrated table: its name, its rows, and whether the lake's copy hashes like the original."""

    table: str
    rows: int
    hash_ok: bool


def check_old_file(path: Path) -> None:
    """The old warehouse must be an existing DuckDB database file."""
    if not path.exists():
        raise MigrationError(
            f"{path} does not exist: give the path of the old warehouse file (what the catalog's "
            "`warehouse:` setting was before the lake, e.g. data/warehouse.duckdb)"
        )
    if not path.is_file():
        raise MigrationError(f"{path} is a folder, not a DuckDB database file: give the old warehouse file itself")
    with open(path, "rb") as handle:
        header = handle.read(12)
    if header[8:12] != DUCKDB_MAGIC:
        raise MigrationError(
            f"{path} is not a DuckDB database file: give the old warehouse file (a .duckdb file written "
            "by integration_hub before the lake)"
        )


def attach_old(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        con.execute(f"ATTACH {literal(str(path))} AS {ident(OLD)} (READ_ONLY)")
    except duckdb.Error as exc:
        text = str(exc)
        if "lock" in text.lower():
            pid = re.search(r"PID (\d+)", text)
            holder = f" (PID {pid.group(1)})" if pid else ""
            raise MigrationError(
                f"{path} is in use by another process{holder}: stop it (the old Dagster daemon or webserver, "
                "or a DuckDB session with the file open) and run migrate again"
            ) from None
        raise MigrationError(f"{path} cannot be opened as a DuckDB database: {text.splitlines()[0]}") from None


def _tables(con: duckdb.DuckDBPyConnection, database: str) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
        "AND NOT temporary ORDER BY table_name",
        [database],
    ).fetchall()
    return [r[0] for r in rows]


def _columns(con: duckdb.DuckDBPyConnection, database: str, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main' "
        "AND table_name = ? ORDER BY column_index",
        [database, table],
    ).fetchall()


def _qualified(database: str, table: str) -> str:
    return f"{ident(database)}.main.{ident(table)}"


def fingerprint(con: duckdb.DuckDBPyConnection, database: str, table: str) -> tuple[int, int]:
    """(rows, sum of row hashes): equal for equal contents in any order, duplicates included."""
    rows, total = con.execute(
        f"SELECT count(*), coalesce(sum(hash(r)), 0) FROM {_qualified(database, table)} AS r"
    ).fetchone()
    return int(rows), int(total)


def _occupied(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The lake's tables that hold rows, as 'name (N rows)'."""
    found = []
    for table in _tables(con, LAKE):
        rows = con.execute(f"SELECT count(*) FROM {_qualified(LAKE, table)}").fetchone()[0]
        if rows:
            found.append(f"{table} ({rows:,} rows)")
    return found


def migrate(con: duckdb.DuckDBPyConnection, lake: Lake, old_path: Path, progress: Progress | None = None) -> list[TableCopy]:
    """Copy every base table of the old file into the lake on `con` (a writer), in one transaction."""
    say = progress or (lambda _line: None)
    check_old_file(old_path)
    attach_old(con, old_path)
    try:
        tables = _tables(con, OLD)
        if not tables:
            raise MigrationError(f"{old_path} has no tables: nothing to migrate; check that it is the old warehouse file")
        say(f"migrating {len(tables)} tables from {old_path} into the lake {lake.shown}")
        copies: list[TableCopy] = []
        with transaction(con):
            occupied = _occupied(con)
            if occupied:
                shown = ", ".join(occupied[:3]) + (", ..." if len(occupied) > 3 else "")
                raise MigrationError(
                    f"the lake {lake.shown} already holds data ({shown}): migrate only fills an empty "
                    "lake; point warehouse.catalog and warehouse.data_path at new paths (or move the lake "
                    "away) and run migrate again"
                )
            existing = set(_tables(con, LAKE))
            for table in tables:
                copies.append(_copy_table(con, table, replace=table in existing, old_path=old_path))
                say(f"  {table}: {copies[-1].rows:,} rows, content hash ok")
            say("committing")
    finally:
        con.execute(f"DETACH {ident(OLD)}")
    return copies


def _copy_table(con: duckdb.DuckDBPyConnection, table: str, replace: bool, old_path: Path) -> TableCopy:
    columns = _columns(con, OLD, table)
    body = ", ".join(f"{ident(name)} {data_type}" for name, data_type in columns)
    target = _qualified(LAKE, table)
    try:
        if replace:  # an empty table a run or `check` already created: the old one's shape wins
            con.execute(f"DROP TABLE {target}")
        con.execute(f"CREATE TABLE {target} ({body})")
        names = ", ".join(ident(name) for name, _ in columns)
        con.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {_qualified(OLD, table)}")
    except duckdb.Error as exc:
        raise MigrationError(
            f"table {table} of {old_path} cannot be copied into the lake ({str(exc).splitlines()[0]}): "
            "nothing was migrated"
        ) from None
    old_rows, old_hash = fingerprint(con, OLD, table)
    new_rows, new_hash = fingerprint(con, LAKE, table)
    if (old_rows, old_hash) != (new_rows, new_hash):
        raise MigrationError(
            f"table {table} differs after copying ({old_rows:,} rows in {old_path}, {new_rows:,} in the lake"
            f"{'' if old_rows != new_rows else ', same count but different content'}): nothing was migrated; "
            "report this with the DuckDB version"
        )
    return TableCopy(table, new_rows, True)


def migrate_into(catalog: Catalog, old_path: Path, progress: Progress | None = None) -> list[TableCopy]:
    """Migrate into the catalog's lake (created if need be), then create its views and new columns."""
    check_old_file(old_path)  # before open_writer creates an empty lake for a mistyped path
    lake = Lake.of(catalog)
    with open_writer(lake) as con:
        copies = migrate(con, lake, old_path, progress)
        try:
            ensure_schema(con, catalog)
        except WarehouseError:
            raise
        except (duckdb.Error, RuntimeError) as exc:  # a column whose values do not convert
            raise MigrationError(
                f"the {len(copies)} tables were copied and verified, but the catalog does not fit them "
                f"({str(exc).splitlines()[0]}); fix the catalog: the next run creates the views"
            ) from None
    return copies
