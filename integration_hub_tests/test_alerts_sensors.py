"""The alert sensors evaluated for real: jobs run in-process on a persistent Dagster instance, the
sensors tick with their cursors as the daemon would, and the alerts land in a webhook receiver
and an SMTP server on loopback."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from integration_hub.alerts.factory import CHECKS_SENSOR, FAILURES_SENSOR, FRESHNESS_SENSOR, RUNS_SENSOR
from integration_hub.core.assets import TAG_OUTCOME
from integration_hub.core.catalog import Catalog
from integration_hub.core.warehouse import ensure_schema, open_writer, transaction
from integration_hub.definitions import build_definitions
from integration_hub_tests.fakes.alert_receivers import (
    SmtpReceiver,
    WebhookReceiver,
    free_port,
    self_signed_certificate,
)
from integration_hub_tests.support import CRM_INTEGRATION, Landing

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"
CRM = {**CRM_INTEGRATION, "max_rejected_ratio": 0.5}


def crm_file(users: int, bad: int = 0, start: int = 0) -> str:
    """`users` rows, the last `bad` of them with a tickets value that is not a number."""
    rows = [
        f"user{n}@x.com,gold,{'lots' if n >= start + users - bad else n},yes,2024-01-01,"
        for n in range(start, start + users)
    ]
    return HEADER + "\n".join(rows) + "\n"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def hook(name: str, receiver: WebhookReceiver, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": receiver.url(f"/{name}"), "format": "json",
            "retry_backoff_seconds": 0.01, **fields}


@dataclass
class Hub:
    """A catalog's definitions on one Dagster instance, with the sensors' cursors kept between ticks."""

    landing: Landing
    catalog: Catalog
    instance: dg.DagsterInstance
    defs: dg.Definitions = field(init=False)
    cursors: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.defs = build_definitions(self.catalog)

    def tick(self, name: str) -> Any:
        sensor = self.defs.resolve_sensor_def(name)
        context = dg.build_sensor_context(instance=self.instance, definitions=self.defs, cursor=self.cursors.get(name))
        result = sensor.evaluate_tick(context)
        self.cursors[name] = result.cursor
        return result

    def tick_alerts(self) -> list[Any]:
        results = [self.tick(name) for name in (RUNS_SENSOR, FAILURES_SENSOR, CHECKS_SENSOR)]
        for result in results:
            assert all(reaction.error is None for reaction in result.dagster_run_reactions)
        return results

    def run(self, job: str = "crm_job") -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, raise_on_error=False)

    def run_freshness_checks(self) -> int:
        """What the daemon does with the freshness sensor's run requests: run those checks."""
        result = self.tick(FRESHNESS_SENSOR)
        for request in result.run_requests:
            job = dg.define_asset_job("freshness_checks", selection=dg.AssetSelection.checks(*request.asset_check_keys))
            dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job])).resolve_job_def("freshness_checks").execute_in_process(
                instance=self.instance
            )
        return len(result.run_requests)


def start(landing: Landing, instance: dg.DagsterInstance, *integrations: dict[str, Any], **alerts: Any) -> Hub:
    hub = Hub(landing, landing.write_catalog(*(integrations or [CRM]), alerts=alerts), instance)
    hub.tick_alerts()  # the first tick of each sensor starts watching from now
    return hub


