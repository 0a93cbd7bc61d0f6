"""Applying inbound rows to an attribute table: stage, validate, apply, in one write transaction.

CSV files and API batches both end here. The source is any DuckDB relation whose columns
are the source names (VARCHAR); all work is DuckDB SQL. The whole application, including
the run bookkeeping, commits together or not at all, so a crash leaves the table as it was
and applying the same source again gives the same result.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import duckdb

from .catalog import InboundIntegration
from .sql import (
    hash_part,
    ident,
    literal,
    rejection_reason,
    sorted_id_hashes,
    sql_value,
    sql_values,
    trimmed_cell,
    typed_value,
)
from .warehouse import (
    LAKE,
    MEMORY_LIMIT_ENV,
    PARQUET_ROW_GROUP_ROWS,
    WarehouseError,
    attributes_table,
    ensure_attribute_table,
    ensure_bookkeeping,
    memory_limit_bytes,
    table_columns,
    table_data_folder,
    transaction,
)

Status = Literal["success", "partial", "failed", "skipped"]
Progress = Callable[[str], None]  # receives a line for the run's log
ROW_ERROR_COLUMN = "_row_error"  # optional source column: a reason the whole row is unusable
ROW_SOURCE_COLUMN = "_row_source"  # optional source column: where each row comes from (else the run's source)
PREVIEW_ROWS = 5
# From this many valid rows, and at least 1/REWRITE_MIN_SHARE of the table, a source writes its
# users' rows anew instead of MERGE-ing them (see _rewrite_table; measured by benchmarks/bench_csv.py).
REWRITE_MIN_ROWS = 200_000
REWRITE_MIN_SHARE = 4
# Rewritten rows' files hold this many row groups of PARQUET_ROW_GROUP_ROWS: about 0.5M rows,
# some 16 MB, like the files DuckLake writes itself (LAKE_FILE_OPTIONS).
REWRITE_FILE_ROW_GROUPS = 32
# The rewrite's join, and the swap's DELETE, hold source rows (ids, and values where they need
# their old row) in a hash table; each is split into parts (by a hash of the id) so that each part's
# table fits in this share of DuckDB's memory_limit, leaving the rest to the Parquet readers and
# writers. One table of 8M ids would take ~640 MB: DuckDB would spill it under a 1 GB limit, and the
# process would pass 1 GB (benchmarks/README.md, peak RSS).
JOIN_MEMORY_SHARE = 0.4
# Bytes per source row in that hash table beyond the id's own characters, and per value carried
# by a row that needs its old row; measured with DuckDB 1.4 (duckdb_memory()).
JOIN_ROW_BYTES = 32
JOIN_VALUE_BYTES = 16


@dataclass
class RunRecord:
    """One row of `integration_runs` (plus what the caller shows in Dagster)."""

    run_id: str
    integration: str
    kind: str
    source: str
    started_at: datetime
    status: Status = "failed"
    rows_read: int = 0
    rows_applied: int = 0
    rows_rejected: int = 0
    properties_imported: int = 0
    message: str = ""
    dagster_run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None
    rejected_preview: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: {self.status} ({self.rows_read} read, {self.rows_applied} applied, "
            f"{self.rows_rejected} rejected){' - ' + self.message if self.message else ''}"
        )


def new_run_id() -> str:
    """The id of one applied source or outbound run (`integration_runs.run_id`)."""
    return uuid.uuid4().hex[:16]


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class WarehouseMemoryError(RuntimeError):
    """DuckDB needed more memory than its memory_limit allows; nothing was applied."""


def record_run(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Insert the run's bookkeeping row (inside the caller's transaction, if any)."""
    run.finished_at = run.finished_at or now_utc()
    with transaction(con):
        _insert_run(con, run)


