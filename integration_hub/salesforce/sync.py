"""One sync of a report into a Salesforce object: update only, changed rows only.

    stage     report rows -> key, per-field wire values, JSON payload, value problems   (DuckDB)
    invalid   null key, duplicated key, malformed Id key, value that cannot go in    (DuckDB)
    diff      payload vs the last successfully sent payload of that key (snapshot)   (DuckDB join)
    match     changed keys -> record Ids: SOQL `IN` chunks, or one Bulk API 2.0 query
    classify  unmatched (no record), ambiguous (several; skipped unless update_all)  (DuckDB)
    send      sObject Collections PATCH (200 a call) up to `bulk_threshold` records,
              one Bulk API 2.0 update job above it; UNABLE_TO_LOCK_ROW records retried
    record    salesforce_sync_results, salesforce_sync_runs, integration_runs and the
              snapshot (`salesforce_snapshots`), in one transaction

Nothing is ever created in Salesforce: a key without a record is `unmatched`. Keys are matched
case-insensitively for text key fields (as SOQL does) and on the first 15 characters for Id keys.
Unchanged keys are not looked up again: the diff runs before matching, so a run where nothing
changed makes no call besides logging in and `describe()`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import duckdb

from ..core.catalog import Catalog, SalesforceConnection, SalesforceIntegration
from ..core.ingest import RunRecord, new_run_id, now_utc, record_run
from ..core.sql import hash_part, ident, literal, trimmed_cell
from ..core.warehouse import ensure_bookkeeping, ensure_table, transaction
from ..reports.factory import ReportError, report_table, validate_report_sql
from .auth import SalesforceAuthError, redact
from .client import BULK_MAX_UPLOAD_BYTES, COMPOSITE_BATCH, SalesforceApiError, SalesforceClient, SaveError
from .validation import (
    ID_PATTERN,
    MappingError,
    MappingPlan,
    json_sql,
    problem_sql,
    validate_mapping,
    wire_sql,
)

KIND = "salesforce"
OUTCOMES = ("updated", "unchanged", "unmatched", "ambiguous", "invalid", "failed")
COUNT_NAMES = ("rows", "matched", "updated", "unchanged", "unmatched", "ambiguous", "invalid", "failed")
MAX_URI_BYTES = 16_384  # Salesforce's request-URI limit
URI_HEADROOM = 600  # host, path and version in front of ?q=
MAX_SOQL_CHARS = 100_000
SAMPLE_ROWS = 10

SALESFORCE_TABLES: dict[str, dict[str, str]] = {
    "salesforce_sync_runs": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "report": "VARCHAR",
        "object": "VARCHAR",
        "started_at": "TIMESTAMPTZ",
        "runtime_seconds": "DOUBLE",
        "status": "VARCHAR",  # Completed | Failed
        **{name: "BIGINT" for name in COUNT_NAMES},
        "full_resync": "BOOLEAN",
        "transport": "VARCHAR",
        "api_calls": "JSON",
        "message": "VARCHAR",
        "dagster_run_id": "VARCHAR",
    },
    "salesforce_sync_results": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "report_key": "VARCHAR",
        "salesforce_id": "VARCHAR",
        "outcome": "VARCHAR",
        "error": "VARCHAR",
    },
    "salesforce_snapshots": {
        "integration": "VARCHAR",
        "match_key": "VARCHAR",
        "report_key": "VARCHAR",
        "salesforce_ids": "VARCHAR[]",
        "target": "VARCHAR",  # Object.KeyField it was sent to
        "payload": "VARCHAR",  # JSON: field -> value, exactly as sent
        "run_id": "VARCHAR",
        "sent_at": "TIMESTAMPTZ",
    },
}
_TEMP_TABLES = ("_sf_found", "_sf_nosnap", "_sf_done", "_sf_rows", "_sf_dups", "_sf_plan_base", "_sf_tomatch", "_sf_matches", "_sf_match_counts",
                "_sf_plan", "_sf_send", "_sf_pending", "_sf_failed", "_sf_results")


class SyncError(Exception):
    """The run failed; the message says why and how to fix it (never a secret)."""


def ensure_salesforce_tables(con: duckdb.DuckDBPyConnection) -> None:
    ensure_bookkeeping(con)
    for table, columns in SALESFORCE_TABLES.items():
        ensure_table(con, table, columns)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [table]
    ).fetchone()[0])


def load_rows(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], rows: list[tuple[Any, ...]]) -> None:
    """(Re)create a temp table from Python rows, in one set-based insert (one list per column)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({', '.join(f'{ident(n)} {t}' for n, t in columns.items())})")
    if not rows:
        return
    names = list(columns)
    lists = {f"c{n}": [r[n] for r in rows] for n in range(len(names))}
    selects = ", ".join(f"CAST(unnest($c{n}) AS {columns[name]})" for n, name in enumerate(names))
    con.execute(f"INSERT INTO {table} SELECT {selects}", lists)


