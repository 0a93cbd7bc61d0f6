"""The Dagster code location: every catalog entry becomes its assets, sensor, schedule and checks.

This module only wires. Reading the catalog is all that happens at load time: no DuckDB,
no listing of folders.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from .alerts.factory import build_alerts
from .api.factory import build_api_integration
from .core.assets import RESOURCE_KEY, build_user_profiles, warehouse_resource
from .core.catalog import Catalog, load_catalog
from .core.maintenance import build_warehouse_maintenance
from .exports.factory import build_file_export_integration
from .inbound_csv.factory import build_csv_integration
from .reports.factory import build_reports
from .salesforce.factory import build_salesforce_integration

FACTORIES: dict[str, Callable[[Catalog, object], dg.Definitions]] = {
    "s3_csv": build_csv_integration,
    "file_export": build_file_export_integration,
    "api": build_api_integration,
    "salesforce": build_salesforce_integration,
}


def build_definitions(catalog: Catalog) -> dg.Definitions:
    parts = [FACTORIES[i.type](catalog, i) for i in catalog.integrations if i.type in FACTORIES]
    core = dg.Definitions(assets=[build_user_profiles(catalog)], resources={RESOURCE_KEY: warehouse_resource(catalog)})
    integrations = dg.Definitions.merge(core, build_reports(catalog), *parts)
    maintenance = build_warehouse_maintenance(catalog.warehouse.maintenance_schedule)
    return dg.Definitions.merge(integrations, maintenance, build_alerts(catalog, integrations))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_catalog())
