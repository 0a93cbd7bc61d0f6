"""Managing integrations: the management table, the status toggle, run now, run history."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..core.catalog import (
    ApiIntegration,
    Catalog,
    CsvIntegration,
    FileExportIntegration,
    Integration,
    LocalConnection,
    S3Connection,
    SalesforceIntegration,
    load_catalog,
)
from ..core.sql import sql_value
from ..core.state import dagster_instance, is_enabled, job_name, set_enabled
from ..core.warehouse import open_reader
from .hooks import hook
from .output import CommandError, one_line, print_json, print_table


def catalog_from(args: argparse.Namespace) -> Catalog:
    """Load the catalog and make it the one Dagster loads too (same file, same warehouse)."""
    catalog = load_catalog(args.catalog)
    if args.catalog:
        os.environ["INTEGRATION_HUB_CATALOG"] = str(Path(args.catalog).resolve())
    return catalog


def find_integration(catalog: Catalog, name: str) -> Integration:
    try:
        return catalog.integration(name)
    except KeyError:
        known = ", ".join(i.name for i in catalog.integrations) or "none"
        raise CommandError(f"no integration named {name!r} in the catalog (known: {known})") from None


def describe_source(catalog: Catalog, integration: Integration) -> str:
    if isinstance(integration, CsvIntegration):
        connection = catalog.connection(integration.connection)
        if isinstance(connection, S3Connection):
            path = "/".join(p for p in (connection.prefix, integration.folder) if p)
            return f"s3://{connection.bucket}/{path}/"
        if isinstance(connection, LocalConnection):
            return f"{catalog.resolve_path(connection.path) / integration.folder}/"
    if isinstance(integration, ApiIntegration):
        return f"API {integration.system} ({integration.environment})"
    if isinstance(integration, SalesforceIntegration):
        return f"report {integration.report} -> Salesforce {integration.object}"
    if isinstance(integration, FileExportIntegration):
        return f"report {integration.report} -> {integration.connection}:{integration.folder or '/'}"
    return integration.type


def direction(integration: Integration) -> str:
    return "inbound" if isinstance(integration, CsvIntegration | ApiIntegration) else "outbound"


def _last_runs(catalog: Catalog) -> tuple[dict[str, dict], dict[str, int]]:
    """Per integration: the latest run, and properties imported by the latest successful run."""
    last: dict[str, dict] = {}
    imported: dict[str, int] = {}
    with open_reader(catalog) as con:
        if con is None:
            return last, imported
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "integration_runs" not in tables:
            return last, imported
        for name, finished, status, message in con.execute(
            "SELECT integration, finished_at, status, message FROM integration_runs "
            "QUALIFY row_number() OVER (PARTITION BY integration ORDER BY finished_at DESC) = 1"
        ).fetchall():
            last[name] = {"finished_at": finished, "status": status, "message": message}
        for name, properties in con.execute(
            "SELECT integration, properties_imported FROM integration_runs WHERE status IN ('success', 'partial') "
            "QUALIFY row_number() OVER (PARTITION BY integration ORDER BY finished_at DESC) = 1"
        ).fetchall():
            imported[name] = properties
    return last, imported


def management_rows(catalog: Catalog) -> list[dict[str, Any]]:
    last, imported = _last_runs(catalog)
    rows = []
    with dagster_instance(catalog) as instance:
        for integration in catalog.integrations:
            run = last.get(integration.name, {})
            schedule = getattr(integration, "schedule", None)
            rows.append(
                {
                    "name": integration.name,
                    "type": integration.type,
                    "source": describe_source(catalog, integration),
                    "direction": direction(integration),
                    "properties_imported": imported.get(integration.name) if direction(integration) == "inbound" else None,
                    "schedule": schedule,
                    "last_run": run.get("finished_at"),
                    "last_run_status": run.get("status"),
                    "last_run_ok": None if not run else run.get("status") != "failed",
                    "enabled": is_enabled(instance, integration),
                }
            )
    return rows


def cmd_integrations(args: argparse.Namespace) -> int:
    rows = management_rows(catalog_from(args))
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        status = row["last_run_status"]
        row["last_run_result"] = None if status is None else ("ok" if status == "success" else status)
    print_table(
        rows,
        [
            ("name", "NAME"),
            ("source", "SOURCE"),
            ("direction", "DIRECTION"),
            ("properties_imported", "PROPERTIES"),
            ("schedule", "SCHEDULE (UTC)"),
            ("last_run", "LAST RUN"),
            ("last_run_result", "RESULT"),
            ("enabled", "ENABLED"),
        ],
    )
    return 0


def _toggle(args: argparse.Namespace, enabled: bool) -> int:
    catalog = catalog_from(args)
    integration = find_integration(catalog, args.name)
    with dagster_instance(catalog) as instance:
        changed = set_enabled(instance, integration, enabled)
    word = "enabled" if enabled else "disabled"
    what = ", ".join(changed) or "no sensor or schedule"
    print(f"{integration.name} {word} ({what} {'started' if enabled else 'stopped'})")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    return _toggle(args, True)


def cmd_disable(args: argparse.Namespace) -> int:
    return _toggle(args, False)


# In-process runs keep their full log (stack traces included) in the Dagster event log, where
# `logs NAME --run ID` and the Dagster UI show it; the console logger would print it to stderr.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def cmd_run(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    integration = find_integration(catalog, args.name)
    if args.dry_run:
        return hook("dry_run", integration)(catalog, integration, args)
    with dagster_instance(catalog) as instance:
        if not is_enabled(instance, integration):
            raise CommandError(
                f"{integration.name} is disabled; enable it first with `integration-hub enable {integration.name}`"
            )
        from ..definitions import build_definitions

        job = build_definitions(catalog).resolve_job_def(job_name(integration))
        run_config: dict[str, Any] = dict(QUIET_CONSOLE)
        # A kind may turn command-line options (e.g. --full-resync) into run config for its job.
        kind_config = hook("run_config", integration, default=None)
        if kind_config is not None:
            run_config.update(kind_config(catalog, integration, args))
        result = job.execute_in_process(
            instance=instance,
            tags={"integration_hub/trigger": "cli"},
            raise_on_error=False,
            run_config=run_config,
        )
        run_id = result.run_id
    runs = _runs_of_dagster_run(catalog, run_id)
    details = f"details: integration-hub logs {integration.name} --run {run_id[:8]}"
    if not result.success or (runs and all(r["status"] == "failed" for r in runs)):
        # Nothing was applied: the run failed, in one line (the rest is in its log).
        raise CommandError(f"{integration.name} failed: {_failure_reason(result, runs)} ({details})")
    for run in runs:
        line = (
            f"{run['source']}: {run['status']} ({run['rows_read']} read, {run['rows_applied']} applied, "
            f"{run['rows_rejected']} rejected)"
        )
        print(one_line(line + (f" - {run['message']}" if run["message"] else "")))
    if not runs:
        print(f"{integration.name}: nothing to do")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        raise CommandError(f"{len(failed)} of {len(runs)} sources failed in dagster run {run_id} ({details})")
    print(f"dagster run {run_id}")
    return 0


def _failure_reason(result: Any, runs: list[dict[str, Any]]) -> str:
    """One line: why a Dagster run failed (its first step failure, else its failed sources)."""
    from .logs import error_reason

    failure = next((e for e in result.all_events if e.is_step_failure), None)
    if failure is not None and failure.step_failure_data.error is not None:
        return error_reason(failure.step_failure_data.error)
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        first = f"{failed[0]['source']}: {failed[0]['message']}"
        return first if len(failed) == 1 else f"all {len(failed)} sources failed, the first {first}"
    return "the Dagster run failed"


def _runs_of_dagster_run(catalog: Catalog, dagster_run_id: str) -> list[dict[str, Any]]:
    with open_reader(catalog) as con:
        if con is None:
            return []
        result = con.execute(
            f"SELECT * FROM integration_runs WHERE dagster_run_id = {sql_value(dagster_run_id)} ORDER BY started_at"
        )
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
