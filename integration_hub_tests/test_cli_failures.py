"""A failed `run` prints one line and exits non-zero, for every kind; the stack trace is in the run's log.

Output is captured at the file descriptor level (capfd), so whatever Dagster's console logger or a
library writes to the terminal counts too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_hub.api.batches import BatchStore
from integration_hub.cli.main import main
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.fakes.salesforce import FakeSalesforce
from integration_hub_tests.support import CRM_INTEGRATION, lake_settings, local_landing_at
from integration_hub_tests.test_exports_support import TRICKY_ROWS, seed
from integration_hub_tests.test_exports_support import write_catalog as write_export_catalog

GOOD = "email,Plan Tier,tickets,is_active,signup,last_login\na@x.com,gold,1,yes,2024-01-01,\nb@x.com,free,2,no,2024-02-01,\n"


def cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def one_line_failure(capfd: pytest.CaptureFixture[str], catalog: str, name: str) -> str:
    """`run NAME` failed: exactly one line on stdout+stderr together, on stderr, exit code 1."""
    code, out, err = cli(capfd, "--catalog", catalog, "run", name)
    lines = (out + err).splitlines()
    assert code == 1 and out == "" and len(lines) == 1, out + err
    assert lines[0].startswith(f"error: {name} failed: ") and "Traceback" not in lines[0]
    assert f"(details: integration-hub logs {name} --run " in lines[0]
    return lines[0]


def assert_trace_in_logs(capfd: pytest.CaptureFixture[str], catalog: str, name: str, line: str, frame: str) -> dict:
    """`logs NAME --run ID` (the id the failure line names) shows the failed Dagster run and its stack trace."""
    short = re.search(r"--run (\w+)\)$", line).group(1)  # type: ignore[union-attr]
    code, out, err = cli(capfd, "--catalog", catalog, "logs", name, "--run", short)
    assert code == 0 and err == "", err
    assert re.search(rf"dagster run\s+{short}[-\w]+ \(job {name}_job\)", out) and re.search(r"status\s+failed", out)
    assert "Stack Trace:" in out and frame in out  # the trace of the failed step, from the event log
    code, out, _ = cli(capfd, "--catalog", catalog, "logs", name, "--run", short, "--json")
    shown = json.loads(out)
    assert shown["dagster_run"]["status"] == "failed" and shown["dagster_run"]["run_id"].startswith(short)
    [error] = shown["dagster_run"]["errors"]
    assert frame in error["stack_trace"] and error["message"]
    return shown


def test_s3_csv_run_that_cannot_list_its_bucket(
    moto_server: MotoServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    connection = {"name": "landing", "type": "s3", "bucket": "no-such-landing-bucket", "prefix": "inbound",
                  "region": "us-east-1", "endpoint_url": moto_server.endpoint_url,
                  "access_key_id": "testing", "secret_access_key": "testing"}
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump({"warehouse": lake_settings(tmp_path), "connections": [connection],
                                    "integrations": [CRM_INTEGRATION]}))
    line = one_line_failure(capfd, str(path), "crm")
    assert "bucket 'no-such-landing-bucket' does not exist" in line and "testing" not in line
    shown = assert_trace_in_logs(capfd, str(path), "crm", line, "integration_hub/inbound_csv/factory.py")
    assert shown["sources"] == []  # it failed before any file
    # The run recorded no source, yet the history shows it, with its runtime.
    code, out, _ = cli(capfd, "--catalog", str(path), "logs", "crm", "--json")
    [run] = json.loads(out)
    assert run["status"] == "failed" and run["run_id"] is None and run["runtime_seconds"] >= 0
    assert "does not exist" in run["message"]


def test_s3_csv_run_whose_only_file_failed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    landing = local_landing_at(tmp_path)
    landing.write_catalog()
    landing.put("crm/empty.csv", b"")
    line = one_line_failure(capfd, str(landing.catalog_path), "crm")
    assert "crm/empty.csv is empty (0 bytes)" in line


def test_api_run_that_cannot_read_its_batches(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from integration_hub_tests.api_support import WEB_INTEGRATION
    from integration_hub_tests.api_support import write_catalog as write_api_catalog

    catalog = write_api_catalog(tmp_path, WEB_INTEGRATION)
    folder = BatchStore(catalog.landing_path).folder("web")
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")  # the batch folder is a file: the run cannot list it
    path = str(tmp_path / "integrations.yaml")
    line = one_line_failure(capfd, path, "web")
    assert "Not a directory" in line and str(folder) in line
    assert_trace_in_logs(capfd, path, "web", line, "integration_hub/api/factory.py")


@pytest.mark.usefixtures("salesforce_environment")
def test_salesforce_run_of_an_org_not_connected(
    fake: FakeSalesforce, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from integration_hub_tests.test_salesforce_support import row
    from integration_hub_tests.test_salesforce_support import seed as seed_people
    from integration_hub_tests.test_salesforce_support import write_catalog as write_sf_catalog

    catalog = write_sf_catalog(tmp_path, fake)  # no `salesforce connect`: no token stored
    seed_people(catalog, [row("ann@example.com")])
    path = str(tmp_path / "integrations.yaml")
    line = one_line_failure(capfd, path, "onboarding_to_salesforce")
    assert "is not connected to Salesforce yet: run `integration-hub salesforce connect sf`" in line
    assert_trace_in_logs(capfd, path, "onboarding_to_salesforce", line, "integration_hub/salesforce/")


def test_file_export_run_to_a_missing_bucket(
    moto_server: MotoServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    connection: dict[str, Any] = {"name": "outbox", "type": "s3", "bucket": "no-such-export-bucket",
                                  "region": "us-east-1", "endpoint_url": moto_server.endpoint_url,
                                  "access_key_id": "testing", "secret_access_key": "testing"}
    catalog = write_export_catalog(tmp_path, connection)
    seed(catalog, TRICKY_ROWS)
    path = str(tmp_path / "integrations.yaml")
    line = one_line_failure(capfd, path, "daily")
    assert "Could not write s3://no-such-export-bucket/daily/daily_" in line and "does not exist" in line
    shown = assert_trace_in_logs(capfd, path, "daily", line, "integration_hub/exports/factory.py")
    [source] = shown["sources"]
    assert source["status"] == "failed" and source["runtime_seconds"] >= 0


def test_report_whose_sql_fails_at_run_time(
    moto_server: MotoServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bucket = "report-fails"
    moto_server.client().create_bucket(Bucket=bucket)
    connection: dict[str, Any] = {"name": "outbox", "type": "s3", "bucket": bucket, "region": "us-east-1",
                                  "endpoint_url": moto_server.endpoint_url, "access_key_id": "testing",
                                  "secret_access_key": "testing"}
    catalog = write_export_catalog(tmp_path, connection, report_sql="SELECT user_id, no_such_column FROM user_profiles")
    seed(catalog, TRICKY_ROWS)
    path = str(tmp_path / "integrations.yaml")
    line = one_line_failure(capfd, path, "daily")
    assert "report 'people_report' failed" in line and "no_such_column" in line
    shown = assert_trace_in_logs(capfd, path, "daily", line, "integration_hub/reports/factory.py")
    [source] = shown["sources"]
    assert source["message"].startswith("nothing exported: report 'people_report' failed")
    assert "Contents" not in moto_server.client().list_objects_v2(Bucket=bucket)


def test_a_failed_run_prints_one_line_in_a_real_terminal_process(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """The same through the installed entry point in its own process: nothing but the one line."""
    import subprocess
    import sys

    connection: dict[str, Any] = {"name": "outbox", "type": "s3", "bucket": "no-such-export-bucket",
                                  "region": "us-east-1", "endpoint_url": moto_server.endpoint_url,
                                  "access_key_id": "testing", "secret_access_key": "testing"}
    catalog = write_export_catalog(tmp_path, connection)
    seed(catalog, TRICKY_ROWS)
    result = subprocess.run(
        [sys.executable, "-m", "integration_hub.cli.main", "--catalog", str(tmp_path / "integrations.yaml"),
         "run", "daily"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: daily failed: Could not write s3://no-such-export-bucket/"), result.stderr


# ---------------------------------------------------------------------------- logs


def test_logs_of_one_dagster_run_list_every_file_with_its_outcome(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    landing = local_landing_at(tmp_path)
    landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.5})
    catalog = str(landing.catalog_path)
    landing.put("crm/a_applied.csv", GOOD)
    landing.put("crm/b_partial.csv", GOOD + "c@x.com,gold,lots,yes,2024-01-01,\n")
    landing.put("crm/c_failed.csv", "id,other\n1,2\n")
    code, out, err = cli(capfd, "--catalog", catalog, "run", "crm")
    assert code == 1 and len(out.splitlines()) == 3  # one line per file; the failure on stderr
    [line] = err.splitlines()
    assert line.startswith("error: 1 of 3 sources failed in dagster run ")
    dagster_run_id = re.search(r"dagster run ([-\w]+)", line).group(1)  # type: ignore[union-attr]

    for wanted in (dagster_run_id, dagster_run_id[:8]):  # the whole id, or its start as the UI shows it
        code, out, err = cli(capfd, "--catalog", catalog, "logs", "crm", "--run", wanted)
        assert code == 0 and err == ""
        assert re.search(rf"dagster run\s+{dagster_run_id} \(job crm_job\)", out)
        assert re.search(r"status\s+success", out) and re.search(r"runtime\s+\d+(\.\d+)? s", out)
        assert re.search(r"a_applied\.csv\s+success\s+[\d.]+ s\s+2\s+2\s+0", out), out
        assert re.search(r"b_partial\.csv\s+partial\s+[\d.]+ s\s+3\s+2\s+1", out), out
        assert re.search(r"c_failed\.csv\s+failed\s+[\d.]+ s\s+0\s+0\s+0", out), out

    code, out, _ = cli(capfd, "--catalog", catalog, "logs", "crm", "--run", dagster_run_id, "--json")
    shown = json.loads(out)
    assert shown["dagster_run"]["run_id"] == dagster_run_id and shown["dagster_run"]["errors"] == []
    outcomes = {Path(s["source"]).name: s["status"] for s in shown["sources"]}
    assert outcomes == {"a_applied.csv": "success", "b_partial.csv": "partial", "c_failed.csv": "failed"}
    partial = next(s for s in shown["sources"] if s["status"] == "partial")
    assert partial["rejected_rows"][0]["value"] == "lots" and partial["runtime_seconds"] >= 0

    # One source by its own run id: that file in full.
    code, out, _ = cli(capfd, "--catalog", catalog, "logs", "crm", "--run", partial["run_id"])
    assert code == 0 and re.search(r"status\s+partial", out) and "lots" in out and re.search(r"runtime\s+[\d.]+ s", out)

    # The history: a runtime and the Dagster run on every row.
    code, out, _ = cli(capfd, "--catalog", catalog, "logs", "crm")
    header = out.splitlines()[0].split()
    assert header[:5] == ["RUN", "DAGSTER", "RUN", "STARTED", "RUNTIME"]
    assert sum(dagster_run_id[:8] in row for row in out.splitlines()) == 3
    code, out, _ = cli(capfd, "--catalog", catalog, "logs", "crm", "--json")
    assert all(r["runtime_seconds"] >= 0 and r["dagster_run_id"] == dagster_run_id for r in json.loads(out))

    code, out, err = cli(capfd, "--catalog", catalog, "logs", "crm", "--run", "ffffffff")
    assert code == 1 and out == "" and err == "error: no run 'ffffffff' for crm; list runs with `integration-hub logs crm`\n"
