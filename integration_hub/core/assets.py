"""Dagster pieces every integration kind shares: the writer pool, checks, metadata, user_profiles."""


from collections.abc import Callable, Sequence

import dagster as dg
import duckdb
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .catalog import Catalog, InboundIntegration, Integration
from .ingest import RunRecord, table_preview
from .sql import DUCKDB_TYPES
from .state import job_name, schedule_name, sensor_name
from .warehouse import (
    TAG_INTEGRATION,
    WarehouseResource,
    attributes_table,
    ensure_schema,
    same_type,
    table_columns,
)

__all__ = ["TAG_INTEGRATION", "integration_pool"]


def integration_pool(integration_name: str) -> str:
    """The Dagster pool of an integration's writing steps: each pool runs one run at a time
    (the dagster.yaml integration-hub writes), so runs of one integration take turns while
    different integrations run at once."""
    return f"integration_{integration_name}"


RESOURCE_KEY = "warehouse"
TAG_TRIGGER = "integration_hub/trigger"
TAG_OUTCOME = "integration_hub/outcome"  # success | partial | skipped | failed
SOURCES_CHECK = "sources_applied"  # fails (WARN) when a source of the run failed: the run's outcome


def sensor_status(integration: Integration) -> dg.DefaultSensorStatus:
    """The catalog's `enabled:` as the default; the toggle in the UI/CLI overrides it."""
    return dg.DefaultSensorStatus.RUNNING if integration.enabled else dg.DefaultSensorStatus.STOPPED


def schedule_status(integration: Integration) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if integration.enabled else dg.DefaultScheduleStatus.STOPPED


def attributes_key(integration_name: str) -> dg.AssetKey:
    return dg.AssetKey(attributes_table(integration_name))


USER_PROFILES_KEY = dg.AssetKey("user_profiles")


def attribute_check_specs(integration: InboundIntegration) -> list[dg.AssetCheckSpec]:
    key = attributes_key(integration.name)
    return [
        dg.AssetCheckSpec(
            "user_id_unique_not_null", asset=key, description="Every row has a user_id and no user_id repeats."
        ),
        dg.AssetCheckSpec(
            "column_types", asset=key, description="Every property column exists with its catalog type."
        ),
        dg.AssetCheckSpec(
            SOURCES_CHECK,
            asset=key,
            description="No source (file or API batch) of the latest run failed.",
        ),
    ]


def attributes_asset(
    integration: InboundIntegration, source_key: dg.AssetKey, source_kind: str, description: str
) -> Callable[..., dg.AssetsDefinition]:
    """The decorator of an inbound integration's attribute table asset, for every inbound kind.

    Downstream of its landed sources, in the integration's group, one writer at a time (the
    pool), with the checks analysts rely on.
    """
    return dg.asset(
        key=attributes_key(integration.name),
        deps=[source_key],
        group_name=integration.name,
        kinds={"duckdb", "ducklake", source_kind},
        pool=integration_pool(integration.name),
        check_specs=attribute_check_specs(integration),
        description=description,
        tags={TAG_INTEGRATION: integration.name},
    )


def attribute_checks(
    con: duckdb.DuckDBPyConnection, integration: InboundIntegration, runs: Sequence[RunRecord]
) -> list[dg.AssetCheckResult]:
    table = attributes_table(integration.name)
    total, distinct, nulls = con.execute(
        f'SELECT count(*), count(DISTINCT user_id), count(*) FILTER (user_id IS NULL) FROM "{table}"'
    ).fetchone()
    actual = table_columns(con, table)
    wrong = {
        name: f"{actual.get(name, 'missing')} (expected {DUCKDB_TYPES[ptype]})"
        for _, name, ptype in integration.inbound_properties
        if not same_type(actual.get(name, ""), DUCKDB_TYPES[ptype])
    }
    failed = [r for r in runs if r.status == "failed"]
    return [
        dg.AssetCheckResult(
            check_name="user_id_unique_not_null",
            passed=(total - nulls == distinct and nulls == 0),
            metadata={"rows": total, "duplicate_user_ids": total - nulls - distinct, "null_user_ids": nulls},
        ),
        dg.AssetCheckResult(check_name="column_types", passed=not wrong, metadata={"mismatches": str(wrong or "none")}),
        dg.AssetCheckResult(
            check_name=SOURCES_CHECK,
            passed=not failed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"failed_sources": "\n".join(f"{r.source}: {r.message}" for r in failed) or "none"},
        ),
    ]


