"""One Salesforce integration as Dagster definitions: the sync asset, its job and schedule.

The asset `salesforce_<name>` ("Salesforce exports") is the snapshot of what was last sent to
Salesforce per key (table `salesforce_snapshots`); it sits downstream of the report, so the
lineage CSV/API -> attributes -> user_profiles -> report -> Salesforce shows in the asset graph.
The job materializes the report and then syncs it, in one run. The schedule (daily 09:00 UTC by
default) or `integration-hub run NAME` starts it; with `run_after_inbound: true` a sensor also
starts it right after each inbound run that refreshed user_profiles.
"""


import dagster as dg
import duckdb

from ..core.assets import (
    RECORDS_CHECK,
    TAG_INTEGRATION,
    after_inbound_sensors,
    integration_job,
    integration_pool,
    integration_schedule,
    publish_outcome,
)
from ..core.catalog import Catalog, SalesforceConnection, SalesforceIntegration
from ..core.ingest import RunRecord, new_run_id, now_utc
from ..core.outcome import RunOutcome, run_outcome
from ..core.warehouse import ensure_schema, transaction
from ..core.warehouse_resource import WarehouseResource
from ..reports.factory import report_failure_hook, report_key
from .auth import login_host
from .sync import SyncError, SyncResult, ensure_salesforce_tables, record_sync_run, run_sync


class SalesforceSyncConfig(dg.Config):
    """`full_resync`: send every row, not only those changed since the last successful sync."""

    full_resync: bool = False


def salesforce_key(integration: SalesforceIntegration) -> dg.AssetKey:
    return dg.AssetKey(f"salesforce_{integration.name}")


def run_config(integration: SalesforceIntegration, full_resync: bool) -> dict:
    """Run config selecting a full resync (what `integration-hub run NAME --full-resync` passes)."""
    op = salesforce_key(integration).to_python_identifier()
    return {"ops": {op: {"config": {"full_resync": full_resync}}}}


def _results_markdown(samples: dict[str, list[dict]]) -> str:
    lines = ["| outcome | report key | Salesforce Id | error |", "|---|---|---|---|"]
    for outcome, rows in samples.items():
        for row in rows[:5]:
            cells = [outcome, row.get("report_key"), row.get("salesforce_id"), row.get("error")]
            lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def build_salesforce_integration(catalog: Catalog, integration: SalesforceIntegration) -> dg.Definitions:
    name = integration.name
    connection = catalog.connection(integration.connection)
    assert isinstance(connection, SalesforceConnection)
    key = salesforce_key(integration)
    upstream = report_key(integration.report)
    fields = ", ".join(f"`{f.column}` -> `{f.field}`" for f in integration.fields)
    target = f"{integration.object} ({connection.environment}, {login_host(connection)})"

    @dg.asset(
        key=key,
        deps=[upstream],
        group_name=name,
        kinds={"salesforce"},
        pool=integration_pool(integration.name),
        tags={TAG_INTEGRATION: name},
        check_specs=[
            dg.AssetCheckSpec(
                RECORDS_CHECK,
                asset=key,
                description="Every report row of the latest sync reached Salesforce: none invalid, none failed. "
                "Fails with WARN severity on a partial sync (the run is tagged integration_hub/outcome=partial).",
            )
        ],
        description=(
            f"Salesforce exports: report `{integration.report}` synced into {target}, update only, matched on "
            f"`{integration.report_key}` = `{integration.salesforce_key}`; fields {fields}. The table "
            "`salesforce_snapshots` keeps what was last sent per key (the diff for the next run, and the audit)."
        ),
    )
    def sync(
        context: dg.AssetExecutionContext, config: SalesforceSyncConfig, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            try:
                result = run_sync(con, catalog, integration, full_resync=config.full_resync,
                                  dagster_run_id=context.run_id, log=context.log)
            except SyncError as exc:
                failure = str(exc)
            else:
                failure = None
            if failure is not None:  # recorded as a failed sync already; now the Dagster run fails with it
                publish_outcome(context, name, RunOutcome("failed", failure))
            snapshot_rows = con.execute(
                "SELECT count(*) FROM salesforce_snapshots WHERE integration = ?", [name]
            ).fetchone()[0]
        context.log.info(result.message)
        outcome = run_outcome([RunRecord(run_id=result.run_id, integration=name, kind="salesforce",
                                         source=f"{integration.report} -> {integration.object}",
                                         started_at=result.started_at, status=result.hub_status,  # type: ignore[arg-type]
                                         rows_rejected=result.counts["invalid"] + result.counts["failed"],
                                         message=result.message)])
        publish_outcome(context, name, outcome)
        return dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(
                    check_name=RECORDS_CHECK,
                    passed=outcome.ok,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=outcome.reason,
                    metadata={"outcome": outcome.outcome, "invalid": result.counts["invalid"],
                              "failed": result.counts["failed"]},
                )
            ],
            metadata={
                "dagster/row_count": snapshot_rows,
                "integration_run_id": result.run_id,
                "object": result.object,
                **{f"rows_{n}" if n != "rows" else "rows": v for n, v in result.counts.items()},
                "full_resync": result.full_resync,
                "transport": result.transport,
                "api_calls": dg.MetadataValue.json(result.api_calls),
                "runtime_seconds": round(result.runtime_seconds, 2),
                "results": dg.MetadataValue.md(_results_markdown(result.samples)),
            }
        )

    def record_report_failure(con: duckdb.DuckDBPyConnection, reason: str, dagster_run_id: str) -> None:
        result = SyncResult(run_id=new_run_id(), integration=name, report=integration.report,
                            object=integration.object, started_at=now_utc(), dagster_run_id=dagster_run_id,
                            message=f"nothing sent: report {integration.report!r} failed: {reason}")
        with transaction(con):
            ensure_salesforce_tables(con)
            record_sync_run(con, result)

    report_failed = report_failure_hook(name, key, record_report_failure)

    job = integration_job(
        integration,
        [upstream, key],
        f"Materialize report {integration.report} and sync it into Salesforce {integration.object}.",
        hooks={report_failed},
    )

    sync_schedule = integration_schedule(
        integration, job, f"Syncs report {integration.report} into Salesforce {integration.object} (UTC)."
    )

    return dg.Definitions(
        assets=[sync], jobs=[job], schedules=[sync_schedule], sensors=after_inbound_sensors(integration, job)
    )
