"""Dagster pieces every integration kind shares: the writer pool, checks, metadata, user_profiles."""


from collections.abc import Sequence

import dagster as dg
import duckdb

from .catalog import Catalog, InboundIntegration, Integration
from .ingest import RunRecord, table_preview
from .sql import DUCKDB_TYPES
from .warehouse import WarehouseResource, attributes_table, ensure_schema

WRITER_POOL = "duckdb_writer"  # limited to 1 by the dagster.yaml that integration-hub writes
RESOURCE_KEY = "warehouse"
TAG_INTEGRATION = "integration_hub/integration"
TAG_TRIGGER = "integration_hub/trigger"


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
            "sources_applied",
            asset=key,
            description="No source (file or API batch) of the latest run failed.",
        ),
    ]


def attribute_checks(
    con: duckdb.DuckDBPyConnection, integration: InboundIntegration, runs: Sequence[RunRecord]
) -> list[dg.AssetCheckResult]:
    table = attributes_table(integration.name)
    total, distinct, nulls = con.execute(
        f'SELECT count(*), count(DISTINCT user_id), count(*) FILTER (user_id IS NULL) FROM "{table}"'
    ).fetchone()
    actual = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    )
    wrong = {
        name: f"{actual.get(name, 'missing')} (expected {DUCKDB_TYPES[ptype]})"
        for _, name, ptype in integration.inbound_properties
        if actual.get(name, "").upper() != DUCKDB_TYPES[ptype]
        and not (DUCKDB_TYPES[ptype] == "TIMESTAMPTZ" and actual.get(name, "").upper() == "TIMESTAMP WITH TIME ZONE")
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
            check_name="sources_applied",
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


def build_user_profiles(catalog: Catalog) -> dg.AssetsDefinition:
    inbound_keys = [attributes_key(i.name) for i in catalog.inbound]

    @dg.asset(
        key=USER_PROFILES_KEY,
        deps=inbound_keys,
        group_name="warehouse",
        kinds={"duckdb"},
        pool=WRITER_POOL,
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
    return WarehouseResource(database=str(catalog.warehouse_path))
