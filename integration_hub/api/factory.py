"""One API integration as Dagster definitions: batches, attributes asset, checks, job, sensor, schedule."""

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import dagster as dg

from ..core.assets import (
    TAG_TRIGGER,
    USER_PROFILES_KEY,
    attributes_asset,
    attributes_key,
    attributes_result,
    integration_job,
    integration_schedule,
    integration_sensor,
)
from ..core.catalog import ApiIntegration, Catalog
from ..core.state import job_name
from ..core.warehouse import ensure_schema
from ..core.warehouse_resource import WarehouseResource
from .applying import RUN_BUDGET_SECONDS, apply_pending
from .batches import batch_store

RETRY_SECONDS = 60  # the same batches still pending after a finished run: ask again after this long
# A run applies for at most RUN_BUDGET_SECONDS: one whose status has not changed for this long
# died with its worker (a killed host leaves it STARTED) and must not hold up the batches.
STALE_RUN_SECONDS = RUN_BUDGET_SECONDS + 600
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def batches_key(integration: ApiIntegration) -> dg.AssetKey:
    return dg.AssetKey(f"{integration.name}_batches")


def sensor_decision(
    pending: list[str], active_runs: int, cursor: str | None, now: float
) -> tuple[str | None, str, str]:
    """(run_key or None, new cursor, reason) for the batches sensor.

    One run at a time applies every pending batch (and those landing meanwhile), so a run is
    requested only when batches are pending and none of this job's runs is queued or going.
    The run key names the set of pending batch ids; the same set still pending after its run
    finished (the run failed) is asked for again after RETRY_SECONDS, with a new attempt number.
    """
    state = json.loads(cursor) if cursor else {}
    if not pending:
        return None, json.dumps({}), "no pending batches"
    if active_runs:
        return None, json.dumps(state), f"{len(pending)} pending batch(es): a run is already applying batches"
    key = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:24]
    attempt = 1
    if state.get("key") == key:
        if now - float(state.get("at", 0)) < RETRY_SECONDS:
            return None, json.dumps(state), f"{len(pending)} pending batch(es): waiting to retry"
        attempt = int(state.get("attempt", 1)) + 1
    return f"{key}-{attempt}", json.dumps({"key": key, "attempt": attempt, "at": now}), ""


def build_api_integration(catalog: Catalog, integration: ApiIntegration) -> dg.Definitions:
    name = integration.name
    store = batch_store(catalog)
    location = store.location(name)
    source_key = batches_key(integration)
    table_key = attributes_key(name)

    batches = dg.AssetSpec(
        source_key,
        group_name=name,
        kinds={"api"},
        description=(
            f"Batches accepted by the End User Update API for `{name}` (system {integration.system}, "
            f"{integration.environment}), landed in {location} until a run applies them."
        ),
    )

    @attributes_asset(
        integration,
        source_key,
        "api",
        f"Attributes of `{name}`: one row per user_id from End User Update API batches, "
        f"typed per the catalog mapping ({len(integration.properties)} properties); later batches win.",
    )
    def attributes(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        pending = store.pending_batch_ids(name)
        context.log.info(f"{len(pending)} batch(es) pending in {location}")
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            runs = apply_pending(
                con, store, integration, context.run_id, on_run=lambda run: context.log.info(run.summary())
            )
            return attributes_result(context, con, integration, runs)

    job = integration_job(
        integration, [table_key, USER_PROFILES_KEY], f"Apply the pending API batches of {name} and refresh user_profiles."
    )

    @integration_sensor(
        integration, job, f"Starts a run when the End User Update API lands batches for {name} in {location}."
    )
    def batches_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        pending = store.pending_batch_ids(name)
        active = 0
        if pending:
            recent = datetime.now(timezone.utc) - timedelta(seconds=STALE_RUN_SECONDS)
            active = context.instance.get_runs_count(
                dg.RunsFilter(job_name=job_name(integration), statuses=IN_PROGRESS, updated_after=recent)
            )
        run_key, cursor, reason = sensor_decision(pending, active, context.cursor, time.time())
        if run_key is None:
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    tags={TAG_TRIGGER: "sensor", "integration_hub/pending_batches": str(len(pending))},
                )
            ],
            cursor=cursor,
        )

    schedules = []
    if integration.schedule:

        def batches_pending(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
            if not store.pending_batch_ids(name):
                return dg.SkipReason(f"no pending batches in {location}")
            return dg.RunRequest(tags={TAG_TRIGGER: "schedule"})

        batches_schedule = integration_schedule(
            integration, job, f"Applies whatever API batches are pending for {name} (a backstop to the sensor).",
            batches_pending,
        )
        schedules.append(batches_schedule)

    return dg.Definitions(
        assets=[batches, attributes], jobs=[job], sensors=[batches_sensor], schedules=schedules
    )
