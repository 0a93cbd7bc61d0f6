"""One file export integration as Dagster definitions: the export asset, its job and schedule.

The job materializes the report and then exports it, in the same run, so every file holds
fresh data. Exports run on their schedule, on `integration-hub run`, and with `run_after_inbound: true`
right after each inbound run that refreshed user_profiles (a sensor).
"""


from datetime import datetime, timezone

import dagster as dg
import duckdb

from ..core.assets import (
    TAG_INTEGRATION,
    after_inbound_sensors,
    integration_job,
    integration_pool,
    integration_schedule,
    publish_outcome,
)
from ..core.catalog import Catalog, FileExportIntegration, LocalConnection, S3Connection
from ..core.ingest import RunRecord, new_run_id, now_utc, record_run
from ..core.outcome import RunOutcome, run_outcome
from ..core.warehouse import ensure_bookkeeping, ensure_schema
from ..core.warehouse_resource import WarehouseResource
from ..reports.factory import report_failure_hook, report_key
from .export import KIND, ExportError, run_file_export


def export_key(integration: FileExportIntegration) -> dg.AssetKey:
    return dg.AssetKey(f"export_{integration.name}")


def _target(catalog: Catalog, integration: FileExportIntegration) -> str:
    """Where files go, for descriptions (no SDK client is built at definition load)."""
    connection = catalog.connection(integration.connection)
    if isinstance(connection, LocalConnection):
        folder = catalog.resolve_path(connection.path)
        return f"{folder / integration.folder if integration.folder else folder}/"
    path = "/".join(p for p in (connection.prefix, integration.folder) if p)  # type: ignore[union-attr]
    if isinstance(connection, S3Connection):
        return f"s3://{connection.bucket}/{path + '/' if path else ''}"
    return f"Azure container {connection.container}/{path + '/' if path else ''}"  # type: ignore[union-attr]


def _run_start(context: dg.AssetExecutionContext) -> datetime:
    """The Dagster run's start time (UTC): {date} and {timestamp} in file names use it."""
    try:
        record = context.instance.get_run_record_by_id(context.run_id)
        if record is not None and record.start_time:
            return datetime.fromtimestamp(record.start_time, tz=timezone.utc)
    except Exception:  # noqa: BLE001 - an instance without run records: use now
        pass
    return now_utc()


def build_file_export_integration(catalog: Catalog, integration: FileExportIntegration) -> dg.Definitions:
    name = integration.name
    connection = catalog.connection(integration.connection)
    storage_kind = {"s3": "s3", "azure_blob": "azure", "local": "file"}.get(connection.type, connection.type)
    target = _target(catalog, integration)
    key = export_key(integration)
    upstream = report_key(integration.report)
    compression = " (gzip)" if integration.compression == "gzip" else ""

    @dg.asset(
        key=key,
        deps=[upstream],
        group_name=name,
        kinds={storage_kind, "csv"},
        pool=integration_pool(integration.name),
        tags={TAG_INTEGRATION: name},
        description=(
            f"Report `{integration.report}` written as one CSV file{compression} `{integration.file_name}` "
            f"into {target} on every run"
            f"{'; formulas escaped' if integration.escape_formulas else ''}"
            f"{'; replaces an existing file' if integration.overwrite else '; never overwrites a file'}."
        ),
    )
    def export(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        failure = None
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            try:
                run, result, preview = run_file_export(
                    con,
                    catalog,
                    integration,
                    run_start=_run_start(context),
                    dagster_run_id=context.run_id,
                    log=context.log,
                )
            except ExportError as exc:
                failure = str(exc)
        if failure is not None:  # recorded as a failed run already; now the Dagster run fails with it
            publish_outcome(context, name, RunOutcome("failed", failure))
        assert result is not None
        context.log.info(run.message)
        publish_outcome(context, name, run_outcome([run]))
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": result.rows,
                "rows": result.rows,
                "bytes": result.bytes,
                "target_url": dg.MetadataValue.url(result.url),
                "file_name": result.key,
                "integration_run_id": run.run_id,
                "preview": dg.MetadataValue.md(preview),
            }
        )

    def record_report_failure(con: duckdb.DuckDBPyConnection, reason: str, dagster_run_id: str) -> None:
        run = RunRecord(
            run_id=new_run_id(),
            integration=name,
            kind=KIND,
            source=integration.report,
            started_at=now_utc(),
            dagster_run_id=dagster_run_id,
            status="failed",
            message=f"nothing exported: report {integration.report!r} failed: {reason}",
        )
        ensure_bookkeeping(con)
        record_run(con, run)

    report_failed = report_failure_hook(name, key, record_report_failure)

    job = integration_job(
        integration,
        [upstream, key],
        f"Materialize report {integration.report} and write it as a CSV file into {target}.",
        hooks={report_failed},
    )
    export_schedule = integration_schedule(
        integration, job, f"Exports report {integration.report} to {target} on this schedule (UTC)."
    )

    return dg.Definitions(
        assets=[export], jobs=[job], schedules=[export_schedule], sensors=after_inbound_sensors(integration, job)
    )