def _insert_run(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    values = sql_values(
        [
            run.run_id,
            run.integration,
            run.kind,
            run.source,
            run.started_at,
            run.finished_at,
            run.status,
            run.rows_read,
            run.rows_applied,
            run.rows_rejected,
            run.properties_imported,
            run.message,
            run.dagster_run_id,
            json.dumps(run.details, default=str),
        ]
    )
    con.execute(
        "INSERT INTO integration_runs (run_id, integration, kind, source, started_at, finished_at, status, "
        "rows_read, rows_applied, rows_rejected, properties_imported, message, dagster_run_id, details) "
        f"VALUES {values}"
    )


def record_failure(con: duckdb.DuckDBPyConnection, run: RunRecord, message: str) -> RunRecord:
    """Bookkeeping for a source that could not be applied at all (nothing of it is applied)."""
    run.status = "failed"
    run.message = message
    run.rows_applied = 0
    ensure_bookkeeping(con)
    record_run(con, run)
    return run


def _cells_sql(integration: InboundIntegration, source_sql: str, source_columns: list[str]) -> str:
    """The source's rows as staging reads them, every cell worked out once.

    The inner query gives each mapped cell's text (`_raw<k>`) and its trimmed value (`_cell<k>`,
    NULL when blank); the outer one adds the typed value (`_typed<k>`, NULL when blank or when the
    text does not cast). Nesting keeps DuckDB from trimming and casting a cell more than once.
    """
    uid = f"CAST(src.{ident(integration.user_id_source)} AS VARCHAR)"
    inner = [f"{trimmed_cell(uid)} AS user_id"]
    outer = ["user_id"]
    for k, (source, _, ptype) in enumerate(integration.inbound_properties):
        raw = f"CAST(src.{ident(source)} AS VARCHAR)"
        inner += [f"{raw} AS _raw{k}", f"{trimmed_cell(raw)} AS _cell{k}"]
        outer += [f"_raw{k}", f"_cell{k}", f"{typed_value(f'_cell{k}', f'_raw{k}', ptype)} AS _typed{k}"]
    inner.append(
        f"CAST(src.{ident(ROW_ERROR_COLUMN)} AS VARCHAR) AS _row_error" if ROW_ERROR_COLUMN in source_columns
        else "CAST(NULL AS VARCHAR) AS _row_error"
    )
    inner.append(
        f"CAST(src.{ident(ROW_SOURCE_COLUMN)} AS VARCHAR) AS _row_source" if ROW_SOURCE_COLUMN in source_columns
        else "CAST(NULL AS VARCHAR) AS _row_source"
    )
    outer += ["_row_error", "_row_source"]
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM ({source_sql}) AS src)"


def _bad_cells(integration: InboundIntegration) -> list[tuple[int, str, str]]:
    """(k, source column, type) of the properties whose cells can be rejected (not strings)."""
    return [(k, source, ptype) for k, (source, _, ptype) in enumerate(integration.inbound_properties) if ptype != "string"]


def _cell_rejected(k: int) -> str:
    """SQL over `_cells_sql`: property k's cell is not blank and does not cast."""
    return f"(_cell{k} IS NOT NULL AND _typed{k} IS NULL)"


def _any_bad_cell(integration: InboundIntegration) -> str:
    """SQL over `_cells_sql`: the row has a cell that is rejected."""
    return " OR ".join(_cell_rejected(k) for k, _, _ in _bad_cells(integration)) or "false"


