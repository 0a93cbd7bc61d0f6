"""Applying landed API batches to `attributes_<integration>` (inside a Dagster run).

Pending batches are applied oldest first through the same `apply_source` as a CSV file:
DuckDB reads the NDJSON files (all values VARCHAR), validates, MERGEs and records the run
in `integration_runs` / `rejected_rows`, in one transaction.

Consecutive pending batches are applied together, as one source: a real-time client
sending one record per request lands hundreds of batches a second, and applying each in
its own transaction would cap the store at a few dozen batches a second. The group's
relation folds the batches in batch-id order, exactly as applying them one after the
other would (later batches win; with `on_blank: keep` a value a later batch leaves out is
kept), and every row carries the id of the batch that last wrote it into `_source`. A
group of one batch is recorded with `source` = its batch id; a larger group as
`<first>..<last>` with every batch id in `details`. Each batch is also recorded in
`processed_files` (key = batch id), in the same transaction: that is what makes applying
idempotent. The commit comes first and the move to `applied/` (or `failed/`) second: if
the process dies in between, the batch is still pending, and the next run finds it
recorded and only moves it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import duckdb

from ..core.catalog import ApiIntegration
from ..core.ingest import ROW_SOURCE_COLUMN, RunRecord, apply_source, new_run_id, now_utc, record_failure
from ..core.sql import ident, literal, sql_value, sql_values
from ..core.warehouse import ensure_bookkeeping, transaction
from .batches import DATA_SUFFIX, AnyBatchStore, utc_now_iso

log = logging.getLogger(__name__)
RUN_BUDGET_SECONDS = 300.0  # a run keeps applying newly landed batches for at most this long
MAX_GROUP_BATCHES = 1000
PRUNE_EVERY_SECONDS = 600.0
MAX_GROUP_BYTES = 64 * 1024 * 1024
MIN_OBJECT_BYTES = 16 * 1024 * 1024
_FILE_COLUMN = "_ih_file"
_BATCH_COLUMN = "_ih_batch"


class AlreadyApplied(Exception):
    """Another run recorded one of the batches meanwhile: nothing of this group is applied."""


def payload_columns(integration: ApiIntegration) -> list[str]:
    """The NDJSON keys a batch file can hold: the user id property, then the mapped properties."""
    return list(dict.fromkeys([integration.user_id_property, *(p.property for p in integration.properties)]))


def group_source_sql(paths: list[str], integration: ApiIntegration, size_bytes: int = 0) -> str:
    """The relation `apply_source` reads for batch files given oldest first.

    Every payload column is VARCHAR (the canonical strings the API wrote). One row per
    user: the batches folded in id order, and `_row_source` = the last batch with that user.
    """
    keys = payload_columns(integration)
    columns = ", ".join(f"{literal(k)}: 'VARCHAR'" for k in keys)
    files = "[" + ", ".join(literal(p) for p in paths) + "]"
    max_object = max(MIN_OBJECT_BYTES, size_bytes + 1)
    read = (
        # A batch file is named <batch id>.ndjson.
        f"SELECT *, parse_filename({ident(_FILE_COLUMN)}, true) AS {ident(_BATCH_COLUMN)} "
        f"FROM read_json({files}, format = 'newline_delimited', columns = {{{columns}}}, "
        f"maximum_object_size = {max_object}, filename = {literal(_FILE_COLUMN)})"
    )
    uid = ident(integration.user_id_property)
    source = ident(ROW_SOURCE_COLUMN)
    batch = ident(_BATCH_COLUMN)
    if len(paths) == 1:  # one batch holds each user once: no folding needed
        return f"SELECT {', '.join(ident(k) for k in keys)}, {batch} AS {source} FROM ({read})"
    # arg_max skips NULLs (a later batch without the value keeps the earlier one); arg_max_null
    # does not (on_blank: clear -> the later batch's blank clears it), as sequential MERGEs would.
    fold = "arg_max" if integration.on_blank == "keep" else "arg_max_null"
    values = [f"{fold}({ident(k)}, {batch}) AS {ident(k)}" for k in keys if k != integration.user_id_property]
    return f"SELECT {uid}, {', '.join([*values, f'max({batch}) AS {source}'])} FROM ({read}) GROUP BY {uid}"


def _recorded(
    con: duckdb.DuckDBPyConnection, integration: str, batch_ids: list[str]
) -> dict[str, tuple[str, str]]:
    """Batches already recorded as processed: batch id -> (run_id, status)."""
    if not batch_ids:
        return {}
    rows = con.execute(
        f"SELECT key, run_id, status FROM processed_files WHERE integration = {sql_value(integration)} "
        f"AND key IN {sql_values(batch_ids)}"
    ).fetchall()
    return {key: (run_id, status) for key, run_id, status in rows}


def _run_outcome(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    row = con.execute(
        f"SELECT status, rows_rejected, message, finished_at FROM integration_runs WHERE run_id = {sql_value(run_id)}"
    ).fetchone()
    if row is None:
        return {"run_id": run_id}
    return {
        "run_id": run_id,
        "run_status": row[0],
        "rows_rejected_at_apply": row[1],
        "message": row[2] or "",
        "applied_at": row[3].isoformat() if row[3] else None,
    }


def _groups(batches: dict[str, int]) -> Iterator[list[tuple[str, int]]]:
    """Consecutive batches (id -> size), cut at MAX_GROUP_BATCHES or MAX_GROUP_BYTES."""
    group: list[tuple[str, int]] = []
    size = 0
    for batch_id, batch_size in batches.items():
        if group and (len(group) >= MAX_GROUP_BATCHES or size + batch_size > MAX_GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append((batch_id, batch_size))
        size += batch_size
    if group:
        yield group


def _finish_all(
    store: AnyBatchStore,
    integration: ApiIntegration,
    batches: list[str],
    statuses: dict[str, dict[str, Any]],
    outcome: dict[str, Any],
    failed: bool,
) -> None:
    items = []
    for batch_id in batches:
        status = statuses.get(batch_id) or store.accepted_status(integration.name, batch_id)
        status.update(outcome)
        if not failed and "rows_applied" not in outcome:
            status["rows_applied"] = status.get("users", status.get("accepted"))
        items.append((batch_id, status))
    store.finish(integration.name, items, failed=failed)


def apply_group(
    con: duckdb.DuckDBPyConnection,
    store: AnyBatchStore,
    integration: ApiIntegration,
    group: list[tuple[str, int]],
    dagster_run_id: str | None = None,
) -> list[RunRecord]:
    """Apply consecutive pending batches as one source; returns the runs recorded."""
    name = integration.name
    batch_ids = [b for b, _ in group]
    paths = [store.data_url(name, b) for b in batch_ids]
    size = sum(s for _, s in group)
    statuses = {b: store.accepted_status(name, b) for b in batch_ids}
    source = batch_ids[0] if len(batch_ids) == 1 else f"{batch_ids[0]}..{batch_ids[-1]}"
    run = RunRecord(
        run_id=new_run_id(),
        integration=name,
        kind="api",
        source=source,
        started_at=now_utc(),
        dagster_run_id=dagster_run_id,
        details={
            "batches": batch_ids,
            "size_bytes": size,
            "records_accepted": sum(int(s.get("accepted") or 0) for s in statuses.values()),
        },
    )

    def record_batches(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        if _recorded(con, name, batch_ids):
            raise AlreadyApplied()
        moved = f"{name}/{'failed' if run.status == 'failed' else 'applied'}/"
        batches = ", ".join(sql_values([batch_id, size]) for batch_id, size in group)
        con.execute(
            "INSERT INTO processed_files (integration, key, sha256, size_bytes, status, run_id, processed_at, moved_to) "
            f"SELECT {sql_value(name)}, key, NULL, size, {sql_value(run.status)}, {sql_value(run.run_id)}, "
            f"{sql_value(now_utc())}, {sql_value(moved)} || key || {sql_value(DATA_SUFFIX)} "
            f"FROM (VALUES {batches}) AS b(key, size)"
        )

    try:
        apply_source(
            con,
            integration,
            group_source_sql(paths, integration, size),
            run,
            max_rejected_ratio=1.0,
            row_offset=0,
            before_commit=record_batches,
        )
    except AlreadyApplied:
        return []  # the run that recorded them moves them (or, had it crashed, the next run)
    except (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.IOException) as exc:
        if len(group) > 1:  # find the unreadable batch: apply one by one
            return [
                r for single in group for r in apply_group(con, store, integration, [single], dagster_run_id)
            ]
        with transaction(con):
            record_failure(con, run, f"the batch file could not be read: {str(exc).splitlines()[0]}")
            record_batches(con, run)
    outcome = {
        "run_id": run.run_id,
        "run_status": run.status,
        "rows_rejected_at_apply": run.rows_rejected,
        "rejected_at_apply": [
            {k: (v if v is None or k == "row_number" else str(v)) for k, v in r.items()}
            for r in run.rejected_preview
        ],
        "message": run.message,
        "applied_at": utc_now_iso(),
        "dagster_run_id": dagster_run_id,
        "applied_with_batches": len(batch_ids),
    }
    if run.status == "failed":
        outcome["rows_applied"] = 0
    _finish_all(store, integration, batch_ids, statuses, outcome, failed=run.status == "failed")
    return [run]


def apply_pending(
    con: duckdb.DuckDBPyConnection,
    store: AnyBatchStore,
    integration: ApiIntegration,
    dagster_run_id: str | None = None,
    budget_seconds: float = RUN_BUDGET_SECONDS,
    on_run: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Apply every pending batch in id order, including batches that land meanwhile (within the budget)."""
    name = integration.name
    deadline = time.monotonic() + budget_seconds
    ensure_bookkeeping(con)
    store.prepare_reading(con)
    runs: list[RunRecord] = []
    seen: set[str] = set()
    while True:
        sizes = {b: size for b, size in store.pending_batches(name).items() if b not in seen}
        pending = list(sizes)
        if not pending:
            break
        seen.update(pending)
        recorded = _recorded(con, name, pending)
        by_run: dict[tuple[str, str], list[str]] = {}
        for batch_id, run in recorded.items():  # committed, but the move never happened
            by_run.setdefault(run, []).append(batch_id)
        for (run_id, status), batch_ids in by_run.items():
            outcome = _run_outcome(con, run_id)
            _finish_all(store, integration, batch_ids, {}, outcome, failed=status == "failed")
            log.info("%d batch(es) already applied by run %s: moved out of pending/", len(batch_ids), run_id)
        for group in _groups({b: size for b, size in sizes.items() if b not in recorded}):
            for run in apply_group(con, store, integration, group, dagster_run_id):
                runs.append(run)
                if on_run is not None:
                    on_run(run)
        if time.monotonic() > deadline:
            break
    store.prune(name, every_seconds=PRUNE_EVERY_SECONDS)
    return runs
