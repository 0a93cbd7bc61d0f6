"""The Salesforce sync end to end: Dagster job -> simple-salesforce -> the fake org over real HTTPS.

Every outcome (updated, unchanged, unmatched, ambiguous skip / update_all, invalid, failed), the
SOQL-injection key, retries (row locks, 503, REQUEST_LIMIT_EXCEEDED), describe validation, the
Bulk API 2.0 path above bulk_threshold, and that no call ever creates a record.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import dagster as dg
import pytest

from integration_hub.core.assets import TAG_INTEGRATION, integration_pool
from integration_hub.core.outcome import TAG_OUTCOME
from integration_hub.definitions import build_definitions
from integration_hub.reports.factory import report_key
from integration_hub.salesforce.factory import salesforce_key
from integration_hub.salesforce.sync import MAX_URI_BYTES, chunk_in_clauses
from integration_hub_tests.fakes.salesforce import FakeSalesforce
from integration_hub_tests.test_salesforce_support import (
    connect,
    contacts,
    counts,
    hub_runs,
    last_sync,
    query,
    results_of,
    row,
    run_sync_job,
    seed,
    write_catalog,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("salesforce_environment")]


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message


def _no_writes(fake: FakeSalesforce) -> None:
    kinds = fake.calls_by_kind()
    assert "create" not in kinds and "delete" not in kinds and "update_single" not in kinds, kinds


# ---------------------------------------------------------------------------- outcomes


def test_update_then_unchanged_then_changed_then_full_resync(fake: FakeSalesforce, tmp_path: Path) -> None:
    ids = fake.insert("Contact", [
        {"LastName": "Ann", "Email": "ann@example.com"},
        {"LastName": "Bob", "Email": "bob@example.com"},
        {"LastName": "Cat", "Email": "cat@example.com", "WalkMe_Onboarding_Pct__c": 0.5, "WalkMe_Churn_Risk__c": "Low",
         "WalkMe_Last_Seen__c": "2023-01-01"},
        {"LastName": "Dup", "Email": "dup@example.com"},
        {"LastName": "Dup", "Email": "dup@example.com"},
        {"LastName": "Untouched", "Email": "other@example.com", "Title": "keep"},
    ])
    catalog = write_catalog(tmp_path, fake)
    connect(catalog, fake)
    seed(catalog, [
        row("ann@example.com", pct=0.25, nps=10, risk="High", active=False, seen=date(2024, 1, 2)),
        row("BOB@example.com"),  # text keys match ignoring case, as SOQL does
        row("cat@example.com", pct=None, nps=None, risk=None, active=None, seen=None),  # nulls clear the fields
        row("dup@example.com"),  # two Contacts have it: ambiguous, skipped
        row("nobody@example.com"),  # no Contact: unmatched, never created
        row("x' OR Name != '"),  # SOQL injection: one escaped literal that matches nothing
    ])
    before = fake.count("Contact")

    result = run_sync_job(catalog)
    assert result.success, _failure(result)
    run = last_sync(catalog)
    assert run["status"] == "Completed" and run["transport"] == "composite"
    assert counts(run) == {"rows": 6, "matched": 3, "updated": 3, "unchanged": 0, "unmatched": 2, "ambiguous": 1,
                           "invalid": 0, "failed": 0}
    ann = fake.get("Contact", ids[0])
    assert (ann["WalkMe_Onboarding_Pct__c"], ann["WalkMe_NPS__c"], ann["WalkMe_Churn_Risk__c"],
            ann["WalkMe_Active__c"], ann["WalkMe_Last_Seen__c"]) == (0.25, 10, "High", False, "2024-01-02")
    assert fake.get("Contact", ids[1])["WalkMe_NPS__c"] == 9
    cat = fake.get("Contact", ids[2])
    assert cat["WalkMe_Onboarding_Pct__c"] is None and cat["WalkMe_Churn_Risk__c"] is None
    assert cat["WalkMe_Last_Seen__c"] is None
    assert fake.get("Contact", ids[3])["WalkMe_NPS__c"] is None  # ambiguous: not touched
    assert fake.count("Contact") == before  # nothing created
    assert {r["Title"] for r in fake.records("Contact") if r["LastName"] == "Untouched"} == {"keep"}

    results = results_of(catalog, run["run_id"])
    assert results["ann@example.com"] == {**results["ann@example.com"], "outcome": "updated", "salesforce_id": ids[0],
                                          "error": None}
    assert results["nobody@example.com"]["outcome"] == "unmatched"
    assert results["x' OR Name != '"]["outcome"] == "unmatched"
    assert results["dup@example.com"]["outcome"] == "ambiguous" and "2 Contact records" in results["dup@example.com"]["error"]
    [hub] = hub_runs(catalog)
    assert (hub["kind"], hub["status"], hub["rows_read"], hub["rows_applied"], hub["rows_rejected"]) == (
        "salesforce", "success", 6, 3, 0)
    assert hub["source"] == "onboarding -> Contact" and hub["details"]["unmatched"] == 2
    kinds = fake.calls_by_kind()
    assert kinds["composite_update"] == 1 and kinds["query"] == 1 and kinds["describe"] == 1
    _no_writes(fake)
    # The "Salesforce exports" snapshot: what was sent per key, for the diff and for audit.
    snapshot = query(catalog, "SELECT match_key, salesforce_ids, payload FROM salesforce_snapshots ORDER BY match_key")
    assert [s["match_key"] for s in snapshot] == ["ann@example.com", "bob@example.com", "cat@example.com"]
    assert '"WalkMe_Onboarding_Pct__c":0.25' in snapshot[0]["payload"]

    # Second run, nothing changed: no update call, and the unchanged keys are not even looked up.
    fake.reset_calls()
    assert run_sync_job(catalog).success
    run = last_sync(catalog)
    assert counts(run) == {"rows": 6, "matched": 3, "updated": 0, "unchanged": 3, "unmatched": 2, "ambiguous": 1,
                           "invalid": 0, "failed": 0}
    kinds = fake.calls_by_kind()
    assert "composite_update" not in kinds and not any(k.startswith("bulk_ingest") for k in kinds)
    assert kinds["query"] == 1  # only the unmatched and ambiguous keys are looked up again
    assert results_of(catalog, run["run_id"])["ann@example.com"]["outcome"] == "unchanged"

    # One value changes: only that row is sent.
    seed(catalog, [
        row("ann@example.com", pct=0.75, nps=10, risk="High", active=False, seen=date(2024, 1, 2)),
        row("BOB@example.com"),
        row("cat@example.com", pct=None, nps=None, risk=None, active=None, seen=None),
        row("dup@example.com"), row("nobody@example.com"), row("x' OR Name != '"),
    ])
    fake.reset_calls()
    assert run_sync_job(catalog).success
    assert (last_sync(catalog)["updated"], last_sync(catalog)["unchanged"]) == (1, 2)
    assert fake.get("Contact", ids[0])["WalkMe_Onboarding_Pct__c"] == 0.75
    assert fake.calls_by_kind()["composite_update"] == 1

    # --full-resync sends every matched row again.
    assert run_sync_job(catalog, full_resync=True).success
    run = last_sync(catalog)
    assert (run["updated"], run["unchanged"], run["full_resync"]) == (3, 0, True)
    _no_writes(fake)


def test_ambiguous_keys_are_updated_with_update_all(fake: FakeSalesforce, tmp_path: Path) -> None:
    ids = contacts(fake, ["dup@example.com", "DUP@example.com", "solo@example.com"])
    catalog = write_catalog(tmp_path, fake, {"on_multiple_matches": "update_all"})
    connect(catalog, fake)
    seed(catalog, [row("dup@example.com", nps=3), row("solo@example.com", nps=4)])
    assert run_sync_job(catalog).success
    run = last_sync(catalog)
    assert (run["matched"], run["updated"], run["ambiguous"]) == (2, 2, 0)
    assert [fake.get("Contact", i)["WalkMe_NPS__c"] for i in ids] == [3, 3, 4]
    rows = query(catalog, "SELECT salesforce_id, outcome FROM salesforce_sync_results WHERE report_key = 'dup@example.com'")
    assert sorted(r["salesforce_id"] for r in rows) == sorted(ids[:2]) and {r["outcome"] for r in rows} == {"updated"}


def test_invalid_rows_are_reported_not_sent(fake: FakeSalesforce, tmp_path: Path) -> None:
    ids = contacts(fake, ["ok@example.com", "long@example.com", "pick@example.com", "frac@example.com",
                          "dup@example.com"])
    sql = (
        "SELECT email, onboarding_pct, nps, churn_risk, active, last_seen, note FROM ("
        "SELECT user_id AS email, * EXCLUDE (user_id) FROM user_profiles "
        "UNION ALL SELECT NULL, 0.5, 1, 'Low', true, NULL, NULL, NULL "
        "UNION ALL SELECT '   ', 0.5, 1, 'Low', true, NULL, NULL, NULL) ORDER BY email"
    )
    catalog = write_catalog(tmp_path, fake, {"fields": [
        {"column": "onboarding_pct", "field": "WalkMe_Onboarding_Pct__c"},
        {"column": "nps", "field": "WalkMe_NPS__c"},
        {"column": "churn_risk", "field": "WalkMe_Churn_Risk__c"},
        {"column": "note", "field": "WalkMe_Note__c"},
    ]}, report_sql=sql)
    connect(catalog, fake)
    seed(catalog, [
        row("ok@example.com", note="fine"),
        row("long@example.com", note="x" * 21),  # WalkMe_Note__c holds 20 characters
        row("pick@example.com", risk="Catastrophic"),  # not in the restricted picklist
        row("frac@example.com", nps=8.5),  # WalkMe_NPS__c is an integer field
        row("dup@example.com"), row("Dup@example.com"),  # the same key twice (case-insensitively)
        row("big@example.com", pct=1234.5),  # percent(5, 2): at most 3 digits before the point
    ])
    assert run_sync_job(catalog).success
    run = last_sync(catalog)
    assert (run["rows"], run["invalid"], run["updated"], run["unmatched"]) == (9, 8, 1, 0)
    results = query(catalog, "SELECT report_key, outcome, error FROM salesforce_sync_results WHERE run_id = ?",
                    [run["run_id"]])
    errors = {r["report_key"]: r["error"] for r in results if r["outcome"] == "invalid"}
    assert "over the field length of 20" in errors["long@example.com"]
    assert "Catastrophic is not a value of this restricted picklist" in errors["pick@example.com"]
    assert "not a whole number" in errors["frac@example.com"]
    assert "appears 2 times" in errors["dup@example.com"] and "appears 2 times" in errors["Dup@example.com"]
    assert "out of range" in errors["big@example.com"]
    assert [r["error"] for r in results if r["report_key"] is None] == [
        "empty key: every row needs a value in column email"] * 2
    assert fake.get("Contact", ids[0])["WalkMe_Note__c"] == "fine"
    assert all(fake.get("Contact", i)["WalkMe_NPS__c"] is None for i in ids[1:])
    assert hub_runs(catalog)[-1]["status"] == "partial" and hub_runs(catalog)[-1]["rows_rejected"] == 8


def test_failed_records_carry_salesforce_error_and_are_retried_next_run(fake: FakeSalesforce, tmp_path: Path) -> None:
    ids = contacts(fake, ["a@example.com", "b@example.com", "c@example.com"])
    sql = "SELECT user_id AS email, note AS alt, nps FROM user_profiles"
    catalog = write_catalog(tmp_path, fake, {"fields": [
        {"column": "alt", "field": "WalkMe_Alt_Email__c"}, {"column": "nps", "field": "WalkMe_NPS__c"}]},
        connection={"max_retries": 2}, report_sql=sql)
    connect(catalog, fake)
    seed(catalog, [row("a@example.com", note="not an email"), row("b@example.com", note="b2@example.com"),
                   row("c@example.com", note="c2@example.com")])
    fake.fail_lock([ids[1]], times=2)  # locked twice, then free: retried within the run
    fake.fail_lock([ids[2]], times=10)  # locked for longer than the run retries
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_sync_job(catalog, instance=instance)
        assert result.success  # partial: green, tagged partial, with a WARN check failure
        assert instance.get_run_by_id(result.run_id).tags[TAG_OUTCOME] == "partial"
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "records_applied" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    run = last_sync(catalog)
    assert (run["updated"], run["failed"]) == (1, 2)
    results = results_of(catalog, run["run_id"])
    assert results["a@example.com"]["outcome"] == "failed"
    assert results["a@example.com"]["error"].startswith("INVALID_EMAIL_ADDRESS: ")
    assert results["a@example.com"]["salesforce_id"] == ids[0]
    assert results["b@example.com"]["outcome"] == "updated"
    assert results["c@example.com"]["error"].startswith("UNABLE_TO_LOCK_ROW: ")
    assert fake.calls_by_kind()["composite_update"] == 3  # the batch, then two retries of the locked rows
    assert hub_runs(catalog)[-1]["status"] == "partial"

    # Nothing changed in the report, but the failed records are sent again on the next run.
    fake.clear_faults()
    fake.reset_calls()
    assert run_sync_job(catalog).success
    run = last_sync(catalog)
    assert (run["updated"], run["failed"], run["unchanged"]) == (1, 1, 1)
    assert results_of(catalog, run["run_id"])["c@example.com"]["outcome"] == "updated"
    assert fake.get("Contact", ids[2])["WalkMe_Alt_Email__c"] == "c2@example.com"
    _no_writes(fake)


def test_503_and_request_limit_exceeded_are_retried(fake: FakeSalesforce, tmp_path: Path) -> None:
    ids = contacts(fake, ["a@example.com"])
    catalog = write_catalog(tmp_path, fake)
    connect(catalog, fake)
    seed(catalog, [row("a@example.com")])
    fake.fail_next_requests(2, status=503)
    fake.request_limit_exceeded(1)
    result = run_sync_job(catalog)
    assert result.success, _failure(result)
    assert fake.get("Contact", ids[0])["WalkMe_NPS__c"] == 9
    statuses = [c["status"] for c in fake.calls if c["path"].startswith("/services/data")]
    assert statuses[:3] == [503, 503, 403] and statuses.count(200) >= 3

    # When the org keeps refusing, the run fails with the reason and records it.
    fake.request_limit_exceeded(50)
    seed(catalog, [row("a@example.com", nps=1)])
    result = run_sync_job(catalog)
    assert not result.success
    assert "REQUEST_LIMIT_EXCEEDED" in _failure(result) and "attempts" in _failure(result)
    assert last_sync(catalog)["status"] == "Failed" and hub_runs(catalog)[-1]["status"] == "failed"
    fake.clear_faults()


# ---------------------------------------------------------------------------- validation


def test_describe_validation_stops_the_run_before_sending(fake: FakeSalesforce, tmp_path: Path) -> None:
    contacts(fake, ["a@example.com"])
    catalog = write_catalog(tmp_path, fake, {
        "salesforce_key": "WalkMe_Secret__c",  # not filterable (like encrypted text)
        "fields": [
            {"column": "onboarding_pct", "field": "WalkMe_Onboardng_Pct__c"},  # typo
            {"column": "nps", "field": "WalkMe_Score__c"},  # a formula: not updateable
            {"column": "churn_risk", "field": "WalkMe_NPS__c"},  # VARCHAR into an int field
            {"column": "active", "field": "WalkMe_Last_Seen__c"},  # BOOLEAN into a date field
            {"column": "missing_column", "field": "Title"},
        ],
    })
    connect(catalog, fake)
    seed(catalog, [row("a@example.com")])
    result = run_sync_job(catalog)
    assert not result.success
    message = _failure(result)
    assert "nothing was sent" in message
    assert "'WalkMe_Secret__c' of Contact is not filterable" in message
    assert "'WalkMe_Onboardng_Pct__c' does not exist on Contact (did you mean 'WalkMe_Onboarding_Pct__c'?)" in message
    assert "'WalkMe_Score__c' of Contact is not updateable" in message
    assert "column 'churn_risk' is VARCHAR but field 'WalkMe_NPS__c' is a Salesforce int field" in message
    assert 'CAST("churn_risk" AS DOUBLE)' in message
    assert "column 'active' is BOOLEAN but field 'WalkMe_Last_Seen__c' is a Salesforce date field" in message
    assert "has no column 'missing_column'" in message
    assert set(fake.calls_by_kind()) <= {"token", "describe"}
    assert last_sync(catalog)["status"] == "Failed"
    [hub] = hub_runs(catalog)
    assert hub["status"] == "failed" and "not filterable" in hub["message"]

    long_text_key = write_catalog(tmp_path, fake, {"salesforce_key": "Description"})
    assert "'Description' is a textarea field: a key must be" in _failure(run_sync_job(long_text_key))
    unknown_key = write_catalog(tmp_path, fake, {"salesforce_key": "Emial", "object": "Contact"})
    result = run_sync_job(unknown_key)
    assert "salesforce_key 'Emial' is not a field of Contact (did you mean 'Email'?)" in _failure(result)
    unknown_object = write_catalog(tmp_path, fake, {"object": "Contactt"})
    result = run_sync_job(unknown_object)
    assert "object 'Contactt' does not exist in this org" in _failure(result)


# ---------------------------------------------------------------------------- transport


def test_above_bulk_threshold_uses_bulk_api_2(fake: FakeSalesforce, tmp_path: Path) -> None:
    emails = [f"user{i:03d}@example.com" for i in range(30)]
    ids = contacts(fake, emails)
    catalog = write_catalog(tmp_path, fake, {"bulk_threshold": 10, "fields": [
        {"column": "nps", "field": "WalkMe_NPS__c"}, {"column": "note", "field": "WalkMe_Alt_Email__c"},
        {"column": "last_seen", "field": "WalkMe_Last_Seen__c"}]})
    connect(catalog, fake)
    rows = [row(e, nps=i, note=f"alt{i}@example.com") for i, e in enumerate(emails)]
    rows[5] = row(emails[5], nps=5, note="broken")  # Salesforce rejects it: failed with its code
    rows[6] = row(emails[6], nps=6, note=None, seen=None)  # nulls go as #N/A and clear the field
    rows.append(row("nobody@example.com"))
    seed(catalog, rows)
    fake.fail_lock([ids[7]], times=1)  # the locked record is retried in the same run
    result = run_sync_job(catalog)
    assert result.success, _failure(result)
    run = last_sync(catalog)
    assert counts(run) == {"rows": 31, "matched": 30, "updated": 29, "unchanged": 0, "unmatched": 1, "ambiguous": 0,
                           "invalid": 0, "failed": 1}
    assert run["transport"] == "bulk+composite"  # the one locked record went again through sObject Collections
    kinds = fake.calls_by_kind()
    assert kinds["bulk_query_create"] == 1 and kinds["bulk_ingest_create"] == 1 and kinds["composite_update"] == 1
    assert "query" not in kinds
    [job] = fake.ingest_jobs()
    assert job["operation"] == "update" and job["numberRecordsProcessed"] == 30
    assert results_of(catalog, run["run_id"])[emails[5]]["error"].startswith("INVALID_EMAIL_ADDRESS: ")
    assert fake.get("Contact", ids[29])["WalkMe_NPS__c"] == 29
    assert fake.get("Contact", ids[7])["WalkMe_NPS__c"] == 7
    assert fake.get("Contact", ids[6])["WalkMe_Last_Seen__c"] is None
    _no_writes(fake)


def test_many_keys_are_looked_up_in_chunks_within_the_uri_limit(fake: FakeSalesforce, tmp_path: Path) -> None:
    emails = [f"someone.with.a.rather.long.address.{i:04d}@example-company.com" for i in range(1500)]
    contacts(fake, emails[::2])
    catalog = write_catalog(tmp_path, fake, {"fields": [{"column": "nps", "field": "WalkMe_NPS__c"}]})
    connect(catalog, fake)
    seed(catalog, [row(e, nps=1) for e in emails])
    assert run_sync_job(catalog).success
    run = last_sync(catalog)
    assert (run["updated"], run["unmatched"]) == (750, 750)
    queries = [c for c in fake.calls if c["kind"] == "query"]
    assert len(queries) > 1 and {c["status"] for c in queries} == {200}
    assert fake.calls_by_kind()["composite_update"] == 4  # 750 records, 200 a call


def test_in_clauses_are_escaped_and_fit_the_limits() -> None:
    values = [f"user'{i}\\@example.com" for i in range(3000)] + ["x' OR Name != '"]
    statements = chunk_in_clauses(values, "SELECT Id, Email FROM Contact WHERE Email IN (")
    assert len(statements) > 1
    for soql in statements:
        assert len(urlencode({"q": soql})) + 200 < MAX_URI_BYTES
    assert "'x\\' OR Name != \\''" in statements[-1]
    assert sum(s.count("@example.com") for s in statements) == 3000


# ---------------------------------------------------------------------------- Dagster shape


def test_definitions_shape(fake: FakeSalesforce, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, fake)
    defs = build_definitions(catalog)
    integration = catalog.integration("onboarding_to_salesforce")
    key = salesforce_key(integration)  # type: ignore[arg-type]
    graph = defs.resolve_asset_graph()
    node = graph.get(key)
    assert node.kinds == {"salesforce"} and node.group_name == "onboarding_to_salesforce"
    assert node.parent_keys == {report_key("onboarding")}
    assert node.pools == {integration_pool("onboarding_to_salesforce")} and node.tags[TAG_INTEGRATION] == "onboarding_to_salesforce"
    job = defs.resolve_job_def("onboarding_to_salesforce_job")
    assert {k for k in job.asset_layer.asset_graph.get_all_asset_keys() if job.asset_layer.has(k)} >= {
        key, report_key("onboarding")}
    schedule = defs.resolve_schedule_def("onboarding_to_salesforce_schedule")
    assert schedule.cron_schedule == "0 9 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert not [s for s in defs.sensors or [] if "onboarding_to_salesforce" in s.name]


def test_a_failed_report_is_recorded_as_a_failed_sync(fake: FakeSalesforce, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, fake, report_sql="SELECT user_id AS email, no_such_column FROM user_profiles")
    connect(catalog, fake)
    seed(catalog, [row("a@example.com")])
    result = run_sync_job(catalog)
    assert not result.success
    run = last_sync(catalog)
    assert run["status"] == "Failed" and "nothing sent: report 'onboarding' failed" in run["message"]
    assert hub_runs(catalog)[-1]["status"] == "failed"
    assert not fake.calls  # nothing was even logged in to


def test_a_run_stopped_while_sending_keeps_what_was_sent(fake: FakeSalesforce, tmp_path: Path) -> None:
    from integration_hub.core.warehouse import open_writer
    from integration_hub.reports.factory import materialize_report
    from integration_hub.salesforce.client import SalesforceApiError, SalesforceClient
    from integration_hub.salesforce.sync import SyncError, run_sync

    emails = [f"u{i:03d}@example.com" for i in range(250)]
    contacts(fake, emails)
    catalog = write_catalog(tmp_path, fake, {"fields": [{"column": "nps", "field": "WalkMe_NPS__c"}]})
    connect(catalog, fake)
    seed(catalog, [row(e, nps=i % 10) for i, e in enumerate(emails)])

    class OutageAfterOneBatch(SalesforceClient):
        batches = 0

        def composite_update(self, object_name: str, records: list) -> list:
            self.batches += 1
            if self.batches > 1:
                raise SalesforceApiError("update Contact failed (after 6 attempts): HTTP 503: down", status=503)
            return super().composite_update(object_name, records)

    integration = catalog.integration("onboarding_to_salesforce")
    with open_writer(catalog) as con:
        materialize_report(con, catalog.report("onboarding"))
        client = OutageAfterOneBatch(catalog, catalog.connection("sf"))  # type: ignore[arg-type]
        with pytest.raises(SyncError, match="stopped: update Contact failed"):
            run_sync(con, catalog, integration, client=client)  # type: ignore[arg-type]
    run = last_sync(catalog)
    assert (run["status"], run["updated"], run["failed"]) == ("Failed", 200, 50)
    not_sent = query(catalog, "SELECT error FROM salesforce_sync_results WHERE outcome = 'failed'")
    assert len(not_sent) == 50 and not_sent[0]["error"].startswith("NOT_SENT: update Contact failed")
    assert query(catalog, "SELECT count(*) AS n FROM salesforce_snapshots")[0]["n"] == 200
    assert hub_runs(catalog)[-1]["status"] == "failed"

    # The next run sends only the 50 that were not confirmed.
    fake.reset_calls()
    assert run_sync_job(catalog).success
    assert (last_sync(catalog)["updated"], last_sync(catalog)["unchanged"]) == (50, 200)
