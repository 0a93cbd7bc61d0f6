"""The `integration-hub` command line, called as a user would."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from integration_hub.cli.main import build_parser, main
from integration_hub.core.catalog import parse_catalog
from integration_hub_tests.support import CRM_INTEGRATION, Landing, lake_settings, query

GOOD = "email,Plan Tier,tickets,is_active,signup,last_login\na@x.com,gold,1,yes,2024-01-01,\nb@x.com,free,2,no,2024-02-01,\n"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_integrations_table_and_json(landing: Landing, capsys: pytest.CaptureFixture[str]) -> None:
    landing.write_catalog()
    catalog = str(landing.catalog_path)
    code, out, _ = cli(capsys, "integrations", "--catalog", catalog)
    assert code == 0 and "crm" in out and "inbound" in out and "*/15 * * * *" in out
    landing.put("crm/users.csv", GOOD)
    assert cli(capsys, "run", "crm", "--catalog", catalog)[0] == 0
    code, out, _ = cli(capsys, "--catalog", catalog, "integrations", "--json")
    [row] = json.loads(out)
    assert row["name"] == "crm" and row["direction"] == "inbound" and row["properties_imported"] == 5
    assert row["last_run_status"] == "success" and row["last_run_ok"] is True and row["enabled"] is True
    assert row["last_run"].endswith("+00:00")


def test_run_prints_one_line_per_file_and_exits_1_when_a_file_failed(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog()
    local_landing.put("crm/a_good.csv", GOOD)
    local_landing.put("crm/b_empty.csv", b"")
    code, out, err = cli(capsys, "run", "crm", "--catalog", str(local_landing.catalog_path))
    lines = [line for line in out.splitlines() if ".csv" in line]
    assert len(lines) == 2
    assert "a_good.csv: success (2 read, 2 applied, 0 rejected)" in lines[0]
    assert "b_empty.csv: failed" in lines[1] and "empty" in lines[1]
    assert code == 1


def test_dry_run_changes_nothing(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog()
    local_landing.put("crm/a.csv", GOOD)
    local_landing.put("crm/b.csv", "id,other\n1,2\n")
    code, out, _ = cli(capsys, "run", "crm", "--dry-run", "--catalog", str(local_landing.catalog_path))
    assert code == 1 and "would process crm/a.csv" in out and "header ok" in out and "missing user id column" in out
    assert sorted(local_landing.keys()) == ["a.csv", "b.csv"]
    assert not local_landing.write_catalog().warehouse_catalog_path.exists()


def test_disable_stops_runs_and_shows_in_the_table(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog()
    catalog = str(local_landing.catalog_path)
    code, out, _ = cli(capsys, "disable", "crm", "--catalog", catalog)
    assert code == 0 and "crm disabled" in out and "crm_sensor" in out
    code, out, _ = cli(capsys, "integrations", "--json", "--catalog", catalog)
    assert json.loads(out)[0]["enabled"] is False
    code, _, err = cli(capsys, "run", "crm", "--catalog", catalog)
    assert code == 1 and "disabled" in err and "integration-hub enable crm" in err
    assert cli(capsys, "enable", "crm", "--catalog", catalog)[0] == 0
    assert json.loads(cli(capsys, "integrations", "--json", "--catalog", catalog)[1])[0]["enabled"] is True


def test_logs_list_and_one_run_in_full(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.5})
    catalog = str(local_landing.catalog_path)
    local_landing.put("crm/a.csv", GOOD + "c@x.com,gold,lots,yes,2024-01-01,\n")
    cli(capsys, "run", "crm", "--catalog", catalog)
    code, out, _ = cli(capsys, "logs", "crm", "--json", "--catalog", catalog)
    [run] = json.loads(out)
    assert run["status"] == "partial" and run["rows_rejected"] == 1
    code, out, _ = cli(capsys, "logs", "crm", "--run", run["run_id"], "--catalog", catalog)
    assert code == 0 and "partial" in out and "lots" in out and "not a valid number" in out
    code, _, err = cli(capsys, "logs", "crm", "--run", "nope", "--catalog", catalog)
    assert code == 1 and "no run 'nope'" in err


def test_check_reports_success_empty_folder_and_missing_columns(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog()
    catalog = str(local_landing.catalog_path)
    code, out, _ = cli(capsys, "check", "--catalog", catalog)
    assert code == 0 and "catalog ok" in out and "no pending files" in out
    local_landing.put("crm/a.csv", "email,Plan Tier\na@x.com,gold\n")
    code, out, _ = cli(capsys, "check", "crm", "--catalog", catalog)
    assert code == 1 and "FAIL crm" in out and "'tickets'" in out and "fix the mapping" in out


def test_check_names_a_missing_bucket(capsys, tmp_path) -> None:
    from integration_hub_tests.fakes.moto_server import MotoServer

    with MotoServer() as server:
        document = {
            "warehouse": lake_settings(tmp_path),
            "connections": [{"name": "landing", "type": "s3", "bucket": "no-such-bucket", "endpoint_url": server.endpoint_url,
                             "region": "us-east-1", "access_key_id": "testing", "secret_access_key": "testing"}],
            "integrations": [CRM_INTEGRATION],
        }
        path = tmp_path / "integrations.yaml"
        path.write_text(yaml.safe_dump(document))
        code, out, _ = cli(capsys, "check", "--catalog", str(path))
    assert code == 1 and "no-such-bucket" in out and "does not exist" in out and "testing" not in out


def test_an_invalid_catalog_exits_nonzero_with_every_problem(tmp_path, capsys) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump({"integrations": [{**CRM_INTEGRATION, "schedule": "soon", "connection": "gone"}]}))
    code, _, err = cli(capsys, "check", "--catalog", str(path))
    assert code == 2 and "2 problems" in err and "'soon'" in err and "'gone'" in err


def test_discover_infers_columns_and_writes_a_valid_snippet(landing: Landing, capsys) -> None:
    landing.write_catalog()
    landing.put(
        "crm/export.csv",
        "Email Address,Plan Tier,Seats,Is Active,Signup Date\n"
        + "".join(f"u{n}@x.com,{'gold' if n % 2 else 'free'},{n},{'true' if n % 3 else 'false'},2024-01-{n % 28 + 1:02d}\n" for n in range(50)),
    )
    code, out, _ = cli(capsys, "discover", "landing", "crm", "--json", "--catalog", str(landing.catalog_path))
    assert code == 0
    found = json.loads(out)
    types = {c["column"]: c["type"] for c in found["columns"]}
    assert types == {"Email Address": "string", "Plan Tier": "string", "Seats": "number", "Is Active": "boolean", "Signup Date": "date"}
    assert found["user_id_column"] == "Email Address"
    assert set(next(c for c in found["columns"] if c["column"] == "Plan Tier")["samples"]) <= {"gold", "free"}
    snippet = yaml.safe_load(found["yaml"])["integrations"][0]
    assert snippet["folder"] == "crm" and snippet["user_id_column"] == "Email Address"
    # The snippet is a valid catalog entry as it stands.
    catalog = parse_catalog({"connections": [landing.connection], "integrations": [snippet]})
    assert [p.name for p in catalog.integration(snippet["name"]).properties] == ["plan_tier", "seats", "is_active", "signup_date"]


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand of the parser, as the words that name it."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _command_paths(sub, (*path, name))


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    # The installed entry point answers --help in a process of its own ...
    result = subprocess.run([sys.executable, "-m", "integration_hub.cli.main", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: integration-hub" in result.stdout
    # ... and so does every command and subcommand (in this process: one interpreter start each is slow).
    paths = list(_command_paths(build_parser()))
    assert {("integrations",), ("enable",), ("run",), ("discover",), ("check",), ("logs",), ("alerts", "test")} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        out, err = capsys.readouterr()
        assert exited.value.code == 0 and out.startswith(f"usage: integration-hub {' '.join(path)}") and err == "", path


def test_demo_writes_a_catalog_and_sample_files_a_run_applies(tmp_path, capsys, monkeypatch) -> None:
    code, out, _ = cli(capsys, "demo", "--no-ui", "--dir", str(tmp_path / "demo"))
    assert code == 0
    catalog = str(tmp_path / "demo" / "integrations.yaml")
    code, out, _ = cli(capsys, "run", "crm", "--catalog", catalog)
    assert "success" in out and "partial" in out and code == 0
    loaded = parse_catalog(yaml.safe_load(open(catalog)), base_dir=tmp_path / "demo")
    assert query(loaded, "SELECT count(*) FROM user_profiles")[0][0] == 540


def test_discover_after_a_run_samples_the_newest_processed_file(landing: Landing, capsys) -> None:
    landing.write_catalog()
    catalog = str(landing.catalog_path)
    landing.put("crm/users.csv", GOOD)
    assert cli(capsys, "run", "crm", "--catalog", catalog)[0] == 0
    assert landing.keys() == ["success/users.csv"]  # nothing pending any more

    code, out, err = cli(capsys, "discover", "landing", "crm", "--catalog", catalog)
    assert code == 0 and err == ""
    note, file_line, *_ = out.splitlines()
    where = "s3://acme-inbound/inbound/crm" if landing.s3 is not None else str(landing.root / "landing" / "crm")
    assert note == (f"note: no pending CSV files in {where}/, so this is the newest processed file (in success/); "
                    "the integration's folder is 'crm' (integration crm reads it): new files go there, not into success/")
    assert file_line.startswith(f"file: {where}/success/users.csv (2 rows sampled)")
    # Values as the file has them, beside the inferred type: yes/no is a boolean, shown as yes/no.
    assert re.search(r"is_active\s+boolean\s+yes, no$", out, re.MULTILINE), out
    assert re.search(r"tickets\s+number\s+1, 2$", out, re.MULTILINE), out
    snippet = yaml.safe_load(out[out.index("integrations:") :])["integrations"][0]
    assert snippet["folder"] == "crm"  # not crm/success

    code, out, _ = cli(capsys, "discover", "landing", "crm/success/users.csv", "--json", "--catalog", catalog)
    found = json.loads(out)
    assert found["note"].startswith("users.csv was processed already (it is in success/); the integration's folder is 'crm'")
    assert yaml.safe_load(found["yaml"])["integrations"][0]["folder"] == "crm"


def test_discover_of_an_empty_folder_says_where_it_looked(local_landing: Landing, capsys) -> None:
    local_landing.write_catalog()
    (local_landing.root / "landing" / "crm" / "success").mkdir(parents=True)
    code, out, err = cli(capsys, "discover", "landing", "crm", "--catalog", str(local_landing.catalog_path))
    where = local_landing.root / "landing" / "crm"
    assert code == 1 and out == ""
    assert err == f"error: no CSV files in {where}/ (nor in its success/ or failed/); drop a sample file there first\n"
