"""Where each piece of the hub's state lives, and whether every machine of a deployment sees it.

`integration-hub check` lists these. With a PostgreSQL warehouse catalog the deployment is meant
to span machines, so any state still on one machine's disk fails the check with what to change.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from .catalog import Catalog, SalesforceConnection


@dataclass(frozen=True)
class StateLocation:
    """One piece of state: what it is, where it is, whether other machines see it, and any problem."""

    state: str
    location: str
    shared: bool
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dagster_storage(instance: Any) -> tuple[str, bool]:
    """How a Dagster instance keeps runs, events, schedules and the runs' captured output: a
    description, and whether every machine sees it."""
    storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
    kinds = {type(storage).__name__ for storage in storages}
    logs = type(instance.compute_log_manager).__name__
    shared_storage = all(kind.startswith(("Postgres", "MySQL")) for kind in kinds)
    if shared_storage and not logs.startswith(("Local", "Noop")):
        return "a database (" + ", ".join(sorted(kinds)) + f"), output by {logs}", True
    home = os.environ.get("DAGSTER_HOME", "$DAGSTER_HOME")
    local = ([] if shared_storage else sorted(kinds)) + ([logs] if logs.startswith("Local") else [])
    return f"files under {home} (" + ", ".join(local) + ")", False


def state_locations(catalog: Catalog, dagster: tuple[str, bool] | None) -> list[StateLocation]:
    """Every piece of state the catalog's deployment keeps; problems only when the warehouse is scale-out."""
    scale_out = catalog.warehouse.on_postgres
    found: list[StateLocation] = []

    def add(state: str, location: str, shared: bool, fix: str) -> None:
        problem = None if shared or not scale_out else f"{state} is on this machine's disk ({location}): {fix}"
        found.append(StateLocation(state, location, shared, problem))

    warehouse = catalog.warehouse
    add(
        "warehouse catalog",
        catalog.warehouse_shown if warehouse.on_postgres else f"SQLite file {catalog.warehouse_catalog_path}",
        warehouse.on_postgres,
        "set warehouse.catalog to postgresql://USER@HOST:5432/DBNAME",
    )
    add(
        "warehouse data",
        warehouse.data_path if warehouse.data_on_s3 else f"folder {catalog.warehouse_data_path}",
        warehouse.data_on_s3,
        "set warehouse.data_path to s3://BUCKET/PREFIX/ and warehouse.data_connection to an s3 connection",
    )
    if any(i.type == "api" for i in catalog.integrations):
        add(
            "API landing (accepted batches)",
            catalog.landing_shown,
            catalog.landing_on_s3,
            "set `landing: {connection: BUCKET_CONNECTION, prefix: api_landing/}` with an s3 connection",
        )
        if scale_out:  # api.tokens.token_store: in the catalog database
            add("API tokens (hashed)", f"{catalog.warehouse_shown}, schema integration_hub", True, "")
        else:
            add("API tokens (hashed)", f"SQLite file {catalog.landing_path / 'tokens.sqlite3'}", False, "")
    if any(isinstance(c, SalesforceConnection) for c in catalog.connections):
        if scale_out:  # salesforce.auth.token_store: in the catalog database
            add("Salesforce credentials (encrypted)", f"{catalog.warehouse_shown}, schema integration_hub", True, "")
        else:
            add("Salesforce credentials (encrypted)", f"folder {catalog.state_dir / 'salesforce_tokens'}", False, "")
    if dagster is not None:
        add(
            "Dagster instance (runs, schedules, toggles)",
            dagster[0],
            dagster[1],
            "configure dagster-postgres storage and an S3 compute log manager in $DAGSTER_HOME/dagster.yaml "
            "(docs/deploy.md)",
        )
    return found
