"""File exports end to end: the Dagster job writes the report as CSV into moto, a moto server and Azurite.

Every test reads back what landed with boto3 / azure-storage-blob and compares it with the report.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from integration_hub.core.assets import TAG_INTEGRATION, integration_pool
from integration_hub.core.catalog import CatalogError
from integration_hub.core.outcome import TAG_OUTCOME
from integration_hub.definitions import build_definitions
from integration_hub.exports.export import ExportError, render_file_name
from integration_hub.exports.factory import export_key
from integration_hub.reports.factory import report_key
from integration_hub_tests.fakes.azurite import AzuriteServer
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.test_exports_support import (
    TRICKY_ROWS,
    Target,
    expected_rows,
    export_runs,
    make_target,
    parse_csv,
    run_export_job,
    seed,
    write_catalog,
)

TARGETS = ["local", "moto", "moto_server", "azurite"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    with make_target(request.param, request, monkeypatch) as made:
        yield made


def _only_file(target: Target) -> str:
    names = target.names()
    assert len(names) == 1, names
    return names[0]


# ---------------------------------------------------------------------------- round trips


def test_export_round_trip(target: Target, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, target.connection)
    seed(catalog, TRICKY_ROWS)

    result = run_export_job(catalog)

    assert result.success
    key = _only_file(target)
    assert re.fullmatch(r"exports/daily/daily_\d{8}T\d{6}Z\.csv", key), key
    if target.kind == "local":  # the temporary file was renamed, nothing else is left in the folder
        assert target.names() == [key]
    data = target.read(key)
    assert parse_csv(data) == expected_rows(catalog)
    # RFC 4180: CRLF records, quotes doubled, fields with separators quoted; UTF-8 without a BOM.
    assert data.startswith(b"email,full_name,note,score,active,signup\r\n")
    assert b'"quote ""inside"" here"' in data
    assert b'"Line\nBreak"' in data
    assert "Zoë Ünicode 日本語 🙂".encode() in data
    # Formulas neutralized; a value starting with a space or a quote is left alone; numbers untouched.
    assert b"\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\"" in data
    assert b",'+1," in data and b"'@SUM(A1:A2)" in data and b",-5.0," in data
    assert b",'already quoted," in data and b", =leading space," in data
    # Empty string and NULL stay distinguishable.
    assert b'a08@example.com,"",,,,\r\n' in data
    if target.kind != "local":  # a folder keeps no content type
        assert target.content_type(key) == "text/csv; charset=utf-8"

    [run] = export_runs(catalog)
    assert run["kind"] == "file_export" and run["status"] == "success" and run["source"] == "people_report"
    assert run["rows_read"] == run["rows_applied"] == len(TRICKY_ROWS)
    assert run["details"]["bytes"] == len(data)
    assert run["details"]["file_name"] == key.rsplit("/", 1)[-1]
    assert run["details"]["target_url"].endswith(key)
    assert run["dagster_run_id"] == result.run_id

    [export_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == export_key(catalog.integration("daily"))]
    metadata = export_event.materialization.metadata
    assert metadata["rows"].value == len(TRICKY_ROWS)
    assert metadata["bytes"].value == len(data)
    assert metadata["target_url"].value == run["details"]["target_url"]
    assert "'=HYPERLINK" in metadata["preview"].value


@pytest.mark.parametrize("kind", ["local", "moto", "azurite"])
def test_gzip_export_adds_suffix_and_reads_back(kind: str, request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with make_target(kind, request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection,
                                {"compression": "gzip", "file_name": "{integration}_{date}.csv"})
        seed(catalog, TRICKY_ROWS)
        assert run_export_job(catalog).success
        key = _only_file(target)
        assert re.fullmatch(r"exports/daily/daily_\d{4}-\d{2}-\d{2}\.csv\.gz", key), key
        data = target.read(key)
        assert data[:2] == b"\x1f\x8b"
        assert parse_csv(gzip.decompress(data)) == expected_rows(catalog)
        if kind != "local":
            assert target.content_type(key) == "application/gzip"
        assert export_runs(catalog)[0]["details"]["bytes"] == len(data)


@pytest.mark.parametrize("kind", TARGETS)
def test_zero_rows_gives_a_header_only_file(kind: str, request: pytest.FixtureRequest,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with make_target(kind, request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection)
        seed(catalog, [])
        assert run_export_job(catalog).success
        assert target.read(_only_file(target)) == b"email,full_name,note,score,active,signup\r\n"
        [run] = export_runs(catalog)
        assert run["status"] == "success" and run["rows_read"] == 0


def test_escape_formulas_false_keeps_values_and_headers(request: pytest.FixtureRequest,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sql = 'SELECT user_id AS "=id", full_name, note FROM user_profiles ORDER BY user_id'
    with make_target("moto", request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection, {"escape_formulas": False}, report_sql=sql)
        seed(catalog, TRICKY_ROWS)
        assert run_export_job(catalog).success
        rows = parse_csv(target.read(_only_file(target)))
        assert rows == expected_rows(catalog, escape=False)
        assert rows[0][0] == "=id" and rows[4][1].startswith("=HYPERLINK")

    with make_target("moto", request, monkeypatch) as target:  # default: headers are escaped too
        catalog = write_catalog(tmp_path, target.connection, report_sql=sql)
        assert run_export_job(catalog).success
        rows = parse_csv(target.read(_only_file(target)))
        assert rows[0][0] == "'=id" and rows[4][1].startswith("'=HYPERLINK")


def test_report_is_materialized_in_the_same_run(tmp_path: Path, request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes arrive through the real inbound CSV path; each run exports what is there now."""
    from integration_hub_tests.support import run_job

    with make_target("moto", request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection, {"file_name": "run_{timestamp}.csv"})
        (tmp_path / "landing" / "people").mkdir()
        (tmp_path / "landing" / "people" / "a.csv").write_text(
            "email,name,note,score,active,signup\nz@example.com,Zed,=cmd,1,yes,2024-01-02\n", encoding="utf-8"
        )
        assert run_job(catalog, "people").success
        first = run_export_job(catalog)
        assert first.success
        (tmp_path / "landing" / "people" / "b.csv").write_text(
            "email,name,note,score,active,signup\ny@example.com,Why,\"multi\nline\",2,no,2024-01-03\n",
            encoding="utf-8",
        )
        assert run_job(catalog, "people").success
        import time

        time.sleep(1.1)  # {timestamp} has second resolution
        assert run_export_job(catalog).success
        files = target.names()
        assert len(files) == 2
        assert [len(parse_csv(target.read(k))) for k in files] == [2, 3]
        assert parse_csv(target.read(files[1])) == expected_rows(catalog)
        assert parse_csv(target.read(files[0]))[1][2] == "'=cmd"