def _stage_sql(integration: InboundIntegration, cells_sql: str, stage_file: str) -> str:
    """The one pass that reads, casts and validates the source, into a Parquet file of its own.

    Per row: the user id, the typed values (`_typed<k>`), and what rejects the row (`_bad`, the
    cells that do not cast, NULL when none; `_row_error`). A Parquet file streams at any size under
    the memory limit, keeps the source's order (its row number is the row's position), and the
    checks and the apply each read only the columns they need.
    """
    bad = [
        f"CASE WHEN {_cell_rejected(k)} THEN "
        f"{{'column_name': {literal(source)}, 'value': _raw{k}, 'reason': {literal(rejection_reason(ptype))}}} END"
        for k, source, ptype in _bad_cells(integration)
    ]
    listed = (
        f"CASE WHEN {_any_bad_cell(integration)} THEN list_filter([{', '.join(bad)}], lambda x: x IS NOT NULL) END"
        if bad else "NULL"
    )
    typed = [f"_typed{k}" for k in range(len(integration.inbound_properties))]
    return (
        f"COPY (SELECT {', '.join(['user_id', *typed])}, "
        f"CAST({listed} AS STRUCT(column_name VARCHAR, value VARCHAR, reason VARCHAR)[]) AS _bad, _row_error, _row_source "
        f"FROM ({cells_sql})) TO {literal(stage_file)} (FORMAT parquet)"
    )


def _staged_view_sql(stage_file: str, row_offset: int) -> str:
    # No row_number() window: it would make the scan single-threaded. The file keeps the
    # source's order (preserve_insertion_order), so its row number is the row's position.
    return (
        f"CREATE OR REPLACE TEMP VIEW _stage AS SELECT file_row_number + {int(row_offset) + 1} AS _row, "
        f"* EXCLUDE (file_row_number) FROM read_parquet({literal(stage_file)}, file_row_number = true)"
    )


def _duplicates_sql() -> str:
    # The ids' hashes first (8 bytes each, not the text), sorted; only ids whose hash repeats are
    # counted as text, and the (few) duplicated ids then get their first row numbers. An ordered
    # list() over every id would sort the whole source.
    return f"""
    CREATE OR REPLACE TEMP TABLE _dups AS
    WITH repeated AS (
        SELECT DISTINCT h FROM ({sorted_id_hashes("_stage")}) WHERE h = next_h
    ), counted AS (
        SELECT user_id, count(*) AS n FROM _stage
         WHERE user_id IS NOT NULL AND hash(user_id) IN (SELECT h FROM repeated)
         GROUP BY user_id HAVING count(*) > 1
    )
    SELECT c.user_id, c.n, list(s._row ORDER BY s._row)[1:5] AS rows
      FROM counted c JOIN _stage s USING (user_id)
     GROUP BY c.user_id, c.n
    """


def _rejections_sql(user_id_source: str) -> str:
    uid_col = literal(user_id_source)
    return f"""
    CREATE OR REPLACE TEMP TABLE _rejects AS
    SELECT _row, NULL AS user_id, {uid_col} AS column_name, NULL AS value,
           'empty user id: every row needs a value in ' || {uid_col} AS reason
      FROM _stage WHERE user_id IS NULL
    UNION ALL
    SELECT s._row, s.user_id, {uid_col}, s.user_id,
           'user id appears ' || d.n || ' times in this source (rows ' || array_to_string(d.rows, ', ')
           || CASE WHEN d.n > 5 THEN ', ...' ELSE '' END || '): keep one row per user'
      FROM _stage s JOIN _dups d USING (user_id)
    UNION ALL
    SELECT _row, user_id, b.column_name, b.value, b.reason
      FROM (SELECT _row, user_id, unnest(_bad) AS b FROM _stage WHERE _bad IS NOT NULL)
    UNION ALL
    SELECT _row, user_id, NULL, NULL, _row_error FROM _stage WHERE _row_error IS NOT NULL
    """


def _written_by(source: str, applied_at: datetime, row_source: str = "s._row_source") -> tuple[str, str]:
    """SQL for the `_updated_at` and `_source` of a written row (`row_source`: the source row's own, if any)."""
    return f"CAST({literal(applied_at.isoformat())} AS TIMESTAMPTZ)", f"COALESCE({row_source}, {literal(source)})"