@dataclass
class SyncResult:
    """One run: its counts, status and a few sample rows per outcome."""

    run_id: str
    integration: str
    report: str
    object: str
    started_at: datetime
    full_resync: bool = False
    dry_run: bool = False
    status: str = "Failed"
    runtime_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    transport: str = "none"
    api_calls: dict[str, int] = field(default_factory=dict)
    message: str = ""
    dagster_run_id: str | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    username: str | None = None
    instance_url: str | None = None

    @property
    def hub_status(self) -> str:
        """integration_runs status: failed / partial (some rows invalid or failed) / success."""
        if self.status != "Completed":
            return "failed"
        return "partial" if self.counts["failed"] or self.counts["invalid"] else "success"

    def summary(self) -> str:
        c = self.counts
        verb = "would update" if self.dry_run else "updated"
        return (
            f"{c['rows']} rows: {c['updated']} {verb}, {c['unchanged']} unchanged, {c['unmatched']} unmatched, "
            f"{c['ambiguous']} ambiguous, {c['invalid']} invalid, {c['failed']} failed"
        )


def record_sync_run(con: duckdb.DuckDBPyConnection, result: SyncResult) -> None:
    """The run's row in salesforce_sync_runs and in integration_runs (inside the caller's transaction)."""
    c = result.counts
    values = [result.run_id, result.integration, result.report, result.object, result.started_at,
              round(result.runtime_seconds, 3), result.status, *(c[n] for n in COUNT_NAMES), result.full_resync,
              result.transport, json.dumps(result.api_calls), result.message, result.dagster_run_id]
    con.execute(
        "INSERT INTO salesforce_sync_runs (run_id, integration, report, object, started_at, runtime_seconds, "
        f"status, {', '.join(COUNT_NAMES)}, full_resync, transport, api_calls, message, dagster_run_id) "
        f"VALUES ({', '.join(['?'] * len(values))})",
        values,
    )
    record_run(con, RunRecord(
        run_id=result.run_id,
        integration=result.integration,
        kind=KIND,
        source=f"{result.report} -> {result.object}",
        started_at=result.started_at,
        status=result.hub_status,  # type: ignore[arg-type]
        rows_read=c["rows"],
        rows_applied=c["updated"],
        rows_rejected=c["invalid"] + c["failed"],
        properties_imported=0,
        message=result.message,
        dagster_run_id=result.dagster_run_id,
        details={
            "object": result.object,
            **{n: c[n] for n in COUNT_NAMES if n not in ("rows", "updated")},
            "full_resync": result.full_resync,
            "transport": result.transport,
            "api_calls": result.api_calls,
            "runtime_seconds": round(result.runtime_seconds, 3),
        },
    ))


def chunk_in_clauses(values: list[str], prefix: str, suffix: str = ")") -> list[str]:
    """SOQL statements `prefix + 'v1','v2',... + suffix`, each fitting the URI and SOQL length limits.

    Every value is escaped with simple-salesforce's SOQL quoting, so a key such as
    `x' OR Name != '` is one string literal that matches nothing.
    """
    from simple_salesforce.format import quote_soql_value

    budget = MAX_URI_BYTES - URI_HEADROOM
    base = len(urlencode({"q": prefix + suffix}))
    statements: list[str] = []
    current: list[str] = []
    size, chars = base, len(prefix) + len(suffix)
    for value in values:
        quoted = quote_soql_value(value)
        cost = len(urlencode({"q": quoted + ","})) - 2
        if current and (size + cost > budget or chars + len(quoted) + 1 > MAX_SOQL_CHARS):
            statements.append(prefix + ",".join(current) + suffix)
            current, size, chars = [], base, len(prefix) + len(suffix)
        if base + cost > budget:
            raise SyncError(f"a key is too long to look up in Salesforce ({len(value)} characters)")
        current.append(quoted)
        size += cost
        chars += len(quoted) + 1
    if current:
        statements.append(prefix + ",".join(current) + suffix)
    return statements


