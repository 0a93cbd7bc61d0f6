"""Helpers (no tests) for the Salesforce tests: a fake org with WalkMe fields, a catalog, seed data, runs."""

from __future__ import annotations

import contextlib
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from integration_hub.core.catalog import Catalog, load_catalog
from integration_hub.core.state import job_name
from integration_hub.core.warehouse import ensure_schema, open_reader, open_writer, transaction
from integration_hub.salesforce.auth import token_store
from integration_hub_tests.fakes.salesforce import (
    FakeSalesforce,
    boolean_field,
    date_field,
    email_field,
    int_field,
    number_field,
    picklist_field,
    sf_field,
    text_field,
    textarea_field,
)
from integration_hub_tests.support import lake_settings

CLIENT_ID = "hub-consumer-key"
PEOPLE: dict[str, Any] = {
    "name": "people",
    "type": "s3_csv",
    "connection": "landing",
    "folder": "people",
    "user_id_column": "email",
    "properties": [
        {"column": "pct", "name": "onboarding_pct", "type": "number"},
        {"column": "nps", "name": "nps", "type": "number"},
        {"column": "risk", "name": "churn_risk", "type": "string"},
        {"column": "active", "name": "active", "type": "boolean"},
        {"column": "seen", "name": "last_seen", "type": "date"},
        {"column": "note", "name": "note", "type": "string"},
    ],
}
REPORT_SQL = (
    "SELECT user_id AS email, onboarding_pct, nps, churn_risk, active, last_seen, note "
    "FROM user_profiles ORDER BY user_id"
)
FIELDS = [
    {"column": "onboarding_pct", "field": "WalkMe_Onboarding_Pct__c"},
    {"column": "nps", "field": "WalkMe_NPS__c"},
    {"column": "churn_risk", "field": "WalkMe_Churn_Risk__c"},
    {"column": "active", "field": "WalkMe_Active__c"},
    {"column": "last_seen", "field": "WalkMe_Last_Seen__c"},
]


def add_contact_object(fake: FakeSalesforce) -> None:
    """Contact with standard fields plus the WalkMe_...__c custom fields the tests map."""
    ro = {"createable": False, "updateable": False}
    fake.add_object("Contact", [
        text_field("FirstName", 40),
        text_field("LastName", 80, nillable=False),
        text_field("Name", 121, nameField=True, **ro),
        email_field("Email", idLookup=True),
        text_field("Title", 128),
        textarea_field("Description"),
        number_field("WalkMe_Onboarding_Pct__c", "percent", precision=5, scale=2),
        int_field("WalkMe_NPS__c"),
        picklist_field("WalkMe_Churn_Risk__c", ["Low", "Medium", "High"], restricted=True),
        boolean_field("WalkMe_Active__c"),
        date_field("WalkMe_Last_Seen__c"),
        text_field("WalkMe_Note__c", 20),
        email_field("WalkMe_Alt_Email__c"),
        text_field("WalkMe_Secret__c", 100, filterable=False),  # like an encrypted text field
        sf_field("WalkMe_Score__c", "double", calculated=True, **ro),
    ])


def start_fake() -> FakeSalesforce:
    fake = FakeSalesforce().start()
    add_contact_object(fake)
    return fake


def contacts(fake: FakeSalesforce, emails: list[str | None]) -> list[str]:
    return fake.insert("Contact", [{"LastName": f"Person {n}", "Email": e} for n, e in enumerate(emails)])