def bodies(receiver: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [r.json for r in receiver.requests if r.path == path]


# ---------------------------------------------------------------------------- runs


def test_partial_run_alerts_only_the_rules_whose_threshold_it_exceeds(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    hub = start(
        local_landing,
        instance,
        destinations=[hook("strict", receiver), hook("lenient", receiver)],
        rules=[
            {"when": ["partial", "check_failed"], "integrations": ["crm"], "notify": ["strict"], "partial_rejected_ratio": 0.05},
            {"when": ["partial"], "integrations": "all", "notify": ["lenient"], "partial_rejected_ratio": 0.2},
        ],
    )
    local_landing.put("crm/users.csv", crm_file(10, bad=1))  # 10% rejected
    run = hub.run()
    assert run.success
    hub.tick_alerts()
    [alert] = bodies(receiver, "/strict")
    assert bodies(receiver, "/lenient") == []  # 10% is under its 20%
    assert {k: alert[k] for k in ("event", "integration", "status", "run_id", "rows_read", "rows_applied", "rows_rejected")} == {
        "event": "partial", "integration": "crm", "status": "partial", "run_id": run.run_id,
        "rows_read": 10, "rows_applied": 9, "rows_rejected": 1,
    }
    assert alert["message"] == (
        f"1 of 10 rows rejected (10.0%): {local_landing.root}/landing/crm/users.csv: 1 row rejected (see rejected_rows)"
    )
    assert alert["url"] == f"http://127.0.0.1:3000/runs/{run.run_id}"
    # The failed `sources_applied` (WARN) check is the same news: no check_failed on top.
    hub.tick_alerts()
    assert len(receiver.requests) == 1


def test_the_outcome_tag_of_a_run_wins_over_its_rows(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    hub = start(
        local_landing,
        instance,
        destinations=[hook("team", receiver)],
        rules=[{"when": ["failed", "partial"], "notify": ["team"]}],
    )
    local_landing.put("crm/users.csv", crm_file(4))
    run = hub.run()
    assert run.success  # every row applied: by its rows, a success
    instance.add_run_tags(run.run_id, {TAG_OUTCOME: "failed"})
    hub.tick_alerts()
    [alert] = bodies(receiver, "/team")
    assert (alert["event"], alert["status"], alert["rows_read"], alert["rows_applied"]) == ("failed", "failed", 4, 4)


def test_failed_run_alerts_and_the_next_good_run_recovers(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret-pw")
    certificate = self_signed_certificate(tmp_path)
    with SmtpReceiver(certificate=certificate, credentials=("hub@acme.com", "s3cret-pw"), require_starttls=True) as smtp:
        mail = {"name": "oncall", "type": "email", "host": "127.0.0.1", "port": smtp.port, "starttls": True,
                "user": "hub@acme.com", "password": "${SMTP_PASSWORD}", "from": "hub@acme.com",
                "to": ["data@acme.com"], "ca_bundle": str(certificate[0])}
        hub = start(
            local_landing,
            instance,
            destinations=[hook("team", receiver, format="slack"), mail],
            rules=[{"when": ["failed", "recovered"], "integrations": "all", "notify": ["team", "oncall"]}],
            dagster_url="https://dagster.acme.com/",
        )
        local_landing.put("crm/broken.csv", "id,plan\n1,gold\n")  # no user id column
        failed = hub.run()
        hub.tick_alerts()
        local_landing.put("crm/fixed.csv", crm_file(3))
        good = hub.run()
        hub.tick_alerts()
        local_landing.put("crm/more.csv", crm_file(2, start=3))
        hub.run()
        hub.tick_alerts()  # success after success: nothing to say

    texts = [body["text"] for body in bodies(receiver, "/team")]
    assert len(texts) == 2
    assert texts[0].startswith(":red_circle: *integration_hub: crm failed*")
    assert f"*Dagster run:* {failed.run_id}" in texts[0]
    assert f"*Message:* {local_landing.root}/landing/crm/broken.csv: missing user id column" in texts[0], texts[0]
    assert texts[0].endswith(f"<https://dagster.acme.com/runs/{failed.run_id}|Open in Dagster>")
    assert texts[1].startswith(":large_green_circle: *integration_hub: crm recovered*")
    assert f"ended success after the failed run {failed.run_id.split('-')[0]}" in texts[1]
    assert f"*Dagster run:* {good.run_id}" in texts[1] and "*Rows:* 3 read, 3 applied, 0 rejected" in texts[1]
    assert [m.message["Subject"] for m in smtp.mails] == ["integration_hub: crm failed", "integration_hub: crm recovered"]
    assert all(m.tls and m.login == "hub@acme.com" for m in smtp.mails)


def test_a_run_dagster_failed_alerts_and_a_dead_destination_does_not_fail_the_tick(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    # The export's report fails, so the run fails before it would reach the (unused) bucket.
    outbox = {"name": "outbox", "type": "s3", "bucket": "acme-outbox", "region": "us-east-1"}
    export = {"name": "daily", "type": "file_export", "connection": "outbox", "report": "broken", "folder": "daily"}
    dead = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens there
    hub = Hub(
        local_landing,
        local_landing.write_catalog(
            CRM,
            export,
            connections=[local_landing.connection, outbox],
            reports=[{"name": "broken", "sql": "SELECT no_such_column FROM user_profiles"}],
            alerts={
                "destinations": [hook("dead", receiver, url=dead, max_retries=1), hook("team", receiver)],
                "rules": [{"when": ["failed"], "integrations": ["daily"], "notify": ["dead", "team"]}],
            },
        ),
        instance,
    )
    hub.tick_alerts()
    run = hub.run("daily_job")
    assert not run.success
    results = hub.tick_alerts()  # asserts that no run reaction carries an error
    assert [r.dagster_run.run_id for r in results[1].dagster_run_reactions] == [run.run_id]
    [alert] = bodies(receiver, "/team")
    assert (alert["event"], alert["integration"], alert["status"], alert["run_id"]) == ("failed", "daily", "failed", run.run_id)
    assert (alert["rows_read"], alert["rows_applied"], alert["rows_rejected"]) == (0, 0, 0)
    assert alert["message"].startswith("broken: nothing exported: report 'broken' failed: ")


# ---------------------------------------------------------------------------- checks


def test_stale_alert_from_the_freshness_check_and_recovery(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    hub = start(
        local_landing,
        instance,
        destinations=[hook("team", receiver)],
        rules=[{"when": ["stale", "recovered"], "notify": ["team"]}],
        max_staleness={"crm": "3s"},  # room for a slow machine between the apply and its check
    )
    local_landing.put("crm/a.csv", crm_file(2))
    assert hub.run().success  # the freshness check runs with the job, and passes
    hub.tick_alerts()
    assert receiver.requests == []
    time.sleep(3.2)
    assert hub.run_freshness_checks() == 1
    hub.tick_alerts()
    [stale] = bodies(receiver, "/team")
    assert (stale["event"], stale["integration"], stale["status"]) == ("stale", "crm", "stale")
    assert re.fullmatch(r"no successful run for \d+s \(max_staleness 3s\): last update [-\d]{10} [:\d]{8} UTC", stale["message"])
    assert stale["url"] == "http://127.0.0.1:3000/assets/attributes_crm?view=checks"
    assert hub.run_freshness_checks() == 0  # Dagster waits for the asset to update
    hub.tick_alerts()
    assert len(receiver.requests) == 1  # still stale: said once

    local_landing.put("crm/b.csv", crm_file(2, start=2))
    assert hub.run().success
    hub.tick_alerts()
    recovered = bodies(receiver, "/team")[1]
    assert (recovered["event"], recovered["status"]) == ("recovered", "fresh")
    assert re.fullmatch(r"fresh again: last update [-\d]{10} [:\d]{8} UTC", recovered["message"])
    assert len(receiver.requests) == 2


def test_never_updated_integration_gets_max_staleness_before_it_is_stale(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    legacy = {**CRM, "name": "legacy", "folder": "legacy", "enabled": False,
              "properties": [{"column": "plan", "name": "legacy_plan"}]}
    alerts = {
        "destinations": [hook("team", receiver)],
        "rules": [{"when": ["stale"], "notify": ["team"]}],
        "max_staleness": {"crm": "2s", "legacy": "1s"},
    }
    hub = Hub(local_landing, local_landing.write_catalog(CRM, legacy, alerts=alerts), instance)
    assert hub.run_freshness_checks() == 1  # both never ran: their checks fail at once
    hub.tick_alerts()  # the first tick: staleness is a state, so it counts
    assert receiver.requests == []  # crm gets 2s to deliver; legacy is disabled
    time.sleep(2.2)
    hub.tick_alerts()
    [stale] = bodies(receiver, "/team")
    assert (stale["event"], stale["integration"]) == ("stale", "crm")
    assert stale["message"] == "never updated: still no successful run 2s after alerts started watching it (max_staleness 2s)"
    hub.tick_alerts()
    assert len(receiver.requests) == 1


def test_failing_check_alerts_once_and_recovers(
    local_landing: Landing, instance: dg.DagsterInstance, receiver: WebhookReceiver
) -> None:
    hub = start(
        local_landing,
        instance,
        destinations=[hook("team", receiver)],
        rules=[{"when": ["check_failed", "recovered"], "integrations": ["crm"], "notify": ["team"]}],
    )
    # Rows written by hand, past the hub's own checks: a duplicate user id.
    with open_writer(hub.catalog) as con:
        ensure_schema(con, hub.catalog)
        with transaction(con):
            con.execute("INSERT INTO attributes_crm (user_id, plan) VALUES ('dup@x.com', 'a'), ('dup@x.com', 'b')")
    local_landing.put("crm/a.csv", crm_file(2))
    failing = hub.run()
    assert failing.success
    hub.tick_alerts()
    [alert] = bodies(receiver, "/team")
    assert (alert["event"], alert["check"], alert["run_id"]) == ("check_failed", "user_id_unique_not_null", failing.run_id)
    assert alert["message"] == (
        "check user_id_unique_not_null on attributes_crm failed (ERROR): duplicate_user_ids 1, null_user_ids 0, rows 4"
    )
    local_landing.put("crm/b.csv", crm_file(1, start=5))
    hub.run()
    hub.tick_alerts()
    assert len(receiver.requests) == 1  # still failing: said once

    with open_writer(hub.catalog) as con, transaction(con):
        con.execute("DELETE FROM attributes_crm WHERE user_id = 'dup@x.com' AND plan = 'b'")
    local_landing.put("crm/c.csv", crm_file(1, start=9))
    passing = hub.run()
    hub.tick_alerts()
    recovered = bodies(receiver, "/team")[1]
    assert (recovered["event"], recovered["check"], recovered["run_id"]) == ("recovered", "user_id_unique_not_null", passing.run_id)
    assert recovered["message"] == "check user_id_unique_not_null on attributes_crm passes again"


def test_no_alerts_section_adds_no_definitions(local_landing: Landing) -> None:
    defs = build_definitions(local_landing.write_catalog(CRM))
    names = {s.name for s in defs.sensors or []}
    assert not names & {RUNS_SENSOR, FAILURES_SENSOR, CHECKS_SENSOR, FRESHNESS_SENSOR}