def _merge_sql(
    integration: InboundIntegration, table: str, source: str, applied_at: datetime, valid_rows: str
) -> str:
    names = [name for _, name, _ in integration.inbound_properties]
    keep = integration.on_blank == "keep"
    updates = [
        f"{ident(n)} = COALESCE(s.{ident(n)}, t.{ident(n)})" if keep else f"{ident(n)} = s.{ident(n)}" for n in names
    ]
    stamp, row_source = _written_by(source, applied_at)
    updates += [f"_updated_at = {stamp}", f"_source = {row_source}"]
    insert_columns = ", ".join(["user_id", *(ident(n) for n in names), "_updated_at", "_source"])
    insert_values = ", ".join(["s.user_id", *(f"s.{ident(n)}" for n in names), stamp, row_source])
    return f"""
    MERGE INTO {ident(table)} AS t
    USING ({valid_rows}) AS s
    ON t.user_id = s.user_id
    WHEN MATCHED THEN UPDATE SET {', '.join(updates)}
    WHEN NOT MATCHED THEN INSERT ({insert_columns}) VALUES ({insert_values})
    """


def _stage_file() -> str:
    """A new path for a staged source, in the temp folder downloads go to ($TMPDIR).

    Not in DuckDB's temp_directory: a DuckDB instance that created that folder removes it, with
    everything in it, when it closes, and other runs' DuckDB instances share it.
    """
    return os.path.join(tempfile.gettempdir(), f"integration-hub-stage-{uuid.uuid4().hex}.parquet")


def _valid_rows_sql(integration: InboundIntegration, stage_file: str, any_rejected: bool) -> str:
    """The rows to apply, typed: the staged rows without the rejected ones."""
    typed = [f"_typed{k} AS {ident(name)}" for k, (_, name, _) in enumerate(integration.inbound_properties)]
    select = f"SELECT {', '.join(['user_id', *typed, '_row_source'])} FROM read_parquet({literal(stage_file)})"
    if not any_rejected:  # every row is valid: no filter, no anti-join
        return select
    # The same conditions as _rejections_sql.
    return (
        f"{select} WHERE user_id IS NOT NULL AND _bad IS NULL AND _row_error IS NULL "
        "AND user_id NOT IN (SELECT user_id FROM _dups)"
    )


def _table_files(con: duckdb.DuckDBPyConnection, table: str) -> set[tuple[str, str | None]]:
    """The table's data and delete files at the connection's snapshot: they change with every write."""
    rows = con.execute(f"SELECT data_file, delete_file FROM ducklake_list_files({literal(LAKE)}, {literal(table)})")
    return set(rows.fetchall())