def write_catalog(
    root: Path,
    fake: FakeSalesforce,
    integration: dict[str, Any] | None = None,
    connection: dict[str, Any] | None = None,
    report_sql: str = REPORT_SQL,
) -> Catalog:
    (root / "landing").mkdir(exist_ok=True)
    sf_connection = {
        "name": "sf",
        "type": "salesforce",
        "environment": "sandbox",
        "login_url": fake.url,
        "client_id": CLIENT_ID,
        "ca_bundle": fake.ca_file,
        "timeout_seconds": 10,
        "retry_backoff_seconds": 0.01,
        **(connection or {}),
    }
    sync = {
        "name": "onboarding_to_salesforce",
        "type": "salesforce",
        "connection": "sf",
        "report": "onboarding",
        "object": "Contact",
        "report_key": "email",
        "salesforce_key": "Email",
        "fields": FIELDS,
        **(integration or {}),
    }
    document = {
        "warehouse": lake_settings(root),
        "landing": str(root / "api_landing"),
        "connections": [{"name": "landing", "type": "local", "path": str(root / "landing")}, sf_connection],
        "integrations": [PEOPLE, sync],
        "reports": [{"name": "onboarding", "sql": report_sql}],
    }
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return load_catalog(path)


def connect(catalog: Catalog, fake: FakeSalesforce, name: str = "sf") -> str:
    """Store a refresh token as `salesforce connect` would (the code flow itself is tested separately)."""
    refresh = fake.issue_refresh_token(client_id=CLIENT_ID)
    token_store(catalog).save(name, {"refresh_token": refresh, "instance_url": fake.url, "client_id": CLIENT_ID,
                                     "username": fake.username})
    return refresh


def row(email: str, pct: float | None = 0.5, nps: float | None = 9, risk: str | None = "Low",
        active: bool | None = True, seen: date | None = date(2024, 5, 1), note: str | None = None) -> tuple:
    return (email, pct, nps, risk, active, seen, note)


def seed(catalog: Catalog, rows: list[tuple[Any, ...]]) -> None:
    """Attribute rows straight into attributes_people (the schema made by the real code)."""
    with open_writer(catalog) as con, transaction(con):  # one snapshot, not one per row
        ensure_schema(con, catalog)
        con.execute("DELETE FROM attributes_people")
        stamp = datetime(2024, 6, 1, tzinfo=timezone.utc)
        if rows:
            con.executemany(
                "INSERT INTO attributes_people VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'test')", [(*r, stamp) for r in rows]
            )


def run_sync_job(catalog: Catalog, full_resync: bool = False, name: str = "onboarding_to_salesforce",
                 instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    from integration_hub.definitions import build_definitions
    from integration_hub.salesforce.factory import run_config

    integration = catalog.integration(name)
    job = build_definitions(catalog).resolve_job_def(job_name(integration))
    with dg.DagsterInstance.ephemeral() if instance is None else contextlib.nullcontext(instance) as active:
        return job.execute_in_process(instance=active, raise_on_error=False,
                                      run_config=run_config(integration, full_resync))  # type: ignore[arg-type]


def query(catalog: Catalog, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with open_reader(catalog) as con:
        assert con is not None
        result = con.execute(sql, params or [])
        names = [d[0] for d in result.description]
        return [dict(zip(names, r, strict=True)) for r in result.fetchall()]


def last_sync(catalog: Catalog) -> dict[str, Any]:
    return query(catalog, "SELECT * FROM salesforce_sync_runs ORDER BY started_at DESC LIMIT 1")[0]


def results_of(catalog: Catalog, run_id: str) -> dict[str, dict[str, Any]]:
    """report_key -> result row (the last one per key when a key has several records)."""
    rows = query(catalog, "SELECT * FROM salesforce_sync_results WHERE run_id = ? ORDER BY salesforce_id", [run_id])
    return {r["report_key"]: r for r in rows}


def hub_runs(catalog: Catalog, name: str = "onboarding_to_salesforce") -> list[dict[str, Any]]:
    runs = query(catalog, "SELECT * FROM integration_runs WHERE integration = ? ORDER BY started_at", [name])
    for run in runs:
        run["details"] = json.loads(run["details"]) if run["details"] else {}
    return runs


def counts(run: dict[str, Any]) -> dict[str, int]:
    return {k: run[k] for k in ("rows", "matched", "updated", "unchanged", "unmatched", "ambiguous", "invalid", "failed")}
