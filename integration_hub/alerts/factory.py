"""Alerts as Dagster definitions: freshness checks and the sensors that send alerts.

* `integration_hub_alert_runs` (run status SUCCESS) and `integration_hub_alert_failures` (run
  failure): `failed` and `partial` for each finished run of an integration job, and
  `recovered` when a healthy run follows a failed (or over-threshold partial) one.
* `integration_hub_freshness_checks`: Dagster's own sensor for the freshness checks built from
  `alerts.max_staleness` (`build_last_update_freshness_checks`); the checks also run in every
  run of the integration's job, so the asset's Checks tab always shows the current state.
* `integration_hub_alert_checks`: reads the latest evaluation of every check on an
  integration's assets: `stale` when a freshness check fails, `check_failed` when another check
  starts failing, `recovered` when either passes again after an alert.

No alert is ever sent from a run: only from sensor ticks, which never fail because of a
destination (see core/alerts.py).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg

from ..core.alerts import Alert, AlertSender, dagster_link, notify_names, rules_for
from ..core.assets import OUTCOME_CHECKS, TAG_INTEGRATION
from ..core.catalog import Catalog, format_duration
from ..core.state import is_enabled
from .outcomes import RunOutcome, previous_outcome, run_outcomes

RUNS_SENSOR = "integration_hub_alert_runs"
FAILURES_SENSOR = "integration_hub_alert_failures"
CHECKS_SENSOR = "integration_hub_alert_checks"
FRESHNESS_SENSOR = "integration_hub_freshness_checks"
RUN_SENSOR_INTERVAL_SECONDS = 30
CHECK_SENSOR_INTERVAL_SECONDS = 60
LAST_UPDATED_KEY = "dagster/last_updated_timestamp"  # set by Dagster's freshness check


def integration_assets(defs: dg.Definitions) -> dict[dg.AssetKey, str]:
    """Each asset an integration's job writes for it (tagged with the integration) -> its name."""
    owners: dict[dg.AssetKey, str] = {}
    for item in defs.assets or []:
        specs = item.specs if isinstance(item, dg.AssetsDefinition) else [item] if isinstance(item, dg.AssetSpec) else []
        for spec in specs:
            if TAG_INTEGRATION in (spec.tags or {}):
                owners[spec.key] = spec.tags[TAG_INTEGRATION]
    return owners


def data_check_keys(defs: dg.Definitions, owners: dict[dg.AssetKey, str]) -> list[dg.AssetCheckKey]:
    """The checks on integration assets that `check_failed` watches.

    `sources_applied` and `records_applied` are left out: they mirror the run's outcome, which
    `partial`/`failed` report.
    """
    keys = []
    for item in [*(defs.assets or []), *(defs.asset_checks or [])]:
        for spec in getattr(item, "check_specs", None) or []:
            if spec.asset_key in owners and spec.name not in OUTCOME_CHECKS:
                keys.append(spec.key)
    return keys


def build_freshness_checks(catalog: Catalog, owners: dict[dg.AssetKey, str]) -> list[dg.AssetChecksDefinition]:
    """One freshness check per integration asset with a max_staleness (shown on its Checks tab)."""
    checks: list[dg.AssetChecksDefinition] = []
    for name, limit in catalog.alerts.max_staleness.items():
        keys = sorted((key for key, owner in owners.items() if owner == name), key=lambda k: k.to_user_string())
        if keys:
            with _superseded_allowed():
                checks += dg.build_last_update_freshness_checks(assets=keys, lower_bound_delta=limit)
    return checks


@contextmanager
def _superseded_allowed() -> Iterator[None]:
    """Dagster 1.13 marks the freshness check builders superseded by FreshnessPolicy. A policy is
    evaluated by the freshness daemon and leaves no check result for a sensor to read; the checks
    do, and show on the asset's Checks tab, so we keep them and silence the notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is superseded.*")
        yield


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(run_id: str) -> str:
    return run_id.split("-")[0]


# ---------------------------------------------------------------------------- runs


def _failure_message(context: dg.RunFailureSensorContext) -> str:
    """Why a run failed, without an exception's text (which may quote row values)."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description.strip().splitlines()[0]
        error = data.error.cls_name if data.error else "an error"
        return f"step {event.step_key} failed with {error}: see the run in Dagster"
    return "the run failed before any step finished: see the run in Dagster"


