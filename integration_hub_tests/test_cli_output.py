"""What the command line prints: every `--json` output parses, failures are one line, a closed pipe is quiet."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from integration_hub.cli.main import build_parser, main
from integration_hub_tests.api_support import WEB_INTEGRATION, catalog_path, write_catalog

GOOD = "email,plan\na@x.com,gold\nb@x.com,free\n"

# Every command that takes --json, and the test below that parses it.
JSON_COMMANDS = {
    "integrations", "discover", "check", "logs", "sql", "history", "tokens create", "tokens list", "endpoint",
    "alerts test", "migrate",
}


def cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def json_ok(capfd: pytest.CaptureFixture[str], *args: str, code: int = 0) -> object:
    """The command prints one JSON document on stdout and nothing on stderr."""
    got, out, err = cli(capfd, *args)
    assert got == code and err == "", err
    return json.loads(out)


def json_failure(capfd: pytest.CaptureFixture[str], *args: str, code: int = 1) -> str:
    """A failed command with --json: stdout empty, one line on stderr, a non-zero exit code."""
    got, out, err = cli(capfd, *args)
    assert got == code and out == "" and len(err.splitlines()) == 1, (out, err)
    assert err.startswith("error: ")
    return err.strip()


def _commands_with_json(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    found = set()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk over subcommands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                found |= _commands_with_json(sub, f"{prefix}{name} ")
        elif "--json" in action.option_strings:
            found.add(prefix.strip())
    return found


def test_every_command_with_json_is_covered_here() -> None:
    assert _commands_with_json(build_parser()) == JSON_COMMANDS


def test_every_json_output_parses(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, WEB_INTEGRATION)
    path = str(catalog_path(catalog))
    (tmp_path / "landing" / "crm").mkdir()
    (tmp_path / "landing" / "crm" / "users.csv").write_text(GOOD)

    [row, _] = json_ok(capfd, "--catalog", path, "integrations", "--json")  # type: ignore[misc]
    assert row["name"] == "crm" and row["last_run"] is None

    # check: one document, also when a check fails (exit 1: the document says which).
    shown = json_ok(capfd, "--catalog", path, "check", "--json", code=1)
    assert shown["ok"] is False and shown["catalog"] == {"connections": 1, "integrations": 2, "reports": 0}  # type: ignore[index]
    assert {c["name"]: c["ok"] for c in shown["checks"]} == {"crm": True, "web": False}  # type: ignore[index]
    assert json_ok(capfd, "--catalog", path, "check", "crm", "--json")["ok"] is True  # type: ignore[index]

    found = json_ok(capfd, "--catalog", path, "discover", "drop", "crm", "--json")
    assert found["user_id_column"] == "email" and found["note"] is None  # type: ignore[index]

    assert json_ok(capfd, "--catalog", path, "logs", "crm", "--json") == []
    assert cli(capfd, "--catalog", path, "run", "crm")[0] == 0
    [run] = json_ok(capfd, "--catalog", path, "logs", "crm", "--json")  # type: ignore[misc]
    shown = json_ok(capfd, "--catalog", path, "logs", "crm", "--run", run["run_id"], "--json")
    assert shown["dagster_run"]["status"] == "success" and shown["sources"][0]["run_id"] == run["run_id"]  # type: ignore[index]

    assert json_ok(capfd, "--catalog", path, "sql", "SELECT count(*) AS users FROM user_profiles", "--json") == [
        {"users": 2}]
    assert "LOAD ducklake;" in json_ok(capfd, "--catalog", path, "sql", "--attach", "--json")["statements"]  # type: ignore[index]
    changes = json_ok(capfd, "--catalog", path, "history", "a@x.com", "--json")
    assert {(c["attribute"], c["value"]) for c in changes} == {("crm_plan", "gold")}  # type: ignore[union-attr]

    created = json_ok(capfd, "--catalog", path, "tokens", "create", "crm-sync", "--json")
    assert created["name"] == "crm-sync" and created["token"]  # type: ignore[index]
    [token] = json_ok(capfd, "--catalog", path, "tokens", "list", "--json")  # type: ignore[misc]
    assert token["name"] == "crm-sync" and "token" not in token
    issued = json_ok(capfd, "--catalog", path, "endpoint", "web", "--json")
    assert issued["url"].endswith("/v1/end-users") and issued["integration_token"]  # type: ignore[index]
    assert json_ok(capfd, "--catalog", path, "endpoint", "web", "--json")["integration_token"] is None  # type: ignore[index]
    # migrate --json (its document is tested in test_migrate): a failure is one line and no JSON half-printed.
    assert "does not exist" in json_failure(capfd, "--catalog", path, "migrate", str(tmp_path / "old.duckdb"), "--json")


def test_json_failures_leave_stdout_empty_and_say_why_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path, WEB_INTEGRATION)
    path = str(catalog_path(catalog))
    assert "no CSV files in" in json_failure(capfd, "--catalog", path, "discover", "drop", "crm", "--json")
    assert "no connection named 'nope'" in json_failure(capfd, "--catalog", path, "discover", "nope", "x", "--json")
    assert "no integration named 'nope'" in json_failure(capfd, "--catalog", path, "logs", "nope", "--json")
    assert "no run 'abc'" in json_failure(capfd, "--catalog", path, "logs", "crm", "--run", "abc", "--json")
    assert "no integration named 'nope'" in json_failure(capfd, "--catalog", path, "check", "nope", "--json")
    assert "type: api" in json_failure(capfd, "--catalog", path, "endpoint", "crm", "--json")
    assert "does not exist yet" in json_failure(capfd, "--catalog", path, "sql", "SELECT 1", "--json")
    assert "does not exist yet" in json_failure(capfd, "--catalog", path, "history", "a@x.com", "--json")
    json_ok(capfd, "--catalog", path, "tokens", "create", "twice", "--json")
    assert "already exists" in json_failure(capfd, "--catalog", path, "tokens", "create", "twice", "--json")

    broken = tmp_path / "broken.yaml"
    broken.write_text("- a list, not a mapping\n")  # one problem: one line
    line = json_failure(capfd, "--catalog", str(broken), "integrations", "--json", code=2)
    assert line == f"error: invalid catalog {broken}: the catalog must be a YAML mapping with connections/integrations/reports"
    broken.write_text("integrations: [{name: x, type: api}]\n")
    got, out, err = cli(capfd, "--catalog", str(broken), "check", "--json")
    assert got == 2 and out == "" and err.startswith(f"error: invalid catalog {broken} (")
    assert all(line.startswith("  - ") for line in err.splitlines()[1:])  # then one line per problem


def test_alerts_test_json_and_its_failure(tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch) -> None:
    from integration_hub_tests.fakes.alert_receivers import WebhookReceiver
    from integration_hub_tests.test_alerts_delivery import catalog_with, webhook

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with WebhookReceiver() as receiver:
        catalog_with(tmp_path, webhook("team", receiver.url("/hook"), max_retries=0))
        path = str(tmp_path / "integrations.yaml")
        assert json_ok(capfd, "--catalog", path, "alerts", "test", "team", "--json") == {
            "destination": "team", "sent": True, "attempts": 1}
        receiver.statuses = [500]
        assert "test alert to webhook team (127.0.0.1) failed: HTTP 500" in json_failure(
            capfd, "--catalog", path, "alerts", "test", "team", "--json")


# ---------------------------------------------------------------------------- a closed pipe


def _run_crm(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    catalog = write_catalog(tmp_path, WEB_INTEGRATION)
    (tmp_path / "landing" / "crm").mkdir()
    (tmp_path / "landing" / "crm" / "users.csv").write_text(GOOD)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    command = [sys.executable, "-m", "integration_hub.cli.main", "--catalog", str(catalog_path(catalog))]
    subprocess.run([*command, "run", "crm"], env=env, check=True, capture_output=True, timeout=120)
    return command, env


def test_a_pipe_closed_early_ends_the_command_quietly(tmp_path: Path) -> None:
    command, env = _run_crm(tmp_path)
    # `| true` closes the pipe before the command writes anything: every write hits a closed pipe.
    for reader in ("true", "head -1"):
        result = subprocess.run(
            ["bash", "-c", f"{shlex.join(command)} logs crm | {reader}; echo \"exit=${{PIPESTATUS[0]}}\""],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.stderr == "", result.stderr  # no "error: BrokenPipeError", no "Exception ignored"
        *shown, status = result.stdout.splitlines()
        assert status in ("exit=0", "exit=141"), result.stdout
        assert shown == ([] if reader == "true" else [shown[0]]) and (reader == "true" or shown[0].startswith("RUN "))

    # A pipe whose reading end is gone before the command starts: exit 141 (128 + SIGPIPE), nothing said.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*command, "integrations", "--json"], env=env, stdout=write_end, stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == b""
