"""The demo as a new user meets it: `integration-hub demo` on free ports, checked through its interfaces.

One test, started the way `make demo` starts it: Dagster's GraphQL API for run status and tags,
the exported file on disk, and the command line (`check`, `logs`). Then Ctrl-C (SIGINT) must stop
every process the demo started.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from integration_hub.cli.demo import DEMO_CATALOG
from integration_hub_tests.fakes.azurite import free_port

# ~1 minute on an idle machine; generous for a loaded one, plus up to TEST_WINDOW_SECONDS of waiting
pytestmark = pytest.mark.timeout(600)

RUNS_QUERY = """
{ runsOrError(limit: 50) { __typename ... on Runs { results { runId jobName status tags { key value } } } } }
"""
BAD_FILE = "mail,Plan Tier\na@x.com,gold\n"  # no user id column: the file fails, and with it its run
TRUE = {"true", "yes", "1"}
# The demo's crm schedule ticks every 15 minutes (its export's, hourly) and a schedule run takes whatever is
# pending when it starts, the file this test drops included: that file would then fail inside the sample
# files' run rather than in a run of its own. The test starts where no tick falls in the time it takes.
SCHEDULE_PERIOD_SECONDS = 15 * 60
TEST_WINDOW_SECONDS = 150


def _cli() -> str:
    return str(Path(sys.executable).parent / "integration-hub")


def _runs(port: int) -> list[dict[str, Any]]:
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": RUNS_QUERY}, timeout=10)
        answer.raise_for_status()
    except httpx.HTTPError:
        return []  # the UI is still starting
    runs = answer.json()["data"]["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return runs


def _wait_for(what: str, probe, demo: subprocess.Popen, timeout: float, state: Callable[[], str]) -> Any:
    """`probe()`'s first truthy answer within `timeout`; failing, what `state()` says the demo was doing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert demo.poll() is None, f"the demo stopped while waiting for {what}\n{state()}"
        found = probe()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}\n{state()}")


def _demo_state(port: int, log: Path) -> str:
    """The runs the UI knows (oldest first) and the end of the demo's output: what a timeout needs explained."""
    runs = [
        f"{r['jobName']} {r['status']} trigger={r['tags'].get('integration_hub/trigger')} "
        f"outcome={r['tags'].get('integration_hub/outcome')}"
        for r in reversed(_runs(port))
    ]
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    tail = [line for line in lines if line.strip() and not line[0].isspace()][-40:]  # no stack frames
    return "\n".join(["runs:", *runs, "demo output:", *tail])


def _expected_export(landing: Path) -> list[list[str]]:
    """The active_users report computed from the sample files themselves: later files win per user,
    the rejected row (support_tickets 'many') never lands, numbers are DOUBLEs."""
    users: dict[str, dict[str, str]] = {}
    for path in sorted((landing / "success").glob("*_users*.csv")):  # oldest first; not the .errors.csv
        if path.name.endswith(".errors.csv"):
            continue
        for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines()):
            if row["tickets_opened"].isdigit():
                users[row["email"]] = row
    return [["email", "plan", "support_tickets"]] + [
        [email, row["Plan Tier"], f"{float(row['tickets_opened'])}"]
        for email, row in sorted(users.items())
        if row["is_active"].lower() in TRUE
    ]


