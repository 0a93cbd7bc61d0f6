"""The command line for Salesforce integrations: check, run --dry-run, run, run --full-resync, logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from integration_hub.cli.main import main
from integration_hub_tests.fakes.salesforce import FakeSalesforce
from integration_hub_tests.test_salesforce_support import (
    connect,
    contacts,
    query,
    row,
    seed,
    write_catalog,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("salesforce_environment")]
NAME = "onboarding_to_salesforce"
TOKEN_SHAPES = re.compile(r"00D[A-Za-z0-9]{12,15}!|5Aep861")


def _setup(fake: FakeSalesforce, tmp_path: Path) -> tuple[str, list[str]]:
    ids = contacts(fake, ["ann@example.com", "bob@example.com", "dup@example.com", "dup@example.com"])
    catalog = write_catalog(tmp_path, fake)
    connect(catalog, fake)
    seed(catalog, [row("ann@example.com", nps=10), row("bob@example.com", nps=8), row("dup@example.com"),
                   row("nobody@example.com"), row("bad@example.com", risk="Unknown")])
    return str(tmp_path / "integrations.yaml"), ids


def test_dry_run_shows_what_would_happen_and_sends_nothing(
    fake: FakeSalesforce, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = _setup(fake, tmp_path)
    assert main(["run", NAME, "--dry-run", "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert "(dry run: nothing sent)" in out
    assert "5 rows: 2 would be updated, 0 unchanged, 1 unmatched, 1 ambiguous, 1 invalid" in out
    assert "would update:" in out and "ann@example.com" in out and '"WalkMe_NPS__c":10' in out
    assert "unmatched (no record has this key; nothing is created):" in out and "nobody@example.com" in out
    assert "ambiguous (several records have this key; skipped):" in out and f"{ids[2]}, {ids[3]}" in out
    assert "invalid (not sent):" in out and "Unknown is not a value of this restricted picklist" in out
    kinds = fake.calls_by_kind()
    assert "composite_update" not in kinds and not any(k.startswith("bulk_ingest") for k in kinds)
    assert fake.get("Contact", ids[0])["WalkMe_NPS__c"] is None
    tables = {r["table_name"] for r in query(write_catalog(tmp_path, fake),
                                               "SELECT table_name FROM information_schema.tables")}
    assert "salesforce_sync_runs" not in tables and "report_onboarding" not in tables  # read-only


def test_run_full_resync_and_logs(fake: FakeSalesforce, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = _setup(fake, tmp_path)
    assert main(["run", NAME, "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert "onboarding -> Contact: partial (5 read, 2 applied, 1 rejected)" in out
    assert "2 updated, 0 unchanged, 1 unmatched, 1 ambiguous, 1 invalid, 0 failed" in out
    assert fake.get("Contact", ids[0])["WalkMe_NPS__c"] == 10

    assert main(["run", NAME, "--catalog", path]) == 0
    assert "(5 read, 0 applied, 1 rejected)" in capsys.readouterr().out
    assert main(["run", NAME, "--full-resync", "--catalog", path]) == 0
    assert "(5 read, 2 applied, 1 rejected)" in capsys.readouterr().out
    assert "create" not in fake.calls_by_kind()

    assert main(["logs", NAME, "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert out.count("onboarding -> Contact") == 3
    runs = query(write_catalog(tmp_path, fake), "SELECT run_id FROM salesforce_sync_runs ORDER BY started_at")
    first = runs[0]["run_id"]
    assert main(["logs", NAME, "--run", first, "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sync_status\s+Completed", out) and re.search(r"report\s+onboarding", out)
    assert "results:" in out and "INVALID" not in out  # headings are the column names
    assert re.search(r"bad@example.com\s+-\s+invalid\s+WalkMe_Churn_Risk__c: Unknown is not a value", out)
    assert re.search(rf"ann@example.com\s+{ids[0]}\s+updated", out)
    assert not TOKEN_SHAPES.search(out)

    assert main(["logs", NAME, "--run", first, "--json", "--catalog", path]) == 0
    shown = json.loads(capsys.readouterr().out)
    [run] = shown["sources"]
    assert shown["dagster_run"]["status"] == "success" and shown["dagster_run"]["run_id"] == run["dagster_run_id"]
    assert run["kind"] == "salesforce" and run["sync_status"] == "Completed" and run["rows"] == 5
    outcomes = {r["report_key"]: r["outcome"] for r in run["results"]}
    assert outcomes == {"ann@example.com": "updated", "bob@example.com": "updated", "dup@example.com": "ambiguous",
                        "nobody@example.com": "unmatched", "bad@example.com": "invalid"}


def test_check_logs_in_and_validates_the_mapping(
    fake: FakeSalesforce, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _setup(fake, tmp_path)
    assert main(["check", NAME, "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert f"ok   {NAME}: logged in to {fake.url} as {fake.username}" in out
    assert "Contact has the key Email (email, filterable) and 5 updateable mapped field(s)" in out

    write_catalog(tmp_path, fake, {"fields": [{"column": "nps", "field": "WalkMe_Score__c"}]})
    assert main(["check", NAME, "--catalog", path]) == 1
    assert "FAIL onboarding_to_salesforce: field 'WalkMe_Score__c' of Contact is not updateable" in capsys.readouterr().out

    write_catalog(tmp_path, fake, connection={"name": "sf2"} | {}, integration={"connection": "sf2"})
    assert main(["check", NAME, "--catalog", path]) == 1
    assert "is not connected to Salesforce yet: run `integration-hub salesforce connect sf2`" in capsys.readouterr().out