def _run_alert(event: str, outcome: RunOutcome, url: str, message: str) -> Alert:
    return Alert(
        event=event,
        integration=outcome.integration,
        message=message,
        status=outcome.status,
        run_id=outcome.dagster_run_id,
        rows_read=outcome.rows_read,
        rows_applied=outcome.rows_applied,
        rows_rejected=outcome.rows_rejected,
        url=url,
    )


def _problem_message(problem: str, outcome: RunOutcome) -> str:
    if problem == "partial":
        share = (
            f"{outcome.rows_rejected:,} of {outcome.rows_read:,} rows rejected ({outcome.rejected_ratio:.1%})"
            if outcome.rows_read
            else "rows rejected"
        )
        failed = f"; {outcome.sources_failed} source(s) failed" if outcome.sources_failed else ""
        return f"{share}{failed}{': ' + outcome.message if outcome.message else ''}"
    return outcome.message or "the run failed: see it in Dagster"


def alert_on_run(catalog: Catalog, sender: AlertSender, context: dg.RunStatusSensorContext) -> None:
    """`failed`, `partial` and `recovered` for one finished run of an integration job."""
    run = context.dagster_run
    name = run.tags.get(TAG_INTEGRATION)
    if name is None or name not in {i.name for i in catalog.integrations}:
        return
    alerts = catalog.alerts
    failed = isinstance(context, dg.RunFailureSensorContext)
    failure = {run.run_id: _failure_message(context)} if failed else None
    outcome = run_outcomes(catalog, [run], failure)[run.run_id]
    url = dagster_link(alerts, f"runs/{run.run_id}")
    context.log.info(f"run {run.run_id} of {name}: {outcome.status}")
    for problem in ("failed", "partial"):
        rules = [r for r in rules_for(alerts, problem, name) if outcome.problem_for(r) == problem]
        if rules:
            alert = _run_alert(problem, outcome, url, _problem_message(problem, outcome))
            sender.send(alert, notify_names(rules), context.log)
    if failed:
        return
    healthy = [r for r in rules_for(alerts, "recovered", name) if outcome.healthy_for(r)]
    if not healthy:
        return
    before = previous_outcome(context.instance, catalog, run)
    if before is None:
        return
    rules = [r for r in healthy if (problem := before.problem_for(r)) is not None and problem in r.when]
    if rules:
        message = f"run {_short(run.run_id)} ended {outcome.status} after the {before.status} run {_short(before.dagster_run_id)}"
        sender.send(_run_alert("recovered", outcome, url, message), notify_names(rules), context.log)


# ---------------------------------------------------------------------------- checks


@dataclass
class CheckAlertState:
    """The check sensor's cursor: what it has seen and what it has alerted on."""

    seen: dict[str, int] = field(default_factory=dict)  # check key -> last evaluation record id
    alerted: dict[str, str] = field(default_factory=dict)  # check key -> trigger, until it passes
    waiting: dict[str, float] = field(default_factory=dict)  # never-updated freshness check -> due

    @classmethod
    def load(cls, cursor: str | None) -> CheckAlertState:
        return cls(**json.loads(cursor)) if cursor else cls()

    def dump(self) -> str:
        return json.dumps({"seen": self.seen, "alerted": self.alerted, "waiting": self.waiting}, sort_keys=True)