# ---------------------------------------------------------------------------- overwrite and failures


@pytest.mark.parametrize("kind", ["local", "moto_server", "azurite"])
def test_existing_file_is_never_overwritten_unless_asked(kind: str, request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with make_target(kind, request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection, {"file_name": "latest.csv"})
        seed(catalog, TRICKY_ROWS[:2])
        assert run_export_job(catalog).success
        before = target.read("exports/daily/latest.csv")

        seed(catalog, TRICKY_ROWS)
        with dg.DagsterInstance.ephemeral() as instance:
            result = run_export_job(catalog, instance=instance)
            assert instance.get_run_by_id(result.run_id).tags[TAG_OUTCOME] == "failed"
        assert not result.success  # the Dagster run is red
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "already exists; set `overwrite: true`" in failure.step_failure_data.error.message
        assert target.read("exports/daily/latest.csv") == before
        runs = export_runs(catalog)
        assert [r["status"] for r in runs] == ["success", "failed"]
        assert "already exists; set `overwrite: true` to replace it or change `file_name`" in runs[1]["message"]

        catalog = write_catalog(tmp_path, target.connection, {"file_name": "latest.csv", "overwrite": True})
        assert run_export_job(catalog).success
        assert parse_csv(target.read("exports/daily/latest.csv")) == expected_rows(catalog)
        assert target.names() == ["exports/daily/latest.csv"]


def test_missing_bucket_fails_the_run_with_the_reason(moto_server: MotoServer, tmp_path: Path) -> None:
    connection = {"name": "outbox", "type": "s3", "bucket": "no-such-bucket-here", "region": "us-east-1",
                  "endpoint_url": moto_server.endpoint_url, "access_key_id": "testing",
                  "secret_access_key": "super-secret-value"}
    catalog = write_catalog(tmp_path, connection)
    seed(catalog, TRICKY_ROWS)
    result = run_export_job(catalog)
    assert not result.success
    [run] = export_runs(catalog)
    assert run["status"] == "failed"
    assert "bucket 'no-such-bucket-here' does not exist" in run["message"]
    assert "super-secret-value" not in run["message"]
    assert run["details"]["target_url"].startswith("s3://no-such-bucket-here/daily/daily_")


def test_missing_container_and_wrong_key_fail_the_run(azurite: AzuriteServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from integration_hub_tests.fakes.azurite import connection_string

    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    cases = [
        (azurite.connection_string, "no-such-container", "container 'no-such-container' does not exist"),
        (connection_string(azurite.account_url, account_key=wrong_key), "exports", "rejected the credentials"),
    ]
    for n, (secret, container, reason) in enumerate(cases):
        root = tmp_path / str(n)
        root.mkdir()
        monkeypatch.setenv("EXPORT_AZ", secret)
        connection = {"name": "outbox", "type": "azure_blob", "container": container,
                      "connection_string": "${EXPORT_AZ}"}
        catalog = write_catalog(root, connection)
        seed(catalog, TRICKY_ROWS)
        assert not run_export_job(catalog).success
        [run] = export_runs(catalog)
        assert run["status"] == "failed" and reason in run["message"], run["message"]
        assert wrong_key not in run["message"] and "AccountKey" not in run["message"]


def test_a_local_folder_that_cannot_be_written_fails_the_run_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the export folder should be")
    catalog = write_catalog(tmp_path, {"name": "outbox", "type": "local", "path": str(blocker)})
    seed(catalog, TRICKY_ROWS)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_export_job(catalog, instance=instance)
        tags = instance.get_run_by_id(result.run_id).tags
    assert not result.success and tags[TAG_OUTCOME] == "failed" and tags[TAG_INTEGRATION] == "daily"
    [run] = export_runs(catalog)
    assert run["status"] == "failed"
    assert run["message"].startswith(f"Could not create a file in {blocker}/daily: a file stands where a folder is needed; ")
    assert "\n" not in run["message"] and run["message"] in _failure(result)
    assert blocker.read_text() == "a file where the export folder should be"


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message


def test_failed_report_records_a_failed_export_run(tmp_path: Path, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with make_target("moto", request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection, report_sql="SELECT no_such_column FROM user_profiles")
        seed(catalog, TRICKY_ROWS)
        assert not run_export_job(catalog).success
        assert target.names() == []
        [run] = export_runs(catalog)
        assert run["status"] == "failed"
        assert "nothing exported: report 'people_report' failed" in run["message"]


# ---------------------------------------------------------------------------- catalog and definitions


def test_definitions_shape(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_target("azurite", request, monkeypatch) as target:
        catalog = write_catalog(tmp_path, target.connection, {"schedule": "30 6 * * 1", "enabled": False})
    defs = build_definitions(catalog)
    integration = catalog.integration("daily")
    asset = defs.resolve_assets_def(export_key(integration))
    spec = next(iter(asset.specs))
    assert spec.key == dg.AssetKey("export_daily")
    assert spec.kinds == {"azure", "csv"}
    assert spec.group_name == "daily"
    assert {d.asset_key for d in spec.deps} == {report_key("people_report")}
    assert spec.tags[TAG_INTEGRATION] == "daily"
    assert asset.node_def.pool == integration_pool("daily")
    job = defs.resolve_job_def("daily_job")
    assert {n.name for n in job.graph.node_defs} == {"report_people_report", "export_daily"}
    schedule = defs.resolve_schedule_def("daily_schedule")
    assert schedule.cron_schedule == "30 6 * * 1" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert not [s for s in defs.sensors or [] if s.name.startswith("daily")]


def test_file_name_patterns() -> None:
    from integration_hub.core.catalog import parse_catalog

    def integration(**fields: object):
        raw = {
            "connections": [{"name": "o", "type": "s3", "bucket": "bkt"}],
            "integrations": [{"name": "nightly", "type": "file_export", "connection": "o", "report": "r", **fields}],
            "reports": [{"name": "r", "sql": "SELECT 1 AS one"}],
        }
        return parse_catalog(raw).integration("nightly")

    start = datetime(2024, 5, 1, 23, 4, 5, tzinfo=timezone.utc)
    assert render_file_name(integration(), start) == "nightly_20240501T230405Z.csv"
    assert render_file_name(integration(file_name="{date}/{integration}.csv"), start) == "2024-05-01/nightly.csv"
    assert render_file_name(integration(compression="gzip"), start) == "nightly_20240501T230405Z.csv.gz"
    assert render_file_name(integration(compression="gzip", file_name="x.csv.gz"), start) == "x.csv.gz"
    with pytest.raises(ExportError, match="ends in .gz but compression is not set"):
        render_file_name(integration(file_name="x.csv.gz"), start)
    with pytest.raises(ExportError, match="does not name a file"):
        render_file_name(integration(file_name="../x.csv"), start)
    with pytest.raises(CatalogError, match="unknown placeholder"):
        integration(file_name="{day}.csv")


def test_run_after_inbound_runs_the_export_once_per_user_profiles_refresh(tmp_path: Path) -> None:
    from integration_hub.core.assets import USER_PROFILES_KEY

    catalog = write_catalog(tmp_path, {"name": "outbox", "type": "local", "path": str(tmp_path / "out")},
                            {"run_after_inbound": True})
    defs = build_definitions(catalog)
    sensor = defs.resolve_sensor_def("daily_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "daily_job"
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        assert not _run_requests(sensor, context)  # nothing refreshed yet: no run
        instance.report_runless_asset_event(dg.AssetMaterialization(USER_PROFILES_KEY))
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        [request] = _run_requests(sensor, context)
        assert request.tags["integration_hub/trigger"] == "after_inbound"
        context = dg.build_sensor_context(instance=instance, cursor=context.cursor, definitions=defs)
        assert not _run_requests(sensor, context)  # the same refresh is not exported twice


def _run_requests(sensor: dg.SensorDefinition, context: dg.SensorEvaluationContext) -> list[dg.RunRequest]:
    return [r for r in sensor(context) or [] if isinstance(r, dg.RunRequest)]
