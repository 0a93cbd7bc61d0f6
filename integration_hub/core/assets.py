"""Dagster pieces every integration kind shares: the writer pool, checks, metadata, user_profiles."""


from collections.abc import Callable, Sequence

import dagster as dg
import duckdb

# dagster does not export the type dg.define_asset_job returns (used here only in annotations).
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .catalog import Catalog, FileExportIntegration, InboundIntegration, Integration, SalesforceIntegration
from .ingest import RunRecord, table_preview
from .outcome import TAG_OUTCOME, RunOutcome, run_outcome, worst
from .sql import DUCKDB_TYPES, hash_part, ident, sorted_id_hashes
from .state import job_name, schedule_name, sensor_name
from .warehouse import (
    TAG_INTEGRATION,
    attributes_table,
    ensure_schema,
    same_type,
    table_columns,
)
from .warehouse_resource import WarehouseResource

__all__ = ["TAG_INTEGRATION", "TAG_OUTCOME", "integration_pool"]


def integration_pool(integration_name: str) -> str:
    """The Dagster pool of an integration's writing steps: each pool runs one run at a time
    (the dagster.yaml integration-hub writes), so runs of one integration take turns while
    different integrations run at once."""
    return f"integration_{integration_name}"


RESOURCE_KEY = "warehouse"
TAG_TRIGGER = "integration_hub/trigger"
AFTER_INBOUND_INTERVAL_SECONDS = 10  # how often an outbound integration looks for a refreshed user_profiles
# The user_id check sorts a table's id hashes in partitions of this many rows: under 200 MB of DuckDB memory.
CHECK_PARTITION_ROWS = 8_000_000
SOURCES_CHECK = "sources_applied"  # inbound: fails (WARN) unless the run's outcome is success or skipped
RECORDS_CHECK = "records_applied"  # Salesforce: the same, for the records of a sync
OUTCOME_CHECKS = frozenset({SOURCES_CHECK, RECORDS_CHECK})  # checks that mirror the run's outcome tag


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
            description=(
                "Every source (file or API batch) of the latest run applied in full: none failed, no row "
                "rejected. Fails with WARN severity on a partial run (the run is tagged integration_hub/outcome=partial)."
            ),
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