@dataclass
class CheckAlerts:
    """Turns new check evaluations into alerts; one instance per code location."""

    catalog: Catalog
    sender: AlertSender
    owners: dict[dg.AssetKey, str]
    data_checks: list[dg.AssetCheckKey]
    freshness: list[dg.AssetCheckKey]
    clock: Callable[[], float] = time.time
    _sent: int = 0  # alerts of the current tick

    def _enabled(self, instance: dg.DagsterInstance, name: str) -> bool:
        return is_enabled(instance, self.catalog.integration(name))

    def evaluate(self, context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = CheckAlertState.load(context.cursor)
        first_tick = context.cursor is None
        keys = sorted({*self.data_checks, *self.freshness}, key=lambda k: k.to_user_string())
        # The summary records are what Dagster's own freshness sensor reads: the latest
        # evaluation of each check, in one query.
        summaries = context.instance.event_log_storage.get_asset_check_summary_records(keys)
        self._sent = 0
        new = 0
        for key in keys:
            record = summaries[key].last_completed_check_execution_record
            name = key.to_user_string()
            if record is None or record.event is None or record.id <= state.seen.get(name, -1):
                continue
            state.seen[name] = record.id
            new += 1
            evaluation = record.event.asset_check_evaluation
            if evaluation is None:
                continue
            if key in self.freshness:
                self._freshness(context, state, key, evaluation)  # a state: stale now is news now
            elif not first_tick:  # an event: alerts start from the first tick, not from history
                self._data_check(context, state, key, evaluation, record.run_id)
        self._never_updated(context, state)
        summary = f"{new} new check evaluation(s), {self._sent} alert(s) sent or attempted"
        return dg.SensorResult(cursor=state.dump(), skip_reason=dg.SkipReason(summary))

    def _send(self, context: dg.SensorEvaluationContext, trigger: str, integration: str, alert: Alert, also: str | None = None) -> bool:
        rules = rules_for(self.catalog.alerts, trigger, integration)
        if also is not None:
            rules = [r for r in rules if also in r.when]
        if rules:
            self.sender.send(alert, notify_names(rules), context.log)
            self._sent += 1
        return bool(rules)

    def _freshness(self, context, state: CheckAlertState, key: dg.AssetCheckKey, evaluation) -> None:
        name, integration = key.to_user_string(), self.owners[key.asset_key]
        limit = self.catalog.alerts.max_staleness[integration]
        url = dagster_link(self.catalog.alerts, f"assets/{'/'.join(key.asset_key.path)}?view=checks")
        metadata = evaluation.metadata.get(LAST_UPDATED_KEY)
        last_update = float(metadata.value) if metadata is not None else None
        if evaluation.passed:
            state.waiting.pop(name, None)
            if state.alerted.pop(name, None):
                when = f": last update {_utc(last_update)}" if last_update else ""
                alert = Alert("recovered", integration, f"fresh again{when}", status="fresh", url=url)
                self._send(context, "recovered", integration, alert, also="stale")
            return
        if not self._enabled(context.instance, integration):
            context.log.info(f"{integration} is stale but disabled: no alert")
            return
        if last_update is None:
            # Never updated: give a new integration max_staleness to deliver before calling it stale.
            state.waiting.setdefault(name, self.clock() + limit.total_seconds())
            return
        age = format_duration(timedelta(seconds=max(0, int(self.clock() - last_update))))
        message = (
            f"no successful run for {age} (max_staleness {format_duration(limit)}): "
            f"last update {_utc(last_update)}"
        )
        if self._send(context, "stale", integration, Alert("stale", integration, message, status="stale", url=url)):
            state.alerted[name] = "stale"

    def _never_updated(self, context: dg.SensorEvaluationContext, state: CheckAlertState) -> None:
        now = self.clock()
        for name, due in sorted(state.waiting.items()):
            if now < due:
                continue
            del state.waiting[name]
            key = dg.AssetCheckKey.from_user_string(name)
            integration = self.owners.get(key.asset_key)
            if integration is None or context.instance.get_latest_materialization_event(key.asset_key) is not None:
                continue  # updated meanwhile: its freshness check runs with that run
            if not self._enabled(context.instance, integration):
                continue
            limit = format_duration(self.catalog.alerts.max_staleness[integration])
            url = dagster_link(self.catalog.alerts, f"assets/{'/'.join(key.asset_key.path)}?view=checks")
            message = f"never updated: still no successful run {limit} after alerts started watching it (max_staleness {limit})"
            if self._send(context, "stale", integration, Alert("stale", integration, message, status="stale", url=url)):
                state.alerted[name] = "stale"

    def _data_check(self, context, state: CheckAlertState, key: dg.AssetCheckKey, evaluation, run_id: str) -> None:
        name, integration = key.to_user_string(), self.owners[key.asset_key]
        url = dagster_link(self.catalog.alerts, f"runs/{run_id}")
        target = key.asset_key.to_user_string()
        if evaluation.passed:
            if state.alerted.pop(name, None):
                alert = Alert("recovered", integration, f"check {key.name} on {target} passes again",
                              status="passed", run_id=run_id, check=key.name, url=url)
                self._send(context, "recovered", integration, alert, also="check_failed")
            return
        if name in state.alerted:
            context.log.info(f"check {name} still fails: alerted already")
            return
        # Counts only: a check's other metadata or description may quote values.
        counts = ", ".join(
            f"{label} {value.value:,}"
            for label, value in sorted(evaluation.metadata.items())
            if isinstance(value, dg.IntMetadataValue | dg.FloatMetadataValue) and not label.startswith("dagster/")
        )
        severity = evaluation.severity.value if evaluation.severity else "ERROR"
        message = f"check {key.name} on {target} failed ({severity}){': ' + counts if counts else ''}"
        alert = Alert("check_failed", integration, message, status="failed", run_id=run_id, check=key.name, url=url)
        if self._send(context, "check_failed", integration, alert):
            state.alerted[name] = "check_failed"


# ---------------------------------------------------------------------------- definitions


def build_alerts(catalog: Catalog, defs: dg.Definitions, sender: AlertSender | None = None) -> dg.Definitions:
    """The alerts section as definitions; empty when the catalog has no alerts."""
    alerts = catalog.alerts
    if not alerts.rules and not alerts.max_staleness:
        return dg.Definitions()
    owners = integration_assets(defs)
    freshness = build_freshness_checks(catalog, owners)
    sensors: list[dg.SensorDefinition] = []
    if freshness:
        # Dagster's sensor that runs the freshness checks when they may have turned overdue.
        with _superseded_allowed():
            sensors.append(
                dg.build_sensor_for_freshness_checks(
                    freshness_checks=freshness,
                    name=FRESHNESS_SENSOR,
                    minimum_interval_seconds=CHECK_SENSOR_INTERVAL_SECONDS,
                    default_status=dg.DefaultSensorStatus.RUNNING,
                )
            )
    if alerts.rules:
        sensors += build_alert_sensors(catalog, defs, owners, freshness, sender or AlertSender(catalog))
    return dg.Definitions(asset_checks=freshness, sensors=sensors)


def build_alert_sensors(
    catalog: Catalog,
    defs: dg.Definitions,
    owners: dict[dg.AssetKey, str],
    freshness: Sequence[dg.AssetChecksDefinition],
    sender: AlertSender,
) -> list[dg.SensorDefinition]:
    # Runs started by `integration-hub run` execute in-process and carry no code location, so
    # the run sensors watch every location and keep the runs tagged with one of our integrations.
    @dg.run_status_sensor(
        name=RUNS_SENSOR,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=True,
        minimum_interval_seconds=RUN_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends `partial` (and `failed` by outcome) alerts, and `recovered` after a failed run.",
    )
    def run_alerts(context: dg.RunStatusSensorContext) -> None:
        _guarded(context, lambda: alert_on_run(catalog, sender, context))

    @dg.run_failure_sensor(
        name=FAILURES_SENSOR,
        monitor_all_code_locations=True,
        minimum_interval_seconds=RUN_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends `failed` alerts for failed runs of integration jobs.",
    )
    def failure_alerts(context: dg.RunFailureSensorContext) -> None:
        _guarded(context, lambda: alert_on_run(catalog, sender, context))

    checks = CheckAlerts(
        catalog,
        sender,
        owners,
        data_check_keys(defs, owners),
        [key for definition in freshness for key in definition.check_keys],
    )

    @dg.sensor(
        name=CHECKS_SENSOR,
        minimum_interval_seconds=CHECK_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends `stale` and `check_failed` alerts from the latest check evaluations, and `recovered`.",
    )
    def check_alerts(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return checks.evaluate(context)

    return [run_alerts, failure_alerts, check_alerts]


def _guarded(context: dg.RunStatusSensorContext, work: Callable[[], None]) -> None:
    """A run sensor never fails because of alerting: the reason goes to the tick's log."""
    try:
        work()
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        context.log.error(f"alerts for run {context.dagster_run.run_id} not evaluated: {type(exc).__name__}: {reason}")