def _clear_of_schedule_ticks() -> None:
    """Wait, if need be, until no demo schedule tick falls within the next TEST_WINDOW_SECONDS."""
    # Every schedule of the demo ticks on a multiple of the period.
    assert set(re.findall(r'schedule: "([^"]+)"', DEMO_CATALOG)) == {"*/15 * * * *", "0 * * * *"}
    to_next_tick = -time.time() % SCHEDULE_PERIOD_SECONDS
    if to_next_tick < TEST_WINDOW_SECONDS:
        time.sleep(to_next_tick + 2)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_demo_from_start_to_ctrl_c(tmp_path: Path) -> None:
    ui_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "INTEGRATION_HUB_CATALOG")}
    demo_dir = tmp_path / "demo"
    _clear_of_schedule_ticks()
    log = open(tmp_path / "demo.log", "wb")
    state = functools.partial(_demo_state, ui_port, tmp_path / "demo.log")
    started = time.monotonic()
    demo = subprocess.Popen(
        [_cli(), "demo", "--port", str(ui_port), "--api-port", str(api_port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        # As a terminal's Ctrl-C finds it: a test session started in the background of a shell
        # without job control ignores SIGINT, and the demo would inherit that.
        preexec_fn=_sigint_default,
    )
    try:
        # 1. The first crm run applies the sample files it was started for (the sensor names them), one
        #    of them with a rejected row: partial, green. A file dropped meanwhile gets a run of its own:
        #    it fails on its own, so that run is red, tagged failed.
        landing = demo_dir / "data" / "landing" / "crm"
        _wait_for("the first crm run", lambda: [r for r in _runs(ui_port) if r["jobName"] == "crm_job"], demo, 100, state)
        (landing / "zz_bad.csv").write_text(BAD_FILE)

        def crm_run(status: str) -> dict | None:
            return next((r for r in _runs(ui_port) if r["jobName"] == "crm_job" and r["status"] == status), None)

        run = _wait_for("the partial crm run", lambda: crm_run("SUCCESS"), demo, 90, state)
        assert run["tags"]["integration_hub/outcome"] == "partial"
        assert run["tags"]["integration_hub/integration"] == "crm"
        failed = _wait_for("the run of the bad file", lambda: crm_run("FAILURE"), demo, 90, state)
        assert failed["tags"]["integration_hub/outcome"] == "failed"
        print(f"{time.monotonic() - started:.0f}s: crm runs")

        # 2. The command line a new user tries next (while the export runs).
        catalog = ["--catalog", str(demo_dir / "integrations.yaml")]
        commands = {name: subprocess.Popen([_cli(), *args, *catalog], env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
                    for name, args in (("check", ["check"]), ("json", ["check", "--json"]), ("logs", ["logs", "crm"]))}

        # 3. The export followed the inbound run: report -> file in the demo's local destination.
        exported = demo_dir / "data" / "exports" / "active_users.csv"

        def export_done() -> bool:
            return any(r["jobName"] == "active_users_export_job" and r["status"] == "SUCCESS" for r in _runs(ui_port))

        _wait_for("the export run", export_done, demo, 90, state)
        print(f"{time.monotonic() - started:.0f}s: export")
        rows = list(csv.reader(io.StringIO(exported.read_text(encoding="utf-8"), newline="")))
        assert rows == _expected_export(landing) and len(rows) > 100
        assert [p.name for p in exported.parent.iterdir()] == ["active_users.csv"]  # no temporary file left

        outputs = {name: command.communicate(timeout=60) for name, command in commands.items()}
        print(f"{time.monotonic() - started:.0f}s: commands")
        assert commands["check"].returncode == 0, outputs["check"]
        assert "skip onboarding_to_salesforce: disabled" in outputs["check"][0]
        checked = json.loads(outputs["json"][0])
        assert checked["ok"] is True
        assert {r["name"] for r in checked["checks"] if r["ok"]} == {"crm", "realtime_enrichment", "active_users_export"}
        assert [r["name"] for r in checked["checks"] if r["skipped"]] == ["onboarding_to_salesforce"]
        assert commands["logs"].returncode == 0 and "zz_bad.csv" in outputs["logs"][0], outputs["logs"]
    finally:
        children = psutil.Process(demo.pid).children(recursive=True) if demo.poll() is None else []
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for process in [psutil.Process(demo.pid), *children]:
                process.kill()
            raise
        finally:
            log.close()
    print(f"{time.monotonic() - started:.0f}s: stopped")
    # 5. Ctrl-C stopped everything it started, promptly: UI, daemon, code servers, runs, API server.
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    assert len(children) >= 4  # dagster dev, its webserver and daemon, the API server at least
    with socket.socket() as probe:  # the ports are free again
        probe.bind(("127.0.0.1", ui_port))


def test_a_taken_port_stops_the_demo_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "INTEGRATION_HUB_CATALOG")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([_cli(), "demo", "--port", str(free_port()), "--api-port", str(port)],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"error: port {port} for the API server is already in use: stop what uses it, or choose another port "
        f"with `make demo API_PORT=<port>` (integration-hub demo --api-port <port>)"
    )
    assert not (tmp_path / "demo").exists()  # nothing was started or written
