"""`integration-hub check`, `run --dry-run`, `run --full-resync` and `logs --run` for Salesforce.

`check` logs in and describes the object for real, then validates the mapping (against the
report's columns when the warehouse exists). `dry_run` does everything a run does up to sending
(log in, describe, diff, look up the keys) on a read-only connection, and prints what would be
updated, unmatched, ambiguous and invalid: nothing is sent, nothing is written.
"""

from __future__ import annotations

import argparse
from typing import Any

import duckdb

from ..core.catalog import Catalog, SalesforceConnection, SalesforceIntegration
from ..core.warehouse import WarehouseBusyError, open_reader
from ..inbound_csv.check import CheckOutcome
from ..reports.factory import ReportError, validate_report_sql
from .auth import SalesforceAuthError, login_host
from .client import SalesforceApiError, SalesforceClient
from .sync import SyncError, run_sync, table_exists
from .validation import validate_mapping

RESULT_LIMIT = 1000  # rows of salesforce_sync_results shown by `logs --run`


def _report_columns(catalog: Catalog, integration: SalesforceIntegration) -> tuple[dict[str, str] | None, str | None]:
    """(column -> type, problem) of the report's SQL, read-only; (None, None) without a warehouse."""
    report = catalog.report(integration.report)
    try:
        sql = validate_report_sql(report)
    except ReportError as exc:
        return None, str(exc)
    try:
        with open_reader(catalog, timeout=5) as con:
            if con is None:
                return None, None
            return {r[0]: r[1] for r in con.execute(f"DESCRIBE {sql}").fetchall()}, None
    except WarehouseBusyError:
        return None, None
    except duckdb.Error as exc:
        return None, f"report {report.name!r} does not run: {str(exc).splitlines()[0]}; fix its sql in the catalog"


def check_salesforce(catalog: Catalog, integration: SalesforceIntegration) -> list[CheckOutcome]:
    """Log in, describe the object, validate the mapping; one outcome per finding, each with its fix."""
    name = integration.name
    connection = catalog.connection(integration.connection)
    assert isinstance(connection, SalesforceConnection)
    # `check` should answer in seconds: one retry and a short timeout, not a run's patience.
    quick = connection.model_copy(update={"max_retries": min(connection.max_retries, 1),
                                          "connect_timeout_seconds": min(connection.connect_timeout_seconds, 5.0),
                                          "timeout_seconds": min(connection.timeout_seconds, 20.0)})
    try:
        client = SalesforceClient(catalog, quick)
        describe = client.describe(integration.object)
    except SalesforceAuthError as exc:
        return [CheckOutcome(name, False, str(exc))]
    except SalesforceApiError as exc:
        if exc.status == 404 or exc.code == "NOT_FOUND":
            return [CheckOutcome(name, False, (
                f"object {integration.object!r} does not exist in the org or the integration user cannot see it: "
                "use its API name (custom objects end in __c) and check the user's permissions"))]
        return [CheckOutcome(name, False, f"logged in, but {exc}")]
    who = f" as {client.username}" if client.username else ""
    outcomes = [CheckOutcome(name, True, f"logged in to {client.instance_url}{who} (login host {login_host(connection)})")]
    columns, problem = _report_columns(catalog, integration)
    if problem:
        outcomes.append(CheckOutcome(name, False, problem))
    plan = validate_mapping(integration, describe, columns)
    if plan.problems:
        outcomes += [CheckOutcome(name, False, p) for p in plan.problems]
    else:
        fit = "; the report's columns fit their types" if columns is not None else ""
        outcomes.append(CheckOutcome(name, True, (
            f"{plan.object} has the key {plan.key.name} ({plan.key.sf_type}, filterable) and {len(plan.fields)} "
            f"updateable mapped field(s){fit}")))
    return outcomes


def _print_rows(title: str, rows: list[dict[str, Any]], total: int) -> None:
    from ..cli.output import print_table

    if not rows:
        return
    more = f" (first {len(rows)} of {total})" if total > len(rows) else ""
    print(f"\n{title}{more}:")
    columns = [(k, k.upper().replace("_", " ")) for k in rows[0] if any(r.get(k) is not None for r in rows)]
    print_table(rows, columns)


def dry_run_salesforce(catalog: Catalog, integration: SalesforceIntegration, args: argparse.Namespace) -> int:
    """Print what a run would update, and what is unmatched, ambiguous and invalid; sends and writes nothing."""
    from ..cli.output import CommandError

    full = bool(getattr(args, "full_resync", False))
    with open_reader(catalog) as con:
        if con is None:
            raise CommandError(f"{integration.name}: the warehouse {catalog.warehouse_shown} does not exist yet; run "
                               "an inbound integration first")
        try:
            result = run_sync(con, catalog, integration, dry_run=True, full_resync=full)
        except SyncError as exc:
            raise CommandError(f"{integration.name}: {exc}") from None
    c = result.counts
    print(
        f"report {result.report} -> Salesforce {result.object} at {result.instance_url} "
        f"(dry run: nothing sent{', full resync' if full else ''})"
    )
    print(
        f"{c['rows']} rows: {c['updated']} would be updated, {c['unchanged']} unchanged, "
        f"{c['unmatched']} unmatched, {c['ambiguous']} ambiguous, {c['invalid']} invalid"
    )
    samples = result.samples
    _print_rows("would update", samples.get("would_update", []), c["updated"])
    _print_rows("unmatched (no record has this key; nothing is created)", samples.get("unmatched", []), c["unmatched"])
    _print_rows("ambiguous (several records have this key; skipped)", samples.get("ambiguous", []), c["ambiguous"])
    _print_rows("invalid (not sent)", samples.get("invalid", []), c["invalid"])
    return 0


def run_details(con: duckdb.DuckDBPyConnection, run: dict[str, Any]) -> dict[str, Any]:
    """For `logs NAME --run RUN_ID`: the salesforce_sync_runs row and the per-row results."""
    if not table_exists(con, "salesforce_sync_runs"):
        return {}
    result = con.execute("SELECT * FROM salesforce_sync_runs WHERE run_id = ?", [run["run_id"]])
    names = [d[0] for d in result.description]
    row = result.fetchone()
    if row is None:
        return {}
    sync = dict(zip(names, row, strict=True))
    shown = set(run) | set(run.get("details") or {})
    details: dict[str, Any] = {"sync_status": sync["status"]}
    details.update({k: v for k, v in sync.items() if k not in shown and k != "status"})
    results = con.execute(
        "SELECT report_key, salesforce_id, outcome, error FROM salesforce_sync_results WHERE run_id = ? "
        "ORDER BY CASE outcome WHEN 'failed' THEN 0 WHEN 'invalid' THEN 1 WHEN 'ambiguous' THEN 2 "
        "WHEN 'unmatched' THEN 3 WHEN 'updated' THEN 4 ELSE 5 END, report_key LIMIT ?",
        [run["run_id"], RESULT_LIMIT],
    )
    columns = [d[0] for d in results.description]
    details["results"] = [dict(zip(columns, r, strict=True)) for r in results.fetchall()]
    return details


def run_config(catalog: Catalog, integration: SalesforceIntegration, args: argparse.Namespace) -> dict[str, Any]:
    """`integration-hub run NAME --full-resync`: the sync asset's config."""
    from .factory import run_config as sync_run_config

    return sync_run_config(integration, bool(getattr(args, "full_resync", False)))
