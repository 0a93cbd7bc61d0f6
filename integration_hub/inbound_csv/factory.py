"""One inbound CSV integration as Dagster definitions: assets, checks, job, sensor, schedule."""


import hashlib
import json

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
from ..core.catalog import Catalog, CsvIntegration, S3Connection
from ..core.landing import landing_store
from ..core.warehouse import ensure_schema
from ..core.warehouse_resource import WarehouseResource
from .processing import FileMoves, process_file


class LandedFilesConfig(dg.Config):
    """Which landed files a run processes: the sensor names them; empty means all pending."""

    files: list[str] = []


def _run_config(asset_key: dg.AssetKey, files: list[str]) -> dict:
    return {"ops": {asset_key.to_python_identifier(): {"config": {"files": files}}}}


def build_csv_integration(catalog: Catalog, integration: CsvIntegration) -> dg.Definitions:
    name = integration.name
    connection = catalog.connection(integration.connection)
    on_s3 = isinstance(connection, S3Connection)
    location = (
        f"s3://{connection.bucket}/{'/'.join(p for p in (connection.prefix, integration.folder) if p)}/"
        if on_s3
        else f"{catalog.resolve_path(connection.path) / integration.folder}/"  # type: ignore[union-attr]
    )
    files_key = dg.AssetKey(f"{name}_files")
    table_key = attributes_key(name)

    files = dg.AssetSpec(
        files_key,
        group_name=name,
        kinds={"s3" if on_s3 else "file", "csv"},
        description=f"CSV files landed in {location} (processed ones move to success/ and failed/).",
    )

    @attributes_asset(
        integration,
        files_key,
        "csv",
        f"Attributes of `{name}`: one row per user_id from the CSV files in {location}, "
        f"typed per the catalog mapping ({len(integration.properties)} properties).",
    )
    def attributes(
        context: dg.AssetExecutionContext, config: LandedFilesConfig, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        store = landing_store(catalog, connection)
        pending = store.list_pending(integration.folder)
        if config.files:
            wanted = set(config.files)
            pending = [f for f in pending if f.key in wanted]
        context.log.info(f"{len(pending)} file(s) to process in {location}")
        runs = []
        with warehouse.get_connection() as con:
            ensure_schema(con, catalog)
            # A file's move to success/ or failed/ overlaps the next file and the checks.
            with FileMoves(con, store) as moves:
                for number, file in enumerate(pending, start=1):
                    context.log.info(f"[{number}/{len(pending)}] {file.key} ({file.size:,} bytes)")
                    run = process_file(con, store, integration, file, context.run_id, context.log.info, moves)
                    if run is not None:
                        for warning in run.details.get("warnings", []):
                            context.log.warning(f"{run.source}: {warning}")
                        context.log.info(run.summary())
                        runs.append(run)
                return attributes_result(context, con, integration, runs)

    job = integration_job(
        integration, [table_key, USER_PROFILES_KEY], f"Process the pending CSV files of {name} and refresh user_profiles."
    )

    @integration_sensor(integration, job, f"Starts a run when new CSV files land in {location}.")
    def files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        pending = landing_store(catalog, connection).list_pending(integration.folder)
        # The cursor holds only fingerprints of files still pending, so it stays small.
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        current = {f.fingerprint: f for f in pending}
        new = [f for fp, f in current.items() if _short(fp) not in seen]
        cursor = json.dumps(sorted(_short(fp) for fp in current))
        if not new:
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no new files in {location}"), cursor=cursor)
        run_key = hashlib.sha256("\n".join(sorted(f.fingerprint for f in new)).encode()).hexdigest()[:32]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    run_config=_run_config(table_key, [f.key for f in new]),
                    tags={TAG_TRIGGER: "sensor"},
                )
            ],
            cursor=cursor,
        )

    def files_pending(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if not landing_store(catalog, connection).list_pending(integration.folder):
            return dg.SkipReason(f"no pending files in {location}")
        return dg.RunRequest(run_config=_run_config(table_key, []), tags={TAG_TRIGGER: "schedule"})

    files_schedule = integration_schedule(
        integration, job, f"Processes whatever is pending in {location} on the sync interval.", files_pending
    )

    return dg.Definitions(assets=[files, attributes], jobs=[job], sensors=[files_sensor], schedules=[files_schedule])


def _short(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
