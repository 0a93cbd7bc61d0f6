"""Reports: named SQL over the warehouse, each materialized as a DuckDB table `report_<name>`.

A report sits downstream of the attribute tables and user_profiles in the asset graph, so
the lineage from a CSV file or API batch to a Salesforce field or exported file is visible.
"""

import re
from collections.abc import Callable

import dagster as dg
import duckdb

from ..core.assets import USER_PROFILES_KEY, attributes_key, publish_outcome
from ..core.catalog import Catalog, Report
from ..core.ingest import table_preview
from ..core.outcome import RunOutcome
from ..core.sql import ident
from ..core.warehouse import ensure_schema, transaction
from ..core.warehouse_resource import WarehouseResource

_READ_ONLY = re.compile(r"^\s*(\(\s*)*(select|with|from|values|table)\b", re.IGNORECASE)


class ReportError(Exception):
    """The report's SQL cannot run; the message names the report and the fix."""


def report_table(name: str) -> str:
    return f"report_{name}"


def report_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(report_table(name))


def validate_report_sql(report: Report) -> str:
    sql = report.sql.strip().rstrip(";").strip()
    if not _READ_ONLY.match(sql) or ";" in sql:
        raise ReportError(
            f"report {report.name!r}: the sql must be one SELECT (or WITH ... SELECT) statement; "
            "remove other statements"
        )
    return sql


def materialize_report(con: duckdb.DuckDBPyConnection, report: Report) -> int:
    """(Re)build `report_<name>` from its SQL in one transaction; returns the row count."""
    sql = validate_report_sql(report)
    table = report_table(report.name)
    try:
        with transaction(con):
            con.execute(f"CREATE OR REPLACE TABLE {ident(table)} AS {sql}")
    except duckdb.Error as exc:
        raise ReportError(f"report {report.name!r} failed: {str(exc).splitlines()[0]}; fix its sql in the catalog") from None
    return con.execute(f"SELECT count(*) FROM {ident(table)}").fetchone()[0]


def build_report(catalog: Catalog, report: Report) -> dg.AssetsDefinition:
    upstream = [USER_PROFILES_KEY, *(attributes_key(i.name) for i in catalog.inbound)]

    @dg.asset(
        key=report_key(report.name),
        deps=upstream,
        group_name="reports",
        kinds={"duckdb", "sql"},
        pool=f"report_{report.name}",  # one materialization of a report at a time
        description=report.description or f"Report `{report.name}`:\n\n```sql\n{report.sql.strip()}\n```",
    )
    def report_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            try:
                rows = materialize_report(con, report)
            except ReportError as exc:
                failure = str(exc)
            else:
                failure = None
            if failure is not None:
                publish_outcome(context, None, RunOutcome("failed", failure))
            columns = [d[0] for d in con.execute(f"DESCRIBE {ident(report_table(report.name))}").fetchall()]
            preview = table_preview(con, report_table(report.name))
        # An outbound step later in the same run may make the outcome worse (tags keep the worst).
        publish_outcome(context, None, RunOutcome("success", f"report {report.name!r}: {rows} rows"))
        return dg.MaterializeResult(
            metadata={"dagster/row_count": rows, "columns": columns, "preview": dg.MetadataValue.md(preview)}
        )

    return report_asset


def build_reports(catalog: Catalog) -> dg.Definitions:
    return dg.Definitions(assets=[build_report(catalog, r) for r in catalog.reports])


def report_failure_hook(
    name: str,
    own_step: dg.AssetKey,
    record: Callable[[duckdb.DuckDBPyConnection, str, str], None],
) -> dg.HookDefinition:
    """When the report step fails, the outbound step is skipped: `record(con, reason, dagster_run_id)`
    writes that as a failed run of the integration, so the management table shows it."""

    @dg.failure_hook(required_resource_keys={"warehouse"}, name=f"{name}_report_failed")
    def report_failed(context: dg.HookContext) -> None:
        if context.op.name == own_step.to_python_identifier():
            return  # the outbound step records its own failures
        error = context.op_exception
        reason = str(error).strip().splitlines()[0] if error and str(error).strip() else "see the Dagster run"
        try:
            with context.resources.warehouse.get_connection() as con:
                record(con, reason, context.run_id)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not mask the real failure
            context.log.warning(f"could not record the failed run of {name}: {exc}")

    return report_failed
