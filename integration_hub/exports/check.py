"""`integration-hub check` and `run --dry-run` for file exports: real storage calls, no writes to DuckDB."""

from __future__ import annotations

import argparse
from typing import Any

import duckdb

from ..core.catalog import Catalog, FileExportIntegration
from ..core.ingest import now_utc
from ..core.warehouse import WarehouseBusyError, open_reader
from ..inbound_csv.check import CheckOutcome
from ..reports.factory import ReportError, validate_report_sql
from .export import ExportError, build_sink, folder_url, plan_export
from .sinks import SinkError


def check_file_export(catalog: Catalog, integration: FileExportIntegration) -> list[CheckOutcome]:
    """Write and delete a marker object in the export's connection; then the report's SQL."""
    name = integration.name
    try:
        plan = plan_export(integration, now_utc())
        sink = build_sink(catalog, integration.connection, for_check=True)
        where = folder_url(sink, "")
        sink.check_write_permission()  # type: ignore[attr-defined]
    except (SinkError, ExportError) as exc:
        return [CheckOutcome(name, False, str(exc))]
    outcomes = [
        CheckOutcome(
            name,
            True,
            f"can write to {where} (wrote and deleted a test object); files go to {sink.url(plan.key)}",
        )
    ]
    problem = _report_problem(catalog, integration)
    if problem:
        outcomes.append(CheckOutcome(name, False, problem))
    return outcomes


def _report_problem(catalog: Catalog, integration: FileExportIntegration) -> str | None:
    """The report's SQL must parse and bind against the warehouse (read-only, if it exists)."""
    report = catalog.report(integration.report)
    try:
        sql = validate_report_sql(report)
    except ReportError as exc:
        return str(exc)
    try:
        with open_reader(catalog, timeout=5) as con:
            if con is None:
                return None  # no warehouse yet: the first run creates it
            con.execute(f"DESCRIBE {sql}")
    except WarehouseBusyError:
        return None  # a run is writing right now; the report is checked when it runs
    except duckdb.Error as exc:
        return f"report {report.name!r} does not run: {str(exc).splitlines()[0]}; fix its sql in the catalog"
    return None


def dry_run_file_export(catalog: Catalog, integration: FileExportIntegration, args: argparse.Namespace) -> int:
    """Print the report's row count and the file a run would write; writes nothing."""
    from ..cli.output import CommandError

    try:
        plan = plan_export(integration, now_utc())
        sink = build_sink(catalog, integration.connection, for_check=True)
        url = sink.url(plan.key)
    except (SinkError, ExportError) as exc:
        raise CommandError(f"{integration.name}: {exc}") from None
    report = catalog.report(integration.report)
    with open_reader(catalog) as con:
        if con is None:
            rows_text = "unknown (the warehouse does not exist yet)"
        else:
            try:
                sql = validate_report_sql(report)
                rows = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
                rows_text = f"{rows:,}"
            except (ReportError, duckdb.Error) as exc:
                raise CommandError(
                    f"{integration.name}: report {report.name!r} does not run: {str(exc).splitlines()[0]}"
                ) from None
    print(f"report {report.name}: {rows_text} rows")
    print(f"would write {url}{' (gzip)' if integration.compression else ''}")
    try:
        exists = sink.exists(plan.key)
    except SinkError as exc:
        raise CommandError(f"cannot check the target: {exc}") from None
    if exists and not integration.overwrite:
        raise CommandError(
            f"{url} already exists: a run now would fail (set `overwrite: true` or change `file_name`)"
        )
    if exists:
        print("that file already exists and would be replaced (overwrite: true)")
    return 0


def run_details(con: duckdb.DuckDBPyConnection, run: dict[str, Any]) -> dict[str, Any]:
    """Nothing beyond the run's details (bytes, target_url, file_name), already shown by `logs --run`."""
    return {}