def user_id_counts(
    con: duckdb.DuckDBPyConnection, table: str, partition_rows: int = CHECK_PARTITION_ROWS
) -> tuple[int, int, int]:
    """(rows, rows beyond the first of each user_id, rows without a user_id) of a table, from one snapshot.

    Exact, in bounded memory: the ids are split by their hash into partitions of about
    `partition_rows`, and each partition's hashes (8 bytes, not the text) are sorted, which puts a
    repeated hash next to itself. Only a partition whose hashes repeat (a duplicate, or two ids with
    one hash) has its ids counted as text.
    """
    name = ident(table)
    con.execute("BEGIN TRANSACTION")  # read-only: one snapshot for every count, no commit turn taken
    try:
        total, nulls = con.execute(f"SELECT count(*), count(*) FILTER (user_id IS NULL) FROM {name}").fetchone()
        parts = max(1, -(-(total - nulls) // partition_rows))
        duplicates = 0
        for part in range(parts):
            of_part = f"user_id IS NOT NULL AND {hash_part('user_id', parts, part)}"
            part_rows = f"(SELECT user_id FROM {name} WHERE {of_part})"
            rows, repeated = con.execute(
                f"SELECT count(*), count(*) FILTER (h = next_h) FROM ({sorted_id_hashes(part_rows)})"
            ).fetchone()
            if repeated:
                rows, ids = con.execute(f"SELECT count(*), count(DISTINCT user_id) FROM {name} WHERE {of_part}").fetchone()
                duplicates += rows - ids
    finally:
        con.execute("ROLLBACK")
    return total, duplicates, nulls


def attribute_checks(
    con: duckdb.DuckDBPyConnection, integration: InboundIntegration, runs: Sequence[RunRecord], outcome: RunOutcome
) -> list[dg.AssetCheckResult]:
    table = attributes_table(integration.name)
    total, duplicates, nulls = user_id_counts(con, table)
    actual = table_columns(con, table)
    wrong = {
        name: f"{actual.get(name, 'missing')} (expected {DUCKDB_TYPES[ptype]})"
        for _, name, ptype in integration.inbound_properties
        if not same_type(actual.get(name, ""), DUCKDB_TYPES[ptype])
    }
    not_applied = [r for r in runs if r.status in ("failed", "partial")]
    return [
        dg.AssetCheckResult(
            check_name="user_id_unique_not_null",
            passed=(duplicates == 0 and nulls == 0),
            metadata={"rows": total, "duplicate_user_ids": duplicates, "null_user_ids": nulls},
        ),
        dg.AssetCheckResult(check_name="column_types", passed=not wrong, metadata={"mismatches": str(wrong or "none")}),
        dg.AssetCheckResult(
            check_name=SOURCES_CHECK,
            passed=outcome.ok,
            severity=dg.AssetCheckSeverity.WARN,
            description=outcome.reason,
            metadata={
                "outcome": outcome.outcome,
                "sources_not_applied_in_full": "\n".join(f"{r.source}: {r.status} - {r.message}" for r in not_applied)
                or "none",
            },
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
    context: dg.AssetExecutionContext,
    con: duckdb.DuckDBPyConnection,
    integration: InboundIntegration,
    runs: Sequence[RunRecord],
) -> dg.MaterializeResult:
    """What every inbound attribute asset reports: run metadata and its checks, and the run's outcome.

    Called after every source's own transaction committed: a run in which no source applied
    fails here (red, with the reason), and the sources other runs or this one applied stay.
    """
    outcome = run_outcome(runs)
    publish_outcome(context, integration.name, outcome)
    return dg.MaterializeResult(
        metadata={**run_metadata(con, integration, runs), "outcome": outcome.outcome},
        check_results=attribute_checks(con, integration, runs, outcome),
    )


def tag_outcome(instance: dg.DagsterInstance, run_id: str, outcome: str, integration: str | None = None) -> None:
    """Set the run's `integration_hub/outcome` tag, keeping the worst one a step of this run already set,
    and `integration_hub/integration` when the run has none (a materialization started from the UI)."""
    run = instance.get_run_by_id(run_id)
    if run is None:  # not a run this instance knows (e.g. a direct asset invocation in a test)
        return
    tags = {TAG_OUTCOME: worst(run.tags.get(TAG_OUTCOME), outcome) or outcome}
    if integration and TAG_INTEGRATION not in run.tags:
        tags[TAG_INTEGRATION] = integration
    # DagsterInstance.add_run_tags is what Dagster's own daemons use to tag a running run; no
    # decorated public API adds a tag from inside a run.
    instance.add_run_tags(run_id, tags)


def publish_outcome(context: dg.AssetExecutionContext, integration: str | None, outcome: RunOutcome) -> None:
    """Tag the run with its outcome; a failed outcome fails the step (a red run) with the reason."""
    tag_outcome(context.instance, context.run_id, outcome.outcome, integration)
    if outcome.outcome == "failed":
        context.log.error(outcome.reason)
        raise dg.Failure(description=outcome.reason, allow_retries=False)
    if outcome.outcome == "partial":
        context.log.warning(f"partial run: {outcome.reason}")


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
    settings = catalog.warehouse
    return WarehouseResource(
        database=catalog.warehouse_shown,
        data_path=settings.data_path if settings.data_on_s3 else str(catalog.warehouse_data_path),
        retention_days=settings.snapshot_retention_days,
        catalog_file=catalog.source_file,
    )


@dg.failure_hook(name="integration_hub_outcome_failed")
def outcome_failed(context: dg.HookContext) -> None:
    """Any failed step makes the run's outcome `failed` (the step raised: its reason is the run's)."""
    try:
        tag_outcome(context.instance, context.run_id, "failed")
    except Exception as exc:  # noqa: BLE001 - tagging must not mask the real failure
        context.log.warning(f"could not tag the run as failed: {exc}")


def integration_job(
    integration: Integration, selection: Sequence[dg.AssetKey], description: str, hooks: set | None = None
) -> UnresolvedAssetJobDefinition:
    """The job every trigger of an integration (sensor, schedule, `integration-hub run`) launches."""
    return dg.define_asset_job(
        job_name(integration),
        selection=dg.AssetSelection.assets(*selection),
        executor_def=dg.in_process_executor,  # one small step after another: no process per step
        tags={TAG_INTEGRATION: integration.name},
        hooks={outcome_failed, *(hooks or ())},
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


def after_inbound_sensors(
    integration: FileExportIntegration | SalesforceIntegration, job: UnresolvedAssetJobDefinition
) -> list[dg.SensorDefinition]:
    """With `run_after_inbound: true`, a sensor that runs the outbound job once user_profiles is refreshed
    (after any inbound run that applied data), so the report and what it feeds follow the sources."""
    name = sensor_name(integration)
    if not integration.run_after_inbound or name is None:
        return []

    @dg.asset_sensor(
        asset_key=USER_PROFILES_KEY,
        job=job,
        name=name,
        minimum_interval_seconds=AFTER_INBOUND_INTERVAL_SECONDS,
        default_status=sensor_status(integration),
        description=f"Runs {integration.name} after each inbound run that refreshed user_profiles.",
    )
    def _after_inbound(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> dg.RunRequest:
        # One run per refresh: the run key names the run that refreshed user_profiles.
        return dg.RunRequest(run_key=f"user_profiles-{asset_event.run_id}", tags={TAG_TRIGGER: "after_inbound"})

    return [_after_inbound]