def run_metadata(con: duckdb.DuckDBPyConnection, integration: InboundIntegration, runs: Sequence[RunRecord]) -> dict:
    table = attributes_table(integration.name)
    total_rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    return {
        "sources": len(runs),
        "sources_failed": sum(r.status == "failed" for r in runs),
        "rows_read": sum(r.rows_read for r in runs),
        "rows_applied": sum(r.rows_applied for r in runs),
        "rows_rejected": sum(r.rows_rejected for r in runs),
        "properties": [name for _, name, _ in integration.inbound_properties],
        "dagster/row_count": total_rows,
        "runs": dg.MetadataValue.md(
            "\n".join(f"- `{r.run_id}` {r.summary()}" for r in runs) or "no pending sources"
        ),
        "preview": dg.MetadataValue.md(table_preview(con, table)),
    }


def attributes_result(
    con: duckdb.DuckDBPyConnection, integration: InboundIntegration, runs: Sequence[RunRecord]
) -> dg.MaterializeResult:
    """What every inbound attribute asset reports: run metadata and its checks."""
    return dg.MaterializeResult(
        metadata=run_metadata(con, integration, runs), check_results=attribute_checks(con, integration, runs)
    )


def build_user_profiles(catalog: Catalog) -> dg.AssetsDefinition:
    inbound_keys = [attributes_key(i.name) for i in catalog.inbound]

    @dg.asset(
        key=USER_PROFILES_KEY,
        deps=inbound_keys,
        group_name="warehouse",
        kinds={"duckdb", "ducklake"},
        description="A view: one row per user known to any inbound integration, one column per property.",
    )
    def user_profiles(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            users = con.execute("SELECT count(*) FROM user_profiles").fetchone()[0]
            columns = [d[0] for d in con.execute("DESCRIBE user_profiles").fetchall()]
        return dg.MaterializeResult(metadata={"dagster/row_count": users, "columns": columns})

    return user_profiles


def warehouse_resource(catalog: Catalog) -> WarehouseResource:
    return WarehouseResource(
        database=str(catalog.warehouse_catalog_path),
        data_path=str(catalog.warehouse_data_path),
        retention_days=catalog.warehouse.snapshot_retention_days,
    )


def integration_job(
    integration: Integration, selection: Sequence[dg.AssetKey], description: str, hooks: set | None = None
) -> UnresolvedAssetJobDefinition:
    """The job every trigger of an integration (sensor, schedule, `integration-hub run`) launches."""
    return dg.define_asset_job(
        job_name(integration),
        selection=dg.AssetSelection.assets(*selection),
        executor_def=dg.in_process_executor,  # one small step after another: no process per step
        tags={TAG_INTEGRATION: integration.name},
        hooks=hooks,
        description=description,
    )


def integration_sensor(
    integration: InboundIntegration, job: UnresolvedAssetJobDefinition, description: str
) -> Callable[..., dg.SensorDefinition]:
    """The decorator of an inbound integration's sensor: its name, interval and on/off default."""
    return dg.sensor(
        name=sensor_name(integration),
        job=job,
        minimum_interval_seconds=integration.sensor_interval_seconds,
        default_status=sensor_status(integration),
        description=description,
    )


def integration_schedule(
    integration: Integration,
    job: UnresolvedAssetJobDefinition,
    description: str,
    request: Callable[[dg.ScheduleEvaluationContext], dg.RunRequest | dg.SkipReason] | None = None,
) -> dg.ScheduleDefinition:
    """The integration's sync interval (cron, UTC); `request` may skip a tick with nothing to do."""

    @dg.schedule(
        name=schedule_name(integration),
        job=job,
        cron_schedule=integration.schedule,  # type: ignore[union-attr]
        execution_timezone="UTC",
        default_status=schedule_status(integration),
        description=description,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if request is not None:
            return request(context)
        return dg.RunRequest(tags={TAG_TRIGGER: "schedule"})

    return _schedule