@contextlib.contextmanager
def _source_side_hashed(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Joins keep the side the query puts on the right (the source's rows) as their hash table.

    DuckDB otherwise hashes whichever side it estimates smaller. The table's side carries every
    column, and a DELETE whose semi-join hashes the table's rows (RIGHT_SEMI) deletes nothing, in
    DuckLake 0.3, from files added by ducklake_add_data_files (test_durability's split apply).
    """
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    try:
        yield
    finally:
        with contextlib.suppress(duckdb.Error):  # after an error, the error is what counts
            con.execute("RESET disabled_optimizers")


@dataclass
class _RewrittenTable:
    """The source's users' new rows, written as Parquet files in the table's data folder but not yet in the lake."""

    table: str
    files: list[str]
    read_files: set[tuple[str, str | None]]  # the table's files the merged rows were read from
    source_ids: str  # SQL: the user_id of every row the files hold
    parts: int  # the DELETE's semi-join runs in this many parts (by a hash of the id), as the join did

    def swap_in(self, con: duckdb.DuckDBPyConnection) -> None:
        """(In the write transaction.) Delete the source's users' old rows and add the files: one snapshot."""
        if _table_files(con, self.table) != self.read_files:
            # Only this integration's runs write its table, one at a time (integration_lock), but
            # maintenance may have merged its files: the merged files must not go in over a change.
            raise WarehouseError(
                f"{self.table} changed while it was being rewritten (another writer or the warehouse "
                "maintenance committed meanwhile): nothing was applied; run it again"
            )
        with _source_side_hashed(con):  # the source's ids are the semi-join's hash table
            for part in range(self.parts):
                in_part = hash_part("user_id", self.parts, part)
                con.execute(
                    f"DELETE FROM {ident(self.table)} WHERE {in_part} "
                    f"AND user_id IN (SELECT user_id FROM ({self.source_ids}) WHERE {in_part})"
                )
        for file in self.files:
            con.execute(f"CALL ducklake_add_data_files({literal(LAKE)}, {literal(self.table)}, {literal(file)})")

    def discard(self) -> None:
        """Delete the files after a failed apply (a killed run's files are left to maintenance)."""
        for file in self.files:
            if "://" not in file:
                with contextlib.suppress(OSError):
                    os.unlink(file)


def _id_bytes(con: duckdb.DuckDBPyConnection, stage_file: str) -> int:
    """The characters of the staged source's ids (what a hash table of them holds beyond its rows)."""
    return int(con.execute(f"SELECT coalesce(sum(strlen(user_id)), 0) FROM read_parquet({literal(stage_file)})").fetchone()[0])


def _join_parts(
    con: duckdb.DuckDBPyConnection,
    stage_file: str,
    valid_rows: int,
    values: int,
    carried: Literal["all", "blanks", "none"],
    id_bytes: int | None = None,
) -> int:
    """How many parts a hash table of the source is built in, so each part fits (JOIN_MEMORY_SHARE).

    `carried` says what the table holds: "none", the id of every valid row (the swap's DELETE);
    "all" or "blanks", the rows that need their old row, with their values (the rewrite's join):
    all of them, or at most as many as the source has blank cells (from the Parquet statistics:
    no scan of the values). The ids' characters come from the staged source (`id_bytes`, if
    the caller counted them already).
    """
    if carried not in ("all", "blanks", "none"):
        raise ValueError(f"carried must be 'all', 'blanks' or 'none', not {carried!r}")
    if id_bytes is None:
        id_bytes = _id_bytes(con, stage_file)
    if carried == "none":
        needed = valid_rows * JOIN_ROW_BYTES + id_bytes
    else:
        if carried == "all":
            rows = valid_rows
        else:
            typed = ", ".join(literal(f"_typed{k}") for k in range(values))
            blanks = con.execute(
                f"SELECT coalesce(sum(stats_null_count), 0) FROM parquet_metadata({literal(stage_file)}) "
                f"WHERE path_in_schema IN ({typed})"
            ).fetchone()[0]
            rows = min(valid_rows, int(blanks))
        id_share = id_bytes * rows // max(1, valid_rows)
        needed = rows * (JOIN_ROW_BYTES + JOIN_VALUE_BYTES * (values + 1)) + id_share
    return max(1, math.ceil(needed / (memory_limit_bytes(con) * JOIN_MEMORY_SHARE)))


def _rewrite_table(
    con: duckdb.DuckDBPyConnection,
    integration: InboundIntegration,
    table: str,
    source: str,
    applied_at: datetime,
    valid_rows: str,
    stage_file: str,
    valid_count: int,
) -> _RewrittenTable:
    """Write the source's users' new rows, outside the write transaction (see _RewrittenTable).

    Each user of the source is written once, merged with their old row where it needs it; the
    swap then deletes those users' old rows, and the rest of the table stays in its files. For a
    large source this beats MERGE, which joins every column of the table and writes its updates
    row by row. The slow part, reading and writing the rows, holds no lock: other integrations
    commit meanwhile. The table keeps its identity, so its history (`ducklake_table_insertions`,
    time travel) runs on.

    Most source rows need nothing of their old row: with `on_blank: keep`, a row without a blank
    cell replaces every mapped value. Those are written straight from the source. Only the rows
    that do need it go into the join's hash table, which is built in parts (`_join_parts`) so
    that it stays in memory.
    """
    mapped = [name for _, name, _ in integration.inbound_properties]
    columns = table_columns(con, table)
    kept = [name for name in columns if name not in mapped and name not in ("user_id", "_updated_at", "_source")]
    carried: Literal["all", "blanks", "none"]  # which source rows need their old row
    if kept:  # columns of properties no longer in the catalog keep their values: every row needs its old row
        needs_old, carried = "true", "all"
    elif integration.on_blank == "keep":  # a blank cell keeps the old value
        needs_old, carried = " OR ".join(f"{ident(name)} IS NULL" for name in mapped) or "false", "blanks"
    else:
        needs_old, carried = "false", "none"
    stamp, filled_source = _written_by(source, applied_at, "s._row_source")
    _, own_source = _written_by(source, applied_at, "_row_source")
    joined, straight = [], []
    for name, data_type in columns.items():
        column = ident(name)
        if name == "user_id":
            merged, new = "s.user_id", "user_id"
        elif name in mapped:
            merged = f"COALESCE(s.{column}, t.{column})" if integration.on_blank == "keep" else f"s.{column}"
            new = column
        elif name == "_updated_at":
            merged, new = stamp, stamp
        elif name == "_source":
            merged, new = filled_source, own_source
        else:  # a column of a property no longer in the catalog keeps its values (needs_old is true)
            merged, new = f"t.{column}", "NULL"
        # The file's columns must have the table's names and types exactly (ducklake_add_data_files).
        joined.append(f"CAST({merged} AS {data_type}) AS {column}")
        straight.append(f"CAST({new} AS {data_type}) AS {column}")
    read_files = _table_files(con, table)  # before reading the rows: a change in between fails the swap
    folder = table_data_folder(con, table)
    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)
    id_bytes = _id_bytes(con, stage_file)
    parts = _join_parts(con, stage_file, valid_count, len(mapped), carried, id_bytes) if carried != "none" else 1
    # Row order in the files does not matter; not keeping it lets the write stream on every thread
    # (apply_source resets it: staging relies on the order).
    con.execute("SET preserve_insertion_order = false")
    rewritten = _RewrittenTable(
        table, [], read_files, f"SELECT user_id FROM ({valid_rows})",
        _join_parts(con, stage_file, valid_count, len(mapped), "none", id_bytes),
    )
    # The source rows (the join's right side) are the hash table: the table's side carries every column.
    with _source_side_hashed(con):
        try:
            for part in range(parts):
                in_part = hash_part("user_id", parts, part)
                rows = []
                if carried != "none":
                    rows.append(
                        f"SELECT {', '.join(joined)} FROM (FROM {ident(table)} WHERE {in_part}) AS t "
                        f"RIGHT OUTER JOIN (FROM ({valid_rows}) WHERE ({needs_old}) AND {in_part}) AS s ON t.user_id = s.user_id"
                    )
                if part == 0:  # the rows that need no old row take no room in the hash table
                    rows.append(f"SELECT {', '.join(straight)} FROM ({valid_rows}) WHERE NOT ({needs_old})")
                # Files of REWRITE_FILE_ROW_GROUPS row groups, named as DuckLake names its own: a killed run's (or a
                # failed COPY's) files are orphans that maintenance deletes. Several files, not one, because a
                # later DELETE holds each file's deleted row numbers in memory at once.
                written = con.execute(
                    f"COPY ({' UNION ALL '.join(rows)}) "
                    # Without its closing '/': DuckDB would join it to the file names with a second one, and
                    # DuckLake's orphan cleanup would not recognise the files as the table's.
                    f"TO {literal(folder.rstrip('/'))} (FORMAT parquet, ROW_GROUP_SIZE {PARQUET_ROW_GROUP_ROWS}, "
                    f"ROW_GROUPS_PER_FILE {REWRITE_FILE_ROW_GROUPS}, "
                    "FILENAME_PATTERN 'ducklake-{uuid}', APPEND, RETURN_FILES true)"
                ).fetchone()
                rewritten.files += written[1]
        except BaseException:
            rewritten.discard()  # the parts written before the failure
            raise
    return rewritten


def _rewrites(table_rows: int, valid_rows: int) -> bool:
    """Whether a source of `valid_rows` rewrites a table of `table_rows` (else it is MERGEd).

    A MERGE must scan the table on the probe side of its join: DuckLake 0.3 loses the deletes of a
    MERGE that hashes the table's rows when they sit in files added by ducklake_add_data_files (a
    rewrite's). These thresholds keep a MERGE's source smaller than any table a rewrite wrote (at
    least REWRITE_MIN_ROWS rows; a table never shrinks), so DuckDB hashes the source.
    """
    return valid_rows >= REWRITE_MIN_ROWS and valid_rows * REWRITE_MIN_SHARE >= table_rows


def apply_source(
    con: duckdb.DuckDBPyConnection,
    integration: InboundIntegration,
    source_sql: str,
    run: RunRecord,
    *,
    max_rejected_ratio: float,
    row_offset: int = 1,
    before_commit: Any = None,
    on_decision: Callable[[bool], None] | None = None,
    progress: Progress | None = None,
) -> RunRecord:
    """Validate a source relation and apply its good rows; bookkeeping in the same transaction.

    `before_commit(con, run)` runs inside the transaction after the decision (used to record
    processed files). `on_decision(applying)` is called once the rows are validated, before they
    are applied: whether they will be (unless the commit fails). If more than `max_rejected_ratio`
    of the rows are rejected, or no row is valid, nothing is applied and the run is failed.
    `progress` gets a line per step.

    The source is read, cast and validated once, into a Parquet file in the temp folder.
    A large source writes its users' rows into new files before the write transaction, which
    then deletes their old rows and adds the files; a small one is MERGEd in the transaction.
    """
    started = time.perf_counter()

    def report(message: str) -> None:
        if progress is not None:
            progress(f"{message} ({time.perf_counter() - started:.1f} s)")

    source_columns = [d[0] for d in con.execute(f"DESCRIBE SELECT * FROM ({source_sql})").fetchall()]
    cells_sql = _cells_sql(integration, source_sql, source_columns)
    table = attributes_table(integration.name)
    stage_file = _stage_file()
    rewritten: _RewrittenTable | None = None
    try:
        # Reading and validating the source writes only temporary files: it runs outside the
        # lake transaction, so other integrations' commits go on meanwhile.
        con.execute(_stage_sql(integration, cells_sql, stage_file))
        con.execute(_staged_view_sql(stage_file, row_offset))
        con.execute(_duplicates_sql())
        con.execute(_rejections_sql(integration.user_id_source))
        rows_read = con.execute("SELECT count(*) FROM _stage").fetchone()[0]
        rows_rejected = con.execute("SELECT count(DISTINCT _row) FROM _rejects").fetchone()[0]
        run.rows_read, run.rows_rejected = rows_read, rows_rejected
        report(f"read and validated {rows_read:,} rows, {rows_rejected:,} rejected")
        run.properties_imported = len(integration.inbound_properties)
        run.rejected_preview = [
            dict(zip(("row_number", "user_id", "column_name", "value", "reason"), r, strict=True))
            for r in con.execute(
                f"SELECT _row, user_id, column_name, value, reason FROM _rejects ORDER BY _row LIMIT {PREVIEW_ROWS}"
            ).fetchall()
        ]
        valid_rows = rows_read - rows_rejected
        ratio = rows_rejected / rows_read if rows_read else 1.0
        applying = False
        if rows_read == 0:
            run.status, run.message = "failed", "no rows: the source has a header but no data rows: send it again with the data rows below the header"
        elif valid_rows == 0:
            run.status, run.message = "failed", f"no valid row: all {rows_read} rows were rejected (see rejected_rows)"
        elif ratio > max_rejected_ratio:
            run.status = "failed"
            run.message = (
                f"{rows_rejected} of {rows_read} rows rejected ({ratio:.1%}), over max_rejected_ratio "
                f"{max_rejected_ratio:.0%}: nothing applied; fix the rows listed in rejected_rows and send it again"
            )
        else:
            applying = True
        if on_decision is not None:
            on_decision(applying)
        rows = _valid_rows_sql(integration, stage_file, rows_rejected > 0)
        if applying and valid_rows >= REWRITE_MIN_ROWS:
            with transaction(con):  # the table and its columns, before the source's rows are written
                ensure_bookkeeping(con)
                ensure_attribute_table(con, integration)
            existing = con.execute(f"SELECT count(*) FROM {ident(table)}").fetchone()[0]
            if _rewrites(existing, valid_rows):
                report(f"writing {valid_rows:,} users' rows for {table} ({existing:,} users in the table)")
                rewritten = _rewrite_table(con, integration, table, run.source, run.started_at, rows, stage_file, valid_rows)
                report(f"wrote {len(rewritten.files)} files; deleting the users' old rows and adding them")
        with transaction(con):
            ensure_bookkeeping(con)
            ensure_attribute_table(con, integration)
            con.execute(
                f"INSERT INTO rejected_rows SELECT {sql_value(run.run_id)}, {sql_value(run.integration)}, "
                f"{sql_value(run.source)}, _row, user_id, column_name, value, reason FROM _rejects ORDER BY _row"
            )
            if applying:
                if rewritten is not None:
                    rewritten.swap_in(con)
                    run.rows_applied = valid_rows
                else:
                    applied = con.execute(_merge_sql(integration, table, run.source, run.started_at, rows)).fetchone()
                    run.rows_applied = int(applied[0]) if applied else valid_rows
                plural = "s" if run.rows_applied != 1 else ""
                report(f"applied {run.rows_applied:,} row{plural} to {table}, committing")
                run.status = "partial" if rows_rejected else "success"
                if rows_rejected:
                    run.message = f"{rows_rejected} row{'s' if rows_rejected != 1 else ''} rejected (see rejected_rows)"
            if before_commit is not None:
                before_commit(con, run)
            record_run(con, run)
        rewritten = None  # committed: the lake owns its file
        report("committed")
    except duckdb.OutOfMemoryException as exc:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        rows_text = f"{run.rows_read:,} rows " if run.rows_read else ""
        raise WarehouseMemoryError(
            f"DuckDB needed more than its memory_limit of {limit} to apply {run.source} "
            f"({rows_text}into {table}); nothing was applied and the source is still pending: "
            f"set ${MEMORY_LIMIT_ENV} higher (e.g. 4GB) for the Dagster runs and run it again "
            f"({str(exc).splitlines()[0]})"
        ) from None
    finally:
        if rewritten is not None:
            rewritten.discard()
        with contextlib.suppress(OSError):
            os.unlink(stage_file)
        for statement in ("DROP VIEW IF EXISTS temp.main._stage", "DROP TABLE IF EXISTS temp.main._dups", "DROP TABLE IF EXISTS temp.main._rejects",
                          "RESET preserve_insertion_order"):
            try:
                con.execute(statement)
            except duckdb.Error:
                pass
    return run


def table_preview(con: duckdb.DuckDBPyConnection, table: str, limit: int = PREVIEW_ROWS) -> str:
    """A small markdown preview of a table for Dagster metadata (latest updates first)."""
    columns = [d[0] for d in con.execute(f"DESCRIBE {ident(table)}").fetchall()]
    order = "ORDER BY _updated_at DESC NULLS LAST" if "_updated_at" in columns else ""
    rows = con.execute(f"SELECT * FROM {ident(table)} {order} LIMIT {int(limit)}").fetchall()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)
