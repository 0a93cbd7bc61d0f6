"""The Dagster instance and each integration's enabled state.

An integration is enabled when its sensor/schedule run. The state lives in the Dagster
instance, so `integration-hub enable/disable` and the toggles in the Dagster UI are one and
the same switch; the catalog's `enabled:` is the default until someone flips it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .catalog import ApiIntegration, Catalog, CsvIntegration, Integration

LOCATION_NAME = "integration_hub"
REPOSITORY_NAME = "__repository__"
DEFINITIONS_MODULE = "integration_hub.definitions"

DAGSTER_YAML = """\
# Written by integration-hub. Each integration's writing steps are in its own pool
# (`integration_<name>`), limited to 1 run: runs of one integration take turns, while
# different integrations run at the same time.
concurrency:
  pools:
    granularity: run
    default_limit: 1
  runs:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


def sensor_name(integration: Integration) -> str | None:
    """Inbound integrations have a sensor; outbound ones when they run after each inbound run."""
    has_sensor = isinstance(integration, CsvIntegration | ApiIntegration) or getattr(
        integration, "run_after_inbound", False
    )
    return f"{integration.name}_sensor" if has_sensor else None


def schedule_name(integration: Integration) -> str | None:
    return f"{integration.name}_schedule" if getattr(integration, "schedule", None) else None


def job_name(integration: Integration) -> str:
    return f"{integration.name}_job"


def ensure_dagster_home(catalog: Catalog | None = None) -> Path:
    """$DAGSTER_HOME, else `.dagster_home` beside the catalog; with our dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path(catalog.base_dir if catalog else ".") / ".dagster_home")
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


STORAGE_KEYS = {"storage", "run_storage", "event_log_storage", "schedule_storage"}


def configures_storage(home: Path) -> bool:
    """The instance's dagster.yaml names its storage (PostgreSQL, ...) instead of SQLite under $DAGSTER_HOME."""
    import yaml

    config = yaml.safe_load((home / "dagster.yaml").read_text(encoding="utf-8")) or {}
    return isinstance(config, dict) and bool(config.keys() & STORAGE_KEYS)


@contextmanager
def dagster_instance(catalog: Catalog | None = None) -> Iterator[object]:
    from dagster import DagsterInstance

    from .warehouse import file_lock

    home = ensure_dagster_home(catalog)
    if configures_storage(home):  # a database: Dagster's own migrations, no local file involved
        instance = DagsterInstance.get()
    else:
        # Two commands starting at once on a new $DAGSTER_HOME would both create its SQLite storage
        # ("table ... already exists"): the instance is made by one process at a time.
        with file_lock(home / ".instance.lock", "the Dagster instance", timeout=60):
            instance = DagsterInstance.get()
    with instance:
        yield instance


def _selector_id(name: str) -> str:
    # dagster exports no sensor/schedule selector (only Job/Repository/...Selector); its id keys the state.
    from dagster._core.definitions.selector import InstigatorSelector

    return InstigatorSelector(location_name=LOCATION_NAME, repository_name=REPOSITORY_NAME, name=name).get_id()


def is_enabled(instance, integration: Integration) -> bool:
    """The effective state: what was toggled last, else the catalog's default."""
    # InstigatorStatus is not exported; dg.DefaultSensorStatus lacks its DECLARED_IN_CODE (never toggled).
    from dagster._core.scheduler.instigation import InstigatorStatus

    for name in (sensor_name(integration), schedule_name(integration)):
        if not name:
            continue
        state = instance.schedule_storage.get_instigator_state(name, _selector_id(name))
        if state is not None and state.status in (InstigatorStatus.RUNNING, InstigatorStatus.STOPPED):
            return state.status == InstigatorStatus.RUNNING
    return integration.enabled


def set_enabled(instance, integration: Integration, enabled: bool) -> list[str]:
    """Start or stop the integration's sensor and schedule, as the UI toggles do."""
    # No public API loads a code location (both imports) for the RemoteSensor/Schedule instance.start_* takes.
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(module_name=DEFINITIONS_MODULE, working_directory=os.getcwd()),
        location_name=LOCATION_NAME,
    )
    changed = []
    with origin.create_location(instance) as location:
        repository = location.get_repository(REPOSITORY_NAME)
        name = sensor_name(integration)
        if name and repository.has_sensor(name):
            sensor = repository.get_sensor(name)
            instance.start_sensor(sensor) if enabled else instance.stop_sensor(
                sensor.get_remote_origin_id(), sensor.selector_id, sensor
            )
            changed.append(name)
        name = schedule_name(integration)
        if name and repository.has_schedule(name):
            schedule = repository.get_schedule(name)
            instance.start_schedule(schedule) if enabled else instance.stop_schedule(
                schedule.get_remote_origin_id(), schedule.selector_id, schedule
            )
            changed.append(name)
    return changed