class SalesforceSync:
    """One run over an open DuckDB connection (a writer for runs, a reader for dry runs)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        catalog: Catalog,
        integration: SalesforceIntegration,
        *,
        full_resync: bool = False,
        dry_run: bool = False,
        dagster_run_id: str | None = None,
        client: SalesforceClient | None = None,
        log: Any = None,
    ) -> None:
        self.con = con
        self.catalog = catalog
        self.integration = integration
        self.connection: SalesforceConnection = catalog.connection(integration.connection)  # type: ignore[assignment]
        self.full_resync = full_resync
        self.dry_run = dry_run
        self.client = client
        self.log = log
        self.result = SyncResult(
            run_id=new_run_id(), integration=integration.name, report=integration.report, object=integration.object,
            started_at=now_utc(), full_resync=full_resync, dry_run=dry_run, dagster_run_id=dagster_run_id,
        )
        self.failures: dict[str, SaveError] = {}
        self.transports: list[str] = []
        self._recorded = False
        self._started = time.monotonic()

    # -- logging ---------------------------------------------------------------------------
    def _info(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> SyncResult:
        """Sync (or, with dry_run, only plan); raises SyncError after recording a failed run."""
        result = self.result
        try:
            relation, columns = self._report_relation()
            if self.client is None:
                self.client = SalesforceClient(self.catalog, self.connection, log=self.log)
            result.username, result.instance_url = self.client.username, self.client.instance_url
            self._info(f"logged in to {self.client.instance_url}; describing {self.integration.object}")
            plan = self._plan(columns)
            self._stage(plan, relation)
            self._match(plan)
            self._classify(plan)
            if self.dry_run:
                self._dry_run_counts()
                result.status = "Completed"
                return result
            fatal = self._send(plan)
            self._finish(plan, fatal)
            return result
        except Exception as exc:
            if self._recorded:
                raise  # _finish recorded the run (with what was sent) and raised
            if isinstance(exc, SalesforceApiError | SalesforceAuthError | MappingError | SyncError | ReportError):
                message = str(exc)
            elif isinstance(exc, duckdb.Error):
                message = f"DuckDB failed during the sync: {str(exc).splitlines()[0]}"
            else:
                message = redact(f"unexpected {type(exc).__name__} during the sync: {exc}")
            self._fail(message)
            raise SyncError(message) from None
        finally:
            result.runtime_seconds = time.monotonic() - self._started
            if self.client is not None:
                result.api_calls = dict(sorted(self.client.calls.items()))
            self._drop_temp()

    def _drop_temp(self) -> None:
        for table in _TEMP_TABLES:
            try:
                self.con.execute(f"DROP TABLE IF EXISTS {table}")
            except duckdb.Error:
                pass

    # -- report --------------------------------------------------------------------------
    def _report_relation(self) -> tuple[str, dict[str, str]]:
        """The report rows: the materialized table in a run, its SQL (read-only) in a dry run."""
        report = self.catalog.report(self.integration.report)
        if self.dry_run:
            relation = f"({validate_report_sql(report)})"
        else:
            table = report_table(report.name)
            if not table_exists(self.con, table):
                raise SyncError(
                    f"report {report.name!r} has not been materialized (no table {table}): run the integration's "
                    "job, which materializes the report before syncing it"
                )
            relation = ident(table)
        try:
            described = self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
        except duckdb.Error as exc:
            raise SyncError(
                f"report {report.name!r} does not run: {str(exc).splitlines()[0]}; fix its sql in the catalog"
            ) from None
        return relation, {row[0]: row[1] for row in described}

    # -- plan ----------------------------------------------------------------------------
    def _plan(self, columns: dict[str, str]) -> MappingPlan:
        assert self.client is not None
        try:
            describe = self.client.describe(self.integration.object)
        except SalesforceApiError as exc:
            if exc.status == 404 or exc.code == "NOT_FOUND":
                raise MappingError(self.integration.name, [
                    f"object {self.integration.object!r} does not exist in this org or the integration user cannot "
                    "see it: use its API name (custom objects end in __c) and check the user's permissions"
                ]) from None
            raise
        plan = validate_mapping(self.integration, describe, columns)
        if plan.problems:
            raise MappingError(self.integration.name, plan.problems)
        self.result.object = plan.object
        return plan

    def _stage(self, plan: MappingPlan, relation: str) -> None:
        """Report rows -> key, wire values, payload, invalid reason; then the diff with the snapshot."""
        con = self.con
        key_col = f"src.{ident(plan.key.column)}"
        selects = ["_sf_n AS _row", f"{trimmed_cell(f'CAST({key_col} AS VARCHAR)')} AS report_key"]
        pairs, problems = [], []
        for n, spec in enumerate(plan.fields):
            col = f"src.{ident(spec.column)}"
            wire = wire_sql(spec, col)
            selects.append(f"{wire} AS w{n}")
            pairs.append(f"{literal(spec.name)}, {json_sql(spec, col, wire)}")
            problems += problem_sql(spec, col, wire)
        selects.append(f"CAST(json_object({', '.join(pairs)}) AS VARCHAR) AS payload")
        selects.append(f"NULLIF(concat_ws('; ', {', '.join(problems)}), '') AS value_problem" if problems
                       else "CAST(NULL AS VARCHAR) AS value_problem")
        match_key = "left(report_key, 15)" if plan.key.is_id else "lower(report_key)"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _sf_rows AS SELECT *, {match_key} AS match_key FROM ("
            f"SELECT {', '.join(selects)} FROM (SELECT row_number() OVER () AS _sf_n, * FROM {relation}) AS src)"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _sf_dups AS SELECT match_key, count(*) AS n FROM _sf_rows "
            "WHERE match_key IS NOT NULL GROUP BY match_key HAVING count(*) > 1"
        )
        key_name = plan.key.column
        id_check = (
            f"WHEN NOT regexp_full_match(r2.report_key, {literal(ID_PATTERN)}) THEN "
            f"{literal(f'not a Salesforce Id (15 or 18 letters and digits) as {plan.key.name} needs')} "
            if plan.key.is_id else ""
        )
        case_note = "" if plan.key.is_id else " (Salesforce compares text keys ignoring case)"
        if table_exists(con, "salesforce_snapshots"):
            snapshot = "salesforce_snapshots"
        else:  # a dry run before the first run: nothing was sent yet
            columns = ", ".join(f"{ident(n)} {t}" for n, t in SALESFORCE_TABLES["salesforce_snapshots"].items())
            con.execute(f"CREATE OR REPLACE TEMP TABLE _sf_nosnap ({columns})")
            snapshot = "_sf_nosnap"
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _sf_plan_base AS
            SELECT r.*, i.invalid_reason,
                   coalesce(i.invalid_reason IS NULL AND NOT $full AND s.match_key IS NOT NULL
                            AND s.payload = r.payload AND s.target = $target, false) AS unchanged,
                   s.salesforce_ids AS previous_ids
              FROM _sf_rows r
              JOIN (SELECT r2._row, CASE
                        WHEN r2.report_key IS NULL THEN {literal(f'empty key: every row needs a value in column {key_name}')}
                        {id_check}
                        WHEN d.n IS NOT NULL THEN 'key appears ' || d.n || ' times in the report{case_note}: keep one row per key'
                        ELSE r2.value_problem END AS invalid_reason
                      FROM _sf_rows r2 LEFT JOIN _sf_dups d ON d.match_key = r2.match_key) AS i ON i._row = r._row
                LEFT JOIN (SELECT * FROM {snapshot} WHERE integration = $integration) AS s
                     ON s.match_key = r.match_key AND i.invalid_reason IS NULL
            """,
            {"full": self.full_resync, "target": plan.target, "integration": self.integration.name},
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _sf_tomatch AS SELECT match_key, min(report_key) AS key_value "
            "FROM _sf_plan_base WHERE invalid_reason IS NULL AND NOT unchanged GROUP BY match_key"
        )

    # -- match ---------------------------------------------------------------------------
    def _match(self, plan: MappingPlan) -> None:
        """Record Ids for every key still to send, into _sf_matches(match_key, salesforce_id)."""
        assert self.client is not None
        con = self.con
        con.execute("CREATE OR REPLACE TEMP TABLE _sf_matches (match_key VARCHAR, salesforce_id VARCHAR)")
        keys = con.execute("SELECT count(*) FROM _sf_tomatch").fetchone()[0]
        if keys == 0:
            return
        key = plan.key.name
        select = "SELECT Id" if key == "Id" else f"SELECT Id, {key}"
        normalise = "left(key_value, 15)" if plan.key.is_id else "lower(key_value)"
        if keys <= self.integration.bulk_threshold:
            values = [r[0] for r in con.execute("SELECT key_value FROM _sf_tomatch ORDER BY key_value").fetchall()]
            statements = chunk_in_clauses(values, f"{select} FROM {plan.object} WHERE {key} IN (")
            self._info(f"looking up {keys} keys in {len(statements)} SOQL queries")
            rows: list[tuple[str, str]] = []
            for soql in statements:
                for record in self.client.query_all(soql):
                    rows.append((record["Id"], record["Id"] if key == "Id" else record.get(key)))
            load_rows(con, "_sf_found", {"key_value": "VARCHAR", "salesforce_id": "VARCHAR"},
                      [(value, record_id) for record_id, value in rows if value is not None])
            con.execute(f"INSERT INTO _sf_matches SELECT {normalise}, salesforce_id FROM _sf_found")
            con.execute("DROP TABLE _sf_found")
            return
        where = "" if key == "Id" else f" WHERE {key} != null"
        soql = f"{select} FROM {plan.object}{where}"
        self._info(f"looking up {keys} keys with one Bulk API 2.0 query over {plan.object}")
        columns = "{'salesforce_id': 'VARCHAR'}" if key == "Id" else "{'salesforce_id': 'VARCHAR', 'key_value': 'VARCHAR'}"
        key_value = "salesforce_id" if key == "Id" else "key_value"
        with tempfile.TemporaryDirectory(prefix="integration-hub-sf-") as tmp:
            for number, page in enumerate(self.client.bulk_query_csv(soql)):
                path = Path(tmp) / f"page{number}.csv"
                path.write_bytes(page)
                con.execute(
                    f"INSERT INTO _sf_matches SELECT {normalise.replace('key_value', key_value)}, salesforce_id "
                    f"FROM read_csv({literal(str(path))}, header = true, auto_detect = false, columns = {columns}, "
                    "delim = ',', quote = '\"', escape = '\"', strict_mode = false) AS m "
                    f"WHERE {key_value} IS NOT NULL AND {normalise.replace('key_value', key_value)} "
                    "IN (SELECT match_key FROM _sf_tomatch)"
                )
                path.unlink()

    def _classify(self, plan: MappingPlan) -> None:
        skip = self.integration.on_multiple_matches == "skip"
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _sf_match_counts AS SELECT match_key, count(DISTINCT salesforce_id) AS n, "
            "list(DISTINCT salesforce_id ORDER BY salesforce_id) AS ids FROM _sf_matches GROUP BY match_key"
        )
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _sf_plan AS
            SELECT b.*, c.n AS n_matches, c.ids,
                   CASE WHEN b.invalid_reason IS NOT NULL THEN 'invalid'
                        WHEN b.unchanged THEN 'unchanged'
                        WHEN c.n IS NULL THEN 'unmatched'
                        WHEN c.n > 1 AND {'true' if skip else 'false'} THEN 'ambiguous'
                        ELSE 'send' END AS decision
              FROM _sf_plan_base b LEFT JOIN _sf_match_counts c ON c.match_key = b.match_key
                   AND b.invalid_reason IS NULL AND NOT b.unchanged
            """
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _sf_send AS SELECT _row, match_key, report_key, unnest(ids) AS salesforce_id, "
            "payload, * EXCLUDE (_row, match_key, report_key, payload, ids) FROM _sf_plan WHERE decision = 'send'"
        )

    def _decision_counts(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT decision, count(*) FROM _sf_plan GROUP BY decision").fetchall())

    def _dry_run_counts(self) -> None:
        decisions = self._decision_counts()
        c = self.result.counts
        c["rows"] = sum(decisions.values())
        c["updated"] = decisions.get("send", 0)
        for name in ("unchanged", "unmatched", "ambiguous", "invalid"):
            c[name] = decisions.get(name, 0)
        c["matched"] = c["updated"] + c["unchanged"]
        self.result.message = self.result.summary()
        samples: dict[str, list[dict[str, Any]]] = {}
        for decision, name in (("send", "would_update"), ("unmatched", "unmatched"), ("ambiguous", "ambiguous"),
                               ("invalid", "invalid")):
            rows = self.con.execute(
                "SELECT report_key, ids, invalid_reason, payload FROM _sf_plan WHERE decision = ? ORDER BY _row LIMIT ?",
                [decision, SAMPLE_ROWS],
            ).fetchall()
            samples[name] = [
                {"report_key": key, "salesforce_ids": ", ".join(ids or []) or None, "reason": reason,
                 "values": payload if decision == "send" else None}
                for key, ids, reason, payload in rows
            ]
        self.result.samples = samples

    # -- send ----------------------------------------------------------------------------
    def _send(self, plan: MappingPlan) -> str | None:
        """Send every record of _sf_send; failures into self.failures. Returns a fatal error, if any."""
        con = self.con
        total = con.execute("SELECT count(*) FROM _sf_send").fetchone()[0]
        if total == 0:
            return None
        con.execute("CREATE OR REPLACE TEMP TABLE _sf_pending AS SELECT salesforce_id FROM _sf_send")
        attempt = 0
        fatal: str | None = None
        while True:
            pending = con.execute("SELECT count(*) FROM _sf_pending").fetchone()[0]
            try:
                if pending > self.integration.bulk_threshold:
                    locked = self._send_bulk(plan, pending)
                else:
                    locked = self._send_composite(plan, pending)
            except (SalesforceApiError, SalesforceAuthError) as exc:
                fatal = str(exc)
                break
            if not locked:
                break
            if attempt >= self.connection.max_retries:
                for record_id, error in locked.items():
                    self.failures[record_id] = error
                break
            self._info(f"{len(locked)} records were locked by other work (UNABLE_TO_LOCK_ROW); retrying them")
            assert self.client is not None
            self.client.retries["UNABLE_TO_LOCK_ROW"] += len(locked)
            self.client.sleep(self.client.backoff(attempt))
            attempt += 1
            load_rows(con, "_sf_pending", {"salesforce_id": "VARCHAR"}, [(i,) for i in locked])
        if fatal is not None:
            # Whatever was not confirmed is failed with the reason; the next run sends it again.
            unconfirmed = con.execute("SELECT salesforce_id FROM _sf_pending").fetchall()
            for (record_id,) in unconfirmed:
                self.failures.setdefault(record_id, SaveError("NOT_SENT", fatal))
        return fatal

    def _send_composite(self, plan: MappingPlan, pending: int) -> dict[str, SaveError]:
        assert self.client is not None
        if "composite" not in self.transports:
            self.transports.append("composite")
        rows = self.con.execute(
            "SELECT s.salesforce_id, s.payload FROM _sf_send s JOIN _sf_pending p USING (salesforce_id) ORDER BY s._row"
        ).fetchall()
        self._info(f"updating {len(rows)} {plan.object} records with sObject Collections ({COMPOSITE_BATCH} a call)")
        locked: dict[str, SaveError] = {}
        done: list[str] = []
        try:
            for start in range(0, len(rows), COMPOSITE_BATCH):
                batch = rows[start:start + COMPOSITE_BATCH]
                records = [{"Id": record_id, **json.loads(payload)} for record_id, payload in batch]
                results = self.client.composite_update(plan.object, records)
                for (record_id, _), error in zip(batch, results, strict=True):
                    done.append(record_id)
                    if error is None:
                        self.failures.pop(record_id, None)
                    elif error.code == "UNABLE_TO_LOCK_ROW":
                        locked[record_id] = error
                    else:
                        self.failures[record_id] = error
        finally:
            # _sf_pending keeps only what was not answered (for a fatal error after partial progress).
            if done:
                load_rows(self.con, "_sf_done", {"salesforce_id": "VARCHAR"}, [(i,) for i in done])
                self.con.execute("DELETE FROM _sf_pending WHERE salesforce_id IN (SELECT salesforce_id FROM _sf_done)")
                self.con.execute("DROP TABLE _sf_done")
        return locked

    def _bulk_csv(self, plan: MappingPlan, directory: str, parts: int = 1) -> list[tuple[Path, int, str]]:
        """The pending records as Bulk API 2.0 CSV file(s): Id + one column per field, #N/A clears.

        Returns (file, records, SQL condition selecting that file's records).
        """
        columns = ["s.salesforce_id AS Id"] + [
            f"coalesce(s.w{n}, '#N/A') AS {ident(spec.name)}" for n, spec in enumerate(plan.fields)
        ]
        files = []
        for part in range(parts):
            path = Path(directory) / f"update_{part}.csv"
            condition = hash_part("salesforce_id", parts, part)
            count = self.con.execute(
                f"COPY (SELECT {', '.join(columns)} FROM _sf_send s JOIN _sf_pending p USING (salesforce_id) "
                f"WHERE {hash_part('s.salesforce_id', parts, part)} ORDER BY s._row) "
                f"TO {literal(str(path))} (FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"', "
                "NEW_LINE '\\n')"
            ).fetchone()[0]
            files.append((path, int(count), condition))
        return files

    def _send_bulk(self, plan: MappingPlan, pending: int) -> dict[str, SaveError]:
        assert self.client is not None
        if "bulk" not in self.transports:
            self.transports.append("bulk")
        locked: dict[str, SaveError] = {}
        with tempfile.TemporaryDirectory(prefix="integration-hub-sf-") as tmp:
            files = self._bulk_csv(plan, tmp)
            size = files[0][0].stat().st_size
            if size > BULK_MAX_UPLOAD_BYTES * 0.9:  # one job takes at most 100 MB: split evenly
                os.unlink(files[0][0])
                files = self._bulk_csv(plan, tmp, int(size // (BULK_MAX_UPLOAD_BYTES * 0.8)) + 1)
            self._info(f"updating {pending} {plan.object} records with {len(files)} Bulk API 2.0 job(s)")
            for path, count, condition in files:
                if count == 0:
                    continue
                outcome = self.client.bulk_update(plan.object, path.read_bytes(), count)
                for record_id, error in outcome.failed.items():
                    if error.code == "UNABLE_TO_LOCK_ROW":
                        locked[record_id] = error
                    else:
                        self.failures[record_id] = error
                if outcome.succeeded is not None:  # Salesforce left some rows unprocessed
                    sent = self.con.execute(f"SELECT salesforce_id FROM _sf_pending WHERE {condition}").fetchall()
                    for (record_id,) in sent:
                        if record_id not in outcome.succeeded and record_id not in outcome.failed:
                            self.failures[record_id] = SaveError(
                                "NOT_PROCESSED", f"Salesforce did not process this record (bulk job {outcome.job_id})"
                            )
                self.con.execute(f"DELETE FROM _sf_pending WHERE {condition}")
        return locked

    # -- record --------------------------------------------------------------------------
    def _finish(self, plan: MappingPlan, fatal: str | None) -> None:
        """Per-record outcomes, counts, snapshot and run rows, in one transaction."""
        con = self.con
        result = self.result
        load_rows(con, "_sf_failed", {"salesforce_id": "VARCHAR", "code": "VARCHAR", "message": "VARCHAR"},
                  [(i, e.code, redact(e.message)) for i, e in self.failures.items()])
        obj, key = plan.object, plan.key.name
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _sf_results AS
            SELECT s._row, s.match_key, s.report_key, s.salesforce_id,
                   CASE WHEN f.salesforce_id IS NULL THEN 'updated' ELSE 'failed' END AS outcome,
                   CASE WHEN f.salesforce_id IS NOT NULL THEN f.code || ': ' || f.message END AS error
              FROM _sf_send s LEFT JOIN _sf_failed f ON f.salesforce_id = s.salesforce_id
            UNION ALL
            SELECT _row, match_key, report_key, NULL, 'invalid', invalid_reason FROM _sf_plan WHERE decision = 'invalid'
            UNION ALL
            SELECT _row, match_key, report_key, unnest(CASE WHEN len(previous_ids) > 0 THEN previous_ids ELSE [NULL] END),
                   'unchanged', NULL FROM _sf_plan WHERE decision = 'unchanged'
            UNION ALL
            SELECT _row, match_key, report_key, NULL, 'unmatched',
                   {literal(f'no {obj} record has {key} equal to this key (nothing is created)')}
              FROM _sf_plan WHERE decision = 'unmatched'
            UNION ALL
            SELECT _row, match_key, report_key, unnest(ids), 'ambiguous',
                   n_matches || {literal(f' {obj} records have this {key}: skipped (on_multiple_matches: skip)')}
              FROM _sf_plan WHERE decision = 'ambiguous'
            """
        )
        decisions = self._decision_counts()
        sent_rows = dict(con.execute(
            "SELECT outcome, count(*) FROM (SELECT _row, CASE WHEN bool_or(outcome = 'failed') THEN 'failed' "
            "ELSE 'updated' END AS outcome FROM _sf_results WHERE outcome IN ('updated', 'failed') GROUP BY _row) "
            "GROUP BY outcome"
        ).fetchall())
        c = result.counts
        c["rows"] = sum(decisions.values())
        for name in ("unchanged", "unmatched", "ambiguous", "invalid"):
            c[name] = decisions.get(name, 0)
        c["updated"], c["failed"] = sent_rows.get("updated", 0), sent_rows.get("failed", 0)
        c["matched"] = c["unchanged"] + c["updated"] + c["failed"]
        result.transport = "+".join(self.transports) or "none"
        result.status = "Failed" if fatal else "Completed"
        result.message = (f"stopped: {fatal}; " if fatal else "") + result.summary() + f" (transport: {result.transport})"
        result.samples = {
            outcome: [
                {"report_key": k, "salesforce_id": i, "error": e}
                for k, i, e in con.execute(
                    "SELECT report_key, salesforce_id, error FROM _sf_results WHERE outcome = ? ORDER BY _row LIMIT ?",
                    [outcome, SAMPLE_ROWS],
                ).fetchall()
            ]
            for outcome in OUTCOMES
        }
        result.runtime_seconds = time.monotonic() - self._started
        assert self.client is not None
        result.api_calls = dict(sorted(self.client.calls.items()))
        with transaction(con):
            ensure_salesforce_tables(con)
            con.execute(
                "INSERT INTO salesforce_sync_results SELECT $run, $integration, report_key, salesforce_id, outcome, error "
                "FROM _sf_results ORDER BY _row, salesforce_id",
                {"run": result.run_id, "integration": result.integration},
            )
            # The snapshot: untouched for unchanged keys, replaced for fully updated ones, dropped otherwise
            # (so failed, unmatched, ambiguous and invalid keys are tried again next run).
            con.execute(
                "DELETE FROM salesforce_snapshots WHERE integration = $integration AND match_key NOT IN "
                "(SELECT match_key FROM _sf_plan WHERE decision = 'unchanged')",
                {"integration": result.integration},
            )
            con.execute(
                """
                INSERT INTO salesforce_snapshots
                SELECT $integration, p.match_key, p.report_key, r.ids, $target, p.payload, $run, $now
                  FROM _sf_plan p
                  JOIN (SELECT _row, list(salesforce_id ORDER BY salesforce_id) AS ids FROM _sf_results
                         WHERE outcome IN ('updated', 'failed') GROUP BY _row
                        HAVING bool_and(outcome = 'updated')) AS r ON r._row = p._row
                """,
                {"integration": result.integration, "target": plan.target, "run": result.run_id, "now": now_utc()},
            )
            record_sync_run(con, self.result)
        self._recorded = True
        if fatal:
            raise SyncError(result.message)

    def _fail(self, message: str) -> None:
        """Record a run that stopped before sending anything (auth, describe, mapping, report)."""
        result = self.result
        result.status = "Failed"
        result.message = message
        result.runtime_seconds = time.monotonic() - self._started
        if self.client is not None:
            result.api_calls = dict(sorted(self.client.calls.items()))
        if self.dry_run:
            return
        con = self.con
        try:
            with transaction(con):
                ensure_salesforce_tables(con)
                record_sync_run(con, self.result)
        except duckdb.Error:
            pass


def run_sync(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    integration: SalesforceIntegration,
    **kwargs: Any,
) -> SyncResult:
    return SalesforceSync(con, catalog, integration, **kwargs).run()
