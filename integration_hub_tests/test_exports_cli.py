"""File exports through the command line: check (real write test), run, dry run, logs, integrations, toggles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.storage.blob import BlobServiceClient

from integration_hub.cli.main import main
from integration_hub_tests.fakes.azurite import AzuriteServer, connection_string
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.support import lake_settings
from integration_hub_tests.test_exports_support import (
    PEOPLE_INTEGRATION,
    REPORT_SQL,
    TRICKY_ROWS,
    parse_csv,
    s3_target,
    seed,
    write_catalog,
)

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
BAD_SECRET = "not-the-real-secret-123"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _check_catalog(root: Path, moto: MotoServer, azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    moto.client().create_bucket(Bucket="exports-ok")
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("exports-ok")
    monkeypatch.setenv("AZ_OK", azurite.connection_string)
    monkeypatch.setenv("AZ_BAD", connection_string(azurite.account_url, account_key=WRONG_KEY))
    monkeypatch.setenv("S3_BAD_SECRET", BAD_SECRET)
    s3 = {"type": "s3", "region": "us-east-1", "endpoint_url": moto.endpoint_url,
          "access_key_id": "testing", "secret_access_key": "testing"}
    connections = [
        {"name": "s3_ok", **s3, "bucket": "exports-ok", "prefix": "hub"},
        {"name": "s3_no_bucket", **s3, "bucket": "no-such-bucket-here"},
        {"name": "s3_bad_key", **s3, "bucket": "exports-ok", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
         "secret_access_key": "${S3_BAD_SECRET}"},
        {"name": "az_ok", "type": "azure_blob", "container": "exports-ok", "prefix": "hub", "connection_string": "${AZ_OK}"},
        {"name": "az_no_container", "type": "azure_blob", "container": "no-such-container", "connection_string": "${AZ_OK}"},
        {"name": "az_bad_key", "type": "azure_blob", "container": "exports-ok", "connection_string": "${AZ_BAD}"},
        {"name": "landing", "type": "local", "path": str(root / "landing")},
    ]
    exports = [
        {"name": f"to_{c['name']}", "type": "file_export", "connection": c["name"], "report": "people_report",
         "folder": "daily"}
        for c in connections if c["name"] != "landing"
    ]
    exports[3]["file_name"] = "by_day/{integration}_{date}.csv"  # to_az_ok writes into a subfolder
    document = {
        "warehouse": lake_settings(root),
        "connections": connections,
        "integrations": [PEOPLE_INTEGRATION, *exports],
        "reports": [{"name": "people_report", "sql": REPORT_SQL}],
    }
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_check_writes_a_marker_and_says_what_failed(
    moto_server: MotoServer, azurite: AzuriteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _check_catalog(tmp_path, moto_server, azurite, monkeypatch)
    code, out, _ = cli(capsys, "--catalog", str(path), "check")
    assert code == 1
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith(("ok", "FAIL"))}
    assert lines["ok   to_s3_ok"].startswith("ok   to_s3_ok: can write to s3://exports-ok/hub/ (wrote and deleted a test object)")
    assert "files go to s3://exports-ok/hub/daily/to_s3_ok_" in lines["ok   to_s3_ok"]
    assert "bucket 'no-such-bucket-here' does not exist" in lines["FAIL to_s3_no_bucket"]
    assert "create it or fix `bucket`" in lines["FAIL to_s3_no_bucket"]
    assert lines["ok   to_az_ok"].startswith(f"ok   to_az_ok: can write to {azurite.account_url}/exports-ok/hub/")
    assert f"files go to {azurite.account_url}/exports-ok/hub/daily/by_day/to_az_ok_" in lines["ok   to_az_ok"]
    assert "container 'no-such-container' does not exist" in lines["FAIL to_az_no_container"]
    assert "rejected the credentials" in lines["FAIL to_az_bad_key"]
    assert WRONG_KEY not in out and "AccountKey" not in out
    # The marker objects are gone again.
    assert "Contents" not in moto_server.client().list_objects_v2(Bucket="exports-ok")
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("exports-ok")
    assert list(container.list_blobs()) == []

    with moto_server.iam_auth():  # moto checks signatures and key ids only with IAM auth on
        code, out, _ = cli(capsys, "--catalog", str(path), "check", "to_s3_bad_key", "--json")
    assert code == 1
    shown = json.loads(out)  # the whole output is one JSON document
    assert shown["ok"] is False and shown["catalog"]["connections"] == 7
    [outcome] = shown["checks"]
    assert not outcome["ok"] and "access key id is not valid" in outcome["message"]
    assert BAD_SECRET not in out and "AKIAIOSFODNN7EXAMPLE" not in outcome["message"]


def test_run_logs_integrations_and_toggle(
    moto_server: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = s3_target("moto_server", moto_server.client(), moto_server.endpoint_url)
    catalog = write_catalog(tmp_path, target.connection)
    seed(catalog, TRICKY_ROWS)
    path = str(tmp_path / "integrations.yaml")

    code, out, _ = cli(capsys, "--catalog", path, "run", "daily", "--dry-run")
    assert code == 0
    assert f"report people_report: {len(TRICKY_ROWS)} rows" in out
    url = re.search(r"would write (s3://\S+)", out).group(1)  # type: ignore[union-attr]
    assert url.startswith(f"s3://{target.extra['bucket']}/exports/daily/daily_")
    assert target.names() == []  # a dry run writes nothing

    code, out, err = cli(capsys, "--catalog", path, "run", "daily")
    assert code == 0, err
    assert re.search(rf"people_report: success \({len(TRICKY_ROWS)} read, {len(TRICKY_ROWS)} applied, 0 rejected\) "
                     rf"- wrote s3://\S+/exports/daily/daily_\d{{8}}T\d{{6}}Z\.csv", out), out
    [key] = target.names()
    assert len(parse_csv(target.read(key))) == len(TRICKY_ROWS) + 1

    code, out, _ = cli(capsys, "--catalog", path, "integrations", "--json")
    row = next(r for r in json.loads(out) if r["name"] == "daily")
    assert row["direction"] == "outbound" and row["type"] == "file_export"
    assert row["last_run_ok"] is True and row["enabled"] is True and row["schedule"] == "0 9 * * *"
    assert row["source"] == "report people_report -> outbox:daily"

    code, out, _ = cli(capsys, "--catalog", path, "logs", "daily", "--json")
    [run] = json.loads(out)
    assert run["status"] == "success" and run["kind"] == "file_export"
    assert run["details"]["target_url"] == f"s3://{target.extra['bucket']}/{key}"
    assert run["details"]["bytes"] == len(target.read(key))

    code, out, _ = cli(capsys, "--catalog", path, "logs", "daily", "--run", run["run_id"])
    assert code == 0 and re.search(r"target_url\s+s3://", out) and re.search(r"bytes\s+\d+", out)

    code, out, _ = cli(capsys, "--catalog", path, "disable", "daily")
    assert code == 0 and "daily disabled (daily_schedule stopped)" in out
    code, _, err = cli(capsys, "--catalog", path, "run", "daily")
    assert code == 1 and "daily is disabled" in err
    code, out, _ = cli(capsys, "--catalog", path, "integrations", "--json")
    assert next(r for r in json.loads(out) if r["name"] == "daily")["enabled"] is False
    code, out, _ = cli(capsys, "--catalog", path, "enable", "daily")
    assert code == 0 and "daily enabled (daily_schedule started)" in out


def test_failed_run_through_the_cli(moto_server: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    connection: dict[str, Any] = {"name": "outbox", "type": "s3", "bucket": "no-such-bucket-here",
                                  "region": "us-east-1", "endpoint_url": moto_server.endpoint_url,
                                  "access_key_id": "testing", "secret_access_key": "testing"}
    catalog = write_catalog(tmp_path, connection)
    seed(catalog, TRICKY_ROWS)
    path = str(tmp_path / "integrations.yaml")
    code, out, err = cli(capsys, "--catalog", path, "run", "daily")
    assert code == 1 and out == ""
    [line] = err.splitlines()  # one line, no Dagster log or stack trace
    assert line.startswith("error: daily failed: Could not write s3://no-such-bucket-here/daily/daily_"), err
    assert "bucket 'no-such-bucket-here' does not exist" in line and "integration-hub logs daily --run " in line
    code, out, _ = cli(capsys, "--catalog", path, "integrations", "--json")
    assert next(r for r in json.loads(out) if r["name"] == "daily")["last_run_ok"] is False
